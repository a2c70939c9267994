"""The efficiency benchmark's arithmetic: targets, rollouts to target, ratio intervals."""

from __future__ import annotations

import math

import numpy as np

from pilot_commit.bench.efficiency import RunResult, bootstrap_ratio, summarize_regime


def result(strategy: str, seed: int, curve: list[tuple[int, float]]) -> RunResult:
    final = {
        "rollouts_total": curve[-1][0],
        "rollouts_zero_variance": curve[-1][0] // 2,
        "groups_trained": 10,
    }
    return RunResult(strategy, seed, [(r, a, r / 100) for r, a in curve], final, {"evicted": 3})


def test_rollouts_to_target_is_the_first_evaluation_at_or_above_it() -> None:
    run = result("grpo", 0, [(0, 0.2), (100, 0.25), (200, 0.3), (300, 0.28)])
    assert run.to_target(0.3) == (200.0, 2.0)
    assert run.to_target(0.5) == (math.inf, math.inf)


def test_bootstrap_ratio_point_and_interval() -> None:
    rng = np.random.default_rng(0)
    point, (low, high) = bootstrap_ratio([200, 200, 200], [100, 100, 100], rng)
    assert point == 2.0 and low == high == 2.0
    point, (low, high) = bootstrap_ratio([100, 200, 300], [100, 100, 100], rng)
    assert point == 2.0 and low <= 2.0 <= high and low >= 1.0 and high <= 3.0
    point, _ = bootstrap_ratio([math.inf, math.inf, 100], [100, 100, 100], rng)
    assert math.isinf(point)  # GRPO's median never reached the target
    assert bootstrap_ratio([0, 0, 0], [0, 0, 0], rng)[0] == 1.0  # warm start met it: a tie


def test_target_is_fixed_from_grpo() -> None:
    runs = [
        result("grpo", 0, [(0, 0.20), (100, 0.30), (200, 0.40)]),
        result("grpo", 1, [(0, 0.20), (100, 0.25), (200, 0.30)]),
        result("pilot_commit", 0, [(0, 0.20), (50, 0.40)]),
        result("pilot_commit", 1, [(0, 0.20), (80, 0.40)]),
    ]
    summary = summarize_regime(70, runs, np.random.default_rng(0), {})
    # warm start 0.2; GRPO's mean best gain (0.2 + 0.1) / 2 = 0.15; target 0.2 + 0.105
    assert math.isclose(summary["target_accuracy"], 0.305)
    assert summary["rollouts_to_target"]["grpo"] == {"0": 200.0, "1": None}
    assert summary["rollouts_to_target"]["pilot_commit"] == {"0": 50.0, "1": 80.0}
    assert math.isinf(summary["ratio_grpo_over_pc"])  # GRPO's median is "not reached"
    assert summary["zero_variance_share"]["grpo"] == 0.5
