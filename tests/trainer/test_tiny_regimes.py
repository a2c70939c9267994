"""Regime mixtures: classification, the mixture solve and the seeded selection."""

from __future__ import annotations

import pytest

from trainer.tiny.regimes import (
    EASY,
    HARD,
    MIDDLE,
    ClassStats,
    Estimate,
    RegimeConfig,
    class_stats,
    classify,
    expected_share,
    pick,
    proportional_counts,
    solve_mixture,
    zero_variance_probability,
)

CONFIG = RegimeConfig(group_size=4, classify_samples=2)
POOL_ZV = {EASY: 0.8, MIDDLE: 0.1, HARD: 1.0}


def _estimates() -> list[Estimate]:
    """10 easy (fresh group all right in 8), 10 hard (all 10 all-wrong), 20 middle (4 flat)."""
    rows = [{"prompt": f"{i}+0=", "answer": str(i), "difficulty": 1} for i in range(40)]
    easy = [Estimate(rows[i], 2, 4 if i < 8 else 3) for i in range(10)]
    hard = [Estimate(rows[i], 0, 0) for i in range(10, 20)]
    middle = [Estimate(rows[i], 1, 0 if i < 24 else 2) for i in range(20, 40)]
    return easy + hard + middle


def test_classify_and_zero_variance_probability():
    assert [classify(k, 4) for k in (0, 1, 3, 4)] == [HARD, MIDDLE, MIDDLE, EASY]
    assert zero_variance_probability(0.0, 32) == 1.0
    assert zero_variance_probability(0.5, 2) == pytest.approx(0.5)


def test_class_stats_measure_all_equal_groups_on_the_fresh_answers():
    stats = class_stats(_estimates(), CONFIG)
    assert stats.counts == {EASY: 10, MIDDLE: 20, HARD: 10}
    assert stats.zero_variance == {EASY: 0.8, MIDDLE: 0.2, HARD: 1.0}


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_mixture_hits_the_target_when_the_pool_allows(target):
    stats = ClassStats({EASY: 10_000, MIDDLE: 1000, HARD: 10_000}, POOL_ZV)
    mixture = solve_mixture(target, stats, easy_share=0.5)
    assert mixture.counts[MIDDLE] == 1000
    assert mixture.expected_zero_variance == pytest.approx(target, abs=0.002)
    assert abs(mixture.counts[EASY] - mixture.counts[HARD]) <= 1


def test_mixture_cuts_the_middle_when_easy_prompts_run_out():
    stats = ClassStats({EASY: 50, MIDDLE: 1000, HARD: 10_000}, {EASY: 0.8, MIDDLE: 0.1, HARD: 1.0})
    mixture = solve_mixture(0.7, stats, easy_share=0.5)
    assert mixture.counts[EASY] == 50
    assert mixture.counts[MIDDLE] < 1000
    assert mixture.expected_zero_variance == pytest.approx(0.7, abs=0.01)


def test_unreachable_target_fails_loudly():
    stats = ClassStats({EASY: 10, MIDDLE: 10, HARD: 10}, {EASY: 0.8, MIDDLE: 0.4, HARD: 1.0})
    with pytest.raises(ValueError, match="outside"):
        solve_mixture(0.3, stats, easy_share=0.5)


def test_test_counts_keep_the_train_proportions_around_all_middle_prompts():
    stats = ClassStats({EASY: 10_000, MIDDLE: 1000, HARD: 10_000}, POOL_ZV)
    mixture = solve_mixture(0.5, stats, easy_share=0.5)
    counts = proportional_counts(mixture, {EASY: 10_000, MIDDLE: 100, HARD: 10_000})
    assert counts[MIDDLE] == 100
    assert counts[EASY] == round(mixture.counts[EASY] / 10)


def test_pick_is_seeded_and_respects_counts():
    counts = {EASY: 3, MIDDLE: 5, HARD: 2}
    chosen = pick(_estimates(), counts, CONFIG, seed=7)
    assert chosen == pick(_estimates(), counts, CONFIG, seed=7)
    classes = [classify(e.classify_right, CONFIG.classify_samples) for e in chosen]
    assert {c: classes.count(c) for c in counts} == counts
    assert expected_share(counts, {EASY: 1.0, MIDDLE: 0.0, HARD: 1.0}) == 0.5
