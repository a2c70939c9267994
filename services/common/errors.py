"""422 answers that always serialise: validation errors without echoing the bad input.

FastAPI's default 422 body repeats the offending input, which cannot be rendered as JSON
when it holds NaN or infinities (the request would turn into a 500). The reason and the
location are what a caller needs.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def install_validation_handler(app: FastAPI) -> None:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = [
            {"loc": list(err.get("loc", ())), "msg": str(err.get("msg")), "type": err.get("type")}
            for err in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    app.add_exception_handler(RequestValidationError, handle)
