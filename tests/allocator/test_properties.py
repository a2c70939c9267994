"""Property tests through the real store (real Redis): random configurations and reward
patterns, checking the invariants every strategy must keep. Few examples here: the same
invariants run over thousands of protocols on the pure transition in test_protocol.py."""

from __future__ import annotations

import asyncio
import random
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from services.allocator import models as m
from services.allocator.core import AllocationError
from services.allocator.store import AllocatorStore
from tests.allocator.driver import bernoulli_rewards, drive

RATES = st.sampled_from([0.0, 0.0, 0.2, 0.5, 0.8, 1.0, 1.0])

pc_configs = st.fixed_dictionaries(
    {
        "strategy": st.just("pilot_commit"),
        "train_batch_size": st.integers(1, 6),
        "gen_batch_size": st.integers(1, 12),
        "n_pilot": st.integers(1, 6),
        "n_commit": st.integers(1, 6),
        "p_lower": st.sampled_from([0.0, 0.125, 0.25]),
        "p_upper": st.sampled_from([0.0, 0.25]),
        "exclude_threshold": st.sampled_from([None, 1.0, 0.75]),
        "buffer_max_off_steps": st.integers(0, 3),
        "buffer_sampling": st.sampled_from(["max_variance", "random"]),
        "max_rounds": st.just(12),
    }
)
baseline_configs = st.fixed_dictionaries(
    {
        "strategy": st.sampled_from(["grpo", "dapo"]),
        "train_batch_size": st.integers(1, 6),
        "n": st.integers(2, 6),
        "max_rounds": st.just(12),
    }
)


def run_case(redis_url: str, config: dict, rates: list[float], seed: int) -> None:
    asyncio.run(_run_case(redis_url, config, rates, seed))


async def _run_case(redis_url: str, config: dict, rates: list[float], seed: int) -> None:
    redis = Redis.from_url(redis_url)
    store = AllocatorStore(redis)
    run_id = f"prop-{uuid.uuid4().hex[:12]}"
    spec = m.RunSpec.model_validate({"num_prompts": len(rates), "seed": seed, "config": config})
    await store.create_run(run_id, spec)
    try:
        logs = await drive(store, run_id, bernoulli_rewards(dict(enumerate(rates)), seed), 4)
    except AllocationError as exc:  # too few informative prompts: must fail loudly, clearly
        assert "max_rounds" in str(exc) or "every prompt is evicted" in str(exc)
        return
    finally:
        await redis.aclose()
    check_invariants(spec, logs)


def check_invariants(spec: m.RunSpec, logs: list) -> None:
    cfg = spec.config
    group_size = cfg.group_size()
    passed_at: dict[int, tuple[int, int]] = {}  # prompt -> (step, epoch) of its latest pass
    pending: set[int] = set()
    evicted: set[int] = set()
    epoch = 0
    for log in logs:
        committed = 0
        for plan, result, rewards in zip(log.plans, log.results, log.rewards, strict=True):
            if plan.epoch != epoch:
                evicted |= pending
                pending, epoch = set(), plan.epoch
            assert not evicted & {i.prompt_id for i in plan.items}, "planned an evicted prompt"
            assert plan.rollouts == sum(i.n for i in plan.items)
            assert plan.rollouts <= budget(cfg, committed), "plan exceeds its round budget"
            for item in plan.items:
                if item.role == "commit":
                    step, ep = passed_at[item.prompt_id]
                    assert ep == plan.epoch and plan.step - step <= cfg.buffer_max_off_steps
            for gate, item in zip(result.gates, plan.items, strict=True):
                if gate.outcome == "pass" and item.role == "pilot":
                    passed_at[item.prompt_id] = (plan.step, plan.epoch)
            pending |= evictions(cfg, plan, result, rewards)
            committed = result.committed
        prompts = [g.prompt_id for g in log.train]
        assert len(prompts) == cfg.train_batch_size == len(set(prompts))
        for group in log.train:
            size = len(group.reuse) + cfg.n_commit if group.role == "commit" else cfg.n
            assert size == group_size


def budget(cfg, committed: int) -> int:
    need = cfg.train_batch_size - committed
    if cfg.strategy == "pilot_commit":
        return cfg.pilots_per_round() * cfg.n_pilot + need * cfg.n_commit
    if cfg.strategy == "dapo":
        return cfg.prompts_per_round() * cfg.n
    return need * cfg.n


def evictions(cfg, plan: m.Plan, result: m.ResultsResponse, rewards: list) -> set[int]:
    """Piloted prompts whose pass rate reached exclude_threshold (evicted at epoch end)."""
    if cfg.strategy != "pilot_commit" or cfg.exclude_threshold is None:
        return set()
    out = set()
    for item, gate, group in zip(plan.items, result.gates, rewards, strict=True):
        p_hat = sum(r >= cfg.success_threshold for r in group) / len(group)
        if gate.outcome == "too_easy" and p_hat >= cfg.exclude_threshold:
            out.add(item.prompt_id)
    return out


PROPERTY_SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY_SETTINGS
@given(config=pc_configs, rates=st.lists(RATES, min_size=3, max_size=50), seed=st.integers(0, 99))
def test_pilot_commit_invariants(redis_url: str, config: dict, rates: list[float], seed: int):
    run_case(redis_url, config, rates, seed)


@PROPERTY_SETTINGS
@given(
    config=baseline_configs, rates=st.lists(RATES, min_size=3, max_size=50), seed=st.integers(0, 99)
)
def test_baseline_invariants(redis_url: str, config: dict, rates: list[float], seed: int):
    run_case(redis_url, config, rates, seed)


def test_random_sampling_is_reproducible(redis_url: str) -> None:
    """Same seed, same rewards: the same plans, round for round."""
    config = {
        "strategy": "pilot_commit",
        "train_batch_size": 3,
        "gen_batch_size": 6,
        "n_pilot": 4,
        "n_commit": 4,
        "buffer_sampling": "random",
    }
    rates = [random.Random(i).choice([0.2, 0.5, 0.8]) for i in range(40)]

    async def plans() -> list[list[int]]:
        redis = Redis.from_url(redis_url)
        store = AllocatorStore(redis)
        run_id = f"repro-{uuid.uuid4().hex[:8]}"
        spec = m.RunSpec.model_validate({"num_prompts": 40, "seed": 5, "config": config})
        await store.create_run(run_id, spec)
        logs = await drive(store, run_id, bernoulli_rewards(dict(enumerate(rates)), 1), 5)
        await redis.aclose()
        return [[i.prompt_id for i in p.items] for log in logs for p in log.plans]

    assert asyncio.run(plans()) == asyncio.run(plans())
