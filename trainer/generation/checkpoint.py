"""Write the trainer's weights as a safetensors directory that servers can load.

The directory is written under a temporary name and renamed into place, so a server
never sees a half-written checkpoint. Old checkpoints are pruned by the caller.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

Weights = Mapping[str, torch.Tensor] | torch.nn.Module
# Files of a model directory that are not weights: what SGLang needs besides safetensors.
NON_WEIGHT_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".py")


def named_tensors(weights: Weights, *, untie_embeddings: bool = False) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors by name; tied tensors are stored once each.

    `untie_embeddings` adds `lm_head.weight` (a copy of the input embedding) when the model
    ties them, for a server that serves an untied copy of the model (`untied_copy`).
    """
    source = dict(weights.state_dict() if isinstance(weights, torch.nn.Module) else weights)
    embedding = source.get("model.embed_tokens.weight")
    if untie_embeddings and "lm_head.weight" not in source and embedding is not None:
        source["lm_head.weight"] = embedding
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in source.items():
        cpu = tensor.detach().to("cpu").contiguous()
        # safetensors refuses shared storage (tied embeddings): give duplicates their own.
        if cpu.data_ptr() in seen:
            cpu = cpu.clone()
        seen.add(cpu.data_ptr())
        out[name] = cpu
    return out


def checkpoint_dir(root: Path, version: int) -> Path:
    return root / f"step-{version:08d}"


def write_checkpoint(
    weights: Weights,
    root: Path,
    version: int,
    *,
    model_files_from: Path | None = None,
    untie_embeddings: bool = False,
) -> Path:
    """Write `root/step-<version>/model.safetensors` (plus config files if asked); return it."""
    final = checkpoint_dir(root, version).resolve()
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = named_tensors(weights, untie_embeddings=untie_embeddings)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    _copy_model_files(weights, tmp, model_files_from)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def _copy_model_files(weights: Weights, target: Path, source: Path | None) -> None:
    if source is not None:
        for file in source.iterdir():
            if file.is_file() and file.suffix in NON_WEIGHT_SUFFIXES:
                shutil.copy2(file, target / file.name)
    elif isinstance(weights, torch.nn.Module):
        config: Any = getattr(weights, "config", None)
        if config is not None and hasattr(config, "save_pretrained"):
            config.save_pretrained(target)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the `keep` newest `step-*` directories under `root`."""
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def untied_copy(model_dir: Path, target: Path) -> Path:
    """A copy of the model directory whose output projection is its own tensor.

    vLLM 0.32 on CPU packs each linear layer's weight for its GEMM kernels at load time;
    an in-place reload re-packs every layer it loads, but a tied `lm_head` loads nothing of
    its own and keeps serving the packed copy of the *old* embedding matrix. Served untied
    (`tie_word_embeddings: false` and an explicit `lm_head.weight`, pushed by
    `write_checkpoint(untie_embeddings=True)`), the output projection reloads like any
    other layer. The values, and so the model's outputs, are unchanged. Returns `target`;
    a model that is not tied is copied as is.
    """
    import json

    from safetensors.torch import load_file

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    if config.get("tie_word_embeddings", False):
        tensors: dict[str, torch.Tensor] = {}
        for file in sorted(tmp.glob("*.safetensors")):
            tensors.update(load_file(str(file)))
            file.unlink()
        (tmp / "model.safetensors.index.json").unlink(missing_ok=True)
        save_file(
            named_tensors(tensors, untie_embeddings=True),
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        config["tie_word_embeddings"] = False
        config_path.write_text(json.dumps(config, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
