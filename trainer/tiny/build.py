"""Build-if-absent for the tiny model and task: dataset, warm start, calibration, cache.

Every CPU run of the pipeline starts from the same warm-started model, so building it is
done once per configuration and reused: the output directory is keyed by the seed and a
hash of everything that changes the result, and a finished build is marked by
`calibration.json`, written last. A build is assembled in a temporary sibling directory and
renamed into place, so an interrupted build never looks finished.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from services.common.progress import log_line, stage
from trainer.builds import assemble, cache_root, digest
from trainer.tiny.model import build_tokenizer, init_model, tiny_llama_config
from trainer.tiny.regimes import (
    CLASSES,
    MIDDLE,
    Estimate,
    RegimeConfig,
    all_equal,
    class_stats,
    classify,
    estimate_pass_rates,
    order_extras,
    plug_in_share,
    share,
    solve_mixture,
)
from trainer.tiny.task import TaskConfig, generate_splits, read_jsonl, write_jsonl
from trainer.tiny.warmstart import WarmStartConfig, warm_start

# Bump when the code changes what a build produces, so stale caches are not reused.
BUILD_VERSION = 2
# Fixed so that the same seed gives the same weights on a given machine: CPU reductions
# are ordered differently with a different number of threads.
BUILD_THREADS = 2


@dataclass(frozen=True)
class ModelShape:
    """The tiny Llama's shape (about 0.8M parameters)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 352
    max_positions: int = 64


@dataclass(frozen=True)
class TinyConfig:
    """Everything a build depends on; its hash names the build directory."""

    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelShape = field(default_factory=ModelShape)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)

    def digest(self) -> str:
        return digest({"version": BUILD_VERSION, **asdict(self)})


@dataclass(frozen=True)
class TinyArtifacts:
    """Where a finished build lives."""

    root: Path
    model_dir: Path
    train_path: Path
    test_path: Path
    calibration: dict

    @classmethod
    def at(cls, root: Path) -> TinyArtifacts:
        calibration = json.loads((root / "calibration.json").read_text())
        data = root / "data"
        return cls(root, root / "model", data / "train.jsonl", data / "test.jsonl", calibration)


# The default build (seed 0: model, task splits, regime datasets; about 5.6 MB) ships with
# the project, so a fresh clone trains at once and every machine starts from the same
# warm start (each machine's own build differs in the last digits, and so do its figures).
# A change to the build's code or config changes the digest, and the next run builds anew;
# `pilot-commit tiny build --force` rebuilds, and copying that build here reships it
# (tests/trainer/test_tiny_shipped.py checks the shipped build is the default config's).
SHIPPED = Path(__file__).parent / "shipped"


def default_out_root() -> Path:
    """`$PILOT_COMMIT_CACHE/tiny`, else `.cache/tiny` under the working directory."""
    return cache_root("tiny")


def build_dir(out_root: Path, config: TinyConfig) -> Path:
    return out_root / f"seed{config.seed}-{config.digest()}"


def is_built(root: Path) -> bool:
    return (root / "calibration.json").is_file()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build(out_root: Path, config: TinyConfig, *, force: bool = False) -> TinyArtifacts:
    """Build into `build_dir(out_root, config)` unless it is already there, or copy the
    build the project ships (`SHIPPED`) when it is this config's; `force` rebuilds."""
    final = build_dir(out_root, config)
    if is_built(final) and not force:
        return TinyArtifacts.at(final)
    shipped = build_dir(SHIPPED, config)
    if is_built(shipped) and not force:
        log_line(Console(), f"tiny build: the shipped build {shipped.name} -> {final}")

        def copy(staging: Path) -> None:
            shutil.copytree(shipped, staging, dirs_exist_ok=True)

        assemble(final, copy)
        return TinyArtifacts.at(final)
    out_root.mkdir(parents=True, exist_ok=True)
    log_line(
        Console(),
        f"building the tiny model and task into {final} (minutes; cached afterwards, "
        f"{config.warm_start.steps:,} warm-start steps on {BUILD_THREADS} threads)",
    )

    def fill(staging: Path) -> None:
        with torch_threads(BUILD_THREADS):
            _build_into(staging, config)

    assemble(final, fill)
    return TinyArtifacts.at(final)


