"""The error surface every service shares (services/common/errors.py), on real processes.

The allocator, the verifier and the embedded generation server run under uvicorn on
loopback ports; each must answer NaN/Infinity with a 422 naming the field, and a body
over its byte limit with a 413 naming the limit, whether the body is sent with a
Content-Length or chunked.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.common.errors import ErrorBody, ValidationErrorBody, install_error_handlers
from services.common.http import RetryPolicy, ServiceError, ServiceUnavailable, request
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


def boom_and_ok_app() -> FastAPI:
    """An app with `/boom` (an unhandled error: a 500) and `/ok` (200)."""
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    return app


def test_a_500_closes_the_connection_so_the_next_pooled_request_succeeds() -> None:
    """uvicorn drops the connection after an unhandled error; `Connection: close` on the
    500 keeps the client from reusing it, so the next request opens a new one."""
    app = boom_and_ok_app()
    install_error_handlers(app, max_body_bytes=1024 * 1024)
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


async def test_clients_survive_a_server_that_drops_the_connection_after_a_500() -> None:
    """A server without the shared handler (vLLM, SGLang: uvicorn too) closes the
    connection after an unhandled error without `Connection: close`; the shared client
    retries such a call once at once on a new connection, even with a single attempt."""
    app = boom_and_ok_app()  # Starlette's own 500, no Connection: close
    server, thread, url = serve_in_thread(app)
    once = RetryPolicy(attempts=1)
    failures = 0
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(200):
                with pytest.raises(ServiceError):
                    await request(client, "test", "GET", "/boom", policy=once, timeout=10)
                try:
                    await request(client, "test", "GET", "/ok", policy=once, timeout=10)
                except ServiceUnavailable:
                    failures += 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert failures == 0, f"{failures}/200 calls after a 500 failed in transport"


PATH_VALUES = {
    "run_id": "conf-run",
    "plan_id": "p-1",
    "prompt_id": "3",
    "step": "0",
    "restore_id": "r1",
}
BAD_PATH_VALUES = {
    "run_id": "bad id!",
    "plan_id": "p-1",
    "prompt_id": "x",
    "step": "x",
    "restore_id": "bad id!",
}
BODIES: list[bytes | None] = [None, b"{}", b'{"x": NaN}', b"not json", b"[]", b'{"items": 1}']


def check_against_openapi(
    url: str, probes: list[tuple[str, str, bytes | None]], schema: dict[str, Any]
) -> tuple[int, list[str], set[int]]:
    """Send each probe; return how many, the answers the OpenAPI does not describe (status
    not listed, or an error body that is not the listed model) and the statuses seen."""
    violations, seen = [], set()
    for method, (template, target), body in probes:
        op = schema["paths"][template][method.lower()]
        response = httpx.request(method, f"{url}{target}", content=body, headers=JSON, timeout=30)
        seen.add(response.status_code)
        where = f"{method} {target} {body!r} -> {response.status_code}"
        documented = op["responses"].get(str(response.status_code))
        if documented is None:
            violations.append(f"{where}: status not in the OpenAPI")
            continue
        if response.status_code >= 400:
            model = ValidationErrorBody if response.status_code == 422 else ErrorBody
            ref = documented.get("content", {}).get("application/json", {}).get("schema", {})
            if ref.get("$ref") != f"#/components/schemas/{model.__name__}":
                violations.append(f"{where}: documented as {ref}, not {model.__name__}")
            try:
                model.model_validate(response.json())
            except ValueError as exc:
                violations.append(
                    f"{where}: body {response.text[:120]!r} is not {model.__name__}: {exc}"
                )
    return len(probes), violations, seen


def probes_for(schema: dict[str, Any], extra: list[tuple[str, str, str, bytes | None]]) -> list[
    tuple[str, tuple[str, str], bytes | None]
]:  # fmt: skip
    """Every operation with good and bad path values, times every body in BODIES, then
    `extra` (method, template, target, body) probes that reach the routes' own checks."""
    probes = []
    for template, operations in schema["paths"].items():
        for method in operations:
            targets = {template.format(**PATH_VALUES), template.format(**BAD_PATH_VALUES)}
            for target in sorted(targets):
                probes += [(method.upper(), (template, target), body) for body in BODIES]
    probes += [(method, (template, target), body) for method, template, target, body in extra]
    return probes


