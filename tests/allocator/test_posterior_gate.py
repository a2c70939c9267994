"""Unit tests of the posterior gate's pure core, with hand-checked cases."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.allocator.core import (
    Candidate,
    Counters,
    EvidenceContext,
    PlanContext,
    PlanItem,
    ResultContext,
    Role,
)
from services.allocator.records import BufferEntry, Outcome, PromptStats, Status
from services.allocator.strategies.beta import Posterior, beta_cdf
from services.allocator.strategies.posterior_gate import PosteriorGate, PosteriorGateConfig
from services.allocator.strategies.posterior_rules import (
    GateRunState,
    PosteriorRecord,
    PriorCall,
    call_before_rollouts,
    evidence,
    is_solved,
    pick_commits,
    pilot_quota,
    pilot_size,
    posterior_at,
    posterior_pilot_gate,
    recheck_draw,
    updated_pass_rate,
)

EWMA_KEY = GateRunState.FIELD

CFG = PosteriorGateConfig(train_batch_size=2)  # defaults otherwise: G = 32, pilot 4


def pg(**kw: object) -> PosteriorGate:
    return PosteriorGate(PosteriorGateConfig.model_validate({"train_batch_size": 2, **kw}))


def seen(successes: int, failures: int, step: int = 0, **kw: object) -> PromptStats:
    """Statistics whose posterior holds these rollouts (Jeffreys prior), folded at `step`."""
    state = PosteriorRecord(0.5 + successes, 0.5 + failures, step).encode()
    return PromptStats(strategy_state=state, **kw)


def record(stats: PromptStats) -> tuple[float, float, int]:
    """The (alpha, beta, step) a prompt's statistics hold."""
    rec = PosteriorRecord.decode(stats.strategy_state)
    assert rec is not None
    return rec.alpha, rec.beta, rec.step


def post(successes: int, failures: int) -> Posterior:
    return Posterior(0.5 + successes, 0.5 + failures)


def ctx(
    stats: list[PromptStats],
    buffer: list[BufferEntry] = (),
    counters: Counters | None = None,
    end: int | None = None,
    n: int = 1000,
    cursor: int = 0,
) -> PlanContext:
    window = [Candidate(cursor + i, 100 + i, s) for i, s in enumerate(stats)]
    stop = cursor + len(stats) if end is None else end
    counters = counters or Counters(cursor=cursor)
    return PlanContext(counters, n, 0, window, stop, stop >= n, list(buffer))


