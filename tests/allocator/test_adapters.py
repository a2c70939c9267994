"""The Redis store and the in-memory adapter of the property tests give the same answers
to the same random protocol: the pure tests' adapter is faithful to the store's."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from services.allocator import models as m
from services.allocator import protocol as p
from services.allocator.core import AllocationError
from services.allocator.store import AllocatorStore
from tests.allocator.memory import MemoryRun

CONFIGS = {
    "pilot_commit": {
        "strategy": "pilot_commit",
        "train_batch_size": 3,
        "gen_batch_size": 6,
        "n_pilot": 4,
        "n_commit": 4,
        "exclude_threshold": 1.0,
        "buffer_max_off_steps": 1,
    },
    "posterior_gate": {
        "strategy": "posterior_gate",
        "train_batch_size": 3,
        "n": 8,
        "n_pilot": 3,
        "n_pilot_min": 1,
        "half_life_steps": 5.0,
        "evict_min_evidence": 4.0,
        "evict_confidence": 0.6,
        "evict_pass_rate": 0.8,
    },
    "dapo": {"strategy": "dapo", "train_batch_size": 3, "n": 4, "gen_batch_size": 4},
}


async def _answers(call: Any, num_prompts: int, seed: int) -> list[Any]:
    """A protocol with abandons, manual evictions and restores, epoch ends and evidence;
    `call(name, *args)` runs one store call."""
    rng = random.Random(seed)
    rates = [rng.choice([0.0, 0.2, 0.5, 0.8, 1.0]) for _ in range(num_prompts)]
    out: list[Any] = []
    requests = 0
    try:
        for step in range(8):
            while True:
                requests += 1
                plan = await call("plan", f"r{requests}")
                out.append(plan)
                if rng.random() < 0.2:
                    out.append(await call("set_evicted", rng.choice(plan.items).prompt_id, True))
                if rng.random() < 0.15:
                    out.append(await call("abandon", plan.plan_id))
                    continue
                rewards = [
                    [float(rng.random() < rates[i.prompt_id]) for _ in range(i.n)]
                    for i in plan.items
                ]
                result = await call("report", plan.plan_id, rewards)
                out.append(result)
                draw = rng.random()
                if draw < 0.1:
                    out.append(await call("set_evicted", rng.randrange(num_prompts), True))
                elif draw < 0.15:
                    out.append(await call("set_evicted", rng.randrange(num_prompts), False))
                elif draw < 0.2:
                    out.append(await call("complete_epoch"))
                elif draw < 0.25:
                    rewards = [float(rng.random() < 0.5) for _ in range(6)]
                    out.append(await call("evidence", rng.randrange(num_prompts), rewards))
                if result.batch_complete:
                    break
            out.append(await call("complete_step", step))
    except AllocationError as exc:
        out.append(str(exc))
    return out


async def _through_redis(redis_url: str, run_id: str, spec: m.RunSpec, seed: int) -> list[Any]:
    redis = Redis.from_url(redis_url)
    store = AllocatorStore(redis)
    await store.create_run(run_id, spec)
    evidence = 0

    async def call(name: str, *args: Any) -> Any:
        nonlocal evidence
        if name == "set_evicted":
            return (await store.set_evicted(run_id, *args)).status
        if name == "evidence":
            evidence += 1
            body = m.EvidenceRequest(evidence_id=f"e{evidence}", rewards=args[1])
            return (await store.add_evidence(run_id, args[0], body)).prompt.status
        return await getattr(store, name)(run_id, *args)

    try:
        return await _answers(call, spec.num_prompts, seed)
    finally:
        await redis.aclose()


async def _in_memory(run_id: str, spec: m.RunSpec, seed: int) -> list[Any]:
    run = MemoryRun(spec, run_id)
    evidence = 0

    async def call(name: str, *args: Any) -> Any:
        nonlocal evidence
        if name == "set_evicted":
            return run.set_evicted(*args).status.name.lower()
        if name == "evidence":
            evidence += 1
            stats, _ = run.call(p.EvidenceRequest(args[0], f"e{evidence}", args[1]))
            return stats.status.name.lower()
        if name == "report":
            return run.report(*args)[0]
        if name == "abandon":
            return run.call(p.AbandonRequest(*args))
        return getattr(run, name)(*args)

    return await _answers(call, spec.num_prompts, seed)


@pytest.mark.parametrize("strategy", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_store_and_memory_adapter_agree(redis_url: str, strategy: str, seed: int) -> None:
    spec = m.RunSpec.model_validate({"num_prompts": 30, "seed": seed, "config": CONFIGS[strategy]})
    run_id = f"adapt-{uuid.uuid4().hex[:8]}"
    redis_answers = asyncio.run(_through_redis(redis_url, run_id, spec, seed))
    memory_answers = asyncio.run(_in_memory(run_id, spec, seed))
    assert len(redis_answers) > 10
    assert redis_answers == memory_answers