PC = {"strategy": "pilot_commit", "train_batch_size": 2, "gen_batch_size": 6, "n_pilot": 4,
      "n_commit": 4, "p_lower": 0.25, "p_upper": 0.25, "exclude_threshold": 1.0}  # fmt: skip
SPEC = json.dumps({"num_prompts": 30, "config": PC}).encode()
EXTRA = {
    "allocator": [
        ("PUT", "/v1/runs/{run_id}", "/v1/runs/conf-run", SPEC),
        ("PUT", "/v1/runs/{run_id}", "/v1/runs/conf-run", SPEC.replace(b"30", b"31")),
        ("POST", "/v1/runs/{run_id}/plan", "/v1/runs/conf-run/plan", b'{"request_id": "r1"}'),
        ("POST", "/v1/runs/{run_id}/plans/{plan_id}/results",
         "/v1/runs/conf-run/plans/p-1/results", b'{"rewards": [[1, 0]]}'),
        ("GET", "/v1/runs/{run_id}/prompts/{prompt_id}", "/v1/runs/conf-run/prompts/99", None),
        ("POST", "/v1/runs/{run_id}/steps/{step}/complete", "/v1/runs/conf-run/steps/7/complete",
         None),
        ("POST", "/v1/runs/{run_id}/prompts/{prompt_id}/evidence",
         "/v1/runs/conf-run/prompts/3/evidence", b'{"evidence_id": "e", "rewards": [2]}'),
    ],
    "verifier": [
        ("POST", "/v1/score", "/v1/score", b'{"items": [{"response": "x", "reference": "1"}]}'),
        ("POST", "/v1/score", "/v1/score",
         json.dumps({"items": [{"response": "1", "reference": "1"}] * 600}).encode()),
    ],
    "generation": [
        ("POST", "/v1/completions", "/v1/completions", b'{"prompt": [5, 99999]}'),
        ("POST", "/v1/completions", "/v1/completions", b'{"prompt": "1", "model": "nope"}'),
        ("POST", "/update_weights", "/update_weights", b'{"update_info": {"path": "/nope"}}'),
        ("POST", "/finish_weight_update", "/finish_weight_update", b'{"weight_version": "9"}'),
        ("POST", "/collective_rpc", "/collective_rpc", b'{"method": "sleep"}'),
        ("POST", "/init_weight_transfer_engine", "/init_weight_transfer_engine",
         b'{"init_info": {"backend": "nccl"}}'),
        ("POST", "/pause", "/pause?mode=sleep", None),
        ("POST", "/resume", "/resume", None),
    ],
}  # fmt: skip


@pytest.mark.parametrize("service", ["allocator", "verifier", "generation"])
def test_every_answer_is_described_by_the_openapi(
    services: dict[str, tuple[str, ManagedProcess]], service: str
) -> None:
    """Statuses and error bodies of many good and bad requests against each operation's
    OpenAPI entry (schemathesis is not installed here; this is its core check)."""
    url, _ = services[service]
    schema = httpx.get(f"{url}/openapi.json").json()
    extra = list(EXTRA[service])
    if service == "allocator":  # a real plan, to reach the store's own checks
        assert httpx.put(f"{url}/v1/runs/plan-run", content=SPEC, headers=JSON).is_success
        plan = httpx.post(f"{url}/v1/runs/plan-run/plan", json={"request_id": "r"}).json()
        results = f"/v1/runs/plan-run/plans/{plan['plan_id']}/results"
        template = "/v1/runs/{run_id}/plans/{plan_id}/results"
        wrong_size = json.dumps({"rewards": [[1.0] * 3 for _ in plan["items"]]}).encode()
        extra += [("POST", template, results, wrong_size)]
    for operations in schema["paths"].values():
        for op in operations.values():
            assert {"413", "500"} <= set(op["responses"]), op.get("operationId")
    probes = probes_for(schema, extra)
    sent, violations, seen = check_against_openapi(url, probes, schema)
    httpx.post(f"{url}/resume")  # the probes paused the generation server
    print(f"{service}: {len(schema['paths'])} paths, {sent} requests, statuses {sorted(seen)}, "
          f"{len(violations)} not described")  # fmt: skip
    assert not violations, "\n".join(violations[:20])