def entry(pid: int, std: float, step: int = 0, seq: int = 0, k: int = 4) -> BufferEntry:
    return BufferEntry(pid, step, seq, 0.5, std, (1.0, 0.0) * (k // 2))


# ---- the Beta posterior ----


@given(st.floats(0.01, 0.99), st.floats(0.2, 60.0))
def test_beta_cdf_matches_closed_forms(x: float, a: float) -> None:
    assert beta_cdf(x, 1.0, a) == pytest.approx(1.0 - (1.0 - x) ** a, abs=1e-9)
    assert beta_cdf(x, a, 1.0) == pytest.approx(x**a, abs=1e-9)
    assert beta_cdf(x, a, a) == pytest.approx(1.0 - beta_cdf(1.0 - x, a, a), abs=1e-9)


def test_beta_cdf_against_numerical_integration() -> None:
    # Reference values by midpoint integration (200k points) of the Beta density.
    assert beta_cdf(0.3, 2.5, 7.1) == pytest.approx(0.6490225790, abs=1e-8)
    assert beta_cdf(0.9, 33.0, 2.0) == pytest.approx(0.1328835638, abs=1e-8)
    assert beta_cdf(0.6, 120.3, 80.2) == pytest.approx(0.4961630987, abs=1e-8)
    assert (beta_cdf(0.0, 2, 3), beta_cdf(1.0, 2, 3)) == (0.0, 1.0)


def test_posterior_discounts_evidence_by_half_life() -> None:
    cfg = PosteriorGateConfig(half_life_steps=10)
    stats = seen(12, 4, step=5)
    assert posterior_at(cfg, stats, 5) == Posterior(12.5, 4.5)
    later = posterior_at(cfg, stats, 15)  # one half-life: half the evidence
    assert (later.alpha, later.beta) == pytest.approx((6.5, 2.5))
    assert evidence(cfg, later) == pytest.approx(8.0)
    assert posterior_at(cfg, PromptStats(), 7) == Posterior(0.5, 0.5)  # never seen


def test_manual_restore_forgets_the_evidence_that_evicted() -> None:
    stats = seen(40, 0, last_outcome=Outcome.RESTORED)
    assert posterior_at(CFG, stats, 3) == Posterior(0.5, 0.5)


# ---- decisions before any rollout ----


@pytest.mark.parametrize(
    ("successes", "failures", "call"),
    [
        (0, 0, PriorCall.PILOT),  # no evidence
        (0, 4, PriorCall.PILOT),  # P(p < 0.125) = 0.71: one small pilot is not enough
        (0, 8, PriorCall.SKIP_HARD),  # 0.86
        (4, 0, PriorCall.SKIP_EASY),  # P(p > 0.75) = 0.88
        (3, 1, PriorCall.PILOT),
        (16, 16, PriorCall.DIRECT),  # P(in band) = 0.999
        (8, 24, PriorCall.DIRECT),  # 0.98
        (24, 8, PriorCall.PILOT),  # 0.51: on the band's edge
        (28, 4, PriorCall.SKIP_EASY),  # 0.96
    ],
)
def test_call_before_rollouts_hand_checked(successes: int, failures: int, call: PriorCall) -> None:
    assert call_before_rollouts(CFG, post(successes, failures)) is call


def test_direct_commits_can_be_disabled() -> None:
    cfg = PosteriorGateConfig(direct_confidence=None)
    assert call_before_rollouts(cfg, post(16, 16)) is PriorCall.PILOT


def test_pilot_tops_evidence_up_to_n_pilot() -> None:
    assert pilot_size(CFG, post(0, 0)) == 4
    assert pilot_size(CFG, post(1, 0)) == 3
    assert pilot_size(CFG, post(2, 1)) == 2  # never below n_pilot_min
    assert pilot_size(CFG, post(20, 20)) == 2


# ---- the gate and eviction ----


@pytest.mark.parametrize(
    ("successes", "failures", "outcome", "status"),
    [
        (0, 4, Outcome.TOO_HARD, Status.DEFERRED),  # mean 0.10
        (1, 3, Outcome.PASS, Status.BUFFERED),  # 0.30
        (3, 1, Outcome.PASS, Status.BUFFERED),  # 0.70
        (4, 0, Outcome.TOO_EASY, Status.EASY),  # 0.90, but four rollouts never evict
        (7, 1, Outcome.TOO_EASY, Status.EASY),
        (32, 0, Outcome.EVICTED_POSTERIOR, Status.EVICT_PENDING),  # P(p >= 0.9) = 0.991
        (31, 1, Outcome.TOO_EASY, Status.EASY),  # 0.918 < 0.95
    ],
)
def test_gate_on_the_posterior(
    successes: int, failures: int, outcome: Outcome, status: Status
) -> None:
    assert posterior_pilot_gate(CFG, post(successes, failures)) == (outcome, status)


def test_eviction_needs_enough_evidence_and_confidence() -> None:
    assert not is_solved(CFG, post(8, 0))
    assert is_solved(CFG, post(32, 0))
    cfg = PosteriorGateConfig(evict_min_evidence=64)
    assert not is_solved(cfg, post(32, 0))
    assert not is_solved(PosteriorGateConfig(evict_pass_rate=None), post(500, 0))


# ---- pilot sizing and the buffer ----


def test_pilot_quota_follows_the_pass_through_rate() -> None:
    cfg = PosteriorGateConfig(train_batch_size=8)
    assert pilot_quota(cfg, open_slots=8, buffer_left=0, rate=0.5) == 32  # the cap, 4 x B
    assert pilot_quota(cfg, open_slots=0, buffer_left=2, rate=0.5) == 12  # (8 - 2) / 0.5
    assert pilot_quota(cfg, open_slots=0, buffer_left=2, rate=0.75) == 8
    assert pilot_quota(cfg, open_slots=0, buffer_left=9, rate=0.5) == 0  # buffer has enough
    assert pilot_quota(cfg.model_copy(update={"lookahead_steps": 0}), 2, 0, 0.5) == 4


def test_pass_through_ewma() -> None:
    cfg = PosteriorGateConfig(pass_rate_smoothing=0.1)
    keep = 0.9**4
    assert updated_pass_rate(cfg, 0.5, 4, 4) == pytest.approx(keep * 0.5 + (1 - keep))
    assert updated_pass_rate(cfg, 0.02, 50, 0) == pytest.approx(0.01)  # floored


def test_recheck_draws_are_fixed_and_uniform() -> None:
    draws = [recheck_draw(7, 2, pid) for pid in range(20000)]
    assert draws[:5] == [recheck_draw(7, 2, pid) for pid in range(5)]
    assert draws[:5] != [recheck_draw(7, 3, pid) for pid in range(5)]
    assert sum(d < 0.1 for d in draws) / len(draws) == pytest.approx(0.1, abs=0.01)
    assert all(0.0 <= d < 1.0 for d in draws)


def test_commits_take_last_chance_entries_first_then_highest_std() -> None:
    buf = [entry(1, 0.5, step=5), entry(2, 0.2, step=2), entry(3, 0.4, step=5)]
    assert [e.prompt_id for e in pick_commits(buf, 2, step=6, max_off=4)] == [2, 1]
    assert [e.prompt_id for e in pick_commits(buf, 2, step=5, max_off=4)] == [1, 3]


def test_config_rejects_inconsistent_sizes_and_empty_band() -> None:
    with pytest.raises(ValidationError, match="n_pilot < n"):
        PosteriorGateConfig(n=8, n_pilot=8)
    with pytest.raises(ValidationError, match="empty gate band"):
        PosteriorGateConfig(p_lower=0.8, p_upper=0.5)


# ---- plan_round ----


def test_plan_skips_commits_directly_and_pilots_the_rest() -> None:
    strategy = pg(recheck_rate=0.0)
    stats = [seen(8, 0), seen(0, 12), seen(16, 16), PromptStats(), seen(2, 1)]
    plan = strategy.plan_round(ctx(stats))
    assert [(i.prompt_id, i.role, i.n) for i in plan.items] == [
        (102, Role.FULL, 32),
        (103, Role.PILOT, 4),
        (104, Role.PILOT, 2),
    ]
    assert plan.stats[100].last_outcome is Outcome.SKIPPED_CONFIDENT_EASY
    assert plan.stats[100].status is Status.EASY
    assert plan.stats[101].last_outcome is Outcome.SKIPPED_CONFIDENT_HARD
    assert plan.stats[101].status is Status.DEFERRED
    assert plan.counts == {"gate_skipped_confident_easy": 1, "gate_skipped_confident_hard": 1}
    # two pilots, short of the quota (2 open + 2 next step) / 0.5: the window ran short
    assert plan.cursor == 5 and plan.needs_more_candidates


def test_rechecks_pilot_some_confident_prompts() -> None:
    stats = [seen(8, 0) for _ in range(400)]
    low_pass_rate = Counters(strategy_state={EWMA_KEY: "10000"})  # 0.01: pilot up to the cap
    strategy = pg(recheck_rate=0.25, max_pilots_per_round=1000)
    plan = strategy.plan_round(ctx(stats, counters=low_pass_rate))
    assert 60 < len(plan.items) < 140 and plan.counts["pilots_recheck"] == len(plan.items)
    assert len(plan.stats) + len(plan.items) == 400
    assert all(i.role is Role.PILOT and i.n == 2 for i in plan.items)


def test_direct_commits_never_exceed_the_missing_groups() -> None:
    stats = [seen(16, 16) for _ in range(5)]
    plan = pg().plan_round(ctx(stats, counters=Counters(committed=1)))  # B = 2: one missing
    assert [i.role for i in plan.items] == [Role.FULL] + [Role.PILOT] * 4


def test_buffer_commits_complete_pilot_rollouts_to_g() -> None:
    buf = [entry(7, 0.5, k=4, seq=1), entry(8, 0.4, k=2, seq=2), entry(9, 0.1, seq=3)]
    plan = pg().plan_round(ctx([PromptStats()] * 3, buf))
    commits = [i for i in plan.items if i.role is Role.COMMIT]
    assert [(i.prompt_id, i.n, len(i.reuse)) for i in commits] == [(7, 28, 4), (8, 30, 2)]
    assert [e.prompt_id for e in plan.taken_from_buffer] == [7, 8]


def test_pilot_quota_stops_the_walk_and_fills_the_buffer_to_need() -> None:
    strategy = pg(train_batch_size=4)
    counters = Counters(strategy_state={EWMA_KEY: "500000"})
    buf = [entry(i, 0.5, seq=i) for i in range(6)]  # 4 commit now, 2 stay
    plan = strategy.plan_round(ctx([PromptStats()] * 20, buf, counters))
    pilots = [i for i in plan.items if i.role is Role.PILOT]
    assert len(pilots) == 4  # (0 open + 4 next step - 2 left) / 0.5
    assert plan.cursor == 4 and not plan.needs_more_candidates


def test_plan_asks_for_more_when_the_window_is_all_skipped() -> None:
    stats = [seen(0, 12) for _ in range(10)]
    plan = pg(recheck_rate=0.0).plan_round(ctx(stats, end=10, n=1000))
    assert plan.needs_more_candidates and plan.cursor == 10 and not plan.items
    assert len(plan.stats) == 10


def test_a_whole_skipped_epoch_forces_rechecks() -> None:
    stats = [seen(0, 12) for _ in range(10)]
    plan = pg(recheck_rate=0.0).plan_round(ctx(stats, end=10, n=10))
    assert plan.items and all(i.role is Role.PILOT for i in plan.items)
    assert plan.counts["pilots_recheck"] == len(plan.items)
    assert len(plan.stats) == 10 - len(plan.items)
    assert plan.counts["gate_skipped_confident_hard"] == len(plan.stats)


def test_late_rounds_pilot_the_most_allowed() -> None:
    plan = pg(max_rounds=4).plan_round(ctx([PromptStats()] * 20, counters=Counters(round=2)))
    assert len(plan.items) == 8  # max_pilots = 4 x B


@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=60),
    st.integers(0, 3),
    st.integers(0, 5),
)
def test_plan_never_exceeds_its_budget(pairs: list, committed: int, buffered: int) -> None:
    strategy = pg(train_batch_size=4, recheck_rate=0.2)
    cfg = strategy.config
    stats = [seen(s, f) for s, f in pairs]
    buf = [entry(i, 0.5, seq=i) for i in range(buffered)]
    plan = strategy.plan_round(ctx(stats, buf, Counters(committed=committed)))
    assert sum(i.n for i in plan.items) <= cfg.round_budget(committed)
    trained = sum(i.role is not Role.PILOT for i in plan.items)
    assert trained <= cfg.train_batch_size - committed
    assert all(i.n + len(i.reuse) == 32 for i in plan.items if i.role is not Role.PILOT)
    ids = [i.prompt_id for i in plan.items]
    assert len(ids) == len(set(ids)) and not set(ids) & set(plan.stats)


