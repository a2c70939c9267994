"""The evidence endpoint and posterior_gate runs over HTTP (uvicorn on loopback, real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from services.allocator import models as m
from services.allocator.client import AllocatorClient
from services.common.http import RetryPolicy, ServiceError
from tests.allocator.test_service import start_allocator

PG = {"strategy": "posterior_gate", "train_batch_size": 2, "n": 8, "n_pilot": 4}


@pytest.fixture(scope="module")
def allocator(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_allocator(redis_url, tmp_path_factory.mktemp("alloc-pg"))
    yield url
    proc.stop()


async def test_evidence_round_trip_and_explained_state(allocator: str) -> None:
    run_id = f"pg-{uuid.uuid4().hex[:10]}"
    async with AllocatorClient(allocator) as client:
        config = {**PG, "recheck_rate": 0.0}
        await client.create_run(run_id, m.RunSpec(num_prompts=6, seed=1, config=config))
        answer = await client.add_evidence(run_id, 3, "eval-0:3", [0.0] * 16)
        assert not answer.duplicate and answer.prompt.last_outcome == "evidence"
        assert answer.prompt.strategy_state == {"a": 0.5, "b": 16.5, "step": 0.0}
        again = await client.add_evidence(run_id, 3, "eval-0:3", [0.0] * 16)
        assert again.duplicate and again.prompt == answer.prompt
        assert (await client.summary(run_id)).counters["evidence_rewards"] == 16

        plan = await client.plan(run_id)  # pilots all 6 but prompt 3, confidently too hard
        assert sorted(i.prompt_id for i in plan.items) == [0, 1, 2, 4, 5]
        skipped = await client.prompt(run_id, 3)
        assert (skipped.status, skipped.last_outcome) == ("deferred", "skipped_confident_hard")
        assert (await client.summary(run_id)).counters["gate_skipped_confident_hard"] == 1


async def test_evidence_bad_input_is_4xx_with_reason(allocator: str) -> None:
    run_id = f"pg-{uuid.uuid4().hex[:10]}"
    async with AllocatorClient(allocator, policy=RetryPolicy(attempts=1)) as client:
        await client.create_run(run_id, m.RunSpec(num_prompts=5, config=PG))
        url = f"{allocator}/v1/runs/{run_id}/prompts/1/evidence"
        async with httpx.AsyncClient() as http:
            r = await http.post(url, json={"evidence_id": "x", "rewards": [1.5]})
            assert r.status_code == 422 and "not a number in [0, 1]" in r.text
            r = await http.post(url, json={"evidence_id": "x", "rewards": []})
            assert r.status_code == 422
            r = await http.post(url, json={"rewards": [1.0]})
            assert r.status_code == 422 and "evidence_id" in r.text
            r = await http.post(
                url.replace("/1/", "/5/"), json={"evidence_id": "x", "rewards": [1]}
            )
            assert r.status_code == 404 and "0..4" in r.text
        await client.add_evidence(run_id, 1, "same", [1.0])
        with pytest.raises(ServiceError) as info:
            await client.add_evidence(run_id, 1, "same", [0.0])
        assert info.value.status == 409 and "other rewards" in str(info.value.detail)
