"""The one retry policy every HTTP client of the project uses.

Retries happen on transport errors and 5xx answers only, never on 4xx (a bad request
stays bad). State-changing calls carry an idempotency key chosen by the caller, so a
retried request is applied once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A remote service answered with an error (4xx, or 5xx after the last retry)."""

    def __init__(self, service: str, status: int, detail: Any, url: str) -> None:
        self.service, self.status, self.detail, self.url = service, status, detail, url
        super().__init__(f"{service} answered {status} for {url}: {detail}")


class ServiceUnavailable(RuntimeError):
    """A remote service could not be reached after every retry."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    `retry_5xx=False` is for control calls whose 5xx a retry cannot fix and may make worse
    (a generation server's weight-update routes): only transport errors are retried then.
    """

    attempts: int = 5
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    retry_5xx: bool = True

    def delay(self, attempt: int) -> float:
        base: float = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return base * (0.5 + random.random() / 2)


def bearer(token: str | None, env: str | None = None) -> dict[str, str]:
    """The `Authorization: Bearer` header for `token`, or for the environment variable
    `env` when `token` is None; no header when neither is set (or both are empty)."""
    if token is None and env is not None:
        token = os.environ.get(env)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return body.get("detail", body) if isinstance(body, dict) else body


async def request(
    client: httpx.AsyncClient,
    service: str,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    timeout: float,
    json: Any = None,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send one request with retries; return the 2xx response or raise ServiceError
    (an answer >= 400 that is not retried, or the last 5xx) or ServiceUnavailable (no
    answer after `policy.attempts` attempts). A server that closed a pooled connection
    costs one extra immediate try on a new connection, not an attempt."""
    last_error: Exception | None = None
    fresh_retry = True
    for attempt in range(policy.attempts):
        try:
            try:
                response = await client.request(
                    method, url, json=json, params=params, headers=headers, timeout=timeout
                )
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if not fresh_retry:
                    raise
                # The connection broke before an answer: typically a pooled one the server
                # had closed (uvicorn drops it after an unhandled error without saying so;
                # the next request then reads a reset or an empty answer). Once per call,
                # retried at once on a new connection and not counted as an attempt. Every
                # call of this project is safe to repeat (idempotency keys, idempotent
                # control calls).
                fresh_retry = False
                log.info("%s %s %s: %s; retrying on a new connection", service, method, url, exc)
                response = await client.request(
                    method, url, json=json, params=params, headers=headers, timeout=timeout
                )
        except httpx.TransportError as exc:
            last_error = exc
            log.warning("%s %s %s failed (%s); attempt %d", service, method, url, exc, attempt + 1)
        else:
            if response.status_code < 400:
                return response
            if response.status_code < 500 or not policy.retry_5xx:
                raise ServiceError(service, response.status_code, _detail(response), url)
            last_error = ServiceError(service, response.status_code, _detail(response), url)
            log.warning("%s answered %d for %s; attempt %d", service, response.status_code, url,
                        attempt + 1)  # fmt: skip
        if attempt + 1 < policy.attempts:
            await asyncio.sleep(policy.delay(attempt))
    if isinstance(last_error, ServiceError):
        raise last_error
    raise ServiceUnavailable(
        f"{service} unreachable at {url} after {policy.attempts} attempts: {last_error}"
    )