def _build_into(root: Path, config: TinyConfig) -> None:
    """Every stage writes a line when it starts and ends (or shows a bar on a terminal)."""
    started = time.monotonic()
    console = Console()
    with stage(console, "tiny build: generate the task's train/test splits"):
        train_rows, test_rows = generate_splits(config.seed, config.task)
        write_jsonl(root / "data" / "train.jsonl", train_rows)
        write_jsonl(root / "data" / "test.jsonl", test_rows)
    tokenizer = build_tokenizer()
    shape = asdict(config.model)
    model = init_model(tiny_llama_config(tokenizer, **shape), config.seed)
    result = warm_start(
        model,
        tokenizer,
        test_rows,
        config.warm_start,
        seed=config.seed,
        level_weights=config.task.level_weights(),
    )
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    _portable_tokenizer_class(root / "model")
    calibration = {
        **result.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_prompts": len(train_rows),
        "wall_seconds": round(time.monotonic() - started, 1),
        "torch_threads": BUILD_THREADS,
        "config": {"version": BUILD_VERSION, **asdict(config)},
    }
    (root / "config.json").write_text(json.dumps(calibration["config"], indent=2) + "\n")
    (root / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    log_line(console, f"tiny build: done in {calibration['wall_seconds']}s")


def _portable_tokenizer_class(model_dir: Path) -> None:
    """Name the tokenizer class that transformers 4.x loaders (vLLM images) also know.

    transformers 5 saves its own name, `TokenizersBackend`, and loads either.
    """
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def ensure_tiny(out_root: Path | None = None, seed: int = 0) -> TinyArtifacts:
    """The default tiny build for `seed`, building it first if it is not cached."""
    return build(out_root or default_out_root(), TinyConfig(seed=seed))


def load_rows(path: Path) -> list[dict]:
    return list(read_jsonl(path))


@dataclass(frozen=True)
class RegimeArtifacts:
    """The regime datasets of one build: target share -> (train, test) paths."""

    manifest_path: Path
    paths: dict[float, tuple[Path, Path]]
    manifest: dict


def regime_dir(artifacts: TinyArtifacts, target: float) -> Path:
    return artifacts.root / "data" / f"regime-{round(target * 100)}"


def build_regimes(
    artifacts: TinyArtifacts, config: RegimeConfig, *, force: bool = False
) -> RegimeArtifacts:
    """Estimate pass rates with the warm-started model and write one dataset per target."""
    manifest_path = artifacts.root / "data" / "regimes.json"
    wanted = asdict(config)
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest["config"] == json.loads(json.dumps(wanted)):
            return _regime_artifacts(artifacts, config, manifest_path, manifest)
    started = time.monotonic()
    seed = artifacts.calibration["config"]["seed"]
    estimates = None if force else _cached_estimates(artifacts, config)
    if estimates is None:
        with torch_threads(BUILD_THREADS):
            estimates = _estimate_splits(artifacts, config, seed)
        _save_estimates(artifacts, config, estimates)
    regimes = [
        _write_regime(artifacts, estimates, config, target, seed) for target in config.targets
    ]
    manifest = {
        "config": wanted,
        "classes": {split: class_stats(rows, config) for split, rows in estimates.items()},
        "regimes": regimes,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    # Written last: its presence marks the regime datasets as complete.
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return _regime_artifacts(artifacts, config, manifest_path, manifest)


def _regime_artifacts(
    artifacts: TinyArtifacts, config: RegimeConfig, manifest_path: Path, manifest: dict
) -> RegimeArtifacts:
    paths = {
        t: (regime_dir(artifacts, t) / "train.jsonl", regime_dir(artifacts, t) / "test.jsonl")
        for t in config.targets
    }
    return RegimeArtifacts(manifest_path, paths, manifest)


def _estimate_splits(
    artifacts: TinyArtifacts, config: RegimeConfig, seed: int
) -> dict[str, list[Estimate]]:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(artifacts.model_dir)
    model = LlamaForCausalLM.from_pretrained(artifacts.model_dir)
    train_rows = load_rows(artifacts.train_path)
    train_rows = random.Random(seed).sample(train_rows, min(config.train_pool, len(train_rows)))
    test_rows = load_rows(artifacts.test_path)
    console = Console()
    out = {}
    for split, rows, split_seed in (("train", train_rows, seed), ("test", test_rows, seed + 2)):
        what = f"regimes: estimate pass rates of {len(rows):,} {split} prompts"
        with stage(console, what):
            out[split] = estimate_pass_rates(model, tokenizer, rows, config, split_seed)
    return out


def _estimate_key(config: RegimeConfig) -> dict:
    """The settings the pass-rate estimates depend on (not the targets)."""
    return {k: getattr(config, k) for k in ("group_size", "classify_samples", "train_pool")}


def _save_estimates(
    artifacts: TinyArtifacts, config: RegimeConfig, estimates: dict[str, list[Estimate]]
) -> None:
    rows = (
        {
            **e.row,
            "split": split,
            "class": classify(e.classify_right, config.classify_samples),
            "classify_right": e.classify_right,
            "group_right": e.group_right,
        }
        for split, split_estimates in estimates.items()
        for e in split_estimates
    )
    data = artifacts.root / "data"
    write_jsonl(data / "pass_rates.jsonl", rows)
    (data / "pass_rates.key.json").write_text(json.dumps(_estimate_key(config)) + "\n")


def _cached_estimates(
    artifacts: TinyArtifacts, config: RegimeConfig
) -> dict[str, list[Estimate]] | None:
    """The estimates of an earlier `regimes` run with the same sampling settings."""
    key_path = artifacts.root / "data" / "pass_rates.key.json"
    if not key_path.is_file() or json.loads(key_path.read_text()) != _estimate_key(config):
        return None
    estimates: dict[str, list[Estimate]] = {"train": [], "test": []}
    for r in read_jsonl(artifacts.root / "data" / "pass_rates.jsonl"):
        row = {k: r[k] for k in ("prompt", "answer", "difficulty")}
        estimates[r["split"]].append(Estimate(row, r["classify_right"], r["group_right"]))
    return estimates


def _write_regime(
    artifacts: TinyArtifacts,
    estimates: dict[str, list[Estimate]],
    config: RegimeConfig,
    target: float,
    seed: int,
) -> dict:
    """Solve the mixture on the train pool, mirror its proportions on test, write both."""
    parts = {split: _middle_and_extras(rows, config, seed) for split, rows in estimates.items()}
    middle, extras = parts["train"]
    flat = [all_equal(e, config) for e in middle], [all_equal(e, config) for e in extras]
    mixture = solve_mixture(target, *flat)
    test_middle, test_extras = parts["test"]
    # Test mirrors the train ratio of extras to middle; where test extras run short, the
    # test middle is cut to keep the ratio rather than the ratio being broken.
    ratio = mixture.extras / max(1, mixture.middle)
    n_middle = min(len(test_middle), int(len(test_extras) / ratio) if ratio else len(test_middle))
    chosen = {
        "train": middle[: mixture.middle] + extras[: mixture.extras],
        "test": test_middle[:n_middle] + test_extras[: round(ratio * n_middle)],
    }
    out = regime_dir(artifacts, target)
    summary: dict = {"target": target, "dir": out.name}
    for split, rows in chosen.items():
        random.Random(seed).shuffle(rows)
        write_jsonl(out / f"{split}.jsonl", (e.row for e in rows))
        classes = [classify(e.classify_right, config.classify_samples) for e in rows]
        summary[split] = {
            "prompts": len(rows),
            "counts": {c: classes.count(c) for c in CLASSES},
            "predicted_zero_variance": share([all_equal(e, config) for e in rows]),
            "plug_in_zero_variance": plug_in_share(rows, config),
        }
    return summary


def _middle_and_extras(
    rows: list[Estimate], config: RegimeConfig, seed: int
) -> tuple[list[Estimate], list[Estimate]]:
    middle = [e for e in rows if classify(e.classify_right, config.classify_samples) == MIDDLE]
    random.Random(seed).shuffle(middle)
    return middle, order_extras(rows, config, seed)


def ensure_regimes(
    out_root: Path | None = None, seed: int = 0, config: RegimeConfig | None = None
) -> RegimeArtifacts:
    """The regime datasets of the default build for `seed`, building what is missing."""
    return build_regimes(ensure_tiny(out_root, seed), config or RegimeConfig())
