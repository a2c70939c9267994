"""Read a directory of safetensors and check it against the served model.

The disk backend of vLLM's weight transfer reloads "a safetensors checkpoint from a
local directory"; this is the embedded server's version of that loader. Reading and
checking happen before the decode loop is interrupted, so the pause costs only the copy.
"""

from __future__ import annotations

from pathlib import Path

import torch
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


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every `*.safetensors` file in `path`."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightLoadError(f"no .safetensors files in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


def check_against(
    tensors: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Keep `tensors` if every name and shape exists in `targets`; raise naming the first not.

    A partial set is allowed (chunked updates); unknown names or wrong shapes are not.
    """
    for name, tensor in tensors.items():
        target = targets.get(name)
        if target is None:
            raise WeightLoadError(f"unknown parameter {name!r}")
        if tuple(target.shape) != tuple(tensor.shape):
            raise WeightLoadError(
                f"shape of {name!r} is {tuple(tensor.shape)}, model has {tuple(target.shape)}"
            )
    return tensors


@torch.no_grad()
def copy_into(tensors: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
    """Copy in place, converting dtype and device: no reallocation, no model rebuild."""
    for name, tensor in tensors.items():
        targets[name].copy_(tensor)
