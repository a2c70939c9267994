"""The evaluation's standard error is clustered by prompt (trainer/loop.py)."""

from __future__ import annotations

import math

import pytest

from trainer.algos import clustered_mean_stderr


def test_two_answers_per_prompt_hand_computed() -> None:
    # Per-prompt shares 1, 0, 0.5: mean 0.5; sample std 0.5; stderr 0.5 / sqrt(3).
    # Treating the 6 answers as independent would give sqrt(0.25 / 6) = 0.204 instead.
    mean, stderr = clustered_mean_stderr([[True, True], [False, False], [True, False]])
    assert mean == 0.5
    assert stderr == pytest.approx(0.5 / math.sqrt(3), abs=1e-12)


def test_perfectly_correlated_answers_count_once() -> None:
    # Two prompts, each answered the same way 4 times: the information of 2 answers.
    _, four = clustered_mean_stderr([[True] * 4, [False] * 4])
    _, one = clustered_mean_stderr([[True], [False]])
    assert four == one == pytest.approx(0.5)


def test_one_answer_per_prompt_is_the_binomial_error_with_n_minus_1() -> None:
    correct = [[True]] * 3 + [[False]] * 7
    mean, stderr = clustered_mean_stderr(correct)
    assert mean == pytest.approx(0.3)
    assert stderr == pytest.approx(math.sqrt(0.3 * 0.7 / 9), abs=1e-12)


def test_edge_cases() -> None:
    mean, stderr = clustered_mean_stderr([[True, False]])
    assert mean == 0.5 and math.isnan(stderr)
    with pytest.raises(ValueError):
        clustered_mean_stderr([])
    with pytest.raises(ValueError):
        clustered_mean_stderr([[True], []])
