"""vLLM's weight-update control routes, on the embedded server.

The trainer's `vllm` adapter uses vLLM 0.32's in-place reload: `/pause` (mode
abort|wait|keep), `/collective_rpc` with `reload_weights` and `weights_path` (a
safetensors directory), `/update_weight_version`, `/resume`; `/weight_info` reports the
version. Same paths, parameters and bodies as vLLM's dev-mode routes, so one adapter
drives both servers.

The staged routes (`/init_weight_transfer_engine`, `/start_weight_update`,
`/update_weights`, `/finish_weight_update`) carry vLLM's names, but `update_info.path`
(a directory) is this server's own: vLLM 0.32 has no disk backend for them (its backends
are nccl, ipc and other GPU transports).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query

from services.generation.deps import Authorized, EngineDep
from services.generation.engine import ConflictError
from services.generation.models import (
    CollectiveRpcRequest,
    CollectiveRpcResponse,
    FinishWeightUpdateRequest,
    InitWeightTransferRequest,
    PausedState,
    PauseMode,
    StartWeightUpdateRequest,
    StatusMessage,
    UpdateWeightsRequest,
    UpdateWeightVersionRequest,
    UpdateWeightVersionResponse,
    WeightInfo,
    WorldSize,
)
from services.generation.weights import (
    WeightLoadError,
    read_safetensors_dir,
    resolve_weights_path,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["weight transfer (vLLM API)"], dependencies=Authorized)


@router.post("/pause", response_model=StatusMessage, response_model_exclude_none=True)
async def pause(
    engine: EngineDep,
    mode: Annotated[PauseMode, Query(description="abort | wait | keep, as in vLLM")] = "abort",
    clear_cache: Annotated[bool, Query(description="Accepted for vLLM compatibility")] = True,
) -> StatusMessage:
    """Pause generation: cut (abort), drain (wait) or freeze (keep) the running batch."""
    await asyncio.to_thread(engine.barrier.pause, mode)
    return StatusMessage(status="paused")


@router.post("/resume", response_model=StatusMessage, response_model_exclude_none=True)
async def resume(engine: EngineDep) -> StatusMessage:
    engine.barrier.resume()
    return StatusMessage(status="resumed")


@router.get("/is_paused", response_model=PausedState)
async def is_paused(engine: EngineDep) -> PausedState:
    return PausedState(is_paused=engine.barrier.is_paused)


@router.post("/collective_rpc", response_model=CollectiveRpcResponse)
async def collective_rpc(body: CollectiveRpcRequest, engine: EngineDep) -> CollectiveRpcResponse:
    """`reload_weights(weights_path=DIR)`: load a safetensors directory in place."""
    if body.method != "reload_weights":
        raise HTTPException(
            400, f"the embedded server runs only method 'reload_weights', not {body.method!r}"
        )
    try:
        weights_dir = engine.settings.weights_dir
        path = resolve_weights_path(
            body.rpc_kwargs.get("weights_path"), weights_dir, "kwargs.weights_path"
        )
        tensors = await asyncio.to_thread(read_safetensors_dir, path, weights_dir)
        await asyncio.to_thread(engine.reload_weights, tensors)
    except WeightLoadError as exc:
        raise HTTPException(400, str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    return CollectiveRpcResponse(results=[None])


@router.post(
    "/init_weight_transfer_engine", response_model=StatusMessage, response_model_exclude_none=True
)
async def init_weight_transfer_engine(body: InitWeightTransferRequest) -> StatusMessage:
    """Accept the disk backend's empty init info; refuse transports this server lacks."""
    backend = body.init_info.get("backend", "disk")
    if backend != "disk" or "master_address" in body.init_info:
        raise HTTPException(
            400, "the embedded server supports only the disk backend (init_info {})"
        )
    return StatusMessage(message="Weight transfer initialized")


@router.post("/start_weight_update", response_model=StatusMessage, response_model_exclude_none=True)
async def start_weight_update(
    engine: EngineDep,
    body: Annotated[StartWeightUpdateRequest | None, Body()] = None,
) -> StatusMessage:
    await asyncio.to_thread(engine.start_weight_update)
    return StatusMessage(message="Weight update started")


@router.post("/update_weights", response_model=StatusMessage, response_model_exclude_none=True)
async def update_weights(body: UpdateWeightsRequest, engine: EngineDep) -> StatusMessage:
    """Read and check a safetensors directory; it is applied at `/finish_weight_update`.

    400 when it cannot be loaded; that also fails the session, so its finish answers 409
    and commits nothing.
    """
    weights_dir = engine.settings.weights_dir
    try:
        path = resolve_weights_path(body.update_info.get("path"), weights_dir)
        tensors = await asyncio.to_thread(read_safetensors_dir, path, weights_dir)
        count = await asyncio.to_thread(engine.stage_weights, tensors)
    except WeightLoadError as exc:
        await asyncio.to_thread(engine.fail_weight_update, str(exc))
        raise HTTPException(400, str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    return StatusMessage(message=f"Weights updated ({count} tensors staged from {path})")


@router.post(
    "/finish_weight_update", response_model=StatusMessage, response_model_exclude_none=True
)
async def finish_weight_update(
    engine: EngineDep,
    body: Annotated[FinishWeightUpdateRequest | None, Body()] = None,
) -> StatusMessage:
    """Swap the staged weights in between two decoding steps and commit the version.

    Safe to retry: finishing again with the version just committed answers 200 and
    changes nothing. 409 outside a session or after a failed `/update_weights`.
    """
    version = body.weight_version if body is not None else None
    try:
        held = await asyncio.to_thread(engine.finish_weight_update, version)
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    return StatusMessage(message=f"Weight update finished (decoding held {held * 1000:.1f} ms)")


@router.post("/update_weight_version", response_model=UpdateWeightVersionResponse)
async def update_weight_version(
    body: UpdateWeightVersionRequest, engine: EngineDep
) -> UpdateWeightVersionResponse:
    await asyncio.to_thread(engine.set_weight_version, body.new_version)
    return UpdateWeightVersionResponse(success=True, new_version=body.new_version)


@router.get("/weight_info", response_model=WeightInfo)
async def weight_info(engine: EngineDep) -> WeightInfo:
    """The latest committed weight version (a restarted server reports its initial one)."""
    return WeightInfo(weight_version=engine.weight_version)


@router.get("/get_world_size", response_model=WorldSize)
async def get_world_size(include_dp: Annotated[bool, Query()] = True) -> WorldSize:
    return WorldSize(world_size=1)
