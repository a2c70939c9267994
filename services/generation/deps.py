"""FastAPI dependencies: the engine built by the app's lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from services.generation.engine import Engine


def get_engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise HTTPException(503, "the model is still loading")
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]
