"""The torch device a process computes on, from a setting such as "auto", "cpu" or "cuda:1".

Shared by the generation server and the trainer. torch is imported inside the function:
services.common is also what the allocator and the verifier import, and their images
have no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(name: str) -> torch.device:
    """ "auto": CUDA when torch sees a GPU, else the CPU; any other name goes to
    `torch.device` as it is (RuntimeError for a name torch does not know)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
