"""Advantages and the policy loss, as small pure functions over tensors, and the
evaluation's accuracy with its clustered standard error.

The loss is GRPO/DAPO's clipped surrogate with a token-level mean (every completion token
of the mini-batch weighs the same, however long its sequence), clip-higher (separate
lower and upper clip ranges), an optional k3 KL penalty to a reference policy and
optional truncated importance sampling (TIS) against the generation server's logprobs,
which differ from the trainer's because the two run different kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from services.common.rewards import rewards_constant


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """(r - mean) / (std + eps) within one group (GRPO, arXiv 2402.03300); [G] -> [G].

    std is the population std (as the allocator computes it). A constant group (rewards
    equal by `services.common.rewards.rewards_constant`, the allocator's rule too) gets
    exactly zero advantages, in the rewards' dtype: the float mean of eight 0.9s is not
    0.9, and dividing that residue by a std + eps near eps would push every rollout of the
    group the same way.
    """
    if rewards_constant(rewards.tolist()):
        return torch.zeros_like(rewards)
    mean = rewards.mean()
    std = rewards.std(unbiased=False)
    return (rewards - mean) / (std + eps)


@dataclass(frozen=True)
class PolicyLossInput:
    """Token-level tensors for a micro-batch of N completions padded to T tokens."""

    logprobs: Tensor  # [N, T] current policy, with grad
    old_logprobs: Tensor  # [N, T] trainer's policy before this step's updates
    advantages: Tensor  # [N]
    mask: Tensor  # [N, T] 1 on completion tokens
    normalizer: float  # completion tokens in the whole mini-batch (token-level mean)
    clip_low: float = 0.2
    clip_high: float = 0.28
    gen_logprobs: Tensor | None = None  # [N, T] from the generation server (for TIS)
    tis_cap: float | None = None
    ref_logprobs: Tensor | None = None  # [N, T] reference policy (for KL)
    kl_coef: float = 0.0


@dataclass(frozen=True)
class PolicyLossOutput:
    loss: Tensor  # scalar, this micro-batch's share of the mini-batch loss
    clip_fraction: Tensor  # share of tokens whose ratio was clipped
    kl: Tensor  # mean k3 KL to the reference (0 when off)
    tis_weight: Tensor  # mean TIS weight (1 when off)


def policy_loss(inp: PolicyLossInput) -> PolicyLossOutput:
    mask = inp.mask.to(inp.logprobs.dtype)
    tokens = mask.sum().clamp(min=1.0)
    ratio = torch.exp(inp.logprobs - inp.old_logprobs)
    adv = inp.advantages[:, None]
    clipped_ratio = ratio.clamp(1.0 - inp.clip_low, 1.0 + inp.clip_high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    clip_fraction = ((ratio != clipped_ratio).to(mask.dtype) * mask).sum() / tokens

    tis_weight = torch.ones((), dtype=mask.dtype)
    if inp.tis_cap is not None and inp.gen_logprobs is not None:
        weights = torch.exp(inp.old_logprobs - inp.gen_logprobs).clamp(max=inp.tis_cap).detach()
        per_token = per_token * weights
        tis_weight = (weights * mask).sum() / tokens

    kl = torch.zeros((), dtype=mask.dtype)
    if inp.kl_coef > 0 and inp.ref_logprobs is not None:
        delta = inp.ref_logprobs - inp.logprobs
        per_token_kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + inp.kl_coef * per_token_kl
        kl = (per_token_kl.detach() * mask).sum() / tokens

    loss = (per_token * mask).sum() / inp.normalizer
    return PolicyLossOutput(loss, clip_fraction.detach(), kl, tis_weight)


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(target) per position under the distribution sampled at `temperature`:
    log_softmax(logits / T); logits [N, T, V], targets [N, T] -> [N, T] (fp32).

    The generation servers report the sampled distribution's logprobs (vLLM's
    processed_logprobs, services/generation/sampling.py), and TRL's GRPOTrainer and verl's
    dp_actor divide by the temperature the same way: at T != 1 raw logits would give the
    PPO ratio, TIS and the landing check another policy than the one sampled.
    """
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def lr_factor(
    step: int, *, warmup_steps: int, schedule: str, total_steps: int, min_ratio: float
) -> float:
    """Share of the peak learning rate for the `step`-th train step (0-based).

    Linear warmup over `warmup_steps` (step 0 gets 1 / warmup_steps), then `constant`, or
    `cosine` decay from 1 to `min_ratio` at `total_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clustered_mean_stderr(correct: Sequence[Sequence[bool]]) -> tuple[float, float]:
    """Accuracy and its standard error over prompts, each with one or more answers.

    The accuracy is the mean over prompts of each prompt's share of right answers; the
    standard error is the sample standard deviation (ddof 1) of those per-prompt shares
    over sqrt(number of prompts). Answers to one prompt are correlated, so this clustered
    error is the right one with several answers per prompt; with one answer each it
    equals the binomial sqrt(p (1 - p) / (n - 1)). Both are in [0, 1]; the error is NaN
    with fewer than two prompts. Raises ValueError when `correct` or a prompt's list is
    empty.
    """
    if not correct or any(len(answers) == 0 for answers in correct):
        raise ValueError("every prompt needs at least one answer")
    shares = [sum(answers) / len(answers) for answers in correct]
    n = len(shares)
    mean = sum(shares) / n
    if n < 2:
        return mean, math.nan
    variance = sum((x - mean) ** 2 for x in shares) / (n - 1)
    return mean, math.sqrt(variance / n)
