"""Prometheus metrics for a FastAPI service: per-route request counts and latencies.

Each app owns its registry (no process-global state), so several apps can live in one
test process and `/metrics` shows only its own service.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)


def instrument(app: FastAPI, service: str, registry: CollectorRegistry) -> None:
    """Add request metrics middleware and a `GET /metrics` route to `app`."""
    requests = Counter(
        f"{service}_http_requests",
        "HTTP requests by route, method and status code.",
        ["route", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        f"{service}_http_request_seconds",
        "HTTP request latency by route.",
        ["route"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )

    @app.middleware("http")
    async def _observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        latency.labels(path).observe(time.perf_counter() - start)
        requests.labels(path, request.method, str(response.status_code)).inc()
        return response

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
