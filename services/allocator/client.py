"""Typed async client of the allocator, parsing answers with the service's own models.

Every state-changing call is idempotent on the server (plan by request id, results by
plan id, step completion by step), so the retries here never count anything twice.
"""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from services.allocator import models as m
from services.common.http import RetryPolicy, request

M = TypeVar("M", bound=BaseModel)
CHUNK_BYTES = 4 * 1024 * 1024  # snapshot pages and restore chunks: a quarter of the body limit


class AllocatorClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers)
        self.timeout = timeout
        self.policy = policy or RetryPolicy()

    async def __aenter__(self) -> AllocatorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, model: type[M], method: str, path: str, body: Any = None) -> M:
        response = await request(
            self._http,
            "allocator",
            method,
            path,
            policy=self.policy,
            timeout=self.timeout,
            json=body,
        )
        return model.model_validate_json(response.content)

    async def health(self) -> m.Health:
        return await self._call(m.Health, "GET", "/health")

    async def ready(self) -> m.Ready:
        return await self._call(m.Ready, "GET", "/ready")

    async def create_run(self, run_id: str, spec: m.RunSpec) -> m.RunCreated:
        return await self._call(
            m.RunCreated, "PUT", f"/v1/runs/{run_id}", spec.model_dump(mode="json")
        )

    async def summary(self, run_id: str) -> m.RunSummary:
        return await self._call(m.RunSummary, "GET", f"/v1/runs/{run_id}")

    async def pool(self, run_id: str, bins: int = 20) -> m.PoolView:
        return await self._call(m.PoolView, "GET", f"/v1/runs/{run_id}/pool?bins={bins}")

    async def snapshot(
        self, run_id: str, *, page_bytes: int = CHUNK_BYTES, attempts: int = 8
    ) -> m.Snapshot:
        """Every key of the run, read in pages of about `page_bytes` of base64 (each answer
        stays far below the body limits whatever the run's size). Pages read while the
        run changed (their `version`s differ) are thrown away and the read starts over,
        up to `attempts` times; then RuntimeError."""
        for _ in range(attempts):
            keys: dict[str, str] = {}
            versions: set[str] = set()
            cursor: int | None = 0
            while cursor is not None:
                page = await self._call(
                    m.SnapshotPage,
                    "GET",
                    f"/v1/runs/{run_id}/snapshot/pages?cursor={cursor}&max_bytes={page_bytes}",
                )
                keys.update(page.keys)
                versions.add(page.version)
                cursor = page.next_cursor
            if len(versions) == 1:
                return m.Snapshot(run_id=run_id, keys=keys)
        raise RuntimeError(f"run {run_id!r} kept changing while its snapshot was read")

    async def restore_snapshot(
        self, run_id: str, snapshot: m.Snapshot, *, chunk_bytes: int = CHUNK_BYTES
    ) -> m.RunSummary:
        """Replace the run's state with `snapshot`, all or nothing: staged in chunks of
        about `chunk_bytes` of base64 under a fresh restore id, then committed at once.
        A 422 names a bad key (nothing changed); retries are safe."""
        if snapshot.run_id != run_id:
            raise ValueError(f"snapshot of run {snapshot.run_id!r} is not one of {run_id!r}")
        restore = uuid.uuid4().hex
        base = f"/v1/runs/{run_id}/restores/{restore}"
        chunk: dict[str, str] = {}
        size = 0
        for name, value in snapshot.keys.items():
            chunk[name] = value
            size += len(name) + len(value)
            if size >= chunk_bytes:
                await self._call(m.RestoreStaged, "PUT", f"{base}/keys", {"keys": chunk})
                chunk, size = {}, 0
        if chunk:
            await self._call(m.RestoreStaged, "PUT", f"{base}/keys", {"keys": chunk})
        return await self._call(
            m.RunSummary, "POST", f"{base}/commit", {"keys": len(snapshot.keys)}
        )

    async def plan(self, run_id: str, request_id: str | None = None) -> m.Plan:
        """Plan the next round; the request id (fresh by default) makes retries safe."""
        body = m.PlanRequest(request_id=request_id or uuid.uuid4().hex)
        return await self._call(m.Plan, "POST", f"/v1/runs/{run_id}/plan", body.model_dump())

    async def report(
        self, run_id: str, plan_id: str, rewards: list[list[float]]
    ) -> m.ResultsResponse:
        return await self._call(
            m.ResultsResponse,
            "POST",
            f"/v1/runs/{run_id}/plans/{plan_id}/results",
            {"rewards": rewards},
        )

    async def abandon(self, run_id: str, plan_id: str) -> m.Plan:
        return await self._call(m.Plan, "POST", f"/v1/runs/{run_id}/plans/{plan_id}/abandon")

    async def complete_step(self, run_id: str, step: int) -> m.StepCompleteResponse:
        return await self._call(
            m.StepCompleteResponse, "POST", f"/v1/runs/{run_id}/steps/{step}/complete"
        )

    async def complete_epoch(self, run_id: str) -> m.EpochCompleteResponse:
        return await self._call(
            m.EpochCompleteResponse, "POST", f"/v1/runs/{run_id}/epoch/complete"
        )

    async def prompt(self, run_id: str, prompt_id: int) -> m.PromptStatsOut:
        return await self._call(m.PromptStatsOut, "GET", f"/v1/runs/{run_id}/prompts/{prompt_id}")

    async def evict(self, run_id: str, prompt_id: int) -> m.PromptStatsOut:
        return await self._call(
            m.PromptStatsOut, "POST", f"/v1/runs/{run_id}/prompts/{prompt_id}/evict"
        )

    async def restore(self, run_id: str, prompt_id: int) -> m.PromptStatsOut:
        return await self._call(
            m.PromptStatsOut, "POST", f"/v1/runs/{run_id}/prompts/{prompt_id}/restore"
        )

    async def add_evidence(
        self, run_id: str, prompt_id: int, evidence_id: str, rewards: list[float]
    ) -> m.EvidenceResponse:
        """Report rewards seen outside the run's plans; a stable `evidence_id` makes a
        retry (even from another process) apply them once."""
        body = m.EvidenceRequest(evidence_id=evidence_id, rewards=rewards)
        return await self._call(
            m.EvidenceResponse,
            "POST",
            f"/v1/runs/{run_id}/prompts/{prompt_id}/evidence",
            body.model_dump(),
        )
