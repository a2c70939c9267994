"""The allocator's HTTP API (FastAPI). Routes are thin: validate, call the store, answer.

Errors are translated once, here: unknown ids 404, state conflicts 409, malformed input
422, oversized bodies 413, a missing or wrong token 401, Redis unreachable 503 (the
client reconnects by itself on the next request once Redis is back; on Redis Cluster,
also a cluster without a master for the run's slot).

Auth: with a token set, every `/v1/...` call needs `Authorization: Bearer <token>`, reads
included (they hand out a run's whole state). It is checked by the outermost middleware,
before the body is read or validated, so a call without the token gets 401 whatever its
body. `/health`, `/ready`, `/metrics` and the OpenAPI schema stay open for probes and
scrapers; they tell nothing about any run.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.allocator import models as m
from services.allocator.connection import open_redis, primaries
from services.allocator.core import AllocationError
from services.allocator.settings import AllocatorSettings, get_settings
from services.allocator.store import AllocatorStore, Conflict, Invalid, NotFound
from services.common.errors import document_errors, install_error_handlers, invalid
from services.common.metrics import instrument

RunId = Annotated[str, Path(pattern=m.RUN_ID_PATTERN, description="The run's id.")]
RestoreId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The caller's id of one restore.")
]


def get_store(request: Request) -> AllocatorStore:
    store: AllocatorStore = request.app.state.store
    return store


Store = Annotated[AllocatorStore, Depends(get_store)]


def create_app(settings: AllocatorSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A results call allocates ~100k short-lived objects; with the default thresholds
        # the collector then runs full passes over the (frozen) import-time heap inside
        # later requests, which is what the latency tail is made of.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        # redis:// (one Redis) or redis+cluster://host:port[,host:port...] (Redis Cluster)
        redis = open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s)
        # A cluster's slot map, before the first request; if the cluster is unreachable it
        # is read on first use instead (until then calls answer 503).
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, ClusterDownError):
            await primaries(redis)
        app.state.redis = redis
        app.state.store = AllocatorStore(redis, ttl_s=settings.ttl_s)
        yield
        await redis.aclose()

    app = FastAPI(
        title="Pilot-Commit allocator",
        version="0.1.0",
        description="Decides which prompts to pilot, commit, defer and evict; state in Redis.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    registry = CollectorRegistry()
    instrument(app, "allocator", registry)
    app.state.rewards_total = Counter(
        "allocator_rewards", "Rewards applied (a retried report counts once).", registry=registry
    )
    _add_error_handlers(app)
    install_error_handlers(app, max_body_bytes=settings.max_body_bytes)
    if settings.token:
        _add_auth(app, settings.token)  # added last: runs first, before the body limit
    for router in (ops, runs, rounds, prompts):
        app.include_router(router)
    document_errors(app, _error_codes)
    return app


def _add_auth(app: FastAPI, token: str) -> None:
    """401 for a `/v1/...` call without `Authorization: Bearer <token>` (the scheme in any
    case, the token compared in constant time), before anything reads its body."""
    expected = token.encode()

    @app.middleware("http")
    async def auth(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path.startswith("/v1/") or request.url.path == "/v1":
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
                return JSONResponse(
                    {"detail": "a valid bearer token is required"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await call_next(request)


def _add_error_handlers(app: FastAPI) -> None:
    def handler(code: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=code)

        return handle

    app.add_exception_handler(NotFound, handler(404))
    app.add_exception_handler(Conflict, handler(409))
    app.add_exception_handler(AllocationError, handler(409))

    async def invalid_input(_: Request, exc: Exception) -> JSONResponse:
        return invalid(str(exc))

    app.add_exception_handler(Invalid, invalid_input)

    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"redis unavailable: {exc}"}, status_code=503)

    app.add_exception_handler(RedisConnectionError, redis_down)
    app.add_exception_handler(RedisTimeoutError, redis_down)
    # Redis Cluster in a failover or without a master for some slot: retry later.
    for unavailable in (ClusterDownError, MasterDownError, SlotNotCoveredError, TryAgainError):
        app.add_exception_handler(unavailable, redis_down)

    async def redis_error(request: Request, exc: Exception) -> JSONResponse:
        # BUSY: Redis is running a long script (e.g. a large restore's swap) and serves
        # nothing else meanwhile; a retry later succeeds, like after an outage.
        if "BUSY Redis is busy" in str(exc):  # also when wrapped by a pipeline
            return await redis_down(request, exc)
        return JSONResponse({"detail": f"redis error: {exc}"}, status_code=500)

    app.add_exception_handler(ResponseError, redis_error)


def _error_codes(method: str, path: str) -> list[int]:
    """The statuses of the handlers above, per route, for the OpenAPI (document_errors)."""
    codes = [] if path == "/health" else [503]
    if path.startswith("/v1"):
        codes.append(401)  # the auth middleware's, with a token set
    if "{run_id}" in path:
        codes += [404] if method == "GET" else [404, 409]
    return codes


# The routes, by OpenAPI tag: probes, runs (create, read, delete, snapshots and restores),
# rounds (plan, results, step and epoch completion) and single prompts.
ops = APIRouter(tags=["ops"])
runs = APIRouter(tags=["runs"])
rounds = APIRouter(tags=["rounds"])
prompts = APIRouter(tags=["prompts"])


@ops.get("/health", response_model=m.Health)
async def health() -> m.Health:
    """The process is up (does not touch Redis)."""
    return m.Health()


@ops.get("/ready", response_model=m.Ready)
async def ready(request: Request) -> m.Ready:
    """Redis answers PING; 503 otherwise."""
    await request.app.state.redis.ping()
    return m.Ready(redis="ok")


@runs.get("/v1/runs", response_model=list[str])
async def list_runs(store: Store) -> list[str]:
    return await store.list_runs()


@runs.put("/v1/runs/{run_id}", response_model=m.RunCreated)
async def create_run(run_id: RunId, spec: m.RunSpec, store: Store) -> m.RunCreated:
    """Create a run; repeating it with the same spec is a no-op, another spec is 409."""
    _, created = await store.create_run(run_id, spec)
    return m.RunCreated(created=created, run=await store.summary(run_id))


@runs.get("/v1/runs/{run_id}", response_model=m.RunSummary)
async def run_summary(run_id: RunId, store: Store) -> m.RunSummary:
    return await store.summary(run_id)


@runs.get("/v1/runs/{run_id}/pool", response_model=m.PoolView)
async def pool(
    run_id: RunId,
    store: Store,
    bins: Annotated[int, Query(ge=1, le=100, description="Pass-rate bins over [0, 1].")] = 20,
) -> m.PoolView:
    """The run's summary and, read with it, the pool at a glance: pilot pass rates
    against the band, prompts by status, buffer ages (for dashboards; reads every
    statistics bucket of the run)."""
    return await store.pool(run_id, bins)


@runs.delete("/v1/runs/{run_id}")
async def delete_run(run_id: RunId, store: Store) -> dict[str, int]:
    return {"deleted_keys": await store.delete_run(run_id)}


@runs.get("/v1/runs/{run_id}/snapshot", response_model=m.Snapshot)
async def snapshot(run_id: RunId, store: Store) -> m.Snapshot:
    """Every key of the run (for trainer checkpoints)."""
    return await store.snapshot(run_id)


@runs.put(
    "/v1/runs/{run_id}/snapshot",
    response_model=m.RunSummary,
)
async def restore_snapshot(run_id: RunId, body: m.Snapshot, store: Store) -> m.RunSummary:
    """Replace the run's state with a snapshot (resume from a trainer checkpoint)."""
    await store.restore_snapshot(run_id, body)
    return await store.summary(run_id)


