"""Property tests of the pure protocol (no Redis): random configurations, reward patterns
and interleavings of the calls a trainer and an operator make, checking the invariants
every strategy must keep. A smaller set runs through real Redis in test_properties.py."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.allocator import models as m
from services.allocator import protocol as p
from services.allocator.core import AllocationError
from services.allocator.records import PromptStats, Status
from tests.allocator.memory import MemoryRun
from tests.allocator.test_posterior_gate_store import pg_configs
from tests.allocator.test_properties import RATES, baseline_configs, budget, pc_configs

ANY_CONFIG = st.one_of(pc_configs, baseline_configs, pg_configs)
FAST = settings(max_examples=1000, deadline=None)


class Protocol:
    """Drives a `MemoryRun` as a trainer (plus an operator, with `chaos`) would, checking
    every answer; `held` is what the trainer keeps: the prompts whose pilots it stores."""

    def __init__(self, spec: m.RunSpec, rates: list[float], seed: int, chaos: bool) -> None:
        self.run = MemoryRun(spec)
        self.cfg = spec.config
        self.rates = rates
        self.rng = random.Random(seed)
        self.chaos = chaos
        self.held: set[int] = set()
        self.requests = 0

    def rewards(self, plan: m.Plan) -> list[list[float]]:
        return [
            [1.0 if self.rng.random() < self.rates[i.prompt_id] else 0.0 for _ in range(i.n)]
            for i in plan.items
        ]

    def steps(self, count: int) -> None:
        for _ in range(count):
            try:
                self.step()
            except AllocationError as exc:  # too few informative prompts: fail loudly
                assert "max_rounds" in str(exc) or "every prompt is evicted" in str(exc)
                return

    def step(self) -> None:
        step = int(self.run.state.get("step", 0))
        train: list[m.TrainGroupOut] = []
        sizes: dict[int, int] = {}  # prompt -> rollouts of its train group
        while True:
            self.operator()
            plan = self.plan(len(train))
            rewards = self.rewards(plan)
            if self.chaos and self.rng.random() < 0.2:  # an eviction while the plan is open
                self.run.set_evicted(self.rng.choice(plan.items).prompt_id, True)
            if self.chaos and self.rng.random() < 0.1:
                self.run.call(p.AbandonRequest(plan.plan_id))
                continue
            result, applied = self.run.report(plan.plan_id, rewards)
            assert applied
            retry, again = self.run.report(plan.plan_id, rewards)
            assert (retry, again) == (result, False), "a retried report changed its answer"
            commits = sorted(i.prompt_id for i in plan.items if i.role == "commit")
            assert result.released == commits
            assert set(result.released) <= self.held
            self.held -= set(result.released)
            self.held |= set(result.buffered)
            train += result.train
            for item in plan.items:
                sizes[item.prompt_id] = len(item.reuse) + item.n
            if result.batch_complete:
                break
        done = self.run.complete_step(step)
        assert self.run.complete_step(step) == done
        assert set(done.expired) <= set(done.released)
        self.held -= set(done.released)
        assert done.buffer is not None and self.held == set(done.buffer)
        assert sorted(self.run.buffer) == done.buffer
        prompts = [g.prompt_id for g in train]
        assert len(prompts) == self.cfg.train_batch_size == len(set(prompts)), "double commit"
        for group in train:
            assert sizes[group.prompt_id] == self.cfg.group_size(), "a group not of G"

    def plan(self, committed: int) -> m.Plan:
        evicted = {pid for pid, s in self.run.stats.items() if s.status is Status.EVICTED}
        pending = set(self.run.sets["evict_pending"])
        epoch = int(self.run.state.get("epoch", 0))
        version = self.run.state.get("version")
        self.requests += 1
        request_id = f"r{self.requests}"
        plan = self.run.plan(request_id)
        assert self.run.plan(request_id) == plan, "a retried plan changed its answer"
        version_after = self.run.state.get("version")
        assert version_after is not None and version_after != version
        if plan.epoch != epoch:
            evicted |= pending
        planned = {i.prompt_id for i in plan.items}
        assert not planned & evicted, "planned an evicted prompt"
        assert plan.rollouts == sum(i.n for i in plan.items)
        assert plan.rollouts <= self.budget(committed), "plan exceeds its round budget"
        assert plan.released == sorted(plan.released) and set(plan.dropped_from_buffer) <= set(
            plan.released
        )
        self.held -= set(plan.released)
        for item in plan.items:
            if item.role == "commit":
                assert item.prompt_id in self.held, "commit of a pilot the trainer dropped"
        return plan

    def budget(self, committed: int) -> int:
        if self.cfg.strategy == "posterior_gate":
            return self.cfg.round_budget(committed)
        return budget(self.cfg, committed)

    def operator(self) -> None:
        """With `chaos`: evict or restore a prompt by hand, or end the epoch externally."""
        if not self.chaos:
            return
        draw = self.rng.random()
        n = self.run.spec.num_prompts
        if draw < 0.15:
            self.run.set_evicted(self.rng.randrange(n), True)
        elif draw < 0.2:
            self.run.set_evicted(self.rng.randrange(n), False)
        elif draw < 0.25:
            self.run.complete_epoch()


def spec_of(config: dict, rates: list[float], seed: int) -> m.RunSpec:
    return m.RunSpec.model_validate({"num_prompts": len(rates), "seed": seed, "config": config})


@FAST
@given(config=ANY_CONFIG, rates=st.lists(RATES, min_size=3, max_size=40), seed=st.integers(0, 99))
def test_invariants(config: dict, rates: list[float], seed: int) -> None:
    Protocol(spec_of(config, rates, seed), rates, seed, chaos=False).steps(4)


@FAST
@given(config=ANY_CONFIG, rates=st.lists(RATES, min_size=3, max_size=40), seed=st.integers(0, 99))
def test_invariants_with_operator_calls(config: dict, rates: list[float], seed: int) -> None:
    """Manual evictions and restores, external epoch ends and abandoned plans between the
    trainer's calls: every release still reaches the trainer exactly once."""
    Protocol(spec_of(config, rates, seed), rates, seed, chaos=True).steps(4)


