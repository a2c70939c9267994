"""The trainable policy: model, optimiser, and one policy-gradient step over train groups.

Rollouts arrive as token ids (prompt + completion) with the generation server's logprobs;
this module re-scores them with the trainer's model, forms group advantages and takes
`mini_batches` optimiser updates with gradient accumulation over micro-batches. The model
stays in eval mode throughout: dropout is off for scoring and for the updates, whatever
the model's config sets.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel

from services.common.devices import pick_device
from trainer.algos import (
    PolicyLossInput,
    group_advantages,
    lr_factor,
    policy_loss,
    token_logprobs,
)
from trainer.config import OptimSection


@dataclass
class Rollout:
    """One sampled completion, as the generation server returned it, with its reward."""

    prompt_ids: list[int]
    completion_ids: list[int]
    gen_logprobs: list[float]
    reward: float


@dataclass
class _Batch:
    ids: Tensor  # [N, L] right-padded prompt + completion
    attention: Tensor  # [N, L]
    targets: Tensor  # [N, L-1] next tokens
    mask: Tensor  # [N, L-1] 1 where the target is a completion token
    gen_logprobs: Tensor  # [N, L-1] aligned with targets
    old_logprobs: Tensor  # [N, L-1] aligned with targets (zeros when not given)


def collate(
    rollouts: Sequence[Rollout],
    pad_id: int,
    device: torch.device,
    old_logprobs: Sequence[Sequence[float]] | None = None,
) -> _Batch:
    """Right-pad prompt + completion; align per-completion-token values with targets."""
    seqs = [r.prompt_ids + r.completion_ids for r in rollouts]
    n, width = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    mask, gen, old = (torch.zeros((n, width - 1)) for _ in range(3))
    for i, (seq, r) in enumerate(zip(seqs, rollouts, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        start = len(r.prompt_ids) - 1  # logits at t predict token t + 1
        span = slice(start, start + len(r.completion_ids))
        mask[i, span] = 1.0
        gen[i, span] = torch.tensor(r.gen_logprobs[: len(r.completion_ids)])
        if old_logprobs is not None:
            old[i, span] = torch.tensor(old_logprobs[i])
    return _Batch(*(t.to(device) for t in (ids, attention, ids[:, 1:], mask, gen, old)))


class Policy:
    def __init__(
        self,
        model_path: Path,
        optim: OptimSection,
        device: str,
        dtype: str,
        *,
        total_steps: int = 0,
    ) -> None:
        self.device = pick_device(device)
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype
        )
        self.model.to(self.device)  # type: ignore[arg-type]
        # Dropout is off for the whole run, scoring and updates alike (as TRL's and verl's
        # RL trainers do): with it on, old logprobs, the loss's ratio and the mismatch
        # metric would each carry their own noise. eval() only switches dropout off here;
        # gradients flow as in train().
        self.model.eval()
        self.optim_cfg = optim
        self.pad_id = int(self.model.config.pad_token_id or 0)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
        )
        if optim.lr_schedule == "cosine" and total_steps <= optim.warmup_steps:
            raise ValueError(
                f"a cosine schedule needs total_steps ({total_steps}) > warmup_steps "
                f"({optim.warmup_steps})"
            )
        # One scheduler step per train step (however many mini-batch updates it takes).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step,
                warmup_steps=optim.warmup_steps,
                schedule=optim.lr_schedule,
                total_steps=total_steps,
                min_ratio=optim.min_lr_ratio,
            ),
        )
        self.reference: PreTrainedModel | None = None
        if optim.kl_coef > 0:
            self.reference = copy.deepcopy(self.model).eval()
            self.reference.requires_grad_(False)

    def _logprobs(self, model: PreTrainedModel, batch: _Batch) -> Tensor:
        logits = model(input_ids=batch.ids, attention_mask=batch.attention).logits[:, :-1]
        return token_logprobs(logits, batch.targets)

    def _micro_batches(self, rollouts: Sequence[Rollout]) -> Iterator[Sequence[Rollout]]:
        size = self.optim_cfg.micro_batch_rollouts
        for start in range(0, len(rollouts), size):
            yield rollouts[start : start + size]

    def train_step(self, groups: Sequence[Sequence[Rollout]]) -> dict[str, float]:
        """One policy-gradient step over complete train groups; returns loss metrics."""
        cfg = self.optim_cfg
        rollouts, advantages = [], []
        for group in groups:
            rewards = torch.tensor([r.reward for r in group])
            advantages += group_advantages(rewards, cfg.adv_eps).tolist()
            rollouts += list(group)
        order = torch.randperm(len(rollouts)).tolist()
        rollouts = [rollouts[i] for i in order]
        adv = torch.tensor([advantages[i] for i in order])
        old = self._old_logprobs(rollouts)
        totals: dict[str, float] = {
            "loss": 0.0,
            "clip_fraction": 0.0,
            "kl": 0.0,
            "tis_weight": 0.0,
            "grad_norm": 0.0,
        }
        lr = self.optimizer.param_groups[0]["lr"]
        mini = max(1, -(-len(rollouts) // cfg.mini_batches))
        updates = 0
        for m_start in range(0, len(rollouts), mini):
            stats = self._update(
                rollouts[m_start : m_start + mini],
                adv[m_start : m_start + mini],
                old[m_start : m_start + mini],
            )
            for key, value in stats.items():
                totals[key] += value
            updates += 1
        self.scheduler.step()
        return {**{key: value / updates for key, value in totals.items()}, "lr": lr}

    @torch.no_grad()
    def _old_logprobs(self, rollouts: Sequence[Rollout]) -> list[list[float]]:
        """Completion-token logprobs before any update (the PPO ratio's denominator)."""
        out: list[list[float]] = []
        for micro in self._micro_batches(rollouts):
            batch = collate(micro, self.pad_id, self.device)
            logp = self._logprobs(self.model, batch)
            for i, r in enumerate(micro):
                start = len(r.prompt_ids) - 1
                out.append(logp[i, start : start + len(r.completion_ids)].tolist())
        return out

    def _update(
        self, rollouts: Sequence[Rollout], adv: Tensor, old: Sequence[Sequence[float]]
    ) -> dict[str, float]:
        cfg = self.optim_cfg
        normalizer = float(sum(len(r.completion_ids) for r in rollouts)) or 1.0
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "tis_weight": 0.0}
        done = 0
        for micro in self._micro_batches(rollouts):
            batch = collate(micro, self.pad_id, self.device, old[done : done + len(micro)])
            out = policy_loss(self._loss_input(batch, adv[done : done + len(micro)], normalizer))
            out.loss.backward()
            sums["loss"] += out.loss.item()
            for key in ("clip_fraction", "kl", "tis_weight"):
                sums[key] += float(getattr(out, key)) / len(rollouts) * len(micro)
            done += len(micro)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        return {**sums, "grad_norm": float(grad_norm)}

    def _loss_input(self, batch: _Batch, adv: Tensor, normalizer: float) -> PolicyLossInput:
        cfg = self.optim_cfg
        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref = self._logprobs(self.reference, batch)
        return PolicyLossInput(
            logprobs=self._logprobs(self.model, batch),
            old_logprobs=batch.old_logprobs,
            advantages=adv.to(self.device),
            mask=batch.mask,
            normalizer=normalizer,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            gen_logprobs=batch.gen_logprobs,
            tis_cap=cfg.tis_cap,
            ref_logprobs=ref,
            kl_coef=cfg.kl_coef,
        )

    @torch.no_grad()
    def mismatch(self, rollouts: Sequence[Rollout]) -> float:
        """Mean |log pi_trainer - log pi_generator| over completion tokens."""
        total, tokens = 0.0, 0.0
        for micro in self._micro_batches(rollouts):
            batch = collate(micro, self.pad_id, self.device)
            logp = self._logprobs(self.model, batch)
            total += float(((logp - batch.gen_logprobs).abs() * batch.mask).sum())
            tokens += float(batch.mask.sum())
        return total / max(tokens, 1.0)

    def state(self) -> dict[str, object]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state(self, state: dict[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])  # type: ignore[arg-type]
