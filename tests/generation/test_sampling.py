"""Unit tests of the pure sampling helpers."""

from __future__ import annotations

import torch

from services.generation.sampling import find_stop, raw_logprobs, sample_tokens, top_p_mask


def test_top_p_keeps_the_nucleus_and_at_least_one_token() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.9, 0.05, 0.03, 0.02]])
    kept = top_p_mask(probs, torch.tensor([0.7, 0.1]))
    assert (kept > 0).tolist() == [[True, True, False, False], [True, False, False, False]]


def test_greedy_rows_take_the_argmax() -> None:
    logprobs = raw_logprobs(torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]]))
    tokens = sample_tokens(logprobs, torch.zeros(2), torch.ones(2), [None, None])
    assert tokens.tolist() == [1, 0]


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    logprobs = raw_logprobs(torch.randn(3, 50))

    def draw(rows: list[int]) -> list[int]:
        gens = [torch.Generator().manual_seed(7) if r == 0 else None for r in rows]
        return sample_tokens(
            logprobs[rows], torch.ones(len(rows)), torch.ones(len(rows)), gens
        ).tolist()

    assert draw([0])[0] == draw([0, 1, 2])[0]


def test_sampling_follows_the_distribution() -> None:
    logprobs = raw_logprobs(torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(4000, 1))
    shared = torch.Generator().manual_seed(0)
    tokens = sample_tokens(logprobs, torch.ones(4000), torch.ones(4000), [None] * 4000, shared)
    freq = torch.bincount(tokens, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


def test_find_stop_returns_the_earliest_hit() -> None:
    assert find_stop("ab=cd;ef", ["d;", "="]) == 2
    assert find_stop("abc", ["x", ""]) is None
