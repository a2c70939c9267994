"""Push the trainer's weights to generation servers, through each server's own control API.

One small interface (`WeightSync`) with implementations chosen by name from config:

- `vllm`: vLLM's native weight transfer, disk backend. Writes a safetensors directory,
  then per server: `/init_weight_transfer_engine` {"init_info": {}} once, `/pause?mode=`,
  `/start_weight_update`, `/update_weights` {"update_info": {"path"}},
  `/finish_weight_update` {"weight_version"}, `/resume`. The embedded server speaks the
  same API, so it needs nothing else (`embedded` is an alias).
- `vllm_nccl`: the same control plane with vLLM's NCCL backend: `/get_world_size`, then
  `/init_weight_transfer_engine` with master_address/port, rank_offset, world_size, and
  `/update_weights` with names/dtype_names/shapes/packed while the trainer broadcasts.
  Written to vLLM's documented protocol; NOT run here (no GPU, no vLLM installed).
- `sglang`: writes a full model directory, then `POST /update_weights_from_disk`
  {"model_path", "load_format", "abort_all_requests", "weight_version"} per server.

Versions go over the wire as strings, as both vLLM and SGLang type them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import httpx
import torch

from services.common.http import RetryPolicy, ServiceError, request
from services.common.procs import free_port
from services.generation.models import (
    PauseMode,
    SGLangUpdateFromDiskRequest,
    SGLangUpdateFromDiskResponse,
)
from trainer.generation.checkpoint import (
    Weights,
    named_tensors,
    prune_checkpoints,
    write_checkpoint,
)
from trainer.generation.client import VERSION_PATHS

log = logging.getLogger(__name__)


class WeightSync(Protocol):
    """What the trainer calls after an optimiser step."""

    async def push(self, weights: Weights, version: int) -> None:
        """Make every server serve `weights`, reporting `version`; returns when all do."""
        ...

    async def current_versions(self) -> dict[str, str | None]:
        """Each server's committed weight version (None when it reports none)."""
        ...

    async def aclose(self) -> None: ...


class _HttpAdapter:
    """Shared plumbing: one HTTP client, retries on 5xx/transport, a version query."""

    service = "generation"

    def __init__(
        self, base_urls: list[str], *, timeout: float = 300.0, policy: RetryPolicy | None = None
    ) -> None:
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.timeout, self.policy = timeout, policy or RetryPolicy()
        self._http = httpx.AsyncClient()

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await request(
            self._http, self.service, method, url,
            policy=self.policy, timeout=self.timeout, **kwargs,
        )  # fmt: skip

    async def current_versions(self) -> dict[str, str | None]:
        versions = await asyncio.gather(*(self._version(url) for url in self.base_urls))
        return dict(zip(self.base_urls, versions, strict=True))

    async def _version(self, url: str) -> str | None:
        for path in VERSION_PATHS:
            try:
                response = await self._call("GET", f"{url}{path}")
            except ServiceError as exc:
                if exc.status == 404:
                    continue
                raise
            version = response.json().get("weight_version")
            return None if version is None else str(version)
        return None

    async def aclose(self) -> None:
        await self._http.aclose()


