"""Regime mixtures: classification, extras order, the mixture solve."""

from __future__ import annotations

import pytest

from trainer.tiny.regimes import (
    EASY,
    HARD,
    MIDDLE,
    Estimate,
    RegimeConfig,
    class_stats,
    classify,
    order_extras,
    solve_mixture,
    zero_variance_probability,
)

CONFIG = RegimeConfig(group_size=4, classify_samples=2)


def _row(i: int, difficulty: int = 1) -> dict:
    return {"prompt": f"{i}+0=", "answer": str(i), "difficulty": difficulty}


def _estimates() -> list[Estimate]:
    """10 easy (8 fresh groups all right), 10 hard (all flat), 20 middle (4 flat)."""
    easy = [Estimate(_row(i), 2, 4 if i < 8 else 3) for i in range(10)]
    hard = [Estimate(_row(i, difficulty=1 + i % 5), 0, 0) for i in range(10, 20)]
    middle = [Estimate(_row(i), 1, 0 if i < 24 else 2) for i in range(20, 40)]
    return easy + hard + middle


def test_classify_and_zero_variance_probability():
    assert [classify(k, 4) for k in (0, 1, 3, 4)] == [HARD, MIDDLE, MIDDLE, EASY]
    assert zero_variance_probability(0.0, 32) == 1.0
    assert zero_variance_probability(0.5, 2) == pytest.approx(0.5)


def test_class_stats_measure_all_equal_groups_on_the_fresh_answers():
    stats = class_stats(_estimates(), CONFIG)
    assert {c: s["prompts"] for c, s in stats.items()} == {EASY: 10, MIDDLE: 20, HARD: 10}
    assert {c: s["zero_variance"] for c, s in stats.items()} == {
        EASY: 0.8,
        MIDDLE: 0.2,
        HARD: 1.0,
    }


def test_extras_put_the_longest_hard_problems_first_and_interleave_easy():
    hard_only = order_extras(_estimates(), CONFIG, seed=0)
    assert [e.row["difficulty"] for e in hard_only[:2]] == [5, 5]
    assert all(classify(e.classify_right, 2) == HARD for e in hard_only[:10])
    half = order_extras(
        _estimates(), RegimeConfig(group_size=4, classify_samples=2, easy_share=0.5), 0
    )
    kinds = [classify(e.classify_right, 2) for e in half[:4]]
    assert kinds.count(EASY) == 2 and kinds.count(HARD) == 2
    assert order_extras(_estimates(), CONFIG, seed=0) == hard_only


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_mixture_keeps_the_middle_and_adds_the_fewest_extras(target):
    middle = [True] * 10 + [False] * 90
    extras = ([True] * 9 + [False]) * 100
    mixture = solve_mixture(target, middle, extras)
    assert mixture.middle == 100
    assert mixture.expected_zero_variance >= target
    shorter = mixture.extras - 1
    assert (10 + sum(extras[:shorter])) / (100 + shorter) < target


def test_mixture_cuts_the_middle_when_extras_run_out():
    middle = [False] * 100
    mixture = solve_mixture(0.7, middle, [True] * 10)
    assert mixture.extras == 10
    assert mixture.middle == 4
    assert mixture.expected_zero_variance == pytest.approx(10 / 14)


def test_target_below_the_middle_fails_loudly():
    with pytest.raises(ValueError, match="below"):
        solve_mixture(0.3, [True] * 5 + [False] * 5, [True] * 10)
