"""Issue 14: a run's state survives bad snapshots, stale replicas and retried requests.

Real redis-server, allocators as uvicorn processes on loopback (see test_service.py).
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from services.allocator import models as m
from services.allocator.client import AllocatorClient
from services.allocator.records import PromptStats
from services.common.http import ServiceError
from services.common.procs import free_port, start_redis
from tests.allocator.test_service import NO_RETRY, PC, new_run_id, rewards_for, start_allocator

JSON = {"content-type": "application/json"}


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


async def _run_keys(redis: Redis, run_id: str) -> dict[bytes, object]:
    """Every key of the run and its content (DUMP bytes are no good to compare: a set's
    element order may differ after a RESTORE)."""
    out: dict[bytes, object] = {}
    for name in sorted({k async for k in redis.scan_iter(match=f"pc:{{{run_id}}}:*")}):
        kind = (await redis.type(name)).decode()
        if kind == "string":
            out[name] = await redis.get(name)
        elif kind == "hash":
            out[name] = await redis.hgetall(name)
        else:
            out[name] = await redis.smembers(name)
    return out


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


async def test_replica_never_plans_with_a_config_that_is_gone(
    redis_url: str, tmp_path: Path
) -> None:
    """Replica B deletes and re-creates a run with other parameters (or restores an older
    snapshot of it); replica A, which cached the old config, must act on the new one."""
    (a_proc, a_url), (b_proc, b_url) = [start_allocator(redis_url, tmp_path) for _ in range(2)]
    run_id = new_run_id()
    old = m.RunSpec(num_prompts=40, seed=1, config=PC)
    new = m.RunSpec(num_prompts=8, seed=2, config={**PC, "n_pilot": 2, "gen_batch_size": 3})
    try:
        async with (
            AllocatorClient(a_url, policy=NO_RETRY) as a,
            AllocatorClient(b_url, policy=NO_RETRY) as b,
        ):
            await a.create_run(run_id, old)
            plan = await a.plan(run_id)
            await a.report(run_id, plan.plan_id, rewards_for(plan))
            old_snapshot = await a.snapshot(run_id)

            await b._http.delete(f"/v1/runs/{run_id}")
            assert (await b.create_run(run_id, new)).created
            assert (await a.summary(run_id)).spec == new
            plan = await a.plan(run_id)
            assert all(i.prompt_id < 8 and i.n == 2 for i in plan.items), plan
            assert len(plan.items) == 3
            result = await b.report(run_id, plan.plan_id, rewards_for(plan))
            assert len(result.gates) == 3
            r = await a._http.get(f"/v1/runs/{run_id}/prompts/20")
            assert r.status_code == 404 and "0..7" in r.text

            # B restores the old snapshot: A acts on the old config again.
            await b.restore_snapshot(run_id, old_snapshot)
            assert (await a.summary(run_id)).spec == old
            plan = await a.plan(run_id)
            assert plan.round == 1 and all(i.n == 4 for i in plan.items)

            # Deleted on B: A answers 404, it does not serve its cached config.
            await b._http.delete(f"/v1/runs/{run_id}")
            r = await a._http.get(f"/v1/runs/{run_id}")
            assert r.status_code == 404
            r = await a._http.post(f"/v1/runs/{run_id}/plan", json={"request_id": "x"})
            assert r.status_code == 404
            redis = Redis.from_url(redis_url)
            try:
                assert await _run_keys(redis, run_id) == {}  # and the plan wrote nothing
            finally:
                await redis.aclose()
    finally:
        a_proc.stop()
        b_proc.stop()


async def test_concurrent_creates_agree(redis_url: str, tmp_path: Path) -> None:
    """Both replicas race to create one run with different specs: exactly one is created,
    the rest are no-ops or 409, and the run holds the winner's config with its state."""
    procs = [start_allocator(redis_url, tmp_path) for _ in range(2)]
    try:
        async with (
            AllocatorClient(procs[0][1], policy=NO_RETRY) as a,
            AllocatorClient(procs[1][1], policy=NO_RETRY) as b,
        ):
            for _ in range(5):
                run_id = new_run_id()
                specs = [m.RunSpec(num_prompts=10 + k % 3, config=PC) for k in range(12)]
                calls = [c.create_run(run_id, s) for s, c in zip(specs, [a, b] * 6, strict=True)]
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
                created = [o for o in outcomes if isinstance(o, m.RunCreated) and o.created]
                assert len(created) == 1, outcomes
                winner = created[0].run.spec
                for spec, outcome in zip(specs, outcomes, strict=True):
                    if spec == winner:
                        assert isinstance(outcome, m.RunCreated), outcome
                    else:
                        assert isinstance(outcome, ServiceError) and outcome.status == 409
                summary = await b.summary(run_id)
                assert summary.spec == winner and summary.step == 0
    finally:
        for proc, _ in procs:
            proc.stop()