@runs.get("/v1/runs/{run_id}/snapshot/pages", response_model=m.SnapshotPage)
async def snapshot_page(
    run_id: RunId,
    store: Store,
    cursor: Annotated[
        int, Query(ge=0, le=2**64 - 1, description="0, then the previous `next_cursor`.")
    ] = 0,
    max_bytes: Annotated[
        int, Query(ge=1, le=64 * 1024 * 1024, description="Stop after this much base64.")
    ] = 4 * 1024 * 1024,
) -> m.SnapshotPage:
    """One page of the run's snapshot, for runs too large for one answer; the client
    reads pages until `next_cursor` is null and checks they carry one `version`."""
    return await store.snapshot_page(run_id, cursor, max_bytes)


@runs.put(
    "/v1/runs/{run_id}/restores/{restore_id}/keys",
    response_model=m.RestoreStaged,
)
async def stage_restore(
    run_id: RunId, restore_id: RestoreId, body: m.RestoreChunk, store: Store
) -> m.RestoreStaged:
    """Stage one chunk of a snapshot for a restore chosen by the caller (`restore_id`,
    fresh per restore); the run is not touched until the commit."""
    return m.RestoreStaged(staged=await store.stage_restore(run_id, restore_id, body.keys))


@runs.post(
    "/v1/runs/{run_id}/restores/{restore_id}/commit",
    response_model=m.RunSummary,
)
async def commit_restore(
    run_id: RunId, restore_id: RestoreId, body: m.RestoreCommit, store: Store
) -> m.RunSummary:
    """Replace the run's state with the staged snapshot, all at once; idempotent."""
    await store.commit_restore(run_id, restore_id, body.keys)
    return await store.summary(run_id)


