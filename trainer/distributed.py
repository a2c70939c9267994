"""Several trainer ranks: torchrun's environment, the process group, FSDP2 sharding, and
the few collectives the policy needs.

Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK set, WORLD_SIZE > 1) every rank loads the
same policy and shards it with `torch.distributed.fsdp.fully_shard`, one FSDP unit per
decoder layer and one at the root (torch's FSDP2, `torch/distributed/fsdp/_fully_shard`).
Rank 0, the driver, runs the loop as one process does (plan, generate, score, report,
log, checkpoint); the other ranks, the followers, wait for the driver's commands
(`Policy.follow`): train on these groups, score these rollouts, gather the full state
dict, save or load a checkpoint. A command and its payload (the round's groups: token
ids, generation logprobs, rewards) travel by `broadcast_object_list` from rank 0: a
pickle of a few MB at most per step here, small beside the step's compute; a run whose
batches reach hundreds of MB would send tensors instead.

Without torchrun (or with WORLD_SIZE=1) `from_env` returns None and nothing here runs:
the policy trains in one process exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


@dataclass(frozen=True)
class Ranks:
    """This process's place among the trainer ranks (torchrun's RANK, WORLD_SIZE,
    LOCAL_RANK)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def driver(self) -> bool:
        """Rank 0 drives the services and the loop."""
        return self.rank == 0


def from_env() -> Ranks | None:
    """The ranks torchrun describes in the environment; None for one process (no
    torchrun, or WORLD_SIZE=1). Raises ValueError on a partial or inconsistent set."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    present = [name for name in names if name in os.environ]
    if not present:
        return None
    if len(present) != len(names):
        raise ValueError(f"torchrun environment incomplete: {present} set, need all of {names}")
    ranks = Ranks(*(int(os.environ[name]) for name in names))
    if not 0 <= ranks.rank < ranks.world_size:
        raise ValueError(f"RANK {ranks.rank} outside WORLD_SIZE {ranks.world_size}")
    return ranks if ranks.world_size > 1 else None


def init(ranks: Ranks, device: str) -> torch.device:
    """Join the process group (nccl on CUDA, gloo on CPU; torchrun's MASTER_ADDR and
    MASTER_PORT) and return this rank's device (`cuda:LOCAL_RANK`, or cpu).

    `device`: the config's `model.device` ("auto", "cpu", "cuda").
    """
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return torch.device("cuda", ranks.local_rank) if cuda else torch.device("cpu")


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mixed_precision(
    setting: Literal["auto", "bf16", "fp32"], device: torch.device
) -> MixedPrecisionPolicy:
    """FSDP2's policy: `bf16` all-gathers parameters and computes in bfloat16 and
    reduce-scatters gradients in float32 (the sharded master parameters, their gradients
    and AdamW's state stay in the dtype the model was loaded in); `fp32` casts nothing;
    `auto`: bf16 on CUDA, fp32 elsewhere (gloo has no bfloat16 speed to gain)."""
    bf16 = setting == "bf16" or (setting == "auto" and device.type == "cuda")
    if bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a Hugging Face causal LM (`model.model.layers`: Llama, Qwen2,
    Mistral, ...). Raises ValueError for a model without them."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"{type(model).__name__} has no model.layers to shard")
    return list(layers)


def shard(model: torch.nn.Module, policy: MixedPrecisionPolicy) -> FSDPModule:
    """`fully_shard` each decoder layer, then the root (embeddings, final norm, the head:
    tied embeddings stay one parameter in the root's unit). Parameters become DTensors
    sharded on dim 0 across the world; the module is changed in place and returned."""
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    assert isinstance(model, FSDPModule)
    return model


def broadcast(obj: Any = None) -> Any:
    """Rank 0's `obj` on every rank (pickled; `broadcast_object_list`)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over the ranks (float64, so the sums do not round)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on rank 0, on CPU (an empty dict on the other ranks).
    Collective: every rank must call it. `get_model_state_dict(full_state_dict=True,
    cpu_offload=True)`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state: dict[str, torch.Tensor] = get_model_state_dict(model, options=options)  # type: ignore[assignment]
    return state
