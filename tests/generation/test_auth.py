"""The embedded server with a bearer token (PC_GENERATION_TOKEN): only `/health` and
`/metrics` answer without it, and the trainer's clients send it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from transformers import AutoModelForCausalLM

from services.common.procs import ManagedProcess, free_port, start_service
from services.generation.client import GenerationClient, GenerationRequest, SamplingParams
from trainer.generation.landing import LandingProbe
from trainer.generation.weight_sync import VLLMReloadSync

TOKEN = "s3cret-generation-token"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    command = ["generation", "serve", "--model", str(tiny_model_dir)]
    logs = tmp_path_factory.mktemp("logs")
    proc: ManagedProcess = start_service(
        "generation-auth", command, port=port, log_dir=logs, env={"PC_GENERATION_TOKEN": TOKEN}
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def test_every_route_but_health_and_metrics_needs_the_token(server: str) -> None:
    schema = httpx.get(f"{server}/openapi.json").json()
    routes = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops if p != "/health"]
    assert ("POST", "/update_weights") in routes and ("POST", "/v1/completions") in routes
    for path, operations in schema["paths"].items():  # and the OpenAPI says so
        assert all("401" in op["responses"] for op in operations.values()) == (path != "/health")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in routes:
            body = {} if method == "POST" else None
            response = httpx.request(method, f"{server}{path}", json=body, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    print(f"{len(routes)} routes, each refused without, with a wrong and with a bare token")
    assert len(routes) == 13
    assert httpx.get(f"{server}/health").json() == {
        "status": "ok", "weight_version": "0", "is_paused": False
    }  # fmt: skip
    assert httpx.get(f"{server}/metrics").status_code == 200


def test_the_trainer_clients_send_the_token(
    server: str, other_weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    async def run() -> None:
        # Passed explicitly to the adapter; read from PC_GENERATION_TOKEN by the others.
        sync = VLLMReloadSync([server], weights_dir=tmp_path, token=TOKEN)
        monkeypatch.setenv("PC_GENERATION_TOKEN", TOKEN)
        client = GenerationClient([server])
        probe = LandingProbe([[5, 6, 7]], tolerance=1e-3, max_tokens=4)
        model = AutoModelForCausalLM.from_pretrained(other_weights_dir)
        try:
            await sync.push(model, version=1)
            assert await sync.current_versions() == {server: "1"}
            request = GenerationRequest([5, 6, 7], n=2, sampling=SamplingParams(max_tokens=4))
            [completion] = await client.generate([request])
            assert completion.weight_version == "1" and len(completion.samples) == 2
            [report] = await probe.check(model, [server], version=1, step=1)
            assert report.mean_abs < 1e-3
        finally:
            await sync.aclose()
            await client.aclose()
            await probe.aclose()

    asyncio.run(run())
