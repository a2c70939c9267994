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
    median_interval,
    median_rank,
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
    # lot from one another, which an unpaired interval would turn into a wide one.
    grpo, pc = reached(100, 400, 1600, 300, 900, 50), reached(50, 200, 800, 150, 450, 25)
    ratio = paired_ratio(("grpo", "pc"), grpo, pc)
    assert ratio is not None
    assert ratio.point == pytest.approx(2.0) and ratio.low == pytest.approx(2.0)
    assert ratio.high == pytest.approx(2.0) and ratio.seeds == (0, 1, 2, 3, 4, 5)
    assert ratio.excludes_one() and ratio.coverage == pytest.approx(1 - 2 / 64)


def test_the_interval_ranks_are_the_binomial_ones() -> None:
    assert median_rank(5) is None  # even [min, max] covers 1 - 2 / 32 < 95%
    assert median_rank(6) == (1, pytest.approx(1 - 2 / 64))
    assert median_rank(9) == (2, pytest.approx(1 - 2 * 10 / 512))
    assert median_rank(20) == (6, pytest.approx(1 - 2 * 21700 / 2**20))
    logs = np.log(np.array([3.0, 0.5, 2.0, 1.5, 4.0, 1.2, 0.8, 2.5, 1.1]))
    low, high, coverage = median_interval(logs)
    assert (low, high) == (pytest.approx(0.8), pytest.approx(3.0)) and coverage is not None


def test_with_fewer_than_six_seeds_there_is_no_interval_and_no_sign() -> None:
    # five seeds, every one 2x: a percentile bootstrap says [2, 2]; the median cannot
    # have a 95% interval from five
    ratio = paired_ratio(
        ("grpo", "pc"), reached(100, 400, 1600, 300, 900), reached(50, 200, 800, 150, 450)
    )
    assert ratio is not None and ratio.point == pytest.approx(2.0)
    assert ratio.coverage is None and not ratio.excludes_one()
    assert (ratio.low, ratio.high) == (0.0, math.inf)
    assert "needs at least 6 paired seeds" in sign_statement(ratio)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 8, 12])
def test_with_no_difference_the_interval_excludes_1_at_most_5_percent_of_the_time(n: int) -> None:
    rng = np.random.default_rng(n)
    draws = 4000
    excluded = 0
    for logs in rng.normal(size=(draws, n)):
        low, high, coverage = median_interval(logs)
        excluded += coverage is not None and (low > 1 or high < 1)
    assert excluded / draws <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / draws)


def test_only_seeds_both_strategies_completed_enter() -> None:
    ratio = paired_ratio(("grpo", "pc"), reached(100, 200, 300), {1: ToTarget(100.0, False)})
    assert ratio is not None and ratio.seeds == (1,) and ratio.point == pytest.approx(2.0)
    assert paired_ratio(("grpo", "pc"), reached(100), {3: ToTarget(1.0, False)}) is None


def test_the_ratio_is_symmetric_for_an_even_number_of_seeds() -> None:
    a = reached(100, 300, 200, 900, 150, 700, 300, 250, 800, 120)
    b = reached(50, 200, 400, 300, 160, 200, 310, 100, 900, 60)
    ab, ba = paired_ratio(("a", "b"), a, b), paired_ratio(("b", "a"), b, a)
    assert ab is not None and ba is not None
    assert ab.point == pytest.approx(1 / ba.point)
    assert ab.low == pytest.approx(1 / ba.high, rel=1e-9)
    assert ab.high == pytest.approx(1 / ba.low, rel=1e-9) and ab.coverage == ba.coverage


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
    assert seeds_needed(np.zeros(4)) == 6  # never fewer than a 95% interval needs
    spread = np.log(1.5) / 1.959964  # one ln(1.5) / z: pi/2 x 1^2 -> 2 seeds, so 6
    logs = np.array([-spread, spread]) / np.std([-1.0, 1.0], ddof=1)
    assert seeds_needed(logs) == 6
    assert seeds_needed(3 * logs) == math.ceil(math.pi / 2 * 9)  # 9x the variance


def test_sign_statement_says_when_the_interval_cannot_tell() -> None:
    clear = paired_ratio(
        ("grpo", "pc"), reached(100, 400, 1600, 9, 9, 9), reached(50, 200, 800, 3, 3, 3)
    )
    unclear = paired_ratio(
        ("grpo", "pc"), reached(100, 100, 100, 9, 9, 9), reached(50, 200, 80, 3, 3, 3)
    )
    assert clear is not None and unclear is not None
    assert sign_statement(clear).endswith("pc needs fewer rollouts to target than grpo")
    assert sign_statement(unclear).endswith("cannot tell the sign (the interval includes 1)")
    flipped = paired_ratio(
        ("pc", "grpo"), reached(50, 200, 800, 3, 3, 3), reached(100, 400, 1600, 9, 9, 9)
    )
    assert flipped is not None
    assert sign_statement(flipped).endswith("pc needs fewer rollouts to target than grpo")


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
