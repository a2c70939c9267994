"""The error surface every service shares: one set of handlers and one body limit.

`install_error_handlers(app, max_body_bytes=...)` is called by each app's factory
(allocator, verifier, generation), so every service answers errors the same way:

- 422 `{"detail": [{"loc", "msg", "type"}, ...]}` for a body or parameter that fails
  validation. FastAPI's default body repeats the offending input, which cannot be
  rendered as JSON when it holds NaN or infinities (the request would turn into a 500).
  The reason and the location are what a caller needs.
- 413 `{"detail": "request body ... exceeds the limit of N bytes"}` for a body larger than
  `max_body_bytes`, whether it announces its size (Content-Length) or is sent chunked:
  the bytes are counted as they are received, and reading stops at the limit.
- 500 `{"detail": "internal server error (<ExceptionType>)"}` with `Connection: close` for
  an unhandled exception (logged with its traceback by uvicorn). uvicorn closes the
  connection after such an error; the header tells the client so, and it does not put
  the connection back in its pool (otherwise the next request on it fails in transport).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLOSE = {"Connection": "close"}


class ErrorDetail(BaseModel):
    """One failed check of a 422: where (`loc`), why (`msg`) and its kind (`type`)."""

    loc: list[str | int] = Field(description="Path of the bad value, e.g. ['body', 'n'].")
    msg: str = Field(description="Why it was refused.")
    type: str = Field(description="The kind of error, e.g. 'greater_than_equal'.")


class ValidationErrorBody(BaseModel):
    """Body of every 422 answer."""

    detail: list[ErrorDetail] = Field(description="Each failed check.")


class ErrorBody(BaseModel):
    """Body of every other error answer (4xx, 5xx)."""

    detail: str = Field(description="The reason, in words.")


def invalid(msg: str, loc: Iterable[str | int] = ("body",)) -> JSONResponse:
    """A 422 in the shared shape for a check made after validation (e.g. by a store)."""
    detail = [{"loc": list(loc), "msg": msg, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=422)


def body_too_large(limit: int, received: int | None = None) -> JSONResponse:
    """The 413 answer: JSON `{"detail": reason}`, and the connection is closed after it."""
    size = f"of {received} bytes" if received is not None else "of unknown size"
    detail = f"request body {size} exceeds the limit of {limit} bytes"
    return JSONResponse({"detail": detail}, status_code=413, headers=CLOSE)


# Bytes read and dropped after the limit before the 413 goes out: closing a connection
# with unread bytes makes the kernel reset it, and the client loses the 413 with it.
DRAIN_BYTES = 256 * 1024 * 1024


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` bytes with 413, counting bytes as they arrive.

    A Content-Length over the limit is refused before the app runs. Otherwise (chunked
    framing, or a Content-Length that lies) `receive` counts the bytes; at the first chunk
    past the limit it answers 413 itself, tells the app the client went away
    (`http.disconnect`, so the app stops reading) and drops whatever the app answers
    then. At most `max_bytes` plus one chunk (uvicorn reads 64 KiB at a time) is held.
    Before answering, the rest of the body (up to `DRAIN_BYTES`) is read and dropped, so
    that the connection closes cleanly and the client reads the 413. A limit passed after
    the app started its own answer (a streaming route reading its body concurrently; none
    here) cannot be answered 413: the request fails instead.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_BYTES:
                await _drain(receive, DRAIN_BYTES)
            await body_too_large(self.max_bytes, int(declared))(scope, receive, send)
            return
        received, started, answered = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if started:
                        raise RuntimeError("request body over the limit after the response began")
                    answered = True
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_BYTES)
                    await body_too_large(self.max_bytes)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, watching_send)


async def _drain(receive: Receive, limit: int) -> None:
    """Read and drop the rest of a request body, at most `limit` bytes of it."""
    dropped = 0
    while dropped <= limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        dropped += len(message.get("body", b""))


def install_error_handlers(app: FastAPI, *, max_body_bytes: int) -> None:
    """The shared 422, 413 and 500 answers (see the module docstring) on `app`."""

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = [
            {"loc": list(err.get("loc", ())), "msg": str(err.get("msg")), "type": err.get("type")}
            for err in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        detail = f"internal server error ({type(exc).__name__})"
        return JSONResponse({"detail": detail}, status_code=500, headers=CLOSE)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, crashed)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)


def document_errors(app: FastAPI, codes: Callable[[str, str], Iterable[int]]) -> None:
    """Make `app`'s OpenAPI list every status each operation can answer, with its body.

    Every operation: 413 (the body limit applies to any request) and 500; with parameters
    or a body: 422 (`ValidationErrorBody`, replacing FastAPI's schema, whose `input` this
    service never sends); with a bearer-token dependency: 401; plus `codes(METHOD, path)`,
    the statuses of the service's own checks. Error bodies are `ErrorBody` but for 422.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorBody, ValidationErrorBody):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body.pop("$defs", {}))
            schemas[model.__name__] = body
        for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's, replaced
            schemas.pop(unused, None)
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                wanted = {413, 500} | set(codes(method.upper(), path))
                if op.get("parameters") or op.get("requestBody"):
                    wanted.add(422)
                if op.get("security"):
                    wanted.add(401)
                responses = op.setdefault("responses", {})
                for code in sorted(wanted):
                    model = ValidationErrorBody if code == 422 else ErrorBody
                    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
                    responses[str(code)] = {
                        "description": HTTPStatus(code).phrase,
                        "content": {"application/json": {"schema": ref}},
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