# ---- each release route, on the pure transition ----

PC = {
    "strategy": "pilot_commit",
    "train_batch_size": 2,
    "gen_batch_size": 4,
    "n_pilot": 4,
    "n_commit": 4,
    "p_lower": 0.0,
    "p_upper": 0.0,  # every pilot passes: the buffer fills
    "buffer_max_off_steps": 0,
}
HALF = [[1.0, 0.0, 1.0, 0.0]] * 8


def filled(num_prompts: int = 12) -> tuple[MemoryRun, m.ResultsResponse]:
    """A run whose first plan (four pilots) was reported: four prompts in the buffer."""
    run = MemoryRun(spec_of(PC, [0.5] * num_prompts, 3))
    plan = run.plan("a")
    assert [i.role for i in plan.items] == ["pilot"] * 4 and plan.released == []
    result, _ = run.report(plan.plan_id, HALF[: len(plan.items)])
    assert sorted(result.buffered) == sorted(run.buffer) and len(run.buffer) == 4
    return run, result


def test_manual_eviction_is_released_by_the_next_plan() -> None:
    run, result = filled()
    victim = result.buffered[0]
    run.set_evicted(victim, True)
    assert victim not in run.buffer
    run.set_evicted(victim, True)  # idempotent: not released twice
    plan = run.plan("b")
    assert plan.released == [victim] and plan.dropped_from_buffer == []
    assert run.plan("b") == plan  # a retry: the same list, nothing drained twice
    assert victim not in {i.prompt_id for i in plan.items}
    assert run.plan("b").released == [victim] and not run.sets["released"]


def test_external_epoch_end_is_released_by_the_next_plan() -> None:
    run, result = filled()
    done = run.complete_epoch()
    assert sorted(done.flushed) == sorted(result.buffered)
    plan = run.plan("b")
    assert plan.released == sorted(result.buffered)
    assert plan.dropped_from_buffer == []  # not flushed by this plan
    assert all(i.role == "pilot" for i in plan.items)


def test_rollover_while_planning_is_released_by_that_plan() -> None:
    run, result = filled(num_prompts=4)  # the first plan consumed the whole epoch
    plan = run.plan("b")
    assert plan.epoch == 1
    assert plan.released == sorted(plan.dropped_from_buffer) == sorted(result.buffered)


def test_commits_are_released_by_their_report() -> None:
    run, result = filled()
    plan = run.plan("b")
    commits = sorted(i.prompt_id for i in plan.items if i.role == "commit")
    assert len(commits) == 2 and set(commits) <= set(result.buffered)
    second, _ = run.report(plan.plan_id, HALF[: len(plan.items)])
    assert second.released == commits
    assert not set(commits) & set(run.buffer)


def test_expiry_and_pending_releases_come_with_step_completion() -> None:
    run, _ = filled()
    plan = run.plan("b")
    second, _ = run.report(plan.plan_id, HALF[: len(plan.items)])
    assert second.batch_complete
    victim = next(iter(run.buffer))
    run.set_evicted(victim, True)  # after the step's last plan: no plan will say it
    done = run.complete_step(0)
    # buffer_max_off_steps=0: everything buffered at step 0 expires when it completes
    assert done.expired and victim not in done.expired
    assert done.released == sorted({*done.expired, victim})
    assert done.buffer == [] and not run.sets["released"]
    assert run.complete_step(0) == done
    assert run.plan("c").released == []


def test_abandon_returns_commits_and_releases_those_evicted_meanwhile() -> None:
    run, _ = filled()
    plan = run.plan("b")
    commits = sorted(i.prompt_id for i in plan.items if i.role == "commit")
    run.set_evicted(commits[0], True)  # while the plan is open: not in the buffer now
    assert not run.sets["released"]
    run.call(p.AbandonRequest(plan.plan_id))
    assert commits[1] in run.buffer and commits[0] not in run.buffer
    again = run.plan("c")
    assert again.released == [commits[0]]
    assert commits[0] not in {i.prompt_id for i in again.items}


def test_transition_is_pure() -> None:
    """The same view and request give the same answer and delta, and the view is unchanged."""
    run, _ = filled()
    request = p.PlanRequest("b")
    view = run.view(request)
    view.stats.update({i: run.stats.get(i, PromptStats()) for i in range(12)})
    with pytest.raises(p.MissingStats):
        p.transition(run.view(request), run.info, request)
    before = repr(view)
    first = p.transition(view, run.info, request)
    assert repr(view) == before
    assert p.transition(view, run.info, request) == first