# ---- apply_results ----


def test_results_gate_train_and_evict() -> None:
    strategy = pg(train_batch_size=3)
    taken = {9: entry(9, 0.5, k=4)}
    items = [
        PlanItem(9, Role.COMMIT, 28, (0, 1, 2, 3)),
        PlanItem(5, Role.FULL, 32),
        PlanItem(1, Role.PILOT, 4),
        PlanItem(2, Role.PILOT, 4),
        PlanItem(3, Role.PILOT, 4),
    ]
    rewards = [[1.0] * 14 + [0.0] * 14, [1.0] * 32, [1, 0, 0, 1], [1] * 4, [0] * 4]
    stats = {p: PromptStats() for p in (9, 5, 1, 2, 3)}
    counters = Counters(step=3, buffer_seq=10)
    out = strategy.apply_results(ResultContext(counters, items, rewards, stats, taken))
    assert out.gates == ["trained", "direct_commit", "pass", "too_easy", "too_hard"]
    assert [(t.prompt_id, t.role, t.reuse) for t in out.train] == [
        (9, Role.COMMIT, (0, 1, 2, 3)),
        (5, Role.FULL, ()),
    ]
    assert out.evict_pending == [5]  # 32/32: confidently solved
    assert out.stats[5].last_outcome is Outcome.EVICTED_POSTERIOR
    assert out.stats[5].status is Status.EVICT_PENDING
    assert out.stats[9].rollouts == 28 and out.stats[9].status is Status.ACTIVE
    assert record(out.stats[9]) == (14.5, 14.5, 3)
    assert out.stats[2].status is Status.EASY  # four rollouts never evict
    [buffered] = out.buffer_add
    assert (buffered.prompt_id, buffered.step, buffered.seq) == (1, 3, 11)
    assert buffered.pass_rate == pytest.approx(0.5)
    assert buffered.std == pytest.approx(math.sqrt(2.5 * 2.5 / (5 * 6)))
    assert out.counts["rollouts_pilot"] == 12 and out.counts["rollouts_commit"] == 28
    assert out.counts["rollouts_full"] == 32 and out.counts["groups_trained"] == 2
    assert out.counts["gate_direct_commit"] == 1 and out.counts["gate_evicted_posterior"] == 1
    assert out.buffer_seq == 13 and "buffer_seq" not in out.counts
    keep = 0.98**3
    expected = keep * 0.5 + (1 - keep) / 3
    assert out.run_state == {EWMA_KEY: str(round(expected * 1e6))}  # from the default 0.5
    assert EWMA_KEY not in out.counts  # set, never added


