"""The embedded server through uvicorn on loopback: samples, logprobs, batching, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.generation.models import CompletionResponse, ModelList


def forward_logprobs(
    model_dir: Path, prompt: list[int], completion: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """Log-probabilities of `completion` after `prompt` from one plain forward pass of
    logits / `temperature`."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float() / temperature
    logprobs = logits.log_softmax(-1)[len(prompt) - 1 : -1]
    return logprobs.gather(1, torch.tensor(completion)[:, None])[:, 0]


def complete(url: str, **body: object) -> CompletionResponse:
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return CompletionResponse.model_validate(response.json())


def test_n_samples_with_logprobs_matching_a_forward_pass(
    server_url: str, tiny_model_dir: Path
) -> None:
    prompt = AutoTokenizer.from_pretrained(tiny_model_dir).encode("12+34=")
    result = complete(
        server_url, prompt=prompt, n=4, max_tokens=12, logprobs=0, return_token_ids=True, seed=1
    )
    assert len(result.choices) == 4
    assert len({tuple(c.token_ids or []) for c in result.choices}) > 1
    for choice in result.choices:
        assert choice.prompt_token_ids == prompt and choice.token_ids
        assert choice.finish_reason in {"stop", "length"}
        assert choice.logprobs is not None
        served = torch.tensor(choice.logprobs.token_logprobs)
        expected = forward_logprobs(tiny_model_dir, prompt, choice.token_ids)
        assert torch.allclose(served, expected, atol=1e-4), (served - expected).abs().max()
    assert result.weight_version == "0"
    assert result.usage.prompt_tokens == len(prompt)
    assert result.usage.completion_tokens == sum(len(c.token_ids or []) for c in result.choices)


def test_logprobs_at_temperature_are_of_logits_over_t(
    server_url: str, tiny_model_dir: Path
) -> None:
    """At T = 0.7 each token's logprob is log_softmax(logits / 0.7) of a plain forward
    pass (vLLM's processed_logprobs), not the raw model's: what the trainer recomputes."""
    prompt = AutoTokenizer.from_pretrained(tiny_model_dir).encode("12+34=")
    result = complete(
        server_url, prompt=prompt, n=4, max_tokens=12, temperature=0.7, logprobs=0,
        return_token_ids=True, seed=2,
    )  # fmt: skip
    for choice in result.choices:
        assert choice.logprobs is not None and choice.token_ids
        served = torch.tensor(choice.logprobs.token_logprobs)
        tempered = forward_logprobs(tiny_model_dir, prompt, choice.token_ids, 0.7)
        assert torch.allclose(served, tempered, atol=1e-4), (served - tempered).abs().max()
        raw = forward_logprobs(tiny_model_dir, prompt, choice.token_ids)
        assert not torch.allclose(served, raw, atol=1e-3)


def test_text_prompts_are_prompt_major_and_seeds_reproduce(server_url: str) -> None:
    body = {"prompt": ["1+1=", "2*3="], "n": 2, "max_tokens": 6, "seed": 5}
    body["return_token_ids"] = True
    first, second = complete(server_url, **body), complete(server_url, **body)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert first.choices[0].prompt_token_ids == first.choices[1].prompt_token_ids
    assert first.choices[0].prompt_token_ids != first.choices[2].prompt_token_ids
    assert [c.token_ids for c in first.choices] == [c.token_ids for c in second.choices]


def test_stop_string_and_length(server_url: str) -> None:
    greedy = complete(server_url, prompt="7+8=", max_tokens=8, temperature=0)
    assert greedy.choices[0].finish_reason in {"length", "stop"}
    text = greedy.choices[0].text
    if len(text) >= 3:
        stopped = complete(server_url, prompt="7+8=", max_tokens=8, temperature=0, stop=text[2])
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].text == text[: text.index(text[2])]
        assert stopped.choices[0].stop_reason == text[2]


