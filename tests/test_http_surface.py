"""The error surface every service shares (services/common/errors.py), on real processes.

The allocator, the verifier and the embedded generation server run under uvicorn on
loopback ports; each must answer NaN/Infinity with a 422 naming the field, and a body
over its byte limit with a 413 naming the limit, whether the body is sent with a
Content-Length or chunked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.common.errors import install_error_handlers
from services.common.procs import ManagedProcess, free_port, start_service
from trainer.tiny.model import save_random_tiny_model

MIB = 1024 * 1024
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def services(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[str, ManagedProcess]]]:
    """name -> (base URL, process) of one allocator, one verifier, one generation server."""
    logs = tmp_path_factory.mktemp("logs")
    model = save_random_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", seed=0)
    commands = {
        "allocator": (["allocator", "serve"], {"PC_ALLOCATOR_REDIS_URL": redis_url}),
        "verifier": (["verifier", "serve"], {"PC_VERIFIER_WORKERS": "1"}),
        "generation": (["generation", "serve", "--model", str(model)], {}),
    }
    started: dict[str, tuple[str, ManagedProcess]] = {}
    try:
        for name, (command, env) in commands.items():
            port = free_port()
            proc = start_service(name, command, port=port, log_dir=logs, env=env, timeout=90)
            started[name] = (f"http://127.0.0.1:{port}", proc)
        yield started
    finally:
        for _, proc in started.values():
            proc.stop()


NON_FINITE = [
    ("verifier", "/v1/score", '{"items": [{"response": NaN, "reference": "1"}]}', "response"),
    ("verifier", "/v1/score", '{"items": [{"response": "1", "reference": Infinity}]}',
     "reference"),
    ("generation", "/v1/completions", '{"prompt": "1", "temperature": NaN}', "temperature"),
    ("generation", "/v1/completions", '{"prompt": "1", "top_p": Infinity}', "top_p"),
    ("generation", "/v1/completions", '{"prompt": NaN}', "prompt"),
    ("generation", "/v1/completions", '{"prompt": [1, -Infinity]}', "prompt"),
    ("allocator", "/v1/runs/nan-run", '{"strategy": "grpo", "train_batch_size": NaN}',
     "train_batch_size"),
]  # fmt: skip


@pytest.mark.parametrize(("service", "path", "body", "field"), NON_FINITE)
def test_nan_and_infinity_get_a_422_naming_the_field(
    services: dict[str, tuple[str, ManagedProcess]], service: str, path: str, body: str, field: str
) -> None:
    url, _ = services[service]
    method = "PUT" if service == "allocator" else "POST"
    response = httpx.request(method, f"{url}{path}", content=body, headers=JSON, timeout=30)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and all(set(d) == {"loc", "msg", "type"} for d in detail)
    assert any(field in d["loc"] for d in detail), detail
    assert httpx.get(f"{url}/health").status_code == 200


LIMITS = {
    "allocator": ("/v1/runs/big/plans/p/results", 16 * MIB),
    "verifier": ("/v1/score", 32 * MIB),
    "generation": ("/v1/completions", 16 * MIB),
}


def peak_rss_mib(proc: ManagedProcess) -> float:
    """The process's peak resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("service", sorted(LIMITS))
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_bodies_over_the_limit_get_a_413_in_both_framings(
    services: dict[str, tuple[str, ManagedProcess]], service: str, framing: str
) -> None:
    url, proc = services[service]
    path, limit = LIMITS[service]
    size = limit + 4 * MIB  # 20 MiB for the allocator and generation, 36 MiB for the verifier
    chunk = b"x" * MIB
    content: bytes | Iterator[bytes] = (
        chunk * (size // MIB) if framing == "content-length" else iter([chunk] * (size // MIB))
    )
    before = peak_rss_mib(proc)
    began = time.perf_counter()
    response = httpx.post(f"{url}{path}", content=content, headers=JSON, timeout=60)
    elapsed = time.perf_counter() - began
    grew = peak_rss_mib(proc) - before
    assert response.status_code == 413, response.text[:300]
    assert f"exceeds the limit of {limit} bytes" in response.json()["detail"]
    assert httpx.get(f"{url}/health").status_code == 200
    print(f"{service} {framing}: {size // MIB} MiB -> 413 in {elapsed:.2f} s, "
          f"peak RSS +{grew:.0f} MiB")  # fmt: skip


def serve_in_thread(app: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


def test_a_500_closes_the_connection_so_the_next_pooled_request_succeeds() -> None:
    """uvicorn drops the connection after an unhandled error; `Connection: close` on the
    500 keeps the client from reusing it, so the next request opens a new one."""
    app = FastAPI()
    install_error_handlers(app, max_body_bytes=1024 * 1024)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    server, thread, url = serve_in_thread(app)
    failures = 0
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(20):
                response = client.get("/boom")
                assert response.status_code == 500
                assert response.json() == {"detail": "internal server error (RuntimeError)"}
                assert response.headers["connection"] == "close"
                try:
                    assert client.get("/ok").status_code == 200
                except httpx.TransportError:
                    failures += 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert failures == 0, f"{failures}/20 requests after a 500 failed in transport"