class VLLMDiskSync(_HttpAdapter):
    """vLLM's weight transfer, disk backend (`--weight-transfer-config '{"backend":"disk"}'`).

    `weights_dir` must be visible at the same absolute path on every server.
    `pause_mode` is how `/pause` treats requests in flight: "wait" lets them finish on the
    old weights, "keep" freezes them and resumes on the new ones, "abort" cuts them; None
    skips pausing (weights then change between two decoding steps of running requests).
    """

    def __init__(
        self,
        base_urls: list[str],
        *,
        weights_dir: Path,
        pause_mode: PauseMode | None = "wait",
        keep_checkpoints: int = 2,
        model_files_from: Path | None = None,
        timeout: float = 300.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(base_urls, timeout=timeout, policy=policy)
        self.weights_dir, self.pause_mode = Path(weights_dir), pause_mode
        self.keep_checkpoints, self.model_files_from = keep_checkpoints, model_files_from
        self._initialized: set[str] = set()

    async def push(self, weights: Weights, version: int) -> None:
        path = await asyncio.to_thread(
            write_checkpoint, weights, self.weights_dir, version,
            model_files_from=self.model_files_from,
        )  # fmt: skip
        await asyncio.gather(*(self._update(url, path, version) for url in self.base_urls))
        await asyncio.to_thread(prune_checkpoints, self.weights_dir, self.keep_checkpoints)

    async def _update(self, url: str, path: Path, version: int) -> None:
        if url not in self._initialized:
            await self._call("POST", f"{url}/init_weight_transfer_engine", json={"init_info": {}})
            self._initialized.add(url)
        async with _Paused(self, url):
            await self._call("POST", f"{url}/start_weight_update")
            update = {"update_info": {"path": str(path)}}
            await self._call("POST", f"{url}/update_weights", json=update)
            finish = {"weight_version": str(version)}
            await self._call("POST", f"{url}/finish_weight_update", json=finish)


class _Paused:
    """`/pause?mode=...` on entry and `/resume` on exit, even when the update failed."""

    def __init__(self, adapter: VLLMDiskSync | VLLMNcclSync, url: str) -> None:
        self.adapter, self.url = adapter, url

    async def __aenter__(self) -> None:
        if self.adapter.pause_mode is not None:
            params = {"mode": self.adapter.pause_mode}
            await self.adapter._call("POST", f"{self.url}/pause", params=params)

    async def __aexit__(self, *exc_info: object) -> None:
        if self.adapter.pause_mode is not None:
            await self.adapter._call("POST", f"{self.url}/resume")


class NcclTransport(Protocol):
    """The trainer's end of the NCCL group (rank 0, the sender)."""

    def connect(self, master_address: str, master_port: int, world_size: int) -> None: ...

    def send(self, tensors: Iterable[tuple[str, torch.Tensor]], packed: bool) -> None: ...


class VLLMNcclTransport:
    """vLLM's trainer-side NCCL engine, as used in vLLM's `examples/rl/rlhf_http_nccl.py`.

    Imported lazily: vLLM is only needed on a trainer that uses this backend. Untested here.
    """

    def __init__(self) -> None:
        self.group: Any = None

    def connect(self, master_address: str, master_port: int, world_size: int) -> None:
        from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

        self.group = NCCLWeightTransferEngine.trainer_init(
            {"master_address": master_address, "master_port": master_port, "world_size": world_size}
        )

    def send(self, tensors: Iterable[tuple[str, torch.Tensor]], packed: bool) -> None:
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerSendWeightsArgs,
            NCCLWeightTransferEngine,
        )

        args = NCCLTrainerSendWeightsArgs(group=self.group, packed=packed)
        NCCLWeightTransferEngine.trainer_send_weights(iterator=iter(tensors), trainer_args=args)


