"""Constant groups (all rewards equal, whatever the value) contribute exactly nothing.

Rewards such as 0.1 (a format bonus) and 0.9 (partial credit) are ordinary, and their
float arithmetic leaves residue (the population std of twelve 0.1s is 1.4e-17, not 0).
Every strategy must still see such a group as constant: not trained by DAPO, counted as
zero-variance when a strategy trains it anyway, and never ranked above another constant
group. Rewards in [0, 1] that are not 0 or 1 are read against `success_threshold` for
p_hat, so partial credit gates like its binary reading.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.allocator.core import (
    Counters,
    PlanItem,
    ResultContext,
    Role,
    summarize,
)
from services.allocator.records import BufferEntry, PromptStats
from services.allocator.strategies.dapo import DAPO, DAPOConfig
from services.allocator.strategies.grpo import GRPO, GRPOConfig
from services.allocator.strategies.pilot_commit import PilotCommit, PilotCommitConfig
from services.allocator.strategies.posterior_gate import PosteriorGate, PosteriorGateConfig
from services.common.rewards import rewards_constant

REWARD = st.floats(0.0, 1.0, allow_nan=False)
# Values whose sums and means leave float residue, plus the edges.
ORDINARY = st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.7, 0.9, 1 / 3, 2 / 3, 0.45, 1.0])


def _result(items: list[PlanItem], rewards: list[list[float]], taken=None) -> ResultContext:  # type: ignore[no-untyped-def]
    stats = {item.prompt_id: PromptStats() for item in items}
    return ResultContext(Counters(step=1), items, rewards, stats, taken or {})


def test_issue_case_dapo_twelve_tenths_is_too_hard() -> None:
    strategy = DAPO(DAPOConfig(train_batch_size=4, n=12))
    out = strategy.apply_results(_result([PlanItem(1, Role.FULL, 12)], [[0.1] * 12]))
    assert out.gates == ["too_hard"] and out.train == []
    assert out.counts["groups_trained"] == 0


@given(st.one_of(REWARD, ORDINARY), st.integers(1, 512))
def test_summary_of_a_constant_group_has_zero_std(value: float, n: int) -> None:
    group = summarize([value] * n, 0.5)
    assert group.std == 0.0 and group.all_equal
    assert rewards_constant([value] * n)


@given(st.lists(REWARD, min_size=2, max_size=64))
def test_a_group_with_two_clearly_different_rewards_is_not_constant(rewards: list[float]) -> None:
    spread = max(rewards) - min(rewards)
    group = summarize(rewards, 0.5)
    if spread > 1e-6:
        assert not group.all_equal and group.std > 0.0
        assert not rewards_constant(rewards)


def test_residue_from_different_float_paths_is_one_value() -> None:
    # 0.1 + 0.2 and 0.3 are one reward written by two code paths.
    assert rewards_constant([0.1 + 0.2, 0.3, 0.3])
    assert summarize([0.1 + 0.2, 0.3, 0.3], 0.5).std == 0.0
    assert not rewards_constant([0.3, 0.3000001])
    assert not rewards_constant([0.0, 1e-12])  # exact zero against a value: different


@given(st.one_of(REWARD, ORDINARY), st.integers(2, 64), st.sampled_from([0.5, 0.9, 1.0]))
def test_dapo_never_trains_a_constant_group(value: float, n: int, threshold: float) -> None:
    strategy = DAPO(DAPOConfig(train_batch_size=4, n=n, success_threshold=threshold))
    out = strategy.apply_results(_result([PlanItem(1, Role.FULL, n)], [[value] * n]))
    assert out.train == [] and out.counts["groups_trained"] == 0
    assert out.gates == ["too_easy" if value >= threshold else "too_hard"]


@given(st.one_of(REWARD, ORDINARY), st.integers(2, 64))
def test_grpo_counts_the_constant_groups_it_trains(value: float, n: int) -> None:
    strategy = GRPO(GRPOConfig(train_batch_size=2, n=n))
    items = [PlanItem(1, Role.FULL, n), PlanItem(2, Role.FULL, n)]
    out = strategy.apply_results(_result(items, [[value] * n, [0.0] * (n - 1) + [1.0]]))
    assert out.counts["groups_trained"] == 2
    assert out.counts["groups_trained_zero_variance"] == 1


@given(st.one_of(REWARD, ORDINARY), st.integers(1, 16), st.integers(1, 16))
def test_pilot_commit_counts_a_constant_commit_group(value: float, pilot: int, fresh: int) -> None:
    strategy = PilotCommit(PilotCommitConfig(train_batch_size=2, n_pilot=pilot, n_commit=fresh))
    entry = BufferEntry(7, 0, 1, 0.5, 0.5, tuple([value] * pilot))
    item = PlanItem(7, Role.COMMIT, fresh, tuple(range(pilot)))
    out = strategy.apply_results(_result([item], [[value] * fresh], {7: entry}))
    assert out.counts["groups_trained_zero_variance"] == 1


@given(st.one_of(REWARD, ORDINARY), st.integers(1, 32))
def test_pilot_commit_stores_zero_std_for_a_constant_pilot(value: float, n: int) -> None:
    strategy = PilotCommit(PilotCommitConfig(train_batch_size=2, n_pilot=n, p_lower=0.0))
    out = strategy.apply_results(_result([PlanItem(3, Role.PILOT, n)], [[value] * n]))
    assert out.stats[3].pilot_std == 0.0
    assert all(e.std == 0.0 for e in out.buffer_add)


@given(st.one_of(REWARD, ORDINARY), st.integers(3, 64), st.data())
def test_posterior_gate_counts_a_constant_commit_group(
    value: float, n: int, data: st.DataObject
) -> None:
    pilot = data.draw(st.integers(1, n - 1))
    strategy = PosteriorGate(PosteriorGateConfig(train_batch_size=2, n=n, n_pilot=1, n_pilot_min=1))
    entry = BufferEntry(7, 0, 1, 0.5, 0.5, tuple([value] * pilot))
    item = PlanItem(7, Role.COMMIT, n - pilot, tuple(range(pilot)))
    out = strategy.apply_results(_result([item], [[value] * (n - pilot)], {7: entry}))
    assert out.counts["groups_trained_zero_variance"] == 1


def test_posterior_gate_issue_case_twelve_tenths() -> None:
    strategy = PosteriorGate(PosteriorGateConfig(train_batch_size=2, n=12, n_pilot=4))
    entry = BufferEntry(7, 0, 1, 0.5, 0.5, (0.1,) * 4)
    item = PlanItem(7, Role.COMMIT, 8, (0, 1, 2, 3))
    out = strategy.apply_results(_result([item], [[0.1] * 8], {7: entry}))
    assert out.counts["groups_trained_zero_variance"] == 1


@given(st.lists(REWARD, min_size=4, max_size=4), st.sampled_from([0.25, 0.5, 0.75]))
def test_partial_credit_gates_like_its_binary_reading(rewards: list[float], thr: float) -> None:
    """p_hat is the share of rewards >= success_threshold, so partial credit and its 0/1
    reading give the same gate, status and stored pass rate."""
    binary = [1.0 if r >= thr else 0.0 for r in rewards]
    outcomes = []
    for group in (rewards, binary):
        strategy = PilotCommit(
            PilotCommitConfig(train_batch_size=2, n_pilot=4, success_threshold=thr)
        )
        out = strategy.apply_results(_result([PlanItem(3, Role.PILOT, 4)], [group]))
        stats = out.stats[3]
        outcomes.append((out.gates, stats.status, stats.pilot_pass_rate, stats.successes))
    assert outcomes[0] == outcomes[1]


def test_partial_credit_example_passes_the_gate() -> None:
    # Two rollouts at 0.9 (right, unboxed with a 0.1 format bonus), six at 0.1 (wrong, boxed).
    strategy = PilotCommit(PilotCommitConfig(train_batch_size=2, n_pilot=8))
    out = strategy.apply_results(_result([PlanItem(3, Role.PILOT, 8)], [[0.9] * 2 + [0.1] * 6]))
    assert out.gates == ["pass"] and out.stats[3].pilot_pass_rate == 0.25
