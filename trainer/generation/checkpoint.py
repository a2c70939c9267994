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

from services.generation.weights import untie_lm_head

Weights = Mapping[str, torch.Tensor] | torch.nn.Module
# Files of a model directory that are not weights: what SGLang needs besides safetensors.
NON_WEIGHT_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".py")


def _named_tensors(weights: Weights, *, untie_embeddings: bool = False) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors by name; tied tensors are stored once each.

    `untie_embeddings` adds `lm_head.weight` (the input embedding) when `weights` lack it,
    for a server that serves an untied copy of a tied model (services/generation/vllm.py).
    """
    source = dict(weights.state_dict() if isinstance(weights, torch.nn.Module) else weights)
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in source.items():
        cpu = tensor.detach().to("cpu").contiguous()
        # safetensors refuses shared storage (tied embeddings): give duplicates their own.
        if cpu.data_ptr() in seen:
            cpu = cpu.clone()
        seen.add(cpu.data_ptr())
        out[name] = cpu
    return untie_lm_head(out) if untie_embeddings else out


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
    tensors = _named_tensors(weights, untie_embeddings=untie_embeddings)
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
