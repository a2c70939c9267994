"""A fleet of embedded generation servers (real processes on loopback) behind one client:
balancing towards the faster server, a server killed mid-round, a weight push that
cannot reach every server. The trainer's side (a restarted server gets the current
weights before it is used) is in tests/trainer/test_fleet.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoTokenizer

from services.common.http import RetryPolicy
from services.common.procs import ManagedProcess, free_port, start_service
from services.generation.client import (
    GenerationClient,
    GenerationRequest,
    NoServerInRotation,
    SamplingParams,
)
from trainer.generation.weight_sync import ServersUnreachable, build_weight_sync

FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)
SLOW_STEP_MS = 150  # the slow server's sleep per decoding step


def serve(model: Path, logs: Path, name: str, *, port: int | None = None, delay_ms: float = 0):
    """An embedded server as a process; `delay_ms`: its `--decode-step-delay-ms`."""
    command = ["generation", "serve", "--model", str(model), "--batch-window-ms", "20"]
    if delay_ms:
        command += ["--decode-step-delay-ms", str(delay_ms)]
    return start_service(name, command, port=port or free_port(), log_dir=logs, timeout=120)


def url_of(proc: ManagedProcess) -> str:
    return f"http://127.0.0.1:{proc.argv[proc.argv.index('--port') + 1]}"


@pytest.fixture(scope="module")
def fast_and_slow(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    logs = tmp_path_factory.mktemp("fleet-logs")
    fast = serve(tiny_model_dir, logs, "fleet-fast")
    try:
        slow = serve(tiny_model_dir, logs, "fleet-slow", delay_ms=SLOW_STEP_MS)
        try:
            yield url_of(fast), url_of(slow)
        finally:
            slow.stop()
    finally:
        fast.stop()


def prompts(model_dir: Path, count: int) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer.encode(f"{i}+{i + 1}=") for i in range(count)]


async def test_rollouts_go_to_the_faster_server(
    fast_and_slow: tuple[str, str], tiny_model_dir: Path
) -> None:
    """With one call in flight per server, the server that answers sooner takes the next
    call: the fast one serves more of the batch (direction only, no timing)."""
    fast, slow = fast_and_slow
    sampling = SamplingParams(max_tokens=8, seed=5)
    requests = [GenerationRequest(p, n=2, sampling=sampling) for p in prompts(tiny_model_dir, 16)]
    async with GenerationClient(
        [slow, fast], max_prompts_per_request=1, max_outstanding_per_server=1, policy=FAST
    ) as client:
        completions = await client.generate(requests)
    by_server = {url: sum(c.base_url == url for c in completions) for url in (fast, slow)}
    assert len(completions) == 16 and sum(by_server.values()) == 16
    assert by_server[fast] > by_server[slow] >= 1, by_server
    assert client.served == by_server


async def test_without_a_cap_a_batch_is_split_evenly_whatever_the_speed(
    fast_and_slow: tuple[str, str], tiny_model_dir: Path
) -> None:
    """Every chunk of one batch is sent at once, so outstanding requests alone cannot
    favour the faster server within a batch (why `max_outstanding_per_server` exists)."""
    fast, slow = fast_and_slow
    sampling = SamplingParams(max_tokens=4, seed=5)
    requests = [GenerationRequest(p, n=1, sampling=sampling) for p in prompts(tiny_model_dir, 8)]
    async with GenerationClient([slow, fast], max_prompts_per_request=1, policy=FAST) as client:
        await client.generate(requests)
    assert client.served == {fast: 4, slow: 4}


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GenerationClient(["http://127.0.0.1:1"], max_outstanding_per_server=0)


async def test_a_server_killed_mid_round_has_its_calls_resent(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Kill a server while it holds calls: they are re-sent to the other, each request is
    answered once with its own n samples, the dead server is marked down, and a re-probe
    after it is back (same port) puts it in rotation again."""
    survivor = serve(tiny_model_dir, tmp_path, "survivor")
    victim = serve(tiny_model_dir, tmp_path, "victim", delay_ms=SLOW_STEP_MS)
    survivor_url, victim_url = url_of(survivor), url_of(victim)
    port = int(victim_url.rsplit(":", 1)[1])
    try:
        batch = prompts(tiny_model_dir, 12)
        sampling = SamplingParams(max_tokens=8, seed=9)
        requests = [GenerationRequest(p, n=3, sampling=sampling) for p in batch]
        async with GenerationClient(
            [victim_url, survivor_url], max_prompts_per_request=1, policy=FAST, reprobe_s=0.2
        ) as client:
            round_ = asyncio.create_task(client.generate(requests))
            while client.outstanding[victim_url] == 0:
                await asyncio.sleep(0.01)
            in_flight = client.outstanding[victim_url]
            await asyncio.to_thread(victim.kill)
            completions = await round_
            assert in_flight > 0 and victim_url in client.down
            assert client.rotation == [survivor_url]
            # each request answered once, by one server, with its own prompt and n samples
            assert [c.prompt_token_ids for c in completions] == batch
            assert all(len(c.samples) == 3 for c in completions)
            assert sum(client.served.values()) == len(batch)  # one answered call per chunk
            assert {c.base_url for c in completions} == {survivor_url}

            victim = serve(tiny_model_dir, tmp_path, "victim-back", port=port)
            await asyncio.sleep(0.3)  # past reprobe_s
            again = await client.generate(requests)
            assert victim_url not in client.down
            assert {c.base_url for c in again} == {survivor_url, victim_url}
    finally:
        victim.stop()
        survivor.stop()


