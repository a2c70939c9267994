"""The allocator as a real process (uvicorn on loopback) over a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.allocator import models as m
from services.allocator.client import AllocatorClient
from services.common.http import RetryPolicy, ServiceError
from services.common.procs import ManagedProcess, free_port, start_redis, start_service

PC = {
    "strategy": "pilot_commit",
    "train_batch_size": 2,
    "gen_batch_size": 6,
    "n_pilot": 4,
    "n_commit": 4,
    "p_lower": 0.25,
    "p_upper": 0.25,
    "exclude_threshold": 1.0,
}
NO_RETRY = RetryPolicy(attempts=1)
JSON_TYPE = {"content-type": "application/json"}


def start_allocator(redis_url: str, log_dir: Path, **env: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    env = {"PC_ALLOCATOR_REDIS_URL": redis_url, **env}
    proc = start_service(
        f"allocator-{port}", ["allocator", "serve"], port=port, log_dir=log_dir, env=env
    )
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def allocator(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_allocator(redis_url, tmp_path_factory.mktemp("alloc"))
    yield url
    proc.stop()


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


def rewards_for(plan: m.Plan, solved: set[int] = frozenset()) -> list[list[float]]:
    """Half right for most prompts; all right for `solved` ones."""
    return [
        [1.0 if (p.prompt_id in solved or k % 2) else 0.0 for k in range(p.n)] for p in plan.items
    ]


async def test_session_plan_report_complete(allocator: str) -> None:
    run_id = new_run_id()
    async with AllocatorClient(allocator) as client:
        created = await client.create_run(run_id, m.RunSpec(num_prompts=50, seed=3, config=PC))
        assert created.created and created.run.step == 0
        again = await client.create_run(run_id, m.RunSpec(num_prompts=50, seed=3, config=PC))
        assert not again.created

        plan = await client.plan(run_id)
        assert {i.role for i in plan.items} == {"pilot"} and len(plan.items) == 6
        result = await client.report(run_id, plan.plan_id, rewards_for(plan))
        assert result.buffered and not result.batch_complete
        plan2 = await client.plan(run_id)
        commits = [i for i in plan2.items if i.role == "commit"]
        assert len(commits) == 2 and all(i.n == 4 for i in commits)
        result2 = await client.report(run_id, plan2.plan_id, rewards_for(plan2))
        assert result2.batch_complete and len(result2.train) == 2
        done = await client.complete_step(run_id, 0)
        assert done.step == 1
        summary = await client.summary(run_id)
        assert summary.counters["rollouts_pilot"] == 12 * 4
        assert summary.counters["rollouts_commit"] == 8
        stats = await client.prompt(run_id, commits[0].prompt_id)
        assert stats.rollouts == 8 and stats.last_outcome == "trained"


async def test_retries_never_count_twice(allocator: str) -> None:
    run_id = new_run_id()
    async with AllocatorClient(allocator) as client:
        await client.create_run(run_id, m.RunSpec(num_prompts=30, config=PC))
        plan = await client.plan(run_id, request_id="same-key")
        assert (await client.plan(run_id, request_id="same-key")) == plan
        rewards = rewards_for(plan)
        first = await client.report(run_id, plan.plan_id, rewards)
        before = await client.summary(run_id)
        assert (await client.report(run_id, plan.plan_id, rewards)) == first
        assert (await client.summary(run_id)) == before
        with pytest.raises(ServiceError) as info:
            await client.report(run_id, plan.plan_id, [[1.0] * 4 for _ in plan.items])
        assert info.value.status == 409 and "other rewards" in str(info.value.detail)


async def test_bad_input_is_4xx_with_reason_and_changes_nothing(allocator: str) -> None:
    run_id = new_run_id()
    async with AllocatorClient(allocator, policy=NO_RETRY) as client:
        await client.create_run(run_id, m.RunSpec(num_prompts=30, config=PC))
        plan = await client.plan(run_id)
        before = await client.summary(run_id)
        url = f"{allocator}/v1/runs/{run_id}/plans/{plan.plan_id}/results"
        cases = {
            '{"rewards": [[NaN, 1, 0, 1]]}': "not a number in [0, 1]",
            '{"rewards": [[1.5, 1, 0, 1]]}': "not a number in [0, 1]",
            '{"rewards": [[1, 0]]}': "reward lists",
            '{"rewards": "x"}': "list",
        }
        async with httpx.AsyncClient() as http:
            for body, reason in cases.items():
                r = await http.post(url, content=body, headers={"content-type": "application/json"})
                assert r.status_code == 422, body
                assert reason in r.text, r.text
            wrong_size = [[1.0] * 3 for _ in plan.items]
            r = await http.post(url, json={"rewards": wrong_size})
            assert r.status_code == 422 and "expects 4 rewards, got 3" in r.text
            r = await http.post(url, content=b"x" * (17 * 1024 * 1024))
            assert r.status_code == 413 and "exceeds the limit" in r.text
            r = await http.post(
                f"{allocator}/v1/runs/{run_id}/plans/nope/results", json={"rewards": []}
            )
            assert r.status_code == 404
            r = await http.get(f"{allocator}/v1/runs/no-such-run")
            assert r.status_code == 404 and "unknown run" in r.text
            r = await http.get(f"{allocator}/v1/runs/{run_id}/prompts/30")
            assert r.status_code == 404 and "0..29" in r.text
            r = await http.put(f"{allocator}/v1/runs/bad%20id", json={})
            assert r.status_code == 422
            bad_cfg = {"num_prompts": 5, "config": {**PC, "p_lower": 0.9}}
            r = await http.put(f"{allocator}/v1/runs/{new_run_id()}", json=bad_cfg)
            assert r.status_code == 422 and "empty gate band" in r.text
            r = await http.post(f"{allocator}/v1/runs/{run_id}/plan", json={"request_id": "b"})
            assert r.status_code == 409 and "still open" in r.text
        assert (await client.summary(run_id)) == before


async def test_manual_evict_and_restore(allocator: str) -> None:
    run_id = new_run_id()
    async with AllocatorClient(allocator) as client:
        await client.create_run(
            run_id, m.RunSpec(num_prompts=8, config={**PC, "gen_batch_size": 8})
        )
        evicted = await client.evict(run_id, 3)
        assert evicted.status == "evicted"
        assert (await client.evict(run_id, 3)).status == "evicted"  # idempotent
        assert (await client.summary(run_id)).counters["evicted"] == 1
        plan = await client.plan(run_id)
        assert 3 not in {i.prompt_id for i in plan.items} and len(plan.items) == 7
        assert (await client.restore(run_id, 3)).status == "active"
        assert (await client.summary(run_id)).counters["evicted"] == 0


async def test_max_rounds_fails_loudly(allocator: str) -> None:
    run_id = new_run_id()
    config = {**PC, "max_rounds": 2}
    async with AllocatorClient(allocator, policy=NO_RETRY) as client:
        await client.create_run(run_id, m.RunSpec(num_prompts=100, config=config))
        for _ in range(2):  # every pilot fails: nothing enters the buffer
            plan = await client.plan(run_id)
            await client.report(run_id, plan.plan_id, [[0.0] * i.n for i in plan.items])
        with pytest.raises(ServiceError) as info:
            await client.plan(run_id)
        assert info.value.status == 409 and "max_rounds=2" in str(info.value.detail)


async def test_ops_endpoints_and_openapi(allocator: str) -> None:
    async with httpx.AsyncClient(base_url=allocator) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/ready")).json()["status"] == "ready"
        metrics = (await http.get("/metrics")).text
        assert "allocator_http_requests_total" in metrics
        schema = (await http.get("/openapi.json")).json()
        pc_schema = schema["components"]["schemas"]["PilotCommitConfig"]["properties"]
        assert all(
            "description" in field for name, field in pc_schema.items() if name != "strategy"
        )


async def test_token_guards_every_run_call(redis_url: str, log_dir: Path) -> None:
    """With a token set, every /v1 call needs it, reads included, and auth comes before
    body validation; /health, /ready and /metrics stay open (probes, scrapers)."""
    proc, url = start_allocator(redis_url, log_dir, PC_ALLOCATOR_TOKEN="s3cret")
    try:
        spec = m.RunSpec(num_prompts=5, config=PC)
        async with AllocatorClient(url, policy=NO_RETRY) as anonymous:
            with pytest.raises(ServiceError) as info:
                await anonymous.create_run(new_run_id(), spec)
            assert info.value.status == 401
        run_id = new_run_id()
        async with AllocatorClient(url, token="s3cret", policy=NO_RETRY) as client:
            assert (await client.create_run(run_id, spec)).created
            # The client sends its token on reads too.
            assert (await client.summary(run_id)).run_id == run_id
            assert (await client.prompt(run_id, 1)).prompt_id == 1
            snapshot = await client.snapshot(run_id)
            assert (await client.restore_snapshot(run_id, snapshot)).run_id == run_id
        reads = ["/v1/runs", f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/snapshot",
                 f"/v1/runs/{run_id}/prompts/1", "/v1/runs/nope"]  # fmt: skip
        bad_bodies = [
            ("PUT", f"/v1/runs/{run_id}", '{"num_prompts": "x"}'),
            ("POST", f"/v1/runs/{run_id}/plan", '{"bad": 1}'),
            ("POST", f"/v1/runs/{run_id}/plan", "{not json"),
            ("POST", f"/v1/runs/{run_id}/plans/p1/results", '{"rewards": "x"}'),
            ("PUT", f"/v1/runs/{run_id}/snapshot", '{"keys": 1}'),
            ("PUT", "/v1/runs/bad%20id", "{}"),
        ]
        async with httpx.AsyncClient(base_url=url) as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                for path in reads:
                    r = await http.get(path, headers=headers)
                    assert r.status_code == 401, (path, headers, r.text)
                    assert r.headers["www-authenticate"] == "Bearer"
                    assert "bearer token" in r.json()["detail"]
                for method, path, body in bad_bodies:
                    r = await http.request(
                        method, path, content=body, headers={**headers, **JSON_TYPE}
                    )
                    assert r.status_code == 401, (method, path, body, r.text)
            for path in ("/health", "/ready", "/metrics"):
                assert (await http.get(path)).status_code == 200, path
            good = {"Authorization": "bearer s3cret"}  # the scheme in any case
            assert run_id in (await http.get("/v1/runs", headers=good)).json()
            r = await http.post(f"/v1/runs/{run_id}/plan", content="{not json", headers=good)
            assert r.status_code == 422
    finally:
        proc.stop()


async def test_two_allocators_never_double_commit(redis_url: str, log_dir: Path) -> None:
    """Two replicas on one run, hammered concurrently: one plan per round, counted once."""
    procs = [start_allocator(redis_url, log_dir) for _ in range(2)]
    clients = [AllocatorClient(url, policy=NO_RETRY) for _, url in procs]
    run_id = new_run_id()
    try:
        await clients[0].create_run(run_id, m.RunSpec(num_prompts=200, config=PC))
        trained: list[int] = []
        for step in range(6):
            for round_ in range(100):
                attempts = [
                    c.plan(run_id, request_id=f"{step}-{round_}-{k}")
                    for k in range(4)
                    for c in clients
                ]
                outcomes = await asyncio.gather(*attempts, return_exceptions=True)
                plans = [o for o in outcomes if isinstance(o, m.Plan)]
                assert len({p.plan_id for p in plans}) == 1, outcomes
                assert all(isinstance(o, m.Plan) or o.status == 409 for o in outcomes)
                plan = plans[0]
                rewards = rewards_for(plan)
                answers = await asyncio.gather(
                    *[c.report(run_id, plan.plan_id, rewards) for c in clients for _ in range(3)]
                )
                assert all(a == answers[0] for a in answers)
                trained += [t.prompt_id for t in answers[0].train]
                if answers[0].batch_complete:
                    break
            await asyncio.gather(*[c.complete_step(run_id, step) for c in clients])
        summary = await clients[1].summary(run_id)
        assert summary.step == 6 and summary.counters["groups_trained"] == 12 == len(trained)
        assert summary.counters["rollouts_commit"] == 12 * 4
    finally:
        for client in clients:
            await client.aclose()
        for proc, _ in procs:
            proc.stop()


async def test_allocator_crash_loses_nothing(redis_url: str, log_dir: Path) -> None:
    proc, url = start_allocator(redis_url, log_dir)
    run_id = new_run_id()
    async with AllocatorClient(url) as client:
        await client.create_run(run_id, m.RunSpec(num_prompts=100, config=PC))
        plan = await client.plan(run_id)
        await client.report(run_id, plan.plan_id, rewards_for(plan))
        before = await client.summary(run_id)
    proc.kill()  # SIGKILL: no shutdown hooks
    proc2, url2 = start_allocator(redis_url, log_dir)
    try:
        async with AllocatorClient(url2) as client:
            assert (await client.summary(run_id)) == before
            plan2 = await client.plan(run_id)
            assert plan2.round == 1 and any(i.role == "commit" for i in plan2.items)
            result = await client.report(run_id, plan2.plan_id, rewards_for(plan2))
            assert result.batch_complete
    finally:
        proc2.stop()


async def test_redis_outage_gives_503_then_recovers(tmp_path: Path, log_dir: Path) -> None:
    port = free_port()
    redis = start_redis(port, tmp_path / "redis")
    redis_url = f"redis://127.0.0.1:{port}/0"
    proc, url = start_allocator(redis_url, log_dir, PC_ALLOCATOR_REDIS_TIMEOUT_S="1")
    run_id = new_run_id()
    try:
        async with AllocatorClient(url, policy=NO_RETRY) as client:
            await client.create_run(run_id, m.RunSpec(num_prompts=20, config=PC))
            redis.stop()
            with pytest.raises(ServiceError) as info:
                await client.plan(run_id)
            assert info.value.status == 503 and "redis unavailable" in str(info.value.detail)
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{url}/ready")).status_code == 503
            redis = start_redis(port, tmp_path / "redis")  # same dir: the AOF brings state back
            plan = await client.plan(run_id)
            assert plan.step == 0 and len(plan.items) == 6
    finally:
        proc.stop()
        redis.stop()
