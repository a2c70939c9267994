"""Pure tensor helpers for one decoding step: sampling, logprobs and stop checks.

Kept free of model and server state so they can be tested on hand-made logits. The
logprobs reported to clients are the model's raw log-softmax (before temperature and
top-p), as vLLM reports them by default: they equal what the trainer recomputes with a
plain forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def raw_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """[B, V] logits -> [B, V] fp32 log-probabilities of the unmodified model."""
    return torch.log_softmax(logits.float(), dim=-1)


def top_p_mask(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row of [B, V] `probs` outside its nucleus `top_p` [B].

    The most likely token is always kept, so a row never becomes all zeros.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before > top_p[:, None]
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return probs.masked_fill(drop, 0.0)


def sample_tokens(
    logprobs: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    generators: Sequence[torch.Generator | None],
    shared: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row of [B, V] `logprobs`; returns [B] int64.

    Rows with temperature 0 are greedy. Sampling uses the exponential-race form of the
    categorical (argmax of p / E, E ~ Exp(1)) so that each seeded row draws its noise from
    its own generator, which makes a seeded request reproducible whatever batch it joins.
    """
    greedy = temperature <= 0
    safe_t = torch.where(greedy, torch.ones_like(temperature), temperature)
    probs = torch.softmax(logprobs / safe_t[:, None], dim=-1)
    if bool((top_p < 1).any()):
        probs = top_p_mask(probs, top_p)
    noise = torch.empty_like(probs).exponential_(generator=shared)
    for row, generator in enumerate(generators):
        if generator is not None:
            noise[row].exponential_(generator=generator)
    sampled = (probs / noise).argmax(dim=-1)
    return torch.where(greedy, logprobs.argmax(dim=-1), sampled)


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
