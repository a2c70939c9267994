"""The trainer's GenerationClient against real embedded servers (and a dead port)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from services.common.http import RetryPolicy, ServiceError
from services.common.procs import free_port
from services.generation.client import (
    GenerationClient,
    GenerationRequest,
    SamplingParams,
    chunk_seed,
    plan_chunks,
    split_completions,
)
from services.generation.models import (
    CompletionChoice,
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
)

FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)


def test_plan_chunks_groups_by_sampling_and_caps_size() -> None:
    a, b = SamplingParams(max_tokens=4), SamplingParams(max_tokens=8)
    reqs = [GenerationRequest([1], 2, a)] * 5 + [GenerationRequest([1], 2, b)] * 2
    assert plan_chunks(reqs, 2) == [[0, 1], [2, 3], [4], [5, 6]]


def test_plan_chunks_sends_seeded_requests_alone_unless_servers_seed_per_sequence() -> None:
    seeded, free = SamplingParams(seed=5), SamplingParams()
    reqs = [GenerationRequest([1], 2, seeded)] * 3 + [GenerationRequest([1], 2, free)] * 3
    assert plan_chunks(reqs, 32, 256) == [[0], [1], [2], [3, 4, 5]]
    assert plan_chunks(reqs, 2, 256, seeds_per_sequence=True) == [[0, 1], [2], [3, 4], [5]]


def test_plan_chunks_caps_sequences_per_call() -> None:
    a = SamplingParams(max_tokens=4)
    reqs = [GenerationRequest([1], 32, a)] * 9 + [GenerationRequest([1], 300, a)]
    # 256 sequences at n = 32 is 8 prompts; a prompt with n above the cap goes alone
    assert plan_chunks(reqs, 32, 256) == [list(range(8)), [8], [9]]
    assert plan_chunks(reqs, 4, 256) == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9]]


def test_split_completions_reads_token_id_strings_when_token_ids_are_absent() -> None:
    choices = [
        CompletionChoice(
            index=i, text="x", finish_reason="length",
            logprobs=CompletionLogProbs(tokens=[f"token_id:{i}"], token_logprobs=[-1.0]),
        )
        for i in range(4)
    ]  # fmt: skip
    usage = {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    response = CompletionResponse.model_validate(
        {"model": "m", "choices": [c.model_dump() for c in choices], "usage": usage}
    )
    completions = split_completions(response, n=2, count=2, base_url="u")
    assert [[s.token_ids for s in c.samples] for c in completions] == [[[0], [1]], [[2], [3]]]
    assert completions[0].weight_version is None


@pytest.mark.parametrize(
    ("sampling", "extra"),
    [
        (SamplingParams(), {}),
        (SamplingParams(seed=3, stop=("\n",)), {"seed": chunk_seed(3, 5), "stop": ["\n"]}),
    ],
)
async def test_body_is_what_the_route_reads_and_only_what_was_set(
    sampling: SamplingParams, extra: dict[str, object]
) -> None:
    async with GenerationClient(["http://127.0.0.1:1"]) as client:
        body = client._body([GenerationRequest([1, 2], 2, sampling)] * 2, "m", 5)
    assert body == {
        "model": "m", "prompt": [[1, 2], [1, 2]], "n": 2, "max_tokens": 64,
        "temperature": 1.0, "top_p": 1.0, "logprobs": 0, "return_token_ids": True, **extra,
    }  # fmt: skip
    parsed = CompletionRequest.model_validate(body)
    assert parsed.model_dump(exclude_unset=True) == body


async def test_generate_balances_chunks_over_servers(
    server_url: str, update_server_url: str, tiny_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer.encode(f"{i}+{i}=") for i in range(8)]
    sampling = SamplingParams(max_tokens=5, seed=3)
    requests = [GenerationRequest(p, n=3, sampling=sampling) for p in prompts]
    async with GenerationClient(
        [server_url, update_server_url], max_prompts_per_request=2, policy=FAST
    ) as client:
        completions = await client.generate(requests)
        versions = await client.weight_versions()
    assert len(completions) == 8
    for prompt, completion in zip(prompts, completions, strict=True):
        assert completion.prompt_token_ids == prompt
        assert len(completion.samples) == 3
        assert all(len(s.token_ids) == len(s.logprobs) > 0 for s in completion.samples)
    assert {c.base_url for c in completions} == {server_url, update_server_url}
    assert set(versions) == {server_url, update_server_url}


async def test_prompts_of_a_seeded_batch_draw_independent_noise(server_url: str) -> None:
    # 16 copies of one prompt, one seeded batch: with one seed per call and the batch's
    # seed in every call, copy i of each call would get sequence i's noise and the calls
    # would repeat each other (tests/vllm: on vLLM every prompt of a call would).
    sampling = SamplingParams(max_tokens=6, seed=11)
    # The embedded server seeds each sequence of a call apart, so the client batches the
    # seeded prompts (4 calls of 4, not 16 of one) and they still draw independent noise.
    requests = [GenerationRequest("12+34=", n=1, sampling=sampling)] * 16
    async with GenerationClient([server_url], max_prompts_per_request=4, policy=FAST) as client:
        first = [c.samples[0].token_ids for c in await client.generate(requests)]
        assert client.served[server_url] == 4
        again = [c.samples[0].token_ids for c in await client.generate(requests)]
    assert first == again  # still reproducible
    assert len({tuple(ids) for ids in first}) >= 12
    assert len({chunk_seed(11, i) for i in range(16)}) == 16


async def test_seeded_prompts_go_alone_when_one_server_cannot_say_how_it_seeds(
    server_url: str,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    requests = [GenerationRequest("12+34=", n=1, sampling=SamplingParams(seed=2))] * 6
    async with GenerationClient([server_url, dead], model="tiny", policy=FAST) as client:
        assert not await client.seeds_per_sequence()
        await client.generate(requests)
        assert client.served[server_url] == 6
        assert dead not in client.seed_scopes  # asked again at the next seeded batch
        assert client.seed_scopes[server_url] == "sequence"


async def test_dead_server_is_retried_elsewhere(server_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with GenerationClient([dead, server_url], model="tiny", policy=FAST) as client:
        completions = await client.generate([GenerationRequest("1+2=", n=2)] * 4)
    assert all(c.base_url == server_url for c in completions)


async def test_bad_request_is_not_retried(server_url: str) -> None:
    async with GenerationClient([server_url], policy=FAST) as client:
        with pytest.raises(ServiceError) as failure:
            await client.generate([GenerationRequest([999])])
    assert failure.value.status == 400
