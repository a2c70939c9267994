"""The efficiency benchmark's arithmetic on hand-made cells: rollouts to target with
censoring, the target, paired ratios and their intervals, seeds needed, where the
rollouts went."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pilot_commit.bench.efficiency.stats import (
    EvalPoint,
    ToTarget,
    fix_target,
    paired_ratio,
    rollout_partition,
    rollouts_to_target,
    seeds_needed,
    sign_statement,
)


def curve(*points: tuple[int, float]) -> list[EvalPoint]:
    return [EvalPoint(i, r, a, 0.01, r / 100) for i, (r, a) in enumerate(points)]


def reached(*values: float) -> dict[int, ToTarget]:
    return {k: ToTarget(float(v), False) for k, v in enumerate(values)}


def test_rollouts_to_target_is_the_first_evaluation_at_or_above_it() -> None:
    c = curve((0, 0.2), (100, 0.25), (200, 0.3), (300, 0.28))
    assert rollouts_to_target(c, 0.3) == ToTarget(200.0, False, 2.0)
    assert rollouts_to_target(c, 0.2) == ToTarget(0.0, False, 0.0)


def test_a_cell_that_never_reaches_the_target_is_censored_at_what_it_spent() -> None:
    c = curve((0, 0.2), (100, 0.25), (320, 0.28))
    assert rollouts_to_target(c, 0.5) == ToTarget(320.0, True, None)


def test_target_is_warm_start_plus_a_share_of_the_mean_best_gain() -> None:
    target = fix_target(
        {0: curve((0, 0.20), (100, 0.30), (200, 0.40)), 1: curve((0, 0.20), (100, 0.30))}
    )
    # warm start 0.2; gains 0.2 and 0.1; target 0.2 + 0.7 x 0.15
    assert math.isclose(target.accuracy, 0.305) and target.seeds == (0, 1)
    assert math.isclose(target.mean_best_gain, 0.15)


def test_the_ratio_pairs_seeds() -> None:
    # Each seed: the denominator needs half the numerator's rollouts. The seeds differ a
    # lot from one another, which an unpaired bootstrap would turn into a wide interval.
    ratio = paired_ratio(("grpo", "pc"), reached(100, 400, 1600), reached(50, 200, 800))
    assert ratio is not None
    assert ratio.point == pytest.approx(2.0) and ratio.low == pytest.approx(2.0)
    assert ratio.high == pytest.approx(2.0) and ratio.seeds == (0, 1, 2)
    assert ratio.excludes_one()


def test_only_seeds_both_strategies_completed_enter() -> None:
    ratio = paired_ratio(("grpo", "pc"), reached(100, 200, 300), {1: ToTarget(100.0, False)})
    assert ratio is not None and ratio.seeds == (1,) and ratio.point == pytest.approx(2.0)
    assert paired_ratio(("grpo", "pc"), reached(100), {3: ToTarget(1.0, False)}) is None


def test_the_ratio_is_symmetric_for_an_even_number_of_seeds() -> None:
    a, b = reached(100, 300, 200, 900), reached(50, 200, 400, 300)
    ab, ba = paired_ratio(("a", "b"), a, b), paired_ratio(("b", "a"), b, a)
    assert ab is not None and ba is not None
    assert ab.point == pytest.approx(1 / ba.point)
    assert ab.low == pytest.approx(1 / ba.high, rel=1e-9)


def test_censored_cells_enter_at_their_lower_bound_and_are_listed() -> None:
    grpo = {0: ToTarget(3200.0, True), 1: ToTarget(1600.0, False), 2: ToTarget(3200.0, True)}
    pc = {0: ToTarget(800.0, False), 1: ToTarget(800.0, False), 2: ToTarget(3300.0, True)}
    ratio = paired_ratio(("grpo", "pc"), grpo, pc)
    assert ratio is not None and ratio.censored_seeds == (0, 2)
    assert ratio.per_seed == {0: 4.0, 1: 2.0, 2: 1.0}  # seed 2: neither reached it, a tie
    assert ratio.point == pytest.approx(2.0)  # the median seed's ratio
    # grpo reached it at 3,300 (its overshoot past the budget), pc spent 3,200 and never
    # did: not a win for pc, a tie; likewise the other way round
    late = paired_ratio(("grpo", "pc"), {0: ToTarget(3300.0, False)}, {0: ToTarget(3200.0, True)})
    assert late is not None and late.per_seed == {0: 1.0}
    early = paired_ratio(("grpo", "pc"), {0: ToTarget(3200.0, True)}, {0: ToTarget(3300.0, False)})
    assert early is not None and early.per_seed == {0: 1.0}


def test_a_target_met_at_the_start_is_a_tie() -> None:
    ratio = paired_ratio(("grpo", "pc"), reached(0, 0, 0), reached(0, 0, 0))
    assert ratio is not None and ratio.point == 1.0 and not ratio.excludes_one()


def test_seeds_needed_follows_the_spread_of_the_log_ratios() -> None:
    assert seeds_needed(np.array([0.5])) is None
    assert seeds_needed(np.zeros(4)) == 2
    spread = np.log(1.5) / 1.959964  # one ln(1.5) / z: pi/2 x 1^2 -> 2 seeds
    logs = np.array([-spread, spread]) / np.std([-1.0, 1.0], ddof=1)
    assert seeds_needed(logs) == 2
    assert seeds_needed(3 * logs) == math.ceil(math.pi / 2 * 9)  # 9x the variance


def test_sign_statement_says_when_the_interval_cannot_tell() -> None:
    clear = paired_ratio(("grpo", "pc"), reached(100, 400, 1600), reached(50, 200, 800))
    unclear = paired_ratio(("grpo", "pc"), reached(100, 100, 100), reached(50, 200, 80))
    assert clear is not None and unclear is not None
    assert sign_statement(clear).endswith("pc needs fewer rollouts to target than grpo")
    assert sign_statement(unclear).endswith("cannot tell the sign (the interval includes 1)")


def test_rollout_partition_grpo_dapo_pilot_commit() -> None:
    g = 8
    # GRPO: 10 groups trained, 3 of them all-equal; nothing discarded
    grpo = rollout_partition(
        {"groups_trained": 10, "rollouts_total": 80, "rollouts_zero_variance": 24},
        {"groups_trained_zero_variance": 3},
        g,
    )
    assert grpo == {
        "trained_informative": 56,
        "trained_zero_variance": 24,
        "discarded_zero_variance": 0,
        "discarded_other": 0,
    }
    # DAPO: 20 groups generated, 10 trained, the 10 dropped were all-equal
    dapo = rollout_partition(
        {"groups_trained": 10, "rollouts_total": 160, "rollouts_zero_variance": 80}, {}, g
    )
    assert dapo["discarded_zero_variance"] == 80 and dapo["discarded_other"] == 0
    # PC: 24 pilots of 2 (12 all-equal, 2 expired), 10 commits of 6 fresh
    pc = rollout_partition(
        {"groups_trained": 10, "rollouts_total": 108, "rollouts_zero_variance": 24}, {}, g
    )
    assert pc == {
        "trained_informative": 80,
        "trained_zero_variance": 0,
        "discarded_zero_variance": 24,
        "discarded_other": 4,
    }
    assert sum(pc.values()) == 108
