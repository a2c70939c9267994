"""The trainable policy: model, optimiser, and one policy-gradient step over train groups.

Rollouts arrive as token ids (prompt + completion) with the generation server's logprobs;
this module re-scores them with the trainer's model, forms group advantages and takes
`mini_batches` optimiser updates with gradient accumulation over micro-batches. The model
stays in eval mode throughout: dropout is off for scoring and for the updates, whatever
the model's config sets.

Every logprob here is of the distribution the rollouts were sampled from (logits divided
by the sampling temperature), computed at completion positions only, each distinct prompt
once per micro-batch (trainer/scoring.py). With one mini-batch per step the PPO ratio is
exactly 1, so the old logprobs are the update's own, detached, instead of a second no-grad
pass.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, PreTrainedModel

from services.common.devices import pick_device
from trainer import distributed
from trainer.algos import PolicyLossInput, group_advantages, lr_factor, policy_loss
from trainer.config import OptimSection
from trainer.distributed import Ranks
from trainer.scoring import RolloutBatch, collate, score


@dataclass
class Rollout:
    """One sampled completion, as the generation server returned it, with its reward."""

    prompt_ids: list[int]
    completion_ids: list[int]
    gen_logprobs: list[float]
    reward: float


def train_only_top_layers(model: PreTrainedModel, count: int | None) -> set[str] | None:
    """Freeze every parameter of `model` but those of its top `count` decoder layers and
    its final norm; returns the names of the parameters left trainable (None: `count` is
    None and nothing is frozen). Raises ValueError when `count` exceeds the layers.

    A head tied to the input embedding stays frozen with it. Frozen layers below the
    trainable ones record no autograd graph, so a backward pass stops at the lowest
    trainable layer.
    """
    if count is None:
        return None
    layers = distributed.decoder_layers(model)
    if count > len(layers):
        raise ValueError(f"train_top_layers = {count}, but the model has {len(layers)} layers")
    model.requires_grad_(False)
    trained = [*layers[len(layers) - count :]]
    norm = getattr(getattr(model, "model", None), "norm", None)
    if isinstance(norm, torch.nn.Module):
        trained.append(norm)
    for module in trained:
        module.requires_grad_(True)
    return {name for name, param in model.named_parameters() if param.requires_grad}


# What `_update` sums over micro-batches and ranks (mismatch_*: |old - gen| and its tokens).
_SUMMED = (
    "loss",
    "clip_fraction",
    "kl",
    "tis_weight",
    "grad_norm",
    "mismatch_sum",
    "mismatch_tokens",
)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of `[model] dtype` ("float32" or "bfloat16")."""
    return torch.bfloat16 if name == "bfloat16" else torch.float32


