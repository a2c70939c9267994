"""`pilot-commit dashboard RUN_DIR`: a live, read-only web page of one training run.

It serves one page on loopback (default http://127.0.0.1:8765/) that refreshes itself
every few seconds from `GET /api/state`, which this process answers by reading

- the allocator's pool view, which carries the run's summary read in the same
  transaction (`GET /v1/runs/{run}/pool`), with the allocator's bearer token, which
  stays in this process: the page never sees it, and
- the run's `metrics.jsonl` (train and eval rows, the last row per step), where the
  run folder is on this machine.

What the page shows: the pool's latest pilot pass rates against the gate band, prompts by
status, the buffer's size and ages, evictions, rollouts by role against training steps,
the share of rollouts in zero-variance groups per step, and held-out accuracy (with its
standard error) against cumulative rollouts. It changes nothing anywhere.

Where the run is found: `RUN_DIR/services.json` (written by `pilot-commit train` when
its services are up: the allocator's URL and the run id), else `RUN_DIR/config.json`
(`[services] allocator_url`, `[run] run_id` or the folder's name); `--allocator` and
`--run-id` override both. The token: `PC_TRAINER_ALLOCATOR_TOKEN` (as for `train`), else
the run's config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from prometheus_client import CollectorRegistry

from services.allocator.client import AllocatorClient
from services.common.http import RetryPolicy, ServiceError, ServiceUnavailable
from services.common.metrics import instrument
from trainer.summary import metrics_rows

# The fields of metrics.jsonl rows the page draws (the rest stay in the file).
TRAIN_FIELDS = (
    "step",
    "rollouts_total",
    "rollouts_pilot",
    "rollouts_commit",
    "rollouts_full",
    "rollouts_zero_variance",
    "groups_trained",
    "buffer_size",
    "train_reward_mean",
    "wall_s",
)
EVAL_FIELDS = ("step", "rollouts_total", "eval_accuracy", "eval_accuracy_stderr", "eval_answered")
TOKEN_ENV = "PC_TRAINER_ALLOCATOR_TOKEN"


class RunNotFound(Exception):
    """The run folder does not say where its allocator is (one line, for the CLI)."""


@dataclass(frozen=True)
class RunSource:
    """Where one run's state is read from."""

    run_id: str
    allocator_url: str
    token: str | None = None
    metrics: Path | None = None  # metrics.jsonl; None: the page shows the allocator only


def find_run(
    run_dir: Path, allocator_url: str | None = None, run_id: str | None = None
) -> RunSource:
    """The `RunSource` of the run written to `run_dir` (see the module docstring).

    Raises RunNotFound when no allocator URL can be found or a file there is unreadable."""
    services: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for name, into in (("services.json", services), ("config.json", config)):
        path = run_dir / name
        if path.exists():
            try:
                into.update(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise RunNotFound(f"{path}: cannot read it ({exc})") from exc
    configured = config.get("services", {})
    url = allocator_url or services.get("allocator_url") or configured.get("allocator_url")
    if not url:
        raise RunNotFound(
            f"{run_dir}: no services.json or config.json saying where the allocator is "
            "(is it a `pilot-commit train --output` folder? or give --allocator and --run-id)"
        )
    run = (
        run_id
        or services.get("run_id")
        or config.get("run", {}).get("run_id")
        or run_dir.resolve().name
    )
    token = os.environ.get(TOKEN_ENV) or configured.get("allocator_token")
    return RunSource(run, url.rstrip("/"), token, run_dir / "metrics.jsonl")


def _pick(row: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: row[name] for name in fields if name in row}


def create_app(source: RunSource, refresh_s: float = 5.0) -> FastAPI:
    """The dashboard's app: `/` (the page), `/api/state`, `/health`, `/metrics`."""
    # One attempt, a short timeout: a refresh while the allocator is down says so at once.
    client = AllocatorClient(
        source.allocator_url, token=source.token, policy=RetryPolicy(attempts=1), timeout=5.0
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(title="Pilot-Commit dashboard", docs_url=None, redoc_url=None, lifespan=lifespan)
    instrument(app, "dashboard", CollectorRegistry())
    page = (
        resources.files("pilot_commit")
        .joinpath("dashboard.html")
        .read_text()
        .replace("__REFRESH_MS__", str(int(refresh_s * 1000)))
    )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/api/state")
    async def state(bins: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
        """The run as of now: the allocator's pool view with its summary, read at once
        (null with `allocator_error` when it cannot be read), and the metrics rows
        (`metrics_error` likewise)."""
        out: dict[str, Any] = {
            "run_id": source.run_id,
            "allocator_url": source.allocator_url,
            "read_at": time.time(),
            "pool": None,
            "allocator_error": None,
            "metrics": {"train": [], "eval": []},
            "metrics_error": None,
        }
        try:
            out["pool"] = (await client.pool(source.run_id, bins)).model_dump(mode="json")
        except (ServiceError, ServiceUnavailable) as exc:
            out["allocator_error"] = str(exc)
        if source.metrics is not None:
            try:
                evals, trains = metrics_rows(source.metrics)
                out["metrics"] = {
                    "train": [_pick(r, TRAIN_FIELDS) for r in trains],
                    "eval": [_pick(r, EVAL_FIELDS) for r in evals],
                }
            except (OSError, ValueError, KeyError) as exc:
                out["metrics_error"] = f"{source.metrics}: {exc}"
        return out

    return app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pilot-commit dashboard",
        description="Serve a live, read-only web page of one training run (its allocator "
        "state and metrics.jsonl) on this machine.",
    )
    parser.add_argument("run_dir", type=Path, help="the run's folder (`train --output`)")
    parser.add_argument(
        "--allocator", help="the allocator's URL (default: from RUN_DIR/services.json)"
    )
    parser.add_argument("--run-id", help="the allocator run id (default: from RUN_DIR)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default 127.0.0.1: this machine only; the page shows "
        "what the allocator's token protects)",
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument(
        "--refresh", type=float, default=5.0, help="seconds between refreshes (default 5)"
    )
    args = parser.parse_args(argv)
    if args.refresh <= 0:
        parser.error("--refresh must be positive")
    try:
        source = find_run(args.run_dir, args.allocator, args.run_id)
    except RunNotFound as exc:
        print(f"pilot-commit dashboard: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    print(
        f"dashboard of run {source.run_id!r} (allocator {source.allocator_url}) on "
        f"http://{args.host}:{args.port}/",
        flush=True,
    )
    uvicorn.run(create_app(source, args.refresh), host=args.host, port=args.port)
    return 0