async def test_rewards_are_numbers_compared_by_value(allocator: str, redis: Redis) -> None:
    async with AllocatorClient(allocator, policy=NO_RETRY) as client:
        run_id = new_run_id()
        await client.create_run(run_id, m.RunSpec(num_prompts=30, config=PC))
        plan = await client.plan(run_id)
        url = f"/v1/runs/{run_id}/plans/{plan.plan_id}/results"
        before = await _run_keys(redis, run_id)
        for bad in ('"0"', "true", "false", '"1.0"', "null", "[0]"):
            body = '{"rewards": [' + ", ".join([f"[{bad}, 1, 0, 1]"] * len(plan.items)) + "]}"
            r = await client._http.post(url, content=body, headers=JSON)
            assert r.status_code == 422 and "valid number" in r.text, (bad, r.text)
        assert await _run_keys(redis, run_id) == before

        first = [[0, 1, 0.0, 1.0] for _ in plan.items]  # ints and floats alike
        answer = (await client._http.post(url, json={"rewards": first})).json()
        retry = [[-0.0, 1.0, -0.0, 1] for _ in plan.items]
        r = await client._http.post(url, json={"rewards": retry})
        assert r.status_code == 200 and r.json() == answer, r.text
        other = [[0.0, 1.0, 1.0, 1.0] for _ in plan.items]
        assert (await client._http.post(url, json={"rewards": other})).status_code == 409

        evidence = f"/v1/runs/{run_id}/prompts/3/evidence"
        for bad in ('"0"', "true"):
            body = '{"evidence_id": "e", "rewards": [' + bad + "]}"
            r = await client._http.post(evidence, content=body, headers=JSON)
            assert r.status_code == 422 and "valid number" in r.text, (bad, r.text)
        r = await client._http.post(evidence, json={"evidence_id": "e", "rewards": [0, 1]})
        assert r.status_code == 200 and not r.json()["duplicate"]
        r = await client._http.post(evidence, json={"evidence_id": "e", "rewards": [-0.0, 1.0]})
        assert r.status_code == 200 and r.json()["duplicate"], r.text


async def _rewards_total(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics")).text
    return next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("allocator_rewards_total ")
    )


async def test_metrics_count_accepted_rewards_once(allocator: str) -> None:
    async with AllocatorClient(allocator, policy=NO_RETRY) as client:
        run_id = new_run_id()
        await client.create_run(run_id, m.RunSpec(num_prompts=30, config=PC))
        plan = await client.plan(run_id)
        assert plan.rollouts == 24
        start = await _rewards_total(client._http)
        rewards = rewards_for(plan)
        for _ in range(3):
            await client.report(run_id, plan.plan_id, rewards)
        r = await client._http.post(  # refused: counts nothing
            f"/v1/runs/{run_id}/plans/{plan.plan_id}/results",
            json={"rewards": [[1.0] * 4 for _ in plan.items]},
        )
        assert r.status_code == 409
        assert await _rewards_total(client._http) - start == 24


