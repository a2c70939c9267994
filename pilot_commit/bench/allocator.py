"""`pilot-commit bench allocator`: the allocator at paper scale, over HTTP, on a real Redis.

Each pool size gets a fresh redis-server and allocator process. A Pilot-Commit run at the
paper's 1.5B proportions (384 prompts x 32 pilot rollouts and 128 x 96 commit rollouts
per round, i.e. up to 24,576 rewards per results call) is driven for a few steps with
Bernoulli rewards from fixed per-prompt pass rates. Latencies are measured at the
client, so they include HTTP, JSON and Redis round trips.

With `--cluster`, each pool size is also run against a fresh Redis Cluster (3 masters with
one replica each, on loopback, `redis+cluster://` for the allocator), in the same
invocation, and the ratio cluster / one Redis of each figure is printed; the one Redis is
then the cluster's redis-server (Redis 7), not the first on PATH. A run's keys all
live in one slot, so one run is served by one master: the cluster adds capacity for many
runs, not speed for one (see docs/allocator.md, "Redis Cluster").

With `--snapshot`, every prompt of the pool is then marked as seen (a statistics record
each, written straight into Redis) and the run's snapshot is read in pages and restored
in chunks through the client, as a trainer checkpoint and resume do: the snapshot's size
and both times are reported, and the restored run is checked against the original.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from redis.asyncio import Redis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pilot_commit.bench.redis_cluster import (
    RedisClusterProcs,
    find_cluster_binaries,
    start_redis_cluster,
)
from services.allocator import models as m
from services.allocator.client import AllocatorClient
from services.allocator.keys import BUCKET_SIZE, RunKeys
from services.allocator.records import RECORD_SIZE
from services.common.procs import ManagedProcess, free_port, start_redis, start_service
from services.common.progress import LineProgress, progress

PAPER_CONFIG = {
    "strategy": "pilot_commit",
    "train_batch_size": 128,
    "gen_batch_size": 384,
    "n_pilot": 32,
    "n_commit": 96,
    "p_lower": 0.125,
    "p_upper": 0.25,
    "exclude_threshold": 1.0,
    "buffer_max_off_steps": 4,
    "max_rounds": 50,
}


def pass_rate(prompt_ids: np.ndarray) -> np.ndarray:
    """A fixed pass rate per prompt: a third never solved, a fifth always, the rest spread."""
    h = (prompt_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    u = (h % np.uint64(10_000)).astype(np.float64) / 10_000
    return np.where(u < 0.33, 0.0, np.where(u > 0.8, 1.0, (u - 0.33) / 0.47))


def rewards_for(plan: m.Plan, rng: np.random.Generator) -> list[list[float]]:
    ids = np.array([i.prompt_id for i in plan.items])
    rates = pass_rate(ids)
    return [
        (rng.random(item.n) < p).astype(float).tolist()
        for item, p in zip(plan.items, rates, strict=True)
    ]


async def mark_all_seen(redis: Redis, prompts: int) -> None:
    """A statistics record for every prompt (varied values, as a long run leaves them)."""
    rng = np.random.default_rng(1)
    keys = RunKeys("bench")
    layout = np.dtype(
        [("rollouts", "<u4"), ("successes", "<u4"), ("reward_sum", "<f4"), ("rate", "<f4"),
         ("std", "<f4"), ("last_step", "<i4"), ("status", "u1"), ("outcome", "u1"),
         ("streaks", "u1", 2), ("aux", "<f4", 2), ("aux_step", "<i4")]
    )  # fmt: skip
    assert layout.itemsize == RECORD_SIZE
    per_batch = 1000 * BUCKET_SIZE
    for start in range(0, prompts, per_batch):
        n = min(per_batch, prompts - start)
        rec = np.zeros(n, layout)
        rec["rollouts"] = rng.integers(32, 512, n)
        rec["successes"] = rec["rollouts"] // rng.integers(1, 8, n)
        rec["reward_sum"] = rec["successes"]
        rec["rate"] = rng.integers(0, 33, n) / 32
        rec["std"] = rng.random(n)
        rec["last_step"] = rng.integers(0, 5000, n)
        rec["outcome"] = rng.integers(1, 8, n)
        rec["aux_step"] = -1
        raw = rec.tobytes()
        async with redis.pipeline(transaction=False) as pipe:
            for b in range(start // BUCKET_SIZE, (start + n + BUCKET_SIZE - 1) // BUCKET_SIZE):
                lo = b * BUCKET_SIZE - start
                fields = {
                    str(i): raw[(lo + i) * RECORD_SIZE : (lo + i + 1) * RECORD_SIZE]
                    for i in range(min(BUCKET_SIZE, n - lo))
                }
                pipe.hset(f"{keys.prefix}:stats:{b}", mapping=fields)  # type: ignore[arg-type]
            await pipe.execute()


async def snapshot_round_trip(client: AllocatorClient, redis: Redis, prompts: int) -> dict:
    await mark_all_seen(redis, prompts)
    before = await client.summary("bench")
    start = time.perf_counter()
    snapshot = await client.snapshot("bench")
    snapshot_s = time.perf_counter() - start
    size = len(snapshot.model_dump_json())
    stats_key = f"{RunKeys('bench').prefix}:stats:{(prompts - 1) // BUCKET_SIZE}"
    last_bucket = await redis.hgetall(stats_key)
    await redis.delete(stats_key)  # the restore must bring it back
    peak = (await redis.info("memory"))["used_memory"]
    await redis.slowlog_reset()
    start = time.perf_counter()
    after = await client.restore_snapshot("bench", snapshot)
    restore_s = time.perf_counter() - start
    assert after == before, "the restored run differs from the snapshot's"
    assert await redis.hgetall(stats_key) == last_bucket
    slow = await redis.slowlog_get(1024)  # commands over 10 ms: what blocked Redis longest
    return {
        "restore_longest_redis_command_ms": max((e["duration"] for e in slow), default=0) / 1000,
        "snapshot_keys": len(snapshot.keys),
        "snapshot_bytes": size,
        "snapshot_s": snapshot_s,
        "restore_s": restore_s,
        "redis_bytes_before_restore": peak,
        "bench_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


async def data_bytes(redis: Redis) -> int:
    """Redis's used memory less what replication holds (the backlog, the replicas' output
    buffers: none on a Redis without replicas), so one Redis and a cluster master compare."""
    info = await redis.info("memory")
    replication = info.get("mem_replication_backlog", 0) + info.get("mem_clients_slaves", 0)
    return int(info["used_memory"]) - int(replication)


async def drive(
    url: str,
    redis_url: str,
    prompts: int,
    steps: int,
    progress: Progress | LineProgress,
    snapshot: bool,
) -> dict:
    rng = np.random.default_rng(0)
    redis = Redis.from_url(redis_url)
    base_memory = await data_bytes(redis)
    plan_ms: list[float] = []
    results_ms: list[float] = []
    rewards = 0
    seen: set[int] = set()
    task = progress.add_task(f"{prompts:,} prompts", total=steps)
    async with AllocatorClient(url, timeout=120) as client:
        spec = m.RunSpec(num_prompts=prompts, seed=0, config=PAPER_CONFIG)
        await client.create_run("bench", spec)
        for step in range(steps):
            complete = False
            while not complete:
                start = time.perf_counter()
                plan = await client.plan("bench")
                plan_ms.append((time.perf_counter() - start) * 1000)
                batch = rewards_for(plan, rng)
                start = time.perf_counter()
                result = await client.report("bench", plan.plan_id, batch)
                results_ms.append((time.perf_counter() - start) * 1000)
                rewards += sum(len(g) for g in batch)
                seen.update(i.prompt_id for i in plan.items)
                complete = result.batch_complete
            await client.complete_step("bench", step)
            progress.advance(task)
        summary = await client.summary("bench")
        used = await data_bytes(redis) - base_memory
        extra = await snapshot_round_trip(client, redis, prompts) if snapshot else {}
    await redis.aclose()
    return {
        **extra,
        "prompts": prompts,
        "steps": steps,
        "rounds": len(plan_ms),
        "plan_p50_ms": float(np.percentile(plan_ms, 50)),
        "plan_p99_ms": float(np.percentile(plan_ms, 99)),
        "results_p50_ms": float(np.percentile(results_ms, 50)),
        "results_p99_ms": float(np.percentile(results_ms, 99)),
        "rewards_per_s": rewards / (sum(results_ms) / 1000),
        "rewards": rewards,
        "prompts_seen": len(seen),
        "redis_bytes_per_prompt": used / len(seen),
        "buffer_size_end": summary.buffer_size,
    }


def bench_pool(
    prompts: int,
    steps: int,
    workdir: Path,
    progress: Progress | LineProgress,
    snapshot: bool = False,
    cluster: bool = False,
) -> dict:
    """One pool size against a fresh one Redis, or with `cluster` a fresh Redis Cluster
    (3 masters, 1 replica each). Memory and the snapshot's direct writes go to the node
    holding the run (the cluster's master of the run's slot)."""
    port = free_port()
    redis: ManagedProcess | None = None
    nodes: RedisClusterProcs | None = None
    if cluster:
        nodes = start_redis_cluster(workdir / f"cluster-{prompts}")
        allocator_url = nodes.url
        node_url = f"redis://127.0.0.1:{nodes.master_of(RunKeys('bench').state)}/0"
    else:
        redis_port = free_port()
        redis = start_redis(redis_port, workdir / f"redis-{prompts}", appendonly=False)
        allocator_url = node_url = f"redis://127.0.0.1:{redis_port}/0"
    service = None
    try:
        service = start_service(
            "allocator",
            ["allocator", "serve"],
            port=port,
            log_dir=workdir,
            env={"PC_ALLOCATOR_REDIS_URL": allocator_url},
        )
        url = f"http://127.0.0.1:{port}"
        row = asyncio.run(drive(url, node_url, prompts, steps, progress, snapshot))
        return {"redis": "cluster 3+3" if cluster else "one", **row}
    finally:
        if service:
            service.stop()
        if redis:
            redis.stop()
        if nodes:
            nodes.stop()


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="allocator at paper scale (384x32 pilot + 128x96 commit per round)")
    for col in (
        "redis",
        "prompts",
        "rounds",
        "plan p50/p99 ms",
        "results p50/p99 ms",
        "rewards/s",
        "B/prompt seen",
    ):
        out.add_column(col, justify="right")
    for r in rows:
        out.add_row(
            r["redis"],
            f"{r['prompts']:,}",
            str(r["rounds"]),
            f"{r['plan_p50_ms']:.1f} / {r['plan_p99_ms']:.1f}",
            f"{r['results_p50_ms']:.1f} / {r['results_p99_ms']:.1f}",
            f"{r['rewards_per_s']:,.0f}",
            f"{r['redis_bytes_per_prompt']:.0f}",
        )
    return out


RATIO_FIELDS = ("rewards_per_s", "plan_p50_ms", "plan_p99_ms", "results_p50_ms", "results_p99_ms")


def cluster_ratio(one: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    """cluster / one Redis for each of `RATIO_FIELDS` (rewards/s: > 1 is faster on the
    cluster; latencies: > 1 is slower)."""
    return {"prompts": one["prompts"], **{k: cluster[k] / one[k] for k in RATIO_FIELDS}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pilot-commit bench allocator")
    parser.add_argument(
        "--prompts", default="10000,1000000,10000000", help="comma-separated pool sizes"
    )
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps per pool")
    parser.add_argument("--json", type=Path, help="write the results as one JSON object")
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="then mark every prompt seen and time a snapshot and a restore of the run",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run each pool on a Redis Cluster (3 masters + 3 replicas, Redis 7) and "
        "print the ratio cluster / one Redis",
    )
    args = parser.parse_args(argv)
    pools = [int(x) for x in args.prompts.split(",")]
    if args.cluster:  # one Redis of the same version as the cluster's, for a fair ratio
        os.environ["PILOT_COMMIT_REDIS_SERVER"] = find_cluster_binaries()[0]
    console = Console()
    with tempfile.TemporaryDirectory() as tmp, progress(console) as display:
        rows, cluster_rows = [], []
        for n in pools:
            rows.append(bench_pool(n, args.steps, Path(tmp), display, args.snapshot))
            if args.cluster:
                cluster_rows.append(
                    bench_pool(n, args.steps, Path(tmp), display, args.snapshot, cluster=True)
                )
    # without --cluster there are no cluster rows, and no ratios
    pairs = list(zip(rows, cluster_rows, strict=True)) if args.cluster else []
    console.print(table([r for pair in pairs for r in pair] if args.cluster else rows))
    ratios = [cluster_ratio(one, c) for one, c in pairs]
    for r in ratios:
        console.print(
            f"{r['prompts']:,} prompts, cluster / one Redis: rewards/s x{r['rewards_per_s']:.2f}, "
            f"plan p50 x{r['plan_p50_ms']:.2f} p99 x{r['plan_p99_ms']:.2f}, "
            f"results p50 x{r['results_p50_ms']:.2f} p99 x{r['results_p99_ms']:.2f}"
        )
    for r in rows + cluster_rows:
        if "snapshot_bytes" in r:
            console.print(
                f"{r['redis']} Redis, {r['prompts']:,} prompts seen: "
                f"snapshot {r['snapshot_bytes'] / 2**20:,.1f} MiB "
                f"in {r['snapshot_keys']:,} keys, read in {r['snapshot_s']:.1f}s, restored in "
                f"{r['restore_s']:.1f}s (longest Redis command "
                f"{r['restore_longest_redis_command_ms']:.0f} ms); bench process peak RSS "
                f"{r['bench_max_rss_bytes'] / 2**30:.2f} GiB"
            )
    largest, smallest = rows[-1], rows[0]
    report = {
        **{k: v for k, v in rows[-1].items()},
        "pools": rows,
        **({"cluster_pools": cluster_rows, "cluster_ratios": ratios} if args.cluster else {}),
        "plan_p99_growth": largest["plan_p99_ms"] / smallest["plan_p99_ms"],
        "results_p99_growth": largest["results_p99_ms"] / smallest["results_p99_ms"],
    }
    console.print(
        f"p99 growth from {smallest['prompts']:,} to {largest['prompts']:,} prompts: "
        f"plan x{report['plan_p99_growth']:.2f}, "
        f"results x{report['results_p99_growth']:.2f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0