class VLLMNcclSync(_HttpAdapter):
    """vLLM's weight transfer, NCCL backend: HTTP control plane, NCCL broadcast data plane.

    The trainer is rank 0; server i's workers start at rank_offset 1 + the world sizes of
    servers before it. NOT run here: it needs GPUs and vLLM on both sides.
    """

    def __init__(
        self,
        base_urls: list[str],
        *,
        master_address: str | None = None,
        master_port: int | None = None,
        packed: bool = True,
        pause_mode: PauseMode | None = "wait",
        transport: NcclTransport | None = None,
        timeout: float = 300.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(base_urls, timeout=timeout, policy=policy)
        self.master_address = master_address or socket.gethostbyname(socket.gethostname())
        self.master_port = master_port or free_port()
        self.packed, self.pause_mode = packed, pause_mode
        self.transport = transport or VLLMNcclTransport()
        self._connected = False

    async def connect(self) -> None:
        """Rendezvous once: every server's init and the trainer's init run concurrently."""
        sizes = [
            int((await self._call("GET", f"{url}/get_world_size")).json()["world_size"])
            for url in self.base_urls
        ]
        world_size = 1 + sum(sizes)
        offsets = [1 + sum(sizes[:i]) for i in range(len(sizes))]
        inits = [
            self._call("POST", f"{url}/init_weight_transfer_engine", json={"init_info": {
                "master_address": self.master_address, "master_port": self.master_port,
                "rank_offset": offset, "world_size": world_size,
            }})
            for url, offset in zip(self.base_urls, offsets, strict=True)
        ]  # fmt: skip
        local = asyncio.to_thread(
            self.transport.connect, self.master_address, self.master_port, world_size
        )
        await asyncio.gather(local, *inits)
        self._connected = True

    async def push(self, weights: Weights, version: int) -> None:
        if not self._connected:
            await self.connect()
        tensors = weights.state_dict() if isinstance(weights, torch.nn.Module) else dict(weights)
        update = {"update_info": {
            "names": list(tensors),
            "dtype_names": [str(t.dtype).removeprefix("torch.") for t in tensors.values()],
            "shapes": [list(t.shape) for t in tensors.values()],
            "packed": self.packed,
        }}  # fmt: skip
        try:
            for url in self.base_urls:
                await self._pause_and_start(url)
            await self._transfer(tensors, update)
            for url in self.base_urls:
                finish = {"weight_version": str(version)}
                await self._call("POST", f"{url}/finish_weight_update", json=finish)
        finally:
            if self.pause_mode is not None:
                for url in self.base_urls:
                    await self._call("POST", f"{url}/resume")

    async def _pause_and_start(self, url: str) -> None:
        if self.pause_mode is not None:
            await self._call("POST", f"{url}/pause", params={"mode": self.pause_mode})
        await self._call("POST", f"{url}/start_weight_update")

    async def _transfer(self, tensors: dict[str, torch.Tensor], update: dict[str, Any]) -> None:
        """Workers' `/update_weights` and the trainer's broadcast meet inside NCCL calls."""
        receive = [
            self._call("POST", f"{url}/update_weights", json=update) for url in self.base_urls
        ]
        send = asyncio.to_thread(self.transport.send, list(tensors.items()), self.packed)
        await asyncio.gather(send, *receive)


class SGLangDiskSync(_HttpAdapter):
    """SGLang's `POST /update_weights_from_disk` with a full model directory.

    SGLang reloads a model directory (config included), so pass `model_files_from` (the
    base model directory) unless `push` gets a transformers model, whose config is saved.
    """

    def __init__(
        self,
        base_urls: list[str],
        *,
        weights_dir: Path,
        abort_all_requests: bool = False,
        keep_checkpoints: int = 2,
        model_files_from: Path | None = None,
        timeout: float = 300.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(base_urls, timeout=timeout, policy=policy)
        self.weights_dir, self.abort_all_requests = Path(weights_dir), abort_all_requests
        self.keep_checkpoints, self.model_files_from = keep_checkpoints, model_files_from

    async def push(self, weights: Weights, version: int) -> None:
        path = await asyncio.to_thread(
            write_checkpoint, weights, self.weights_dir, version,
            model_files_from=self.model_files_from,
        )  # fmt: skip
        body = SGLangUpdateFromDiskRequest(
            model_path=str(path),
            abort_all_requests=self.abort_all_requests,
            weight_version=str(version),
        ).model_dump()
        await asyncio.gather(*(self._update(url, body) for url in self.base_urls))
        await asyncio.to_thread(prune_checkpoints, self.weights_dir, self.keep_checkpoints)

    async def _update(self, url: str, body: dict[str, Any]) -> None:
        response = await self._call("POST", f"{url}/update_weights_from_disk", json=body)
        result = SGLangUpdateFromDiskResponse.model_validate(response.json())
        if not result.success:
            raise ServiceError(self.service, response.status_code, result.message, url)


WEIGHT_SYNCS: dict[str, Callable[..., WeightSync]] = {
    "vllm": VLLMDiskSync,
    "embedded": VLLMDiskSync,  # the embedded server speaks vLLM's API: same adapter
    "vllm_nccl": VLLMNcclSync,
    "sglang": SGLangDiskSync,
}


def make_weight_sync(kind: str, base_urls: list[str], **options: Any) -> WeightSync:
    """The adapter registered as `kind`, built with `options` (e.g. weights_dir=...)."""
    if kind not in WEIGHT_SYNCS:
        raise ValueError(f"unknown weight sync {kind!r}; known: {sorted(WEIGHT_SYNCS)}")
    return WEIGHT_SYNCS[kind](base_urls, **options)


__all__ = [
    "WEIGHT_SYNCS",
    "SGLangDiskSync",
    "VLLMDiskSync",
    "VLLMNcclSync",
    "WeightSync",
    "make_weight_sync",
    "named_tensors",
]
