"""Logprobs of rollouts under a policy: the micro-batch layout and the forward passes.

A micro-batch holds its distinct prompts once, left-padded to one width, and every
rollout's completion right-padded after it, with position ids counted from each row's first
real token (as verl's actor and TRL lay prompts and completions out). `score` computes,
for each completion token, log_softmax(logits / T) at the sampling temperature T (the
distribution the generation servers sampled and report logprobs for; TRL's GRPOTrainer and
verl's dp_actor divide by T the same way), and computes logits at completion positions
only: the prompt positions' share of the output projection and log-softmax (49k wide for
SmolLM2), most of a short completion's tokens, is never paid.

Two ways to get there, equal up to float rounding (tests/trainer/test_policy_logprobs.py):
- shared prompts (the default): each distinct prompt is run once with a KV cache, the
  cache rows are copied out to its rollouts (`index_select`, through which gradients flow
  back and add up), and the completions run on top. A group's G rollouts share their
  prompt, so its tokens are computed once instead of G times (the idea of Prefix Grouper,
  arXiv 2506.05433). On SmolLM2 with ~100-token prompts and <= 32-token completions that
  is most of the tokens.
- one pass over prompt + completion per row (`shared_prompts=False`): what gradient
  checkpointing needs, since transformers turns the KV cache off under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor
from transformers import DynamicCache

from trainer.algos import token_logprobs

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from trainer.policy import Rollout


@dataclass
class RolloutBatch:
    """One micro-batch of N rollouts over P distinct prompts, C completion tokens wide."""

    prompts: Tensor  # [P, Lp] distinct prompts, left-padded
    prompt_mask: Tensor  # [P, Lp] 1 on real prompt tokens
    rows: Tensor  # [N] the prompt row of each rollout
    targets: Tensor  # [N, C] completion tokens, right-padded
    mask: Tensor  # [N, C] 1 on real completion tokens
    gen_logprobs: Tensor  # [N, C] the generation server's logprobs
    old_logprobs: Tensor | None  # [N, C] before this step's updates; None: the update's own


def collate(
    rollouts: Sequence[Rollout],
    pad_id: int,
    device: torch.device,
    old_logprobs: Sequence[Sequence[float]] | None = None,
) -> RolloutBatch:
    """The micro-batch of `rollouts` (module docstring); per-completion-token values line
    up with `targets`."""
    distinct: dict[tuple[int, ...], int] = {}
    rows = [distinct.setdefault(tuple(r.prompt_ids), len(distinct)) for r in rollouts]
    width_p = max(len(p) for p in distinct)
    prompts = torch.full((len(distinct), width_p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(distinct), width_p), dtype=torch.long)
    for row, prompt in enumerate(distinct):
        prompts[row, width_p - len(prompt) :] = torch.tensor(prompt)
        prompt_mask[row, width_p - len(prompt) :] = 1
    n, width_c = len(rollouts), max(1, max(len(r.completion_ids) for r in rollouts))
    targets = torch.full((n, width_c), pad_id, dtype=torch.long)
    mask, gen, old = (torch.zeros((n, width_c)) for _ in range(3))
    for i, r in enumerate(rollouts):
        c = len(r.completion_ids)
        targets[i, :c] = torch.tensor(r.completion_ids, dtype=torch.long)
        mask[i, :c] = 1.0
        gen[i, :c] = torch.tensor(r.gen_logprobs[:c])
        if old_logprobs is not None:
            old[i, :c] = torch.tensor(old_logprobs[i])
    return RolloutBatch(
        prompts=prompts.to(device),
        prompt_mask=prompt_mask.to(device),
        rows=torch.tensor(rows, device=device),
        targets=targets.to(device),
        mask=mask.to(device),
        gen_logprobs=gen.to(device),
        old_logprobs=old.to(device) if old_logprobs is not None else None,
    )


def score(
    model: PreTrainedModel, batch: RolloutBatch, temperature: float, *, shared_prompts: bool = True
) -> Tensor:
    """[N, C] log_softmax(logits / temperature) of each completion token of `batch` under
    `model` (with grad when grad is enabled); positions past a row's completion hold
    values the caller masks out."""
    logits = _shared_prompt_logits(model, batch) if shared_prompts else _joint_logits(model, batch)
    return token_logprobs(logits, batch.targets, temperature)


def _completion_positions(batch: RolloutBatch) -> Tensor:
    """[N, C] position ids of the completion tokens: each row's prompt length onwards."""
    lengths = batch.prompt_mask.sum(dim=1)[batch.rows]
    steps = torch.arange(batch.targets.shape[1], device=lengths.device)
    return lengths[:, None] + steps[None, :]


def _shared_prompt_logits(model: PreTrainedModel, batch: RolloutBatch) -> Tensor:
    """[N, C, V] logits predicting each completion token: the distinct prompts once with a
    KV cache (the last position predicts the first token), the cache copied out to the
    rollouts, then every completion on top of its prompt's cache."""
    cache = DynamicCache()
    prompt_positions = (batch.prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    first = model(
        input_ids=batch.prompts,
        attention_mask=batch.prompt_mask,
        position_ids=prompt_positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    first = first[batch.rows][:, None]
    if batch.targets.shape[1] == 1:
        return first
    cache.reorder_cache(cast(torch.LongTensor, batch.rows))
    attention = torch.cat([batch.prompt_mask[batch.rows], batch.mask.long()], dim=1)
    rest = model(
        input_ids=batch.targets[:, :-1],
        attention_mask=attention[:, :-1],
        position_ids=_completion_positions(batch)[:, :-1],
        cache=cache,
        use_cache=True,
    ).logits
    return torch.cat([first, rest], dim=1)


def _joint_logits(model: PreTrainedModel, batch: RolloutBatch) -> Tensor:
    """[N, C, V] logits predicting each completion token from one pass over each row's
    prompt + completion (the logits of the completion positions only)."""
    prompt_positions = (batch.prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    positions = torch.cat([prompt_positions[batch.rows], _completion_positions(batch)], dim=1)
    return model(
        input_ids=torch.cat([batch.prompts[batch.rows], batch.targets], dim=1),
        attention_mask=torch.cat([batch.prompt_mask[batch.rows], batch.mask.long()], dim=1),
        position_ids=positions,
        use_cache=False,
        logits_to_keep=batch.targets.shape[1] + 1,
    ).logits[:, :-1]