async def test_concurrent_requests_are_batched(server_url: str) -> None:
    def batches() -> tuple[float, float]:
        metrics = httpx.get(f"{server_url}/metrics").text
        values = dict(
            line.split() for line in metrics.splitlines()
            if line.startswith(("generation_batches ", "generation_batched_requests "))
        )  # fmt: skip
        return float(values["generation_batches"]), float(values["generation_batched_requests"])

    before = batches()
    async with httpx.AsyncClient(timeout=60) as client:
        body = {"prompt": "3+4=", "n": 2, "max_tokens": 16, "ignore_eos": True}
        calls = [client.post(f"{server_url}/v1/completions", json=body) for _ in range(16)]
        responses = await asyncio.gather(*calls)
    assert all(r.status_code == 200 for r in responses)
    after = batches()
    assert after[1] - before[1] == 16
    assert after[0] - before[0] <= 4, f"16 concurrent requests took {after[0] - before[0]} batches"


def test_models_health_and_metrics(server_url: str) -> None:
    models = ModelList.model_validate(httpx.get(f"{server_url}/v1/models").json())
    assert models.data[0].id == "tiny" and models.data[0].max_model_len == 128
    health = httpx.get(f"{server_url}/health").json()
    assert health == {"status": "ok", "weight_version": "0", "is_paused": False}
    assert "generation_http_requests_total" in httpx.get(f"{server_url}/metrics").text


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"max_tokens": 4}, 422, "prompt"),
        ({"prompt": [], "max_tokens": 4}, 422, "must not be empty"),
        ({"prompt": [[1, 2], []]}, 422, "must not be empty"),
        ({"prompt": "", "max_tokens": 4}, 422, "must not be empty"),
        ({"prompt": ["1+1=", ""], "max_tokens": 4}, 422, "must not be empty"),
        ({"prompt": "1+1=", "seed": -1}, 422, "seed"),
        ({"prompt": "1+1=", "seed": 2**64}, 422, "seed"),
        ({"prompt": "1+1=", "stop": ""}, 422, "none of them empty"),
        ({"prompt": "1+1=", "stop": ["="] * 17}, 422, "at most 16"),
        ({"prompt": "1+1=", "max_tokens": 0}, 422, "max_tokens"),
        ({"prompt": "1+1=", "max_tokens": 10**12}, 400, "context"),
        ({"prompt": "1+1=", "n": 10**6}, 422, "n"),
        ({"prompt": "1+1=", "temperature": -1}, 422, "temperature"),
        ({"prompt": "1+1=", "logprobs": 21}, 422, "logprobs"),
        ({"prompt": "1+1=", "n": 0}, 422, "n"),
        ({"prompt": "1+1=", "stream": True}, 422, "stream"),
        ({"prompt": "1+1=", "top_p": 0}, 422, "top_p"),
        ({"prompt": [5, 999]}, 400, "outside vocabulary"),
        ({"prompt": "1+1=", "max_tokens": 500}, 400, "context"),
        ({"prompt": "1+1=", "model": "gpt-17"}, 404, "does not exist"),
        ({"prompt": ["1"] * 20, "n": 20}, 400, "max_batch_size"),
    ],
)
def test_malformed_requests_get_a_4xx_with_a_reason(
    server_url: str, body: dict[str, object], status: int, reason: str
) -> None:
    response = httpx.post(f"{server_url}/v1/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert reason in response.text


async def test_a_bad_request_leaves_concurrent_good_ones_unaffected(server_url: str) -> None:
    """An empty prompt sent while others decode is refused; they finish as if alone."""
    good = {"prompt": "12+34=", "max_tokens": 6, "temperature": 0, "return_token_ids": True}
    alone = httpx.post(f"{server_url}/v1/completions", json=good, timeout=60).json()
    async with httpx.AsyncClient(timeout=60) as client:
        bad = {"prompt": "", "max_tokens": 4}
        results = await asyncio.gather(
            *(client.post(f"{server_url}/v1/completions", json=good) for _ in range(3)),
            client.post(f"{server_url}/v1/completions", json=bad),
        )
    assert [r.status_code for r in results] == [200, 200, 200, 422]
    for response in results[:3]:
        assert response.json()["choices"][0]["token_ids"] == alone["choices"][0]["token_ids"]
