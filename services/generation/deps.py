"""FastAPI dependencies: the engine built by the app's lifespan, and the bearer token."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.generation.engine import Engine

_bearer = HTTPBearer(auto_error=False, description="`PC_GENERATION_TOKEN` / `--api-key`")


def get_engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise HTTPException(503, "the model is still loading")
    return engine


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries the server's token (when one is set)."""
    token: str | None = request.app.state.settings.token
    if not token:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


EngineDep = Annotated[Engine, Depends(get_engine)]
Authorized = [Depends(require_token)]