async def test_snapshot_larger_than_the_body_limit_round_trips(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    """A run whose snapshot is ~8x the body limit: read in pages, restored in chunks,
    all or nothing (a missing chunk or a bad one is 422 and the run stays as it was)."""
    proc, url = start_allocator(redis_url, tmp_path, PC_ALLOCATOR_MAX_BODY_BYTES="65536")
    try:
        async with AllocatorClient(url, policy=NO_RETRY) as client:
            run_id = new_run_id()
            await client.create_run(run_id, m.RunSpec(num_prompts=50_000, config=PC))
            plan = await client.plan(run_id)
            await client.report(run_id, plan.plan_id, rewards_for(plan))
            rng = random.Random(0)
            for bucket in range(600):  # 38,400 prompts seen
                records = {
                    str(i): PromptStats(rng.randrange(99), 1, rng.random(), rng.random()).pack()
                    for i in range(64)
                }
                await redis.hset(f"pc:{{{run_id}}}:stats:{bucket}", mapping=records)
            before = await _run_keys(redis, run_id)
            whole = (await client._http.get(f"/v1/runs/{run_id}/snapshot")).content
            assert len(whole) > 8 * 65536

            snap = await client.snapshot(run_id, page_bytes=20_000)
            assert snap == m.Snapshot.model_validate_json(whole)
            r = await client._http.put(
                f"/v1/runs/{run_id}/snapshot", content=snap.model_dump_json()
            )
            assert r.status_code == 413  # one body is too large: chunks are not

            assert (await client.plan(run_id)).round == 1  # the run moves on
            summary = await client.restore_snapshot(run_id, snap, chunk_bytes=20_000)
            assert summary.open_plan is None and summary.counters["rollouts_pilot"] == 24
            after = await _run_keys(redis, run_id)
            assert set(after) == set(before)
            assert all(after[k] == v for k, v in before.items() if not k.endswith(b":state"))

            # A restore missing a chunk, or with a bad one, changes nothing.
            base = f"/v1/runs/{run_id}/restores/r1"
            part = dict(list(snap.keys.items())[:20])
            r = await client._http.put(f"{base}/keys", json={"keys": part})
            assert r.status_code == 200 and r.json() == {"staged": 20}
            r = await client._http.put(f"{base}/keys", json={"keys": part})  # a retry
            assert r.status_code == 200
            r = await client._http.post(f"{base}/commit", json={"keys": len(snap.keys)})
            assert r.status_code == 422 and "20 keys staged" in r.text
            bad = {f"pc:{{{run_id}}}:stats:0": "AAAA"}
            r = await client._http.put(f"{base}/keys", json={"keys": bad})
            assert r.status_code == 422 and "not a valid DUMP payload" in r.text
            now = await _run_keys(redis, run_id)
            assert {k: v for k, v in now.items() if b":restore:" not in k} == after
            # A committed restore, committed again (a retry), is a no-op.
            items = list(snap.keys.items())
            for start in range(20, len(items), 20):
                rest = dict(items[start : start + 20])
                r = await client._http.put(f"{base}/keys", json={"keys": rest})
                assert r.status_code == 200, r.text
            first = await client._http.post(f"{base}/commit", json={"keys": len(snap.keys)})
            again = await client._http.post(f"{base}/commit", json={"keys": len(snap.keys)})
            assert first.status_code == again.status_code == 200 and first.json() == again.json()
            assert not [k async for k in redis.scan_iter(match=f"pc:{{{run_id}}}:restore:*")]
    finally:
        proc.stop()


async def test_redis_busy_with_a_script_is_503(tmp_path: Path) -> None:
    """While Redis runs a long script (a large restore's swap), other calls get BUSY from
    Redis: the allocator answers 503 (the client retries), not 500."""
    port = free_port()
    redis_proc = start_redis(port, tmp_path / "redis", appendonly=False)
    redis_url = f"redis://127.0.0.1:{port}/0"
    proc, url = start_allocator(redis_url, tmp_path)
    busy = Redis.from_url(redis_url)
    try:
        await busy.config_set("lua-time-limit", 50)
        async with AllocatorClient(url, policy=NO_RETRY) as client:
            run_id = new_run_id()
            await client.create_run(run_id, m.RunSpec(num_prompts=10, config=PC))
            spin = (
                "local s = tonumber(redis.call('TIME')[1]) + 3 "
                "while tonumber(redis.call('TIME')[1]) < s do end"
            )
            script = asyncio.create_task(busy.eval(spin, 0))
            await asyncio.sleep(0.5)
            r = await client._http.get(f"/v1/runs/{run_id}")
            assert r.status_code == 503 and "redis" in r.text, r.text
            await script
            assert (await client.summary(run_id)).run_id == run_id
    finally:
        await busy.aclose()
        proc.stop()
        redis_proc.stop()


async def test_interrupted_restore_commit_blocks_the_run_and_a_retry_finishes_it(
    allocator: str, redis: Redis
) -> None:
    async with AllocatorClient(allocator, policy=NO_RETRY) as client:
        run_id, snap = await _started_run(client)
        prefix = f"pc:{{{run_id}}}"
        contents = await _run_keys(redis, run_id)
        plan = (await client.summary(run_id)).open_plan or ""
        await client.abandon(run_id, plan)  # the run moves on
        base = f"/v1/runs/{run_id}/restores/r2"
        r = await client._http.put(f"{base}/keys", json={"keys": snap.keys})
        assert r.status_code == 200
        # A commit that marked the run and moved two keys, then died.
        await redis.hset(f"{prefix}:state", "restoring", "r2")
        for kind in ("buffer", "config"):
            await redis.rename(f"{prefix}:restore:r2:{kind}", f"{prefix}:{kind}")
            await redis.persist(f"{prefix}:{kind}")
        for method, path in [("GET", ""), ("GET", "/snapshot"), ("POST", f"/plans/{plan}/abandon")]:
            r = await client._http.request(method, f"/v1/runs/{run_id}{path}")
            assert r.status_code == 409 and "being restored" in r.text, (path, r.text)
        r = await client._http.post(f"/v1/runs/{run_id}/restores/r3/commit", json={"keys": 0})
        assert r.status_code == 409 and "being restored by restore 'r2'" in r.text

        r = await client._http.post(f"{base}/commit", json={"keys": len(snap.keys)})
        assert r.status_code == 200 and r.json()["open_plan"] == plan, r.text
        after = await _run_keys(redis, run_id)
        state = f"{prefix}:state".encode()
        assert {k: v for k, v in after.items() if k != state} == {
            k: v for k, v in contents.items() if k != state
        }
        fresh = {b"gen", b"restored_from"}
        assert {k: v for k, v in after[state].items() if k not in fresh} == {  # type: ignore[union-attr]
            k: v
            for k, v in contents[state].items()
            if k not in fresh  # type: ignore[union-attr]
        }
