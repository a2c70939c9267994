"""The posterior gate through the real store (real Redis): property tests of the
invariants every strategy keeps, plus its own (direct commits only on evidence, skips
and evictions explained), and the evidence path end to end."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from services.allocator import models as m
from services.allocator.core import AllocationError
from services.allocator.permutation import EpochPermutation
from services.allocator.store import AllocatorStore, Conflict
from services.allocator.strategies.posterior_rules import PriorCall, call_before_rollouts, prior
from tests.allocator.test_properties import PROPERTY_SETTINGS

Rewards = Callable[[m.Plan], list[list[float]]]
# Mostly learnable prompts, so that most runs get past their first steps.
RATES = st.sampled_from([0.0, 0.0, 0.2, 0.5, 0.5, 0.8, 1.0, 1.0])

pg_configs = st.fixed_dictionaries(
    {
        "strategy": st.just("posterior_gate"),
        "train_batch_size": st.integers(1, 6),
        "n": st.integers(4, 10),
        "n_pilot": st.integers(1, 3),
        "n_pilot_min": st.just(1),
        "p_lower": st.sampled_from([0.0, 0.125, 0.25]),
        "p_upper": st.sampled_from([0.0, 0.25]),
        "half_life_steps": st.sampled_from([2.0, 500.0]),
        "skip_confidence": st.sampled_from([0.6, 0.8]),
        "direct_confidence": st.sampled_from([None, 0.6, 0.8]),
        "recheck_rate": st.sampled_from([0.0, 0.1, 0.5]),
        "evict_pass_rate": st.sampled_from([None, 0.8, 0.9]),
        "evict_confidence": st.sampled_from([0.6, 0.95]),
        "evict_min_evidence": st.sampled_from([0.0, 4.0, 16.0]),
        "buffer_max_off_steps": st.integers(0, 3),
        "lookahead_steps": st.sampled_from([0.0, 1.0, 2.0]),
        "max_pilots_per_round": st.sampled_from([None, 1, 3]),
        "max_rounds": st.just(12),
    }
)


@dataclass
class Round:
    plan: m.Plan
    result: m.ResultsResponse
    rewards: list[list[float]]
    pending: set[int]  # the evict-pending set after the report


@dataclass
class Step:
    rounds: list[Round] = field(default_factory=list)


async def drive(store: AllocatorStore, run_id: str, reward_fn: Rewards, steps: int) -> list[Step]:
    """Like a trainer, recording the evict-pending set after every report."""
    keys = (await store.run(run_id)).keys
    log: list[Step] = []
    for _ in range(steps):
        step = (await store.summary(run_id)).step
        log.append(Step())
        while True:
            plan = await store.plan(run_id, f"{run_id}-{step}-{len(log[-1].rounds)}")
            rewards = reward_fn(plan)
            result = await store.report(run_id, plan.plan_id, rewards)
            pending = {int(x) for x in await store.redis.smembers(keys.evict_pending)}
            log[-1].rounds.append(Round(plan, result, rewards, pending))
            if result.batch_complete:
                break
        await store.complete_step(run_id, step)
    return log


def bernoulli(rates: list[float], seed: int) -> Rewards:
    rng = random.Random(seed)
    return lambda plan: [
        [1.0 if rng.random() < rates[i.prompt_id] else 0.0 for _ in range(i.n)] for i in plan.items
    ]


def check_invariants(spec: m.RunSpec, log: list[Step]) -> None:
    cfg = spec.config
    passed: dict[int, tuple[int, int, int]] = {}  # prompt -> (step, epoch, pilot size)
    observed: set[int] = set()
    pending: set[int] = set()
    evicted: set[int] = set()
    epoch = 0
    for step in log:
        committed, train = 0, []
        for r in step.rounds:
            plan = r.plan
            if plan.epoch != epoch:
                evicted |= pending
                epoch = plan.epoch
            ids = [i.prompt_id for i in plan.items]
            assert len(ids) == len(set(ids)) and not evicted & set(ids), "evicted prompt planned"
            assert plan.rollouts == sum(i.n for i in plan.items)
            assert plan.rollouts <= cfg.round_budget(committed), "plan exceeds its round budget"
            for item, gate in zip(plan.items, r.result.gates, strict=True):
                check_item(cfg, plan, item, gate.outcome, passed, observed)
            for item, gate in zip(plan.items, r.result.gates, strict=True):
                observed.add(item.prompt_id)
                if item.role == "pilot" and gate.outcome == "pass":
                    passed[item.prompt_id] = (plan.step, plan.epoch, item.n)
            pending, committed = r.pending, r.result.committed
            train += r.result.train
        prompts = [g.prompt_id for g in train]
        assert len(prompts) == cfg.train_batch_size == len(set(prompts))


def check_item(cfg, plan: m.Plan, item, outcome: str, passed: dict, observed: set) -> None:
    """A commit passed the gate within buffer_max_off_steps in this epoch; a full group
    was committed directly, which needs evidence (a posterior confidently in the band)."""
    if item.role == "commit":
        step, epoch, pilot = passed[item.prompt_id]
        assert epoch == plan.epoch and plan.step - step <= cfg.buffer_max_off_steps
        assert item.reuse == list(range(pilot)) and len(item.reuse) + item.n == cfg.n
        assert outcome == "trained"
    elif item.role == "full":
        assert item.n == cfg.n and outcome == "direct_commit"
        # e.g. a band [0, 1]
        prior_is_confident = call_before_rollouts(cfg, prior(cfg)) is PriorCall.DIRECT
        assert prior_is_confident or item.prompt_id in observed, "direct commit, no evidence"
    else:
        assert 1 <= item.n <= cfg.n_pilot


async def new_run(redis_url: str, config: dict, num_prompts: int, seed: int = 0):
    redis = Redis.from_url(redis_url)
    store = AllocatorStore(redis)
    run_id = f"pg-{uuid.uuid4().hex[:12]}"
    spec = m.RunSpec.model_validate({"num_prompts": num_prompts, "seed": seed, "config": config})
    await store.create_run(run_id, spec)
    return redis, store, run_id, spec


@PROPERTY_SETTINGS
@given(config=pg_configs, rates=st.lists(RATES, min_size=8, max_size=50), seed=st.integers(0, 99))
def test_posterior_gate_invariants(redis_url: str, config: dict, rates: list, seed: int) -> None:
    async def case() -> None:
        redis, store, run_id, spec = await new_run(redis_url, config, len(rates), seed)
        try:
            log = await drive(store, run_id, bernoulli(rates, seed), 6)
        except AllocationError as exc:  # too few informative prompts: fail loudly, clearly
            assert "max_rounds" in str(exc) or "every prompt is evicted" in str(exc)
            return
        finally:
            await redis.aclose()
        check_invariants(spec, log)

    asyncio.run(case())


# ---- decisions through the store ----

BASE = {
    "strategy": "posterior_gate",
    "train_batch_size": 2,
    "n": 8,
    "n_pilot": 2,
    "n_pilot_min": 1,
    "recheck_rate": 0.0,
}


async def test_skips_and_direct_commits_are_explained(redis_url: str) -> None:
    rates = [1.0] * 10 + [0.0] * 10 + [0.5] * 10
    redis, store, run_id, spec = await new_run(redis_url, BASE, len(rates), seed=1)
    try:
        log = await drive(store, run_id, bernoulli(rates, 2), 40)
        check_invariants(spec, log)
        summary = await store.summary(run_id)
        counters = summary.counters
        assert counters["gate_skipped_confident_easy"] > 0
        assert counters["gate_skipped_confident_hard"] > 0
        assert counters["gate_direct_commit"] > 0
        assert 0 < summary.strategy_state["pass_through_rate"] <= 1.0
        assert "pass_through_ewma_ppm" not in counters  # a set field, not a counter
        assert counters["rollouts_full"] == 8 * counters["gate_direct_commit"]
        outcomes = {(await store.prompt(run_id, pid)).last_outcome for pid in range(30)}
        assert {"skipped_confident_easy", "skipped_confident_hard"} <= outcomes
        hard = await store.prompt(run_id, 15)
        assert hard.strategy_state["b"] > hard.strategy_state["a"] and hard.rollouts > 0
        assert hard.strategy_state["step"] <= summary.step
    finally:
        await redis.aclose()


async def test_an_all_skipped_epoch_tail_starts_the_next_epoch(redis_url: str) -> None:
    config = {**BASE, "train_batch_size": 1, "p_lower": 0.25, "max_pilots_per_round": 1}
    redis, store, run_id, _ = await new_run(redis_url, config, 30, seed=4)
    order = EpochPermutation(30, 4, 0).ids(0, 30)
    try:
        for k, pid in enumerate(order[2:]):  # the tail: confidently too hard
            await store.add_evidence(
                run_id, pid, m.EvidenceRequest(evidence_id=str(k), rewards=[0.0] * 20)
            )
        half = {order[0]}  # the first prompt passes, the second fails its pilot

        def rewards(plan: m.Plan) -> list[list[float]]:
            return [
                [float(i.prompt_id in half and k % 2 == 0) for k in range(i.n)] for i in plan.items
            ]

        log = await drive(store, run_id, rewards, 2)
        plans = [r.plan for s in log for r in s.rounds]
        assert plans[-1].epoch == 1 and plans[-1].step == 1, [(p.step, p.epoch) for p in plans]
        summary = await store.summary(run_id)
        assert summary.counters["epochs_completed"] == 1
        assert summary.counters["gate_skipped_confident_hard"] >= 28
        tail = await store.prompt(run_id, order[-1])
        assert tail.last_outcome == "skipped_confident_hard" and tail.status == "deferred"
    finally:
        await redis.aclose()


async def test_posterior_eviction_then_restore_by_evidence(redis_url: str) -> None:
    config = {
        **BASE,
        "n_pilot": 4,
        "evict_pass_rate": 0.9,
        "evict_confidence": 0.6,  # 4/4 -> P(p >= 0.9) = 0.66
        "evict_min_evidence": 4.0,
    }
    redis, store, run_id, _ = await new_run(redis_url, config, 6, seed=2)
    try:
        plan = await store.plan(run_id, "r0")
        solved = plan.items[0].prompt_id
        rewards = [
            [1.0] * i.n if i.prompt_id == solved else [1.0, 0.0] * (i.n // 2) for i in plan.items
        ]
        result = await store.report(run_id, plan.plan_id, rewards)
        assert result.gates[0].outcome == "evicted_posterior"
        assert (await store.prompt(run_id, solved)).status == "evict_pending"
        done = await store.complete_epoch(run_id)
        assert done.evicted == [solved]
        stats = await store.prompt(run_id, solved)
        assert (stats.status, stats.last_outcome) == ("evicted", "evicted_posterior")

        confirm = m.EvidenceRequest(evidence_id="eval-1", rewards=[1.0] * 4)
        answer = await store.add_evidence(run_id, solved, confirm)
        assert not answer.duplicate and answer.prompt.status == "evicted"
        against = m.EvidenceRequest(evidence_id="eval-2", rewards=[1.0, 0.0, 0.0, 1.0])
        answer = await store.add_evidence(run_id, solved, against)
        assert answer.prompt.status == "active"
        assert answer.prompt.last_outcome == "restored_evidence"
        before = await store.summary(run_id)
        assert before.counters["evicted"] == 0 and before.counters["restored_evidence"] == 1
        assert before.counters["evidence_rewards"] == 8

        again = await store.add_evidence(run_id, solved, against)  # a retry: applied once
        assert again.duplicate and again.prompt == answer.prompt
        assert await store.summary(run_id) == before
        with pytest.raises(Conflict, match="other rewards or for another prompt"):
            await store.add_evidence(run_id, solved + 1 if solved < 5 else 0, against)
    finally:
        await redis.aclose()


async def test_evidence_is_ignored_by_strategies_without_a_posterior(redis_url: str) -> None:
    config = {"strategy": "pilot_commit", "train_batch_size": 1, "n_pilot": 2, "n_commit": 2}
    redis, store, run_id, _ = await new_run(redis_url, config, 4)
    try:
        await store.set_evicted(run_id, 1, True)
        answer = await store.add_evidence(
            run_id, 1, m.EvidenceRequest(evidence_id="e", rewards=[0.0])
        )
        assert answer.prompt.status == "evicted" and answer.prompt.strategy_state == {}
        assert (await store.summary(run_id)).counters["evicted"] == 1
    finally:
        await redis.aclose()
