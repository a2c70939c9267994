"""Contract tests of the vLLM (disk, NCCL) and SGLang adapters against a recording server.

Neither vLLM nor SGLang can run here (no GPU), so a small FastAPI app on loopback records
each call; the tests pin the request sequence and bodies that their documentation gives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.common.http import RetryPolicy, ServiceError
from services.common.procs import free_port
from trainer.generation.weight_sync import make_weight_sync

Call = tuple[str, str, dict[str, str], Any]


def recording_app(calls: list[Call], replies: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def record(path: str, request: Request) -> JSONResponse:
        raw = await request.body()
        body = await request.json() if raw else None
        calls.append((request.method, f"/{path}", dict(request.query_params), body))
        return JSONResponse(replies.get(f"/{path}", {"message": "ok"}))

    return app


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[Call], dict[str, Any]]]:
    calls: list[Call] = []
    replies: dict[str, Any] = {"/get_world_size": {"world_size": 2}}
    port = free_port()
    config = uvicorn.Config(recording_app(calls, replies), port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", calls, replies
    server.should_exit = True
    thread.join(5)


WEIGHTS = {"model.norm.weight": torch.ones(4), "lm_head.weight": torch.zeros(3, 4)}


async def test_vllm_disk_sequence(recorder: tuple[str, list[Call], Any], tmp_path: Path) -> None:
    url, calls, _ = recorder
    sync = make_weight_sync("vllm", [url], weights_dir=tmp_path, pause_mode="keep")
    await sync.push(WEIGHTS, version=3)
    await sync.push(WEIGHTS, version=4)
    path3, path4 = (
        str(tmp_path.resolve() / "step-00000003"),
        str(tmp_path.resolve() / "step-00000004"),
    )
    assert calls == [
        ("POST", "/init_weight_transfer_engine", {}, {"init_info": {}}),
        ("POST", "/pause", {"mode": "keep"}, None),
        ("POST", "/start_weight_update", {}, None),
        ("POST", "/update_weights", {}, {"update_info": {"path": path3}}),
        ("POST", "/finish_weight_update", {}, {"weight_version": "3"}),
        ("POST", "/resume", {}, None),
        ("POST", "/pause", {"mode": "keep"}, None),
        ("POST", "/start_weight_update", {}, None),
        ("POST", "/update_weights", {}, {"update_info": {"path": path4}}),
        ("POST", "/finish_weight_update", {}, {"weight_version": "4"}),
        ("POST", "/resume", {}, None),
    ]
    assert (tmp_path / "step-00000004" / "model.safetensors").exists()
    await sync.aclose()


class FakeTransport:
    """Stands in for the NCCL group, which needs GPUs: records what it was asked to do."""

    def __init__(self) -> None:
        self.connected: tuple[str, int, int] | None = None
        self.sent: list[str] = []

    def connect(self, master_address: str, master_port: int, world_size: int) -> None:
        self.connected = (master_address, master_port, world_size)

    def send(self, tensors: Iterable[tuple[str, torch.Tensor]], packed: bool) -> None:
        self.sent = [name for name, _ in tensors]


async def test_vllm_nccl_sequence(recorder: tuple[str, list[Call], Any]) -> None:
    url, calls, _ = recorder
    transport = FakeTransport()
    sync = make_weight_sync(
        "vllm_nccl", [url], master_address="10.0.0.1", master_port=29500, transport=transport
    )
    await sync.push(WEIGHTS, version=5)
    init_info = {
        "master_address": "10.0.0.1",
        "master_port": 29500,
        "rank_offset": 1,
        "world_size": 3,
    }
    update_info = {
        "names": ["model.norm.weight", "lm_head.weight"],
        "dtype_names": ["float32", "float32"],
        "shapes": [[4], [3, 4]],
        "packed": True,
    }
    assert calls == [
        ("GET", "/get_world_size", {}, None),
        ("POST", "/init_weight_transfer_engine", {}, {"init_info": init_info}),
        ("POST", "/pause", {"mode": "wait"}, None),
        ("POST", "/start_weight_update", {}, None),
        ("POST", "/update_weights", {}, {"update_info": update_info}),
        ("POST", "/finish_weight_update", {}, {"weight_version": "5"}),
        ("POST", "/resume", {}, None),
    ]
    assert transport.connected == ("10.0.0.1", 29500, 3)
    assert transport.sent == ["model.norm.weight", "lm_head.weight"]
    await sync.aclose()


async def test_sglang_sequence_and_failure(
    recorder: tuple[str, list[Call], Any], tmp_path: Path
) -> None:
    url, calls, replies = recorder
    replies["/update_weights_from_disk"] = {"success": True, "message": "ok"}
    replies["/model_info"] = {"weight_version": "6"}
    sync = make_weight_sync("sglang", [url], weights_dir=tmp_path, policy=RetryPolicy(attempts=1))
    await sync.push(WEIGHTS, version=6)
    body = {
        "model_path": str(tmp_path.resolve() / "step-00000006"),
        "load_format": None,
        "abort_all_requests": False,
        "weight_version": "6",
    }
    assert calls == [("POST", "/update_weights_from_disk", {}, body)]
    replies["/update_weights_from_disk"] = {"success": False, "message": "shape mismatch"}
    with pytest.raises(ServiceError, match="shape mismatch"):
        await sync.push(WEIGHTS, version=7)
    await sync.aclose()


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="known"):
        make_weight_sync("trt-llm", ["http://x"])
