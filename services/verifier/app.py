"""The verifier's HTTP API: `POST /v1/score`, `GET /health`, `GET /metrics`.

A thin layer over `Scorer`: it checks the request against the configured limits
(413 with a reason past them), scores, and counts what happened for Prometheus. The
worker pool lives for the lifetime of the app (started and stopped in `lifespan`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.errors import document_errors, install_error_handlers
from services.common.metrics import instrument
from services.verifier.models import HealthResponse, ScoreRequest, ScoreResponse
from services.verifier.pool import WorkerPool
from services.verifier.scoring import Scorer
from services.verifier.settings import VerifierSettings, get_settings

SettingsDep = Annotated[VerifierSettings, Depends(get_settings)]


def _scorer(request: Request) -> Scorer:
    scorer: Scorer = request.app.state.scorer
    return scorer


ScorerDep = Annotated[Scorer, Depends(_scorer)]


def check_limits(body: ScoreRequest, settings: VerifierSettings) -> None:
    """Raise 413 naming the first limit the request breaks."""
    if len(body.items) > settings.max_items:
        raise HTTPException(
            413, f"too many items: {len(body.items)} > max_items={settings.max_items}"
        )
    for index, item in enumerate(body.items):
        longest = max(len(item.response), len(item.reference))
        if longest > settings.max_chars:
            raise HTTPException(
                413, f"item {index}: {longest} characters > max_chars={settings.max_chars}"
            )


def _pool(app: FastAPI) -> WorkerPool | None:
    scorer: Scorer | None = getattr(app.state, "scorer", None)
    return scorer.pool if scorer else None


class _Metrics:
    """Verifier-specific counters, next to the per-route ones of `instrument`."""

    def __init__(self, registry: CollectorRegistry, app: FastAPI) -> None:
        self.items = Counter(
            "verifier_items", "Items scored, by deciding path and reason.",
            ["path", "reason"], registry=registry,
        )  # fmt: skip
        workers = Gauge("verifier_workers", "Worker processes running.", registry=registry)
        workers.set_function(lambda: getattr(_pool(app), "workers", 0))
        kills = Gauge("verifier_worker_kills", "Workers killed (timeouts).", registry=registry)
        kills.set_function(lambda: getattr(_pool(app), "kills", 0))


def _routes(app: FastAPI) -> None:
    @app.get("/health", response_model=HealthResponse)
    async def health(settings: SettingsDep, scorer: ScorerDep) -> HealthResponse:
        return HealthResponse(
            status="ok", workers=scorer.pool.workers, max_items=settings.max_items,
            max_chars=settings.max_chars, timeout_s=settings.timeout_s,
        )  # fmt: skip

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(body: ScoreRequest, settings: SettingsDep, scorer: ScorerDep) -> ScoreResponse:
        check_limits(body, settings)
        scored = await scorer.score(body.items)
        metrics: _Metrics = app.state.metrics
        for result, path in scored:
            metrics.items.labels(path, result.reason).inc()
        return ScoreResponse(results=[result for result, _ in scored])


def create_app(settings: VerifierSettings | None = None) -> FastAPI:
    """The verifier app; `settings` overrides `get_settings()` (tests, embedding)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved: VerifierSettings = app.dependency_overrides.get(get_settings, get_settings)()
        pool = WorkerPool(
            resolved.workers, resolved.max_workers,
            memory_mb=resolved.worker_memory_mb, stuck_after_s=resolved.stuck_after_s,
        )  # fmt: skip
        await pool.start()
        app.state.scorer = Scorer(resolved, pool)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="pilot-commit verifier", lifespan=lifespan)
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    registry = CollectorRegistry()
    instrument(app, "verifier", registry)
    app.state.metrics = _Metrics(registry, app)
    install_error_handlers(app, max_body_bytes=(settings or get_settings()).max_body_bytes)
    _routes(app)
    document_errors(app, lambda method, path: ())  # 413 of check_limits: on every route
    return app
