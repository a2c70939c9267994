"""The typed async client of the verifier, the only place that speaks its HTTP API.

`score` accepts any number of items and splits them into requests of at most the
server's `max_items` (learned once from `/health`), with up to `max_concurrency` of them
in flight so that the server's workers never wait for the next request to arrive.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import httpx

from services.common.http import RetryPolicy, request
from services.verifier.answers import sanitize
from services.verifier.models import (
    HealthResponse,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
)

_SERVICE = "verifier"


class VerifierClient:
    """Async client: `async with VerifierClient(url) as client: await client.score(items)`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 60.0,
        policy: RetryPolicy | None = None,
        max_concurrency: int = 4,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_concurrency)
        self.policy = policy or RetryPolicy()
        self._http = httpx.AsyncClient(base_url=self.base_url)
        self._max_items: int | None = None

    async def health(self) -> HealthResponse:
        response = await request(
            self._http, _SERVICE, "GET", "/health", policy=self.policy, timeout=self.timeout
        )
        return HealthResponse.model_validate(response.json())

    async def _chunk_size(self) -> int:
        if self._max_items is None:
            self._max_items = (await self.health()).max_items
        return self._max_items

    async def _score_chunk(self, items: list[ScoreItem]) -> list[ScoreResult]:
        body = ScoreRequest(items=items).model_dump(mode="json")
        # Lone surrogates cannot be sent as UTF-8; the server would replace them the same way.
        for item in body["items"]:
            item["response"], item["reference"] = (sanitize(item["response"]),
                                                   sanitize(item["reference"]))  # fmt: skip
        # Scoring changes no state, so a retried request is harmless.
        response = await request(
            self._http, _SERVICE, "POST", "/v1/score", policy=self.policy,
            timeout=self.timeout, json=body,
        )  # fmt: skip
        results = ScoreResponse.model_validate(response.json()).results
        if len(results) != len(items):
            raise RuntimeError(f"verifier returned {len(results)} results for {len(items)} items")
        return results

    async def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        """One result per item, in order, however many items there are."""
        size = await self._chunk_size()

        async def chunk(start: int) -> list[ScoreResult]:
            async with self._slots:
                return await self._score_chunk(items[start : start + size])

        chunks = await asyncio.gather(*(chunk(s) for s in range(0, len(items), size)))
        return [result for results in chunks for result in results]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> VerifierClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
