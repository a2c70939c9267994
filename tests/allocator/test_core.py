"""Unit tests of the pure allocation core, with hand-checked cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.allocator.core import (
    Candidate,
    Counters,
    PlanContext,
    PlanItem,
    ResultContext,
    Role,
    balanced_subset,
    pick_from_buffer,
    summarize,
)
from services.allocator.permutation import EpochPermutation
from services.allocator.records import BufferEntry, Outcome, PromptStats, Status
from services.allocator.strategies.dapo import DAPO, DAPOConfig
from services.allocator.strategies.grpo import GRPO, GRPOConfig
from services.allocator.strategies.pilot_commit import PilotCommit, PilotCommitConfig, pilot_gate


def pc(**kw: object) -> PilotCommit:
    base: dict[str, object] = {
        "train_batch_size": 2,
        "gen_batch_size": 4,
        "n_pilot": 4,
        "n_commit": 4,
    }
    return PilotCommit(PilotCommitConfig.model_validate({**base, **kw}))


def ctx(
    ids: list[int],
    buffer: list[BufferEntry] = (),
    counters: Counters | None = None,
    end: int | None = None,
    n: int = 100,
) -> PlanContext:
    window = [Candidate(i, pid, PromptStats()) for i, pid in enumerate(ids)]
    stop = len(ids) if end is None else end
    return PlanContext(counters or Counters(), n, 0, window, stop, stop >= n, list(buffer))


def entry(pid: int, std: float, step: int = 0, seq: int = 0) -> BufferEntry:
    return BufferEntry(pid, step, seq, 0.5, std, (1.0, 0.0, 1.0, 0.0))


# ---- permutation ----


@given(st.integers(1, 5000), st.integers(0, 2**32), st.integers(0, 5))
def test_epoch_permutation_is_a_bijection(n: int, seed: int, epoch: int) -> None:
    ids = EpochPermutation(n, seed, epoch).ids(0, n)
    assert sorted(ids) == list(range(n))


def test_permutation_depends_on_seed_and_epoch_and_slices_agree() -> None:
    a = EpochPermutation(1000, 1, 0).ids(0, 1000)
    assert a != EpochPermutation(1000, 2, 0).ids(0, 1000)
    assert a != EpochPermutation(1000, 1, 1).ids(0, 1000)
    assert EpochPermutation(1000, 1, 0).ids(300, 400) == a[300:400]


# ---- records ----


def test_prompt_stats_round_trip_is_40_bytes() -> None:
    stats = PromptStats(
        7, 3, 3.5, 0.25, 0.4330127, 12, Status.BUFFERED, Outcome.PASS, 2, 0, b"strategy"
    )
    raw = stats.pack()
    assert len(raw) == 40
    back = PromptStats.unpack(raw)
    assert back.status is Status.BUFFERED and back.last_outcome is Outcome.PASS
    assert (back.rollouts, back.successes, back.last_step) == (7, 3, 12)
    assert back.strategy_state == b"strategy\0\0\0\0"  # the strategy's 12 bytes, padded
    assert back.pilot_std == pytest.approx(0.4330127)
    assert math.isnan(PromptStats.unpack(None).pilot_pass_rate)


def test_with_status_can_set_outcome_none() -> None:
    # Outcome.NONE is 0, so `outcome or previous` used to keep the previous outcome.
    stats = PromptStats(last_outcome=Outcome.PASS)
    assert stats.with_status(Status.ACTIVE, Outcome.NONE).last_outcome is Outcome.NONE
    assert stats.with_status(Status.ACTIVE).last_outcome is Outcome.PASS


def test_buffer_entry_round_trip() -> None:
    e = BufferEntry(123456789, 4, 17, 0.5, 0.5, (1.0, 0.0, 0.25))
    assert BufferEntry.unpack(e.pack()) == e


# ---- helpers ----


def test_summarize_hand_checked() -> None:
    s = summarize([1.0, 0.0, 1.0, 1.0], 0.5)
    assert (s.n, s.successes, s.pass_rate) == (4, 3, 0.75)
    assert s.std == pytest.approx(math.sqrt(0.1875))
    assert summarize([0.0] * 5, 0.5).all_equal


def test_balanced_subset_keeps_half_right_half_wrong() -> None:
    rewards = [1, 1, 1, 1, 1, 0, 0, 1]
    idx = balanced_subset(rewards, 4, 0.5)
    assert len(idx) == 4 and sum(rewards[i] for i in idx) == 2
    assert balanced_subset([1, 1, 1, 0], 2, 0.5) == (0, 3)
    assert balanced_subset([1, 0], 5, 0.5) == (0, 1)


def test_max_variance_pick_breaks_ties_by_recency() -> None:
    buf = [entry(1, 0.5, step=0, seq=1), entry(2, 0.5, step=1, seq=2), entry(3, 0.3, seq=3)]
    assert [e.prompt_id for e in pick_from_buffer(buf, 2, "max_variance", (0,))] == [2, 1]


def test_random_pick_is_seeded() -> None:
    buf = [entry(i, 0.5, seq=i) for i in range(20)]
    a = pick_from_buffer(buf, 5, "random", (1, 2, 3))
    assert a == pick_from_buffer(list(reversed(buf)), 5, "random", (1, 2, 3))
    assert a != pick_from_buffer(buf, 5, "random", (1, 2, 4))


# ---- the gate ----


@pytest.mark.parametrize(
    ("successes", "outcome", "status"),
    [
        (0, Outcome.TOO_HARD, Status.DEFERRED),
        (1, Outcome.PASS, Status.BUFFERED),  # 1/8 = 0.125 is the lower edge, inclusive
        (6, Outcome.PASS, Status.BUFFERED),  # 6/8 = 0.75 is the upper edge, inclusive
        (7, Outcome.TOO_EASY, Status.EASY),
        (8, Outcome.TOO_EASY, Status.EVICT_PENDING),
    ],
)
def test_gate_band_edges_paper_setting(successes: int, outcome: Outcome, status: Status) -> None:
    cfg = PilotCommitConfig(n_pilot=8, p_lower=0.125, p_upper=0.25, exclude_threshold=1.0)
    group = summarize([1.0] * successes + [0.0] * (8 - successes), 0.5)
    assert pilot_gate(cfg, group) == (outcome, status)


def test_empty_band_is_rejected() -> None:
    with pytest.raises(ValidationError, match="empty gate band"):
        PilotCommitConfig(p_lower=0.8, p_upper=0.5)


# ---- Pilot-Commit plan and results ----


def test_first_round_pilots_only_then_commits_from_buffer() -> None:
    strategy = pc()
    plan = strategy.plan_round(ctx([10, 11, 12, 13, 14, 15]))
    assert [(i.prompt_id, i.role) for i in plan.items] == [
        (p, Role.PILOT) for p in (10, 11, 12, 13)
    ]
    assert plan.cursor == 4 and not plan.needs_more_candidates

    buf = [entry(7, 0.5, seq=1), entry(8, 0.4, seq=2), entry(9, 0.5, seq=3)]
    plan = strategy.plan_round(ctx([20, 21, 22, 23], buf, Counters(committed=0)))
    commits = [i for i in plan.items if i.role is Role.COMMIT]
    assert [i.prompt_id for i in commits] == [9, 7]  # two missing groups, highest std, newest
    assert all(i.n == 4 and len(i.reuse) == 4 for i in commits)
    assert sum(i.n for i in plan.items) <= 4 * 4 + 2 * 4  # the round's budget


def test_plan_asks_for_more_candidates_when_window_runs_short() -> None:
    plan = pc().plan_round(ctx([1, 2], end=10, n=100))
    assert plan.needs_more_candidates and plan.cursor == 10
    plan = pc().plan_round(ctx([1, 2], end=100, n=100))  # epoch end: take what is left
    assert not plan.needs_more_candidates and len(plan.items) == 2


def test_results_gate_buffer_and_train_batch() -> None:
    strategy = pc(exclude_threshold=1.0)
    taken = {9: entry(9, 0.5)}
    items = [
        PlanItem(9, Role.COMMIT, 4, (0, 1, 2, 3)),
        PlanItem(1, Role.PILOT, 4),
        PlanItem(2, Role.PILOT, 4),
        PlanItem(3, Role.PILOT, 4),
    ]
    rewards = [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    stats = {p: PromptStats() for p in (9, 1, 2, 3)}
    out = strategy.apply_results(
        ResultContext(Counters(step=3, buffer_seq=10), items, rewards, stats, taken)
    )
    assert out.gates == ["trained", "pass", "too_easy", "too_hard"]
    assert [(t.prompt_id, t.reuse) for t in out.train] == [(9, (0, 1, 2, 3))]
    assert [(e.prompt_id, e.step, e.seq) for e in out.buffer_add] == [(1, 3, 11)]
    assert out.evict_pending == [2]
    assert out.stats[3].status is Status.DEFERRED and out.stats[3].all_wrong_streak == 1
    assert out.stats[9].rollouts == 4 and out.stats[9].status is Status.ACTIVE
    assert out.counts["rollouts_pilot"] == 12 and out.counts["rollouts_commit"] == 4
    assert out.buffer_seq == 13 and "buffer_seq" not in out.counts


def test_expiry_after_max_off_steps() -> None:
    strategy = pc(buffer_max_off_steps=2)
    buf = [entry(1, 0.5, step=1), entry(2, 0.5, step=2), entry(3, 0.5, step=3)]
    # after step 3 completes, step 4 is next: step-1 entries are 3 steps old (> 2)
    assert [e.prompt_id for e in strategy.expire(3, buf)] == [1]


# ---- baselines ----


def test_grpo_plans_the_missing_prompts_with_full_groups_and_trains_all() -> None:
    strategy = GRPO(GRPOConfig(train_batch_size=3, n=4))
    plan = strategy.plan_round(ctx([5, 6, 7, 8]))
    assert [(i.prompt_id, i.role, i.n) for i in plan.items] == [
        (p, Role.FULL, 4) for p in (5, 6, 7)
    ]
    items = plan.items
    out = strategy.apply_results(
        ResultContext(
            Counters(),
            items,
            [[0] * 4, [1] * 4, [1, 0, 1, 0]],
            {p: PromptStats() for p in (5, 6, 7)},
            {},
        )
    )
    assert [t.prompt_id for t in out.train] == [5, 6, 7]


def test_dapo_drops_zero_variance_groups_and_discards_surplus() -> None:
    strategy = DAPO(DAPOConfig(train_batch_size=2, n=4, gen_batch_size=4))
    items = [PlanItem(p, Role.FULL, 4) for p in (1, 2, 3, 4)]
    rewards = [[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]]
    stats = {p: PromptStats() for p in (1, 2, 3, 4)}
    out = strategy.apply_results(ResultContext(Counters(committed=1), items, rewards, stats, {}))
    assert out.gates == ["too_easy", "trained", "too_hard", "surplus"]
    assert [t.prompt_id for t in out.train] == [2]
