"""Issue 14: a run's state survives bad snapshots, stale replicas and retried requests.

Real redis-server, allocators as uvicorn processes on loopback (see test_service.py).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from services.allocator import models as m
from services.allocator.client import AllocatorClient
from tests.allocator.test_service import NO_RETRY, PC, new_run_id, rewards_for, start_allocator


@pytest.fixture(scope="module")
def allocator(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_allocator(redis_url, tmp_path_factory.mktemp("alloc"))
    yield url
    proc.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _dump_of(redis: Redis, kind: str, value: object) -> str:
    """base64 of a Redis DUMP of a throwaway key holding `value` (a str, dict or set)."""
    name = f"scratch:{new_run_id()}"
    if kind == "string":
        await redis.set(name, value)  # type: ignore[arg-type]
    elif kind == "hash":
        await redis.hset(name, mapping=value)  # type: ignore[arg-type]
    else:
        await redis.sadd(name, *value)  # type: ignore[misc]
    payload = await redis.dump(name)
    await redis.delete(name)
    return base64.b64encode(payload).decode()


async def _run_keys(redis: Redis, run_id: str) -> dict[bytes, bytes]:
    names = [k async for k in redis.scan_iter(match=f"pc:{{{run_id}}}:*")]
    return {k: await redis.dump(k) for k in sorted(names)}


async def _started_run(client: AllocatorClient) -> tuple[str, m.Snapshot]:
    """A run with one reported plan and one open plan, and its snapshot."""
    run_id = new_run_id()
    await client.create_run(run_id, m.RunSpec(num_prompts=40, seed=1, config=PC))
    plan = await client.plan(run_id)
    await client.report(run_id, plan.plan_id, rewards_for(plan))
    await client.plan(run_id)
    return run_id, await client.snapshot(run_id)


async def test_restore_round_trip_and_bad_snapshots_change_nothing(
    allocator: str, redis: Redis
) -> None:
    async with AllocatorClient(allocator, policy=NO_RETRY) as client:
        run_id, snap = await _started_run(client)
        prefix = f"pc:{{{run_id}}}"
        before = await _run_keys(redis, run_id)
        assert len(before) == len(snap.keys) >= 6

        # A good snapshot round-trips, even after the run moved on.
        plan = (await client.summary(run_id)).open_plan
        assert plan is not None
        await client.abandon(run_id, plan)
        restored = await client.restore_snapshot(run_id, snap)
        assert restored.open_plan == plan
        after = await _run_keys(redis, run_id)
        state = f"{prefix}:state".encode()
        assert {k: v for k, v in after.items() if k != state} == {
            k: v for k, v in before.items() if k != state
        }
        before = after

        string = await _dump_of(redis, "string", "x")
        bad = {
            "corrupt DUMP payload": {f"{prefix}:config": "AAAA"},
            "corrupt payload of another key": {f"{prefix}:buffer": "AAAA"},
            "invalid base64": {f"{prefix}:state": "not base64!"},
            "key of another run": {f"pc:{{{run_id}x}}:state": snap.keys[f"{prefix}:state"]},
            "key outside any run": {"pc:runs": string},
            "unknown key kind": {f"{prefix}:junk": string},
            "state that is not a hash": {f"{prefix}:state": string},
            "stats bucket that is a set": {
                f"{prefix}:stats:0": await _dump_of(redis, "set", {"1"})
            },
            "config that is not a run spec": {f"{prefix}:config": string},
        }
        for reason, change in bad.items():
            keys = {**snap.keys, **change}
            r = await client._http.put(
                f"/v1/runs/{run_id}/snapshot", json={"run_id": run_id, "keys": keys}
            )
            assert r.status_code == 422, (reason, r.status_code, r.text)
            assert "detail" in r.json(), reason
            assert (await _run_keys(redis, run_id)) == before, reason
        missing_state = {k: v for k, v in snap.keys.items() if k != f"{prefix}:state"}
        r = await client._http.put(
            f"/v1/runs/{run_id}/snapshot", json={"run_id": run_id, "keys": missing_state}
        )
        assert r.status_code == 422 and "state" in r.text
        assert (await _run_keys(redis, run_id)) == before
        # No temporary keys are left behind by the refused restores.
        assert not [k async for k in redis.scan_iter(match=f"{prefix}:restore:*")]


async def test_restore_into_a_deleted_run(allocator: str, redis: Redis) -> None:
    async with AllocatorClient(allocator, policy=NO_RETRY) as client:
        run_id, snap = await _started_run(client)
        before = await _run_keys(redis, run_id)
        summary = await client.summary(run_id)
        async with httpx.AsyncClient(base_url=allocator) as http:
            assert (await http.delete(f"/v1/runs/{run_id}")).status_code == 200
        assert await _run_keys(redis, run_id) == {}
        assert run_id not in (await client._http.get("/v1/runs")).json()
        restored = await client.restore_snapshot(run_id, snap)
        assert restored == summary
        assert set(await _run_keys(redis, run_id)) == set(before)
        assert run_id in (await client._http.get("/v1/runs")).json()
