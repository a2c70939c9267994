"""Weight updates that fail, are retried, or are hostile leave the embedded server serving
weights it actually loaded, under the version it reports.

A server of its own (module scope) with `--weights-dir`, so that path confinement is
tested as deployed; a loopback proxy that drops each call's first answer stands for a
network that loses responses after the server acted on the request.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from services.common.http import RetryPolicy, request
from services.common.procs import ManagedProcess, free_port, start_service
from trainer.generation.weight_sync import VLLMReloadSync

GREEDY = {"prompt": "12+34=", "max_tokens": 8, "temperature": 0, "return_token_ids": True}
RETRY = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    command = ["generation", "serve", "--model", str(tiny_model_dir)]
    command += ["--weights-dir", str(weights_dir)]
    logs = tmp_path_factory.mktemp("logs")
    proc: ManagedProcess = start_service("generation-safety", command, port=port, log_dir=logs)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def state(url: str) -> tuple[str | None, list[int]]:
    """The reported version and the greedy completion (which changes with the weights)."""
    version = httpx.get(f"{url}/health").json()["weight_version"]
    response = httpx.post(f"{url}/v1/completions", json=GREEDY, timeout=60)
    assert response.status_code == 200, response.text
    return version, response.json()["choices"][0]["token_ids"]


def test_a_failed_update_commits_no_version(server: str, weights_dir: Path) -> None:
    before = state(server)
    (weights_dir / "wrong-shape").mkdir()
    wrong = weights_dir / "wrong-shape" / "w.safetensors"
    save_file({"model.norm.weight": torch.ones(3)}, str(wrong))
    assert httpx.post(f"{server}/start_weight_update").status_code == 200
    response = httpx.post(f"{server}/update_weights", json={"update_info": {"path": "wrong-shape"}})
    assert response.status_code == 400 and "shape" in response.text
    response = httpx.post(f"{server}/finish_weight_update", json={"weight_version": "99"})
    assert response.status_code == 409, response.text
    assert "failed" in response.json()["detail"] and "shape" in response.json()["detail"]
    assert state(server) == before


def hostile_files(weights_dir: Path, name: str, shape: tuple[int, ...]) -> dict[str, str]:
    """label -> `update_info.path` (relative to `weights_dir`) of a directory to refuse."""
    directory = weights_dir / "hostile"
    directory.mkdir()
    cases: dict[str, str] = {}

    def case(label: str) -> Path:
        path = directory / label
        path.mkdir()
        cases[label] = f"hostile/{label}"
        return path / "model.safetensors"

    save_file({name: torch.ones(shape)}, str(directory / "good.safetensors"))
    good = (directory / "good.safetensors").read_bytes()
    case("truncated").write_bytes(good[: len(good) // 2])
    case("garbage").write_bytes(b"not a safetensors file at all" * 100)
    case("header-2^62").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    save_file({name: torch.full(shape, float("nan"))}, str(case("nan")))
    save_file({name: torch.full(shape, 1e300, dtype=torch.float64)}, str(case("inf-when-cast")))
    save_file({name: torch.ones(shape, dtype=torch.int64)}, str(case("int")))
    outside = weights_dir.parent / f"{weights_dir.name}-outside"
    outside.mkdir()
    save_file({name: torch.ones(shape)}, str(outside / "model.safetensors"))
    case("symlink-out").symlink_to(outside / "model.safetensors")
    cases["../outside"] = f"../{outside.name}"
    return cases


REASONS = {
    "truncated": "not a readable safetensors file",
    "garbage": "not a readable safetensors file",
    "header-2^62": "not a readable safetensors file",
    "nan": "NaN or infinite",
    "inf-when-cast": "NaN or infinite",
    "int": "only floating-point",
    "symlink-out": "outside the server's weights_dir",
    "../outside": "inside the server's weights_dir",
}


def test_corrupt_hostile_or_outside_weights_are_400_and_change_nothing(
    server: str, weights_dir: Path, tiny_model_dir: Path
) -> None:
    name = "model.norm.weight"
    shape = tuple(load_file(str(next(tiny_model_dir.glob("*.safetensors"))))[name].shape)
    cases = hostile_files(weights_dir, name, shape)
    before = state(server)
    statuses: dict[str, int] = {}
    for label, relative in cases.items():
        httpx.post(f"{server}/start_weight_update")
        staged = httpx.post(f"{server}/update_weights", json={"update_info": {"path": relative}})
        finish = httpx.post(f"{server}/finish_weight_update", json={"weight_version": label})
        rpc = {"method": "reload_weights", "kwargs": {"weights_path": relative}}
        reload = httpx.post(f"{server}/collective_rpc", json=rpc)
        statuses[label] = staged.status_code
        for response in (staged, reload):
            assert response.status_code == 400, (label, response.text)
            assert REASONS[label] in response.json()["detail"], (label, response.text)
        assert finish.status_code == 409, (label, finish.text)
    assert statuses == dict.fromkeys(cases, 400)
    assert state(server) == before


class DroppingProxy:
    """Forwards HTTP/1.1 requests to `upstream`; the first answer to each (method, path) is
    dropped after the upstream acted on it (the client's connection is closed instead)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.dropped: list[str] = []
        self.forwarded: list[str] = []
        self._http = httpx.AsyncClient(timeout=60)
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._http.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ")
                headers = dict(line.split(": ", 1) for line in head[1:] if line)
                headers = {k.lower(): v for k, v in headers.items()}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                keep = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
                answer = await self._http.request(
                    method, f"{self.upstream}{target}", content=body, headers=keep
                )
                call = f"{method} {target.split('?')[0]}"
                if call not in self.dropped:
                    self.dropped.append(call)
                    return
                self.forwarded.append(call)
                writer.write(
                    f"HTTP/1.1 {answer.status_code} X\r\ncontent-type: "
                    f"{answer.headers.get('content-type', 'text/plain')}\r\n"
                    f"content-length: {len(answer.content)}\r\n\r\n".encode("latin-1")
                    + answer.content
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def proxy(server: str) -> AsyncIterator[tuple[DroppingProxy, str]]:
    dropping = DroppingProxy(server)
    url = await dropping.start()
    yield dropping, url
    await dropping.close()


async def test_staged_update_survives_lost_answers(
    server: str, weights_dir: Path, other_weights_dir: Path, proxy: tuple[DroppingProxy, str]
) -> None:
    dropping, url = proxy
    target = weights_dir / "step-21"
    target.mkdir()
    for file in other_weights_dir.glob("*.safetensors"):
        (target / file.name).write_bytes(file.read_bytes())
    before = state(server)
    async with httpx.AsyncClient() as http:
        for path, body in [
            ("/start_weight_update", None),
            ("/update_weights", {"update_info": {"path": "step-21"}}),
            ("/finish_weight_update", {"weight_version": "21"}),
        ]:
            await request(http, "generation", "POST", f"{url}{path}", policy=RETRY, timeout=60,
                          json=body)  # fmt: skip
    assert dropping.dropped == [
        "POST /start_weight_update", "POST /update_weights", "POST /finish_weight_update"
    ]  # fmt: skip
    after = state(server)
    assert after[0] == "21" and after[1] != before[1]


async def test_vllm_adapter_push_survives_lost_answers(
    server: str, weights_dir: Path, tiny_model_dir: Path, proxy: tuple[DroppingProxy, str]
) -> None:
    dropping, url = proxy
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sync = VLLMReloadSync([url], weights_dir=weights_dir / "pushes", policy=RETRY)
    try:
        await sync.push(model, version=22)
    finally:
        await sync.aclose()
    calls = {"POST /pause", "POST /collective_rpc", "POST /update_weight_version", "POST /resume"}
    assert calls <= set(dropping.dropped)
    assert httpx.get(f"{server}/health").json() == {
        "status": "ok", "weight_version": "22", "is_paused": False
    }  # fmt: skip


def test_update_weight_version_waits_for_the_running_step(tiny_model_dir: Path) -> None:
    """The version a decoding step reads is set between steps, like the weights."""
    from services.generation.app import create_app
    from services.generation.engine import Engine
    from services.generation.settings import GenerationSettings

    settings = GenerationSettings(model=tiny_model_dir, device="cpu")
    app = create_app(settings)
    app.state.engine = engine = Engine(settings)  # not started: this test plays the step
    step = engine.barrier.step()
    step.__enter__()
    answered: list[int] = []

    async def call() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            response = await client.post("/update_weight_version", json={"new_version": "v2"})
            answered.append(response.status_code)

    thread = threading.Thread(target=asyncio.run, args=(call(),))
    thread.start()
    time.sleep(0.5)
    during = engine.weight_version
    step.__exit__(None, None, None)
    thread.join(timeout=10)
    assert during == "0", "the version changed in the middle of a decoding step"
    assert answered == [200] and engine.weight_version == "v2"