async def test_a_server_that_reports_another_version_is_held_until_it_has_the_required_one(
    tiny_model_dir: Path, tmp_path: Path, fast_and_slow: tuple[str, str]
) -> None:
    """`required_version`: a server reporting another version gets no call until a
    refresh finds the required one (none in rotation: NoServerInRotation); a push that
    cannot reach a server updates the others and names it (ServersUnreachable)."""
    fast, _ = fast_and_slow
    fresh = serve(tiny_model_dir, tmp_path, "fresh")
    fresh_url = url_of(fresh)
    dead = f"http://127.0.0.1:{free_port()}"
    model = {k: v.clone() for k, v in _state_dict(tiny_model_dir).items()}
    policy = RetryPolicy(attempts=2, backoff_s=0.01, max_backoff_s=0.02)
    sync = build_weight_sync("vllm", [fresh_url, dead], weights_dir=tmp_path / "w", policy=policy)
    try:
        async with GenerationClient([fresh_url, fast], policy=FAST) as client:
            held = await client.refresh("7")
            assert held == sorted([fresh_url, fast])  # both report their initial "0"
            assert client.rotation == []
            with pytest.raises(NoServerInRotation) as nothing:  # at once: waiting cannot help
                await client.generate([GenerationRequest([1, 2, 3], n=2)] * 4)
            assert nothing.value.held == sorted([fresh_url, fast]) and client.served[fast] == 0
            with pytest.raises(ServersUnreachable) as failure:
                await sync.push(model, 7, [fresh_url, dead])
            assert failure.value.urls == [dead]
            assert await client.refresh() == [fast]
            assert client.rotation == [fresh_url]
            completions = await client.generate([GenerationRequest([1, 2, 3], n=2)] * 4)
            assert {(c.base_url, c.weight_version) for c in completions} == {(fresh_url, "7")}
        with pytest.raises(ValueError, match="not servers of this weight sync"):
            await sync.push(model, 8, ["http://elsewhere:1"])
    finally:
        await sync.aclose()
        fresh.stop()
    async with httpx.AsyncClient() as http:  # the shared fast server still has its weights
        assert (await http.get(f"{fast}/weight_info")).json()["weight_version"] == "0"


def _state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(model_dir).state_dict())