class Policy:
    """The policy model and its optimiser, in one process or sharded over several ranks.

    `ranks` None: one process on `device`, as always. `ranks` given (torchrun, world > 1,
    the process group already joined: trainer.distributed.init): the model is sharded
    with FSDP2 (one unit per decoder layer and the root, `mixed_precision` its policy);
    rank 0 calls the public methods (train_step, weights_for_push, state,
    load_state) and each of them first sends the other ranks, which wait in `follow`,
    the command to join it; `stop` ends their wait.
    """

    def __init__(
        self,
        model_path: Path,
        optim: OptimSection,
        device: str,
        dtype: str,
        *,
        total_steps: int = 0,
        gradient_checkpointing: bool = False,
        ranks: Ranks | None = None,
        mixed_precision: Literal["auto", "bf16", "fp32"] = "auto",
        temperature: float = 1.0,
        train_top_layers: int | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 (the logits are divided by it): {temperature}"
            )
        self.temperature = temperature
        self.ranks = ranks
        self.rank, self.world = (ranks.rank, ranks.world_size) if ranks else (0, 1)
        self.device = distributed.init(ranks, device) if ranks else pick_device(device)
        self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype(dtype)
        )
        self.model.to(self.device)  # type: ignore[arg-type]
        # Dropout is off for the whole run, scoring and updates alike (as TRL's and verl's
        # RL trainers do): with it on, old logprobs, the loss's ratio and the mismatch
        # metric would each carry their own noise. eval() only switches dropout off here;
        # gradients flow as in train().
        self.model.eval()
        self.trainable = train_only_top_layers(self.model, train_top_layers)
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            self.model.activation_checkpointing_enable({"use_reentrant": False})
        self.optim_cfg = optim
        self.pad_id = int(self.model.config.pad_token_id or 0)
        self.reference: PreTrainedModel | None = None
        if optim.kl_coef > 0:
            self.reference = copy.deepcopy(self.model).eval()
            self.reference.requires_grad_(False)
        # Several ranks: rank 0 keeps an unsharded copy on the CPU that each weight push
        # loads the gathered full state dict into (the disk push writes it, the landing
        # check scores with it); then every rank shards its model and reference.
        self.replica: PreTrainedModel | None = None
        if ranks is not None:
            if ranks.driver:
                self.replica = copy.deepcopy(self.model).to("cpu").eval()  # type: ignore[arg-type]
                self.replica.requires_grad_(False)
            policy = distributed.mixed_precision(mixed_precision, self.device)
            distributed.shard(self.model, policy)
            if self.reference is not None:
                distributed.shard(self.reference, policy)
        self.optimizer = torch.optim.AdamW(
            [param for param in self.model.parameters() if param.requires_grad],
            lr=optim.lr,
            betas=optim.betas,
            weight_decay=optim.weight_decay,
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

    # ---- several ranks: the driver's commands, the followers' loop ----

    def _send(self, *command: object) -> None:
        """Rank 0: tell the other ranks to join the collective work that follows."""
        if self.ranks is not None:
            distributed.broadcast(command)

    def follow(self) -> None:
        """A follower rank's whole run: join each command rank 0 sends until `stop`.
        Raises ValueError on an unknown command."""
        while True:
            kind, *args = distributed.broadcast()
            if kind == "stop":
                return
            if kind == "train":
                self._train(*args)
            elif kind == "gather":
                distributed.full_state_dict(self.model)
            elif kind == "save":
                self._save_sharded(*args)
            elif kind == "load":
                self._load_sharded(*args)
            else:
                raise ValueError(f"unknown command {kind!r} from rank 0")

    def stop(self) -> None:
        """Rank 0, at the end of a run: release the followers from `follow`."""
        self._send("stop")

    def weights_for_push(self) -> PreTrainedModel:
        """The module a weight push sends: the model itself in one process; with several
        ranks, rank 0's CPU replica loaded with the gathered full state dict (collective)."""
        if self.replica is None:
            return self.model
        self._send("gather")
        full = distributed.full_state_dict(self.model)
        missing, unexpected = self.replica.load_state_dict(full, strict=False)
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"gathered state dict: missing {missing}, unexpected {unexpected}")
        return self.replica

    # ---- scoring and training ----

    def _logprobs(self, model: PreTrainedModel, batch: RolloutBatch) -> Tensor:
        """[N, C] logprobs of `batch.targets` under `model` at the sampling temperature
        (trainer/scoring.py). Prompts are shared in one process without gradient
        checkpointing (which turns transformers' KV cache off); with several ranks FSDP needs
        the same forwards on every rank, and a rank's idle pass (`_idle_pass`) is one
        forward where the shared path takes one or two."""
        shared = not self.gradient_checkpointing and self.world == 1
        return score(model, batch, self.temperature, shared_prompts=shared)

    def _idle_pass(self, backward: bool) -> None:
        """A rank with no rollouts left in a micro-batch its peers still run: a forward
        (and backward) of one two-token row with zero loss, so every rank issues FSDP's
        all-gathers and reduce-scatters in the same order."""
        ids = torch.full((1, 2), self.pad_id, dtype=torch.long, device=self.device)
        with torch.set_grad_enabled(backward):
            if backward and self.reference is not None:
                with torch.no_grad():
                    self.reference(input_ids=ids, use_cache=False)
            logits = self.model(input_ids=ids, use_cache=False).logits
            if backward:
                (logits.sum() * 0.0).backward()

    def _micro_batches(
        self, rollouts: Sequence[Rollout], count: int | None = None
    ) -> Iterator[Sequence[Rollout]]:
        """Slices of `micro_batch_rollouts`; padded with empty ones to `count` if given."""
        size = self.optim_cfg.micro_batch_rollouts
        yielded = 0
        for start in range(0, len(rollouts), size):
            yield rollouts[start : start + size]
            yielded += 1
        while count is not None and yielded < count:
            yield []
            yielded += 1

    def _micro_count(self, widest_share: int) -> int | None:
        """Micro-batches every rank runs when the widest rank's share is `widest_share`
        rollouts; None in one process (no padding)."""
        if self.world == 1:
            return None
        return max(1, -(-widest_share // self.optim_cfg.micro_batch_rollouts))

    def train_step(self, groups: Sequence[Sequence[Rollout]]) -> dict[str, float]:
        """One policy-gradient step over complete train groups; returns loss metrics and
        `logprob_mismatch`, the mean |log pi_trainer - log pi_generator| per completion
        token before the update (both at the sampling temperature).

        With several ranks (rank 0 calls it): the groups and the shuffle go to every rank,
        each rank computes the group advantages and trains on its share of each
        mini-batch (every world_size-th rollout), its loss normalised by the whole
        mini-batch's completion tokens; FSDP sums the gradients, so the step equals the
        one-process step on the same groups (tests/trainer/test_distributed.py)."""
        order = torch.randperm(sum(len(group) for group in groups)).tolist()
        self._send("train", list(groups), order)
        return self._train(groups, order)

    def _train(self, groups: Sequence[Sequence[Rollout]], order: list[int]) -> dict[str, float]:
        cfg = self.optim_cfg
        if self.gradient_checkpointing:
            # Transformers checkpoints a layer only while its `training` is set; set it on
            # the layers alone (each step: an eval() since, such as the landing probe's,
            # clears it), so the dropout modules beneath them stay off.
            for layer in distributed.decoder_layers(self.model):
                layer.training = True
        rollouts, advantages, group_of = [], [], []
        for index, group in enumerate(groups):
            rewards = torch.tensor([r.reward for r in group])
            advantages += group_advantages(rewards, cfg.adv_eps).tolist()
            rollouts += list(group)
            group_of += [index] * len(group)
        rollouts = [rollouts[i] for i in order]
        adv = torch.tensor([advantages[i] for i in order])
        group_of = [group_of[i] for i in order]
        mini = max(1, -(-len(rollouts) // cfg.mini_batches))
        minis = [
            list(range(s, min(s + mini, len(rollouts)))) for s in range(0, len(rollouts), mini)
        ]
        # A mini-batch's gradient does not depend on its order: each rank takes its share
        # group by group, so a micro-batch holds whole groups and scores each prompt once.
        shares = [sorted(m[self.rank :: self.world], key=group_of.__getitem__) for m in minis]
        old: dict[int, list[float]] | None = None
        if len(minis) > 1:  # later updates need the logprobs from before the first one
            mine = [i for share in shares for i in share]
            widest = sum(-(-len(m) // self.world) for m in minis)
            old_mine = self._old_logprobs([rollouts[i] for i in mine], self._micro_count(widest))
            old = dict(zip(mine, old_mine, strict=True))
        totals: dict[str, float] = dict.fromkeys(_SUMMED, 0.0)
        lr = self.optimizer.param_groups[0]["lr"]
        for m, share in zip(minis, shares, strict=True):
            stats = self._update(
                [rollouts[i] for i in share],
                adv[share],
                [old[i] for i in share] if old is not None else None,
                normalizer=float(sum(len(rollouts[i].completion_ids) for i in m)) or 1.0,
                mini_size=len(m),
                micro_count=self._micro_count(-(-len(m) // self.world)),
            )
            for key, value in stats.items():
                totals[key] += value
        self.scheduler.step()
        mismatch = totals.pop("mismatch_sum") / max(totals.pop("mismatch_tokens"), 1.0)
        metrics = {key: value / len(minis) for key, value in totals.items()}
        return {**metrics, "logprob_mismatch": mismatch, "lr": lr}

    @torch.no_grad()
    def _old_logprobs(
        self, rollouts: Sequence[Rollout], micro_count: int | None = None
    ) -> list[list[float]]:
        """Completion-token logprobs before any update (the PPO ratio's denominator when a
        step takes several mini-batch updates)."""
        out: list[list[float]] = []
        for micro in self._micro_batches(rollouts, micro_count):
            if not micro:
                self._idle_pass(backward=False)
                continue
            logp = self._logprobs(self.model, collate(micro, self.pad_id, self.device))
            out += [logp[i, : len(r.completion_ids)].tolist() for i, r in enumerate(micro)]
        return out

    def _update(
        self,
        rollouts: Sequence[Rollout],
        adv: Tensor,
        old: Sequence[Sequence[float]] | None,
        *,
        normalizer: float,
        mini_size: int,
        micro_count: int | None,
    ) -> dict[str, float]:
        """One optimiser update on this rank's share of a mini-batch (`mini_size`
        rollouts, `normalizer` completion tokens, over all ranks); `old` None: the update's
        own logprobs, detached, are the old ones (one update per step)."""
        cfg = self.optim_cfg
        self.optimizer.zero_grad(set_to_none=True)
        sums = dict.fromkeys(_SUMMED, 0.0)
        sums.pop("grad_norm")
        done = 0
        for micro in self._micro_batches(rollouts, micro_count):
            if not micro:
                self._idle_pass(backward=True)
                continue
            batch_old = old[done : done + len(micro)] if old is not None else None
            batch = collate(micro, self.pad_id, self.device, batch_old)
            inp = self._loss_input(batch, adv[done : done + len(micro)], normalizer)
            out = policy_loss(inp)
            # FSDP averages gradients over the ranks; each rank's loss is already its
            # share of the whole mini-batch's, so scale by the world to get their sum.
            (out.loss * self.world if self.world > 1 else out.loss).backward()
            sums["loss"] += out.loss.item()
            for key in ("clip_fraction", "kl", "tis_weight"):
                sums[key] += float(getattr(out, key)) / mini_size * len(micro)
            gap = (inp.old_logprobs - batch.gen_logprobs).abs() * batch.mask
            sums["mismatch_sum"] += float(gap.sum())
            sums["mismatch_tokens"] += float(batch.mask.sum())
            done += len(micro)
        trained = [param for param in self.model.parameters() if param.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
        self.optimizer.step()
        if self.world > 1:
            keys = list(sums)
            sums = dict(
                zip(keys, distributed.all_reduce_sum(list(sums.values()), self.device), strict=True)
            )
            grad_norm = grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm
        return {**sums, "grad_norm": float(grad_norm)}

    def _loss_input(self, batch: RolloutBatch, adv: Tensor, normalizer: float) -> PolicyLossInput:
        cfg = self.optim_cfg
        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref = self._logprobs(self.reference, batch)
        logprobs = self._logprobs(self.model, batch)
        old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
        return PolicyLossInput(
            logprobs=logprobs,
            old_logprobs=old,
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

    # ---- checkpoints ----

    def state(self) -> dict[str, object]:
        """What trainer.pt keeps of the policy. One process: the model's, the optimiser's
        and the scheduler's state dicts. Several ranks: the scheduler's and `sharded`;
        the model and optimiser go to `save_sharded`'s DCP files beside it."""
        if self.ranks is not None:
            return {"scheduler": self.scheduler.state_dict(), "sharded": True}
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def save_sharded(self, directory: Path) -> None:
        """Rank 0, several ranks: every rank writes its shards of the model and the
        optimiser state into `directory` with torch.distributed.checkpoint (`.metadata`
        and one `__<rank>_0.distcp` per rank; the directory must be the same path on
        every rank: one node, or a shared filesystem)."""
        self._send("save", str(directory))
        self._save_sharded(str(directory))

    def _save_sharded(self, directory: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optimizer = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model, "optimizer": optimizer}, checkpoint_id=directory)

    def load_state(self, state: dict[str, object], directory: Path | None = None) -> None:
        """Put back what `state` (and, for a sharded checkpoint, the DCP files in
        `directory`) hold. DCP reshards: a checkpoint saved by N ranks loads on any number
        of ranks, one process included. Raises ValueError for a one-process checkpoint on
        several ranks (its optimiser state is keyed by parameter order, not sharded), and
        for a sharded one without `directory`."""
        if state.get("sharded"):
            if directory is None:
                raise ValueError("a sharded policy state needs the directory of its DCP files")
            self._send("load", str(directory), state["scheduler"])
            self._load_sharded(str(directory), state["scheduler"])  # type: ignore[arg-type]
            return
        if self.ranks is not None:
            raise ValueError(
                "this checkpoint was saved by one process (full state in trainer.pt): "
                "resume it with one process; several ranks resume sharded (DCP) checkpoints"
            )
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])  # type: ignore[arg-type]

    def _load_sharded(self, directory: str, scheduler: dict[str, Any]) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model, optimizer = get_state_dict(self.model, self.optimizer)
        dcp.load({"model": model, "optimizer": optimizer}, checkpoint_id=directory)
        set_state_dict(
            self.model, self.optimizer, model_state_dict=model, optim_state_dict=optimizer
        )
        self.scheduler.load_state_dict(scheduler)