def test_results_fold_into_a_discounted_posterior() -> None:
    strategy = pg(half_life_steps=4)
    stats = {1: seen(8, 0, step=0)}
    out = strategy.apply_results(
        ResultContext(Counters(step=4), [PlanItem(1, Role.PILOT, 2)], [[0, 0]], stats, {})
    )
    assert record(out.stats[1])[:2] == pytest.approx((4.5, 2.5))
    assert out.gates == ["pass"]  # mean 0.64


def test_a_prompt_evicted_by_hand_mid_plan_stays_evicted() -> None:
    stats = {1: PromptStats(status=Status.EVICTED)}
    out = pg().apply_results(
        ResultContext(Counters(), [PlanItem(1, Role.PILOT, 4)], [[1, 0, 1, 0]], stats, {})
    )
    assert out.stats[1].status is Status.EVICTED and not out.buffer_add


# ---- evidence ----


def evidence_ctx(stats: PromptStats, rewards: list[float]) -> EvidenceContext:
    return EvidenceContext(Counters(step=record(stats)[2]), 1, stats, rewards)


def test_evidence_with_failures_restores_an_evicted_prompt() -> None:
    evicted = seen(32, 0, status=Status.EVICTED, last_outcome=Outcome.EVICTED_POSTERIOR)
    out = pg().apply_evidence(evidence_ctx(evicted, [1.0] * 6 + [0.0] * 2))
    assert out.stats.status is Status.ACTIVE
    assert out.stats.last_outcome is Outcome.RESTORED_EVIDENCE
    assert record(out.stats) == (38.5, 2.5, 0)
    assert out.counts == {"evidence_rewards": 8, "restored_evidence": 1}
    assert out.stats.rollouts == 0  # evaluations are not training rollouts


def test_confirming_evidence_keeps_the_eviction() -> None:
    evicted = seen(32, 0, status=Status.EVICT_PENDING)
    out = pg().apply_evidence(evidence_ctx(evicted, [1.0] * 8))
    assert out.stats.status is Status.EVICT_PENDING
    assert out.stats.last_outcome is Outcome.EVIDENCE and record(out.stats)[0] == 40.5


def test_evidence_on_an_active_prompt_only_updates_its_posterior() -> None:
    stats = replace(seen(2, 2), status=Status.DEFERRED)
    out = pg().apply_evidence(evidence_ctx(stats, [0.0] * 4))
    assert out.stats.status is Status.DEFERRED and record(out.stats)[1] == 6.5
