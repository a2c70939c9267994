"""Weight updates on the embedded server through the trainer's `vllm` adapter, unchanged.

The server under test is `update_server_url`; these tests run in file order and each
leaves the server resumed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from transformers import AutoModelForCausalLM

from services.common.http import RetryPolicy, ServiceError
from services.generation.models import CompletionResponse
from trainer.generation.weight_sync import VLLMReloadSync

# Long enough (about a second here) that control calls land while it is decoding.
LONG = {"prompt": "1", "n": 64, "max_tokens": 120, "ignore_eos": True, "return_token_ids": True}
GREEDY = {"prompt": "12+34=", "max_tokens": 10, "temperature": 0, "return_token_ids": True}


async def complete(client: httpx.AsyncClient, url: str, **body: object) -> CompletionResponse:
    response = await client.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return CompletionResponse.model_validate(response.json())


async def test_vllm_adapter_changes_outputs_and_version(
    update_server_url: str, other_weights_dir: Path, tmp_path: Path
) -> None:
    new_model = AutoModelForCausalLM.from_pretrained(other_weights_dir)
    sync = VLLMReloadSync([update_server_url], weights_dir=tmp_path / "ckpt")
    async with httpx.AsyncClient() as client:
        before = await complete(client, update_server_url, **GREEDY)
        began = time.perf_counter()
        await sync.push(new_model, version=1)
        elapsed_ms = (time.perf_counter() - began) * 1000
        after = await complete(client, update_server_url, **GREEDY)
    assert before.weight_version == "0" and after.weight_version == "1"
    assert before.choices[0].token_ids != after.choices[0].token_ids
    assert await sync.current_versions() == {update_server_url: "1"}
    assert elapsed_ms < 2000  # the benchmark measures it properly; this catches a hang
    await sync.aclose()


async def test_pause_wait_lets_requests_in_flight_finish_on_old_weights(
    update_server_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    sync = VLLMReloadSync([update_server_url], weights_dir=tmp_path, pause_mode="wait")
    async with httpx.AsyncClient() as client:
        long = asyncio.create_task(complete(client, update_server_url, **LONG))
        await asyncio.sleep(0.3)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        await sync.push(model, version=2)
        old = await long
        new = await complete(client, update_server_url, **GREEDY)
    assert old.initial_weight_version == old.weight_version == "1"
    assert all(len(c.token_ids or []) == 120 for c in old.choices)
    assert new.weight_version == "2"
    await sync.aclose()


async def test_pause_keep_resumes_in_flight_requests_on_new_weights(
    update_server_url: str, other_weights_dir: Path
) -> None:
    url = update_server_url
    async with httpx.AsyncClient(timeout=60) as client:
        long = asyncio.create_task(complete(client, url, **LONG))
        await asyncio.sleep(0.3)
        assert (await client.post(f"{url}/pause", params={"mode": "keep"})).status_code == 200
        assert (await client.get(f"{url}/is_paused")).json() == {"is_paused": True}
        assert not long.done()
        await client.post(f"{url}/start_weight_update")
        update = {"update_info": {"path": str(other_weights_dir)}}
        assert (await client.post(f"{url}/update_weights", json=update)).status_code == 200
        await client.post(f"{url}/finish_weight_update", json={"weight_version": "3"})
        await client.post(f"{url}/resume")
        mixed = await long
    assert mixed.initial_weight_version == "2" and mixed.weight_version == "3"
    assert all(len(c.token_ids or []) == 120 for c in mixed.choices)


async def test_pause_abort_returns_partial_results(update_server_url: str) -> None:
    url = update_server_url
    async with httpx.AsyncClient(timeout=60) as client:
        long = asyncio.create_task(complete(client, url, **LONG))
        await asyncio.sleep(0.3)
        assert not long.done()
        await client.post(f"{url}/pause", params={"mode": "abort"})
        cut = await long
        queued = asyncio.create_task(complete(client, url, **GREEDY))
        await asyncio.sleep(0.3)
        assert not queued.done()  # paused: new requests wait for /resume
        await client.post(f"{url}/resume")
        await queued
    assert all(c.finish_reason == "abort" for c in cut.choices)
    assert 0 < len(cut.choices[0].token_ids or []) < 120


async def test_version_defaults_and_update_weight_version(update_server_url: str) -> None:
    url = update_server_url
    async with httpx.AsyncClient(timeout=30) as client:
        await client.post(f"{url}/start_weight_update")
        await client.post(f"{url}/finish_weight_update")  # no version: integer + 1
        assert (await client.get(f"{url}/weight_info")).json() == {"weight_version": "4"}
        response = await client.post(f"{url}/update_weight_version", json={"new_version": "7"})
        assert response.json() == {"success": True, "new_version": "7"}
        assert (await client.get(f"{url}/get_world_size")).json() == {"world_size": 1}


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/update_weights", {"update_info": {"path": "relative/dir"}}, 400, "absolute"),
        ("/update_weights", {"update_info": {"path": "/no/such/dir"}}, 400, "no such directory"),
        ("/update_weights", {"update_info": {}}, 400, "non-empty string"),
        ("/update_weights", {"path": "/x"}, 422, "update_info"),
        ("/init_weight_transfer_engine", {"init_info": {"master_address": "h"}}, 400, "disk"),
        ("/pause?mode=sleep", None, 422, "mode"),
    ],
)
def test_malformed_control_calls_get_a_4xx(
    update_server_url: str, path: str, body: object, status: int, reason: str
) -> None:
    httpx.post(f"{update_server_url}/start_weight_update")
    response = httpx.post(f"{update_server_url}{path}", json=body)
    assert response.status_code == status, response.text
    assert reason in response.text


def test_update_outside_a_session_and_wrong_shapes_are_refused(
    update_server_url: str, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    url = update_server_url
    httpx.post(f"{url}/start_weight_update")
    httpx.post(f"{url}/finish_weight_update", json={"weight_version": "8"})
    save_file({"model.norm.weight": torch.ones(3)}, str(tmp_path / "bad.safetensors"))
    response = httpx.post(f"{url}/update_weights", json={"update_info": {"path": str(tmp_path)}})
    assert response.status_code == 409 and "start_weight_update" in response.text
    httpx.post(f"{url}/start_weight_update")
    response = httpx.post(f"{url}/update_weights", json={"update_info": {"path": str(tmp_path)}})
    assert response.status_code == 400 and "shape" in response.text


async def test_adapter_surfaces_server_errors_and_resumes(
    update_server_url: str, tmp_path: Path
) -> None:
    import torch

    sync = VLLMReloadSync([update_server_url], weights_dir=tmp_path, policy=RetryPolicy(attempts=1))
    with pytest.raises(ServiceError) as failure:
        await sync.push({"no.such.weight": torch.zeros(2)}, version=9)
    assert failure.value.status == 400
    assert httpx.get(f"{update_server_url}/is_paused").json() == {"is_paused": False}
    await sync.aclose()


def test_paths_outside_the_weights_dir_are_refused(tmp_path: Path) -> None:
    from services.generation.weights import WeightLoadError, resolve_weights_path

    root = tmp_path / "weights"
    (root / "step-1").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert resolve_weights_path(str(root / "step-1"), root) == root / "step-1"
    assert resolve_weights_path("step-1", root) == root / "step-1"
    for raw in (str(tmp_path / "elsewhere"), "../elsewhere"):
        with pytest.raises(WeightLoadError, match="inside the server's weights_dir"):
            resolve_weights_path(raw, root)
    assert resolve_weights_path(str(tmp_path / "elsewhere"), None) == tmp_path / "elsewhere"
