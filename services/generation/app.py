"""`create_app()`: the embedded generation server as a FastAPI app.

Nothing is built at import time: the model loads in the lifespan, from the settings
given here or read through `get_settings()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Gauge

from services.common.errors import document_errors, install_error_handlers
from services.common.metrics import instrument
from services.generation import control, routes
from services.generation.engine import Engine
from services.generation.settings import GenerationSettings, get_settings


def _engine_gauges(app: FastAPI, registry: CollectorRegistry) -> None:
    paused = Gauge("generation_paused", "1 while generation is paused.", registry=registry)
    queued = Gauge("generation_queued_requests", "Requests waiting for a batch.", registry=registry)
    version = Gauge("generation_weight_updates", "Weight updates applied.", registry=registry)

    def engine_value(read: Callable[[Engine], float]) -> Callable[[], float]:
        return lambda: read(app.state.engine) if app.state.engine is not None else 0.0

    paused.set_function(engine_value(lambda e: float(e.barrier.is_paused)))
    queued.set_function(engine_value(lambda e: float(e.queued)))
    version.set_function(engine_value(lambda e: float(e.weight_updates)))
    batches = Gauge("generation_batches", "Batches decoded so far.", registry=registry)
    served = Gauge("generation_batched_requests", "Requests served so far.", registry=registry)
    batches.set_function(engine_value(lambda e: float(e.batches)))
    served.set_function(engine_value(lambda e: float(e.batched_requests)))


# Statuses the routes raise themselves, for the OpenAPI (document_errors adds 401, 413, 422
# and 500 where they apply).
_ROUTE_ERRORS = {
    "/v1/completions": [400, 404],
    "/collective_rpc": [400, 409],
    "/init_weight_transfer_engine": [400],
    "/update_weights": [400, 409],
    "/finish_weight_update": [409],
}
_NO_ENGINE = {"/get_world_size", "/init_weight_transfer_engine"}  # the rest 503 while loading


def _error_codes(method: str, path: str) -> list[int]:
    return _ROUTE_ERRORS.get(path, []) + ([] if path in _NO_ENGINE else [503])


def create_app(settings: GenerationSettings | None = None) -> FastAPI:
    """The app; the engine starts with the server and stops with it."""
    resolved = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = Engine(resolved).start()
        try:
            yield
        finally:
            app.state.engine.close()
            app.state.engine = None

    app = FastAPI(title="pilot-commit generation", lifespan=lifespan)
    app.state.engine = None
    app.state.settings = resolved
    registry = CollectorRegistry()
    instrument(app, "generation", registry)
    _engine_gauges(app, registry)
    install_error_handlers(app, max_body_bytes=resolved.max_body_bytes)
    app.include_router(routes.router)
    app.include_router(control.router)
    document_errors(app, _error_codes)

    return app
