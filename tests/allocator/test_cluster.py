"""The allocator on a real Redis Cluster (3 masters, one replica each, on loopback).

Runs spread over the masters, each run's keys stay in its slot, the cluster answers as one
Redis does; two allocator replicas drive one run through the whole protocol; and a master
fails over to its replica mid-run with nothing lost or counted twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from pilot_commit.bench.redis_cluster import RedisClusterProcs
from services.allocator import cas
from services.allocator import models as m
from services.allocator.client import AllocatorClient
from services.allocator.connection import cluster_nodes, open_redis
from services.allocator.keys import RunKeys
from services.allocator.store import AllocatorStore, NotFound
from services.common.http import RetryPolicy
from services.common.procs import ManagedProcess
from tests.allocator.driver import bernoulli_rewards, drive
from tests.allocator.test_service import PC, rewards_for, start_allocator

SPEC = m.RunSpec(num_prompts=300, seed=5, config=PC)
# Rides out a failover (a few seconds of 503s) with the same idempotency keys.
PATIENT = RetryPolicy(attempts=40, backoff_s=0.05, max_backoff_s=0.5)


def master_of(cluster: RedisClusterProcs, run_id: str) -> str:
    """The port of the master serving the run's slot, as the cluster's nodes say."""
    return str(cluster.master_of(RunKeys(run_id).state))


def run_keys_on(cluster: RedisClusterProcs, port: str, run_id: str) -> list[str]:
    c = cluster.client(int(port))
    return [k.decode() for k in c.scan_iter(match=RunKeys(run_id).pattern, count=1000)]


def test_cluster_urls() -> None:
    nodes, auth = cluster_nodes("redis+cluster://:pw@10.0.0.1:7000,host-b:7001/0")
    assert nodes == [("10.0.0.1", 7000), ("host-b", 7001)] and auth == {"password": "pw"}
    for bad in ("redis://h:1", "redis+cluster://h", "redis+cluster://h:1/2"):
        with pytest.raises(ValueError):
            cluster_nodes(bad)


async def test_runs_spread_over_masters(redis_cluster: RedisClusterProcs, redis_url: str) -> None:
    """Nine runs driven at once land on all three masters, each run's keys on its master
    only; every answer equals the one a single Redis gives; list, snapshot pages, restore
    and delete work across the cluster."""
    # Fixed ids (the cluster is fresh each session): their slots fall in all three
    # masters' ranges of `redis-cli --cluster create` (2, 6 / 0, 3, 4, 7, 8 / 1, 5).
    run_ids = [f"spread-{i}" for i in range(9)]
    masters = {n["port"] for n in redis_cluster.nodes() if n["role"] == "master"}
    assert len(masters) == 3
    where = {run_id: master_of(redis_cluster, run_id) for run_id in run_ids}
    assert set(where.values()) == masters
    assert len({where[r] for r in ("spread-2", "spread-0", "spread-1")}) == 3
    rates = {i: (i % 7) / 6 for i in range(SPEC.num_prompts)}
    cluster = AllocatorStore(open_redis(redis_cluster.url))
    single = AllocatorStore(open_redis(redis_url))
    try:
        for store in (cluster, single):
            for run_id in run_ids:
                assert (await store.create_run(run_id, SPEC))[1]
        logs = await asyncio.gather(
            *[drive(cluster, r, bernoulli_rewards(rates, k), 4) for k, r in enumerate(run_ids)]
        )
        for k, run_id in enumerate(run_ids):
            assert logs[k] == await drive(single, run_id, bernoulli_rewards(rates, k), 4)
            assert (await cluster.summary(run_id)) == (await single.summary(run_id))
            here = run_keys_on(redis_cluster, where[run_id], run_id)
            assert RunKeys(run_id).state in here and len(here) > 4
            for other in masters - {where[run_id]}:
                assert run_keys_on(redis_cluster, other, run_id) == []
        assert set(run_ids) <= set(await cluster.list_runs())

        # a snapshot read in small pages is the whole snapshot; restoring it rewinds the run
        run_id = run_ids[0]
        whole = await cluster.snapshot(run_id)
        paged: dict[str, str] = {}
        cursor: int | None = 0
        while cursor is not None:  # pages from the run's master, whichever node that is
            page = await cluster.snapshot_page(run_id, cursor, 64)
            paged.update(page.keys)
            cursor = page.next_cursor
        assert paged == whole.keys and len(paged) > 4
        before = await cluster.summary(run_id)
        await drive(cluster, run_id, bernoulli_rewards(rates, 99), 2)
        assert (await cluster.summary(run_id)).step == before.step + 2
        await cluster.restore_snapshot(run_id, whole)
        assert (await cluster.summary(run_id)) == before

        gone = run_ids[1]
        assert await cluster.delete_run(gone) > 4
        assert run_keys_on(redis_cluster, where[gone], gone) == []
        assert gone not in await cluster.list_runs()
        with pytest.raises(NotFound):
            await cluster.delete_run(gone)
    finally:
        await cluster.redis.aclose()
        await single.redis.aclose()


async def test_two_allocators_one_run_whole_protocol(
    redis_cluster: RedisClusterProcs, log_dir: Path
) -> None:
    """Two allocator processes on the cluster share one run; every call of the protocol
    goes through either, concurrent duplicates included, and is counted once."""
    procs = [start_allocator(redis_cluster.url, log_dir) for _ in range(2)]
    a, b = (AllocatorClient(url, policy=PATIENT) for _, url in procs)
    run_id = f"pair-{uuid.uuid4().hex[:8]}"
    try:
        created = await asyncio.gather(a.create_run(run_id, SPEC), b.create_run(run_id, SPEC))
        assert sorted(c.created for c in created) == [False, True]
        trained, pilots, commits = 0, 0, 0
        for step in range(4):
            for round_ in range(100):
                outcomes = await asyncio.gather(
                    *[
                        c.plan(run_id, request_id=f"{step}-{round_}-{k}")
                        for k in range(3)
                        for c in (a, b)
                    ],
                    return_exceptions=True,
                )
                plans = [o for o in outcomes if isinstance(o, m.Plan)]
                assert len({p.plan_id for p in plans}) == 1, outcomes
                plan = plans[0]
                answers = await asyncio.gather(
                    *[c.report(run_id, plan.plan_id, rewards_for(plan)) for c in (a, b, a, b)]
                )
                assert all(x == answers[0] for x in answers)
                pilots += sum(i.n for i in plan.items if i.role == "pilot")
                commits += sum(i.n for i in plan.items if i.role == "commit")
                trained += len(answers[0].train)
                if answers[0].batch_complete:
                    break
            done = await asyncio.gather(
                a.complete_step(run_id, step), b.complete_step(run_id, step)
            )
            assert done[0] == done[1] and done[0].step == step + 1

        # the other calls of the protocol, each through both replicas
        plan = await a.plan(run_id)
        assert (await b.abandon(run_id, plan.plan_id)).plan_id == plan.plan_id
        assert (await a.evict(run_id, 7)).status == "evicted"
        assert (await b.restore(run_id, 7)).status != "evicted"
        first = await a.add_evidence(run_id, 11, "eval-1", [1.0, 0.0, 1.0])
        again = await b.add_evidence(run_id, 11, "eval-1", [1.0, 0.0, 1.0])
        assert not first.duplicate and again.duplicate and again.prompt == first.prompt
        epoch = await b.complete_epoch(run_id)
        summary = await a.summary(run_id)
        assert summary.epoch == epoch.epoch == 1 and summary == await b.summary(run_id)
        assert summary.counters["groups_trained"] == trained == 4 * int(PC["train_batch_size"])  # type: ignore[call-overload]
        assert summary.counters["rollouts_pilot"] == pilots
        assert summary.counters["rollouts_commit"] == commits

        snapshot = await a.snapshot(run_id, page_bytes=512)
        plan = await a.plan(run_id)
        await b.report(run_id, plan.plan_id, rewards_for(plan))
        assert (await b.restore_snapshot(run_id, snapshot)) == summary
        assert (await a.summary(run_id)) == summary
        for _, url in procs:
            async with httpx.AsyncClient(base_url=url) as http:
                assert run_id in (await http.get("/v1/runs")).json()
                assert (await http.get("/ready")).status_code == 200
    finally:
        for client in (a, b):
            await client.aclose()
        for proc, _ in procs:
            proc.stop()


def _fail_over(cluster: RedisClusterProcs, master: str, done: threading.Event) -> None:
    """CLUSTER FAILOVER sent to the replica of `master`; returns when it is the master.
    `done` is set either way; an error is kept in `done.error`."""
    try:
        _promote_replica(cluster, master)
    except BaseException as exc:
        done.error = exc  # type: ignore[attr-defined]
    done.set()


def _promote_replica(cluster: RedisClusterProcs, master: str) -> None:
    master_id = next(n["id"] for n in cluster.nodes() if n["port"] == master)
    replica = next(n["port"] for n in cluster.nodes() if n["master"] == master_id)
    assert cluster.client(int(replica)).execute_command("CLUSTER FAILOVER") in (b"OK", "OK", True)
    deadline = time.monotonic() + 30
    while cluster.client(int(replica)).info("replication")["role"] != "master":
        assert time.monotonic() < deadline, "the replica was not promoted"
        time.sleep(0.05)


def _rewards_applied(procs: list[tuple[ManagedProcess, str]]) -> float:
    total = 0.0
    for _, url in procs:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith("allocator_rewards_total "):
                total += float(line.split()[1])
    return total


async def test_master_failover_mid_run_loses_and_doubles_nothing(
    redis_cluster: RedisClusterProcs, log_dir: Path
) -> None:
    """Two replicas drive a run while the master serving its slot fails over to its replica
    (`CLUSTER FAILOVER`): calls in flight are retried with their idempotency keys, and the
    run's counters end equal to the test's ledger of what it was answered."""
    procs = [start_allocator(redis_cluster.url, log_dir) for _ in range(2)]
    clients = [AllocatorClient(url, policy=PATIENT) for _, url in procs]
    run_id = f"failover-{uuid.uuid4().hex[:8]}"
    old_master = master_of(redis_cluster, run_id)
    ledger = {"rollouts_pilot": 0, "rollouts_commit": 0, "groups_trained": 0, "rewards": 0}
    promoted = threading.Event()
    failover: threading.Thread | None = None
    try:
        await clients[0].create_run(run_id, SPEC)
        step, calls, in_flight = 0, 0, 0
        while step < 8 or not promoted.is_set():
            assert step < 200, "the failover never finished"
            round_ = 0
            while True:
                one, other = clients[calls % 2], clients[(calls + 1) % 2]
                calls += 1
                request_id = f"{step}-{round_}"
                # the same plan asked of both replicas at once (a client retry racing)
                plans = await asyncio.gather(
                    one.plan(run_id, request_id=request_id),
                    other.plan(run_id, request_id=request_id),
                )
                assert plans[0] == plans[1]
                plan = plans[0]
                rewards = rewards_for(plan, solved={p for p in range(0, SPEC.num_prompts, 5)})
                if step == 2 and failover is None:
                    failover = threading.Thread(
                        target=_fail_over, args=(redis_cluster, old_master, promoted)
                    )
                    failover.start()  # while this plan's results are being reported
                racing = failover is not None and not promoted.is_set()
                answers = await asyncio.gather(
                    other.report(run_id, plan.plan_id, rewards),
                    one.report(run_id, plan.plan_id, rewards),
                )
                in_flight += racing
                assert answers[0] == answers[1]
                ledger["rollouts_pilot"] += sum(i.n for i in plan.items if i.role == "pilot")
                ledger["rollouts_commit"] += sum(i.n for i in plan.items if i.role == "commit")
                ledger["groups_trained"] += len(answers[0].train)
                ledger["rewards"] += sum(len(g) for g in rewards)
                round_ += 1
                if answers[0].batch_complete:
                    break
            await asyncio.gather(*[c.complete_step(run_id, step) for c in clients])
            step += 1
        assert failover is not None
        failover.join(timeout=30)
        assert getattr(promoted, "error", None) is None, promoted.error  # type: ignore[attr-defined]
        assert in_flight >= 1  # reports sent before the replica took over
        new_master = master_of(redis_cluster, run_id)
        assert new_master != old_master, "the run's slot did not move to the replica"
        redis_cluster.wait_healthy()

        summary = await clients[1].summary(run_id)
        assert summary.step == step and summary.counters["steps_completed"] == step
        for name in ("rollouts_pilot", "rollouts_commit", "groups_trained"):
            assert summary.counters[name] == ledger[name], name
        assert _rewards_applied(procs) == ledger["rewards"]
        assert summary.open_plan is None
        assert RunKeys(run_id).state in run_keys_on(redis_cluster, new_master, run_id)
    finally:
        if failover is not None:
            failover.join(timeout=30)
        for client in clients:
            await client.aclose()
        for proc, _ in procs:
            proc.stop()


@pytest.mark.parametrize("where", ["one", "cluster"])
async def test_a_resent_write_is_applied_once(
    where: str, redis_cluster: RedisClusterProcs, redis_url: str
) -> None:
    """The compare-and-set every write goes through (`cas`): a script resent after it was
    applied (a lost reply, a failover) finds the version moved and writes nothing."""
    store = AllocatorStore(open_redis(redis_cluster.url if where == "cluster" else redis_url))
    run_id = f"cas-{uuid.uuid4().hex[:8]}"
    keys = RunKeys(run_id)
    try:
        await store.create_run(run_id, SPEC)
        raw = await store.redis.hgetall(keys.state)
        state = {k.decode(): v.decode() for k, v in raw.items()}
        writes = cas.Commands()
        writes.add("HINCRBY", keys.state, "rollouts_pilot", 5)
        args = writes.args(state, "b")
        assert await store._cas(keys=[keys.state], args=args) == 0
        assert await store._cas(keys=[keys.state], args=args) == cas.REFUSED
        summary = await store.summary(run_id)
        assert summary.counters["rollouts_pilot"] == 5
        assert await store.redis.hget(keys.state, "version") == b"1"
    finally:
        await store.redis.aclose()
