"""Unit tests of the pure sampling helpers."""

from __future__ import annotations

import math

import torch

from services.generation.sampling import (
    find_stop,
    sample_tokens,
    sampling_logprobs,
    top_p_keep,
)

ONES = torch.ones(1)


def test_top_p_keeps_the_nucleus_and_at_least_one_token() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.9, 0.05, 0.03, 0.02]])
    kept = top_p_keep(probs, torch.tensor([0.7, 0.1]))
    assert kept.tolist() == [[True, True, False, False], [True, False, False, False]]


def test_logprobs_are_of_the_tempered_distribution() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)]])
    at_1 = sampling_logprobs(logits, ONES, ONES)
    assert torch.allclose(at_1, torch.log(torch.tensor([[0.25, 0.75]])))
    # T = 0.5 squares the odds: 1 : 9.
    at_half = sampling_logprobs(logits, torch.tensor([0.5]), ONES)
    assert torch.allclose(at_half, torch.log(torch.tensor([[0.1, 0.9]])))
    # Greedy rows report the raw model's logprobs, as vLLM's processed mode does.
    assert torch.allclose(sampling_logprobs(logits, torch.zeros(1), ONES), at_1)


def test_top_p_logprobs_are_renormalised_over_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    logprobs = sampling_logprobs(logits, ONES, torch.tensor([0.7]))
    assert torch.allclose(logprobs[0, :2].exp(), torch.tensor([0.625, 0.375]))
    assert torch.isinf(logprobs[0, 2:]).all()
    # A sampled token is always inside the nucleus.
    tokens = sample_tokens(
        logprobs.repeat(500, 1), torch.zeros(500, dtype=torch.bool), [None] * 500
    )
    assert set(tokens.tolist()) <= {0, 1}


def test_greedy_rows_take_the_argmax() -> None:
    temperature = torch.tensor([0.0, 0.0])
    logprobs = sampling_logprobs(
        torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]]), temperature, ONES
    )
    tokens = sample_tokens(logprobs, temperature <= 0, [None, None])
    assert tokens.tolist() == [1, 0]


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    logprobs = sampling_logprobs(torch.randn(3, 50), torch.ones(3), torch.ones(3))

    def draw(rows: list[int]) -> list[int]:
        gens = [torch.Generator().manual_seed(7) if r == 0 else None for r in rows]
        greedy = torch.zeros(len(rows), dtype=torch.bool)
        return sample_tokens(logprobs[rows], greedy, gens).tolist()

    assert draw([0])[0] == draw([0, 1, 2])[0]


def test_sampling_follows_the_tempered_distribution() -> None:
    rows = 4000
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(rows, 1)
    logprobs = sampling_logprobs(logits, torch.full((rows,), 0.7), torch.ones(rows))
    shared = torch.Generator().manual_seed(0)
    greedy = torch.zeros(rows, dtype=torch.bool)
    tokens = sample_tokens(logprobs, greedy, [None] * rows, shared)
    freq = torch.bincount(tokens, minlength=3).float() / rows
    expected = torch.tensor([0.7, 0.2, 0.1]) ** (1 / 0.7)
    assert torch.allclose(freq, expected / expected.sum(), atol=0.03)


def test_find_stop_returns_the_earliest_hit() -> None:
    assert find_stop("ab=cd;ef", ["d;", "="]) == 2
    assert find_stop("abc", ["x", ""]) is None