@rounds.post("/v1/runs/{run_id}/plan", response_model=m.Plan)
async def plan(run_id: RunId, body: m.PlanRequest, store: Store) -> m.Plan:
    """Plan the next round (pilot + commit items under one plan id)."""
    return await store.plan(run_id, body.request_id)


@rounds.post(
    "/v1/runs/{run_id}/plans/{plan_id}/results",
    response_model=m.ResultsResponse,
)
async def results(
    run_id: RunId, plan_id: str, body: m.ResultsRequest, store: Store, request: Request
) -> m.ResultsResponse:
    """Report a plan's rewards; idempotent by plan id."""
    answer, applied = await store.report_applied(run_id, plan_id, body.rewards)
    if applied:  # a retry is answered again but counted once
        request.app.state.rewards_total.inc(sum(len(g) for g in body.rewards))
    return answer


@rounds.post(
    "/v1/runs/{run_id}/plans/{plan_id}/abandon",
    response_model=m.Plan,
)
async def abandon(run_id: RunId, plan_id: str, store: Store) -> m.Plan:
    """Close an open plan without results (e.g. after a trainer crash)."""
    return await store.abandon(run_id, plan_id)


@rounds.post(
    "/v1/runs/{run_id}/steps/{step}/complete",
    response_model=m.StepCompleteResponse,
)
async def complete_step(run_id: RunId, step: int, store: Store) -> m.StepCompleteResponse:
    """After the optimiser step: expire old buffer entries and move to the next step."""
    return await store.complete_step(run_id, step)


@rounds.post(
    "/v1/runs/{run_id}/epoch/complete",
    response_model=m.EpochCompleteResponse,
)
async def complete_epoch(run_id: RunId, store: Store) -> m.EpochCompleteResponse:
    """End the epoch now: apply pending evictions, flush the buffer, reshuffle."""
    return await store.complete_epoch(run_id)


@prompts.get("/v1/runs/{run_id}/prompts/{prompt_id}", response_model=m.PromptStatsOut)
async def prompt(run_id: RunId, prompt_id: int, store: Store) -> m.PromptStatsOut:
    return await store.prompt(run_id, prompt_id)


@prompts.post(
    "/v1/runs/{run_id}/prompts/{prompt_id}/evict",
    response_model=m.PromptStatsOut,
)
async def evict(run_id: RunId, prompt_id: int, store: Store) -> m.PromptStatsOut:
    return await store.set_evicted(run_id, prompt_id, True)


@prompts.post(
    "/v1/runs/{run_id}/prompts/{prompt_id}/restore",
    response_model=m.PromptStatsOut,
)
async def restore(run_id: RunId, prompt_id: int, store: Store) -> m.PromptStatsOut:
    return await store.set_evicted(run_id, prompt_id, False)


@prompts.post(
    "/v1/runs/{run_id}/prompts/{prompt_id}/evidence",
    response_model=m.EvidenceResponse,
)
async def evidence(
    run_id: RunId, prompt_id: int, body: m.EvidenceRequest, store: Store
) -> m.EvidenceResponse:
    """Fold rewards observed outside the run's plans (e.g. an evaluation) into the
    prompt's statistics; the strategy may restore an evicted prompt. Idempotent by
    `evidence_id`."""
    return await store.add_evidence(run_id, prompt_id, body)
