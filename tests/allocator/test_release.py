"""Releases through the real store (real Redis): every buffer entry that leaves the buffer
is named once, in an answer the trainer receives."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from services.allocator import models as m
from services.allocator.store import AllocatorStore
from tests.allocator.test_protocol import HALF, PC


async def _filled(redis_url: str) -> tuple[Redis, AllocatorStore, str, m.ResultsResponse]:
    """A run whose first plan (four pilots) was reported: four prompts in the buffer."""
    redis = Redis.from_url(redis_url)
    store = AllocatorStore(redis)
    run_id = f"rel-{uuid.uuid4().hex[:8]}"
    spec = m.RunSpec.model_validate({"num_prompts": 12, "seed": 3, "config": PC})
    await store.create_run(run_id, spec)
    plan = await store.plan(run_id, "a")
    assert plan.released == [] and len(plan.items) == 4
    result = await store.report(run_id, plan.plan_id, HALF[:4])
    assert len(result.buffered) == 4
    return redis, store, run_id, result


def test_manual_eviction_and_retry(redis_url: str) -> None:
    async def go() -> None:
        redis, store, run_id, result = await _filled(redis_url)
        victim = result.buffered[0]
        await store.set_evicted(run_id, victim, True)
        assert (await store.summary(run_id)).buffer_size == 3
        plan = await store.plan(run_id, "b")
        assert plan.released == [victim]
        assert await store.plan(run_id, "b") == plan  # a retry: same list
        assert not await redis.exists(f"pc:{{{run_id}}}:released")
        commits = sorted(i.prompt_id for i in plan.items if i.role == "commit")
        assert len(commits) == 2 and victim not in commits
        second = await store.report(run_id, plan.plan_id, HALF[: len(plan.items)])
        assert second.released == commits
        done = await store.complete_step(run_id, 0)
        assert done.released == sorted(done.expired)
        await redis.aclose()

    asyncio.run(go())


def test_external_epoch_end(redis_url: str) -> None:
    async def go() -> None:
        redis, store, run_id, result = await _filled(redis_url)
        done = await store.complete_epoch(run_id)
        assert sorted(done.flushed) == sorted(result.buffered)
        plan = await store.plan(run_id, "b")
        assert plan.released == sorted(result.buffered) and plan.dropped_from_buffer == []
        assert (await store.plan(run_id, "b")).released == plan.released
        await redis.aclose()

    asyncio.run(go())


def test_eviction_after_the_last_plan_comes_with_step_completion(redis_url: str) -> None:
    async def go() -> None:
        redis, store, run_id, _ = await _filled(redis_url)
        plan = await store.plan(run_id, "b")
        second = await store.report(run_id, plan.plan_id, HALF[: len(plan.items)])
        assert second.batch_complete
        left = sorted(set(second.buffered) | set(await _buffer(redis, run_id)))
        victim = left[0]
        await store.set_evicted(run_id, victim, True)
        done = await store.complete_step(run_id, 0)
        assert victim in done.released and victim not in done.buffer
        assert await store.complete_step(run_id, 0) == done
        await redis.aclose()

    asyncio.run(go())


async def _buffer(redis: Redis, run_id: str) -> list[int]:
    return [int(x) for x in await redis.hkeys(f"pc:{{{run_id}}}:buffer")]
