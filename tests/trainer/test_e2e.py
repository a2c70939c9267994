"""End-to-end runs against the real embedded stack (redis-server, allocator, verifier and
generation server as processes on loopback) with a small random Llama and the tiny task."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from safetensors import safe_open

from services.allocator.keys import RunKeys
from services.common.http import ServiceUnavailable
from services.common.procs import start_service
from services.stack import EmbeddedStack, StackUrls
from tests.assets import fitted_tiny_assets
from trainer import loop
from trainer.config import TrainerConfig
from trainer.generation.landing import LandingProbe, WeightLandingError
from trainer.generation.weight_sync import VLLMReloadSync
from trainer.logbook import Logbook
from trainer.loop import Dataset, Trainer
from trainer.run import clients, load_dataset, train

STRATEGIES = {
    "grpo": {"strategy": "grpo", "train_batch_size": 4, "n": 6},
    "dapo": {"strategy": "dapo", "train_batch_size": 4, "n": 6, "gen_batch_size": 8},
    "pilot_commit": {
        "strategy": "pilot_commit",
        "train_batch_size": 4,
        "gen_batch_size": 8,
        "n_pilot": 3,
        "n_commit": 3,
        "p_lower": 0.0,
        "p_upper": 0.0,
    },
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_tiny_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def stack(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackUrls]:
    with EmbeddedStack(tmp_path_factory.mktemp("stack"), assets / "model") as urls:
        yield urls


def make_config(assets: Path, allocation: dict, **sections: dict) -> TrainerConfig:
    data = {
        "run": {"steps": 2, "seed": 0},
        "data": {
            "train_path": str(assets / "train.jsonl"),
            "test_path": str(assets / "test.jsonl"),
            "task": "leading_number",
        },
        "model": {"path": str(assets / "model")},
        "sampling": {"max_tokens": 4},
        "eval": {"every": 0, "prompts": 32, "greedy": True},
        "services": {"retries": 2},
        "allocation": allocation,
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return TrainerConfig.model_validate(data)


def run(config: TrainerConfig, output: Path, urls: StackUrls) -> list[dict]:
    with Logbook(output, config.run.steps) as logbook:
        asyncio.run(train(config, output, urls, logbook))
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_trains(strategy: str, assets: Path, stack: StackUrls, tmp_path: Path):
    config = make_config(assets, STRATEGIES[strategy], run={"run_id": f"e2e-{strategy}"})
    rows = run(config, tmp_path / strategy, stack)
    train_rows = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(r["groups_trained"] == 4 * r["step"] for r in train_rows)
    last = train_rows[-1]
    assert last["rollouts_total"] == (
        last["rollouts_pilot"] + last["rollouts_commit"] + last["rollouts_full"]
    )
    if strategy == "pilot_commit":
        assert last["rollouts_pilot"] > 0 and last["rollouts_commit"] == 4 * 2 * 3
    else:
        assert last["rollouts_pilot"] == 0 and last["rollouts_full"] >= 2 * 4 * 6
    assert 0.0 <= evals[-1]["eval_accuracy"] <= 1.0 and "eval_accuracy_greedy" in evals[-1]
    assert all(r["landing_max_abs"] < 1e-3 for r in train_rows)  # every push was checked
    assert (tmp_path / strategy / "checkpoint" / "trainer.pt").exists()
    assert list((tmp_path / strategy / "tensorboard").iterdir())
    # allocation.jsonl: a row per plan item and round, its role and the gate's outcome
    table = [json.loads(line) for line in (tmp_path / strategy / "allocation.jsonl").open()]
    assert {r["step"] for r in table} == {1, 2}
    rollouts = sum(r["n"] for r in table)
    assert rollouts == last["rollouts_total"]  # every generated rollout is in the table
    assert all(0.0 <= r["pass_rate"] <= 1.0 for r in table)
    if strategy == "pilot_commit":
        roles = {r["role"] for r in table}
        assert roles == {"pilot", "commit"}, roles
        assert all(r["reused"] > 0 for r in table if r["role"] == "commit")
        assert {r["outcome"] for r in table if r["role"] == "pilot"} <= {
            "pass", "too_easy", "too_hard", "trained", "surplus", "direct_commit",
            "evicted_posterior",
        }  # fmt: skip


def test_resume_takes_the_same_next_step(assets: Path, stack: StackUrls, tmp_path: Path):
    pc = STRATEGIES["pilot_commit"]
    straight = run(
        make_config(assets, pc, run={"steps": 3, "run_id": "resume-a"}), tmp_path / "a", stack
    )
    first = make_config(assets, pc, run={"steps": 2, "run_id": "resume-b"})
    run(first, tmp_path / "b", stack)
    # a step-3 attempt that died after the checkpoint: a round's rows and one cut short
    cut = tmp_path / "b" / "allocation.jsonl"
    with cut.open("a") as table:
        table.write(json.dumps({"step": 3, "round": 0, "prompt_id": 0, "n": 4}) + "\n")
        table.write('{"step": 3, "round": 1, "pro')
    resumed = run(
        make_config(assets, pc, run={"steps": 3, "run_id": "resume-b"}), tmp_path / "b", stack
    )
    step3 = next(r for r in straight if r["kind"] == "train" and r["step"] == 3)
    again = next(r for r in resumed if r["kind"] == "train" and r["step"] == 3)
    for key in (
        "rollouts_total",
        "rollouts_pilot",
        "rollouts_commit",
        "rollouts_zero_variance",
        "train_reward_mean",
        "buffer_size",
    ):
        assert again[key] == step3[key], key
    assert again["loss"] == pytest.approx(step3["loss"], abs=1e-6)
    # allocation.jsonl holds each step's rounds once: the dead attempt's rows are gone
    tables = [(tmp_path / x / "allocation.jsonl").read_text() for x in ("a", "b")]
    assert tables[1] == tables[0]


def test_frozen_layers_are_pushed_once_then_the_trained_ones_alone(
    assets: Path, stack: StackUrls, tmp_path: Path
) -> None:
    """With `train_top_layers`, the first push of a run sends the whole model and each
    push after a step only the trained parameters (the top layer and the final norm of
    2 layers here); the landing check, which scores with the whole model, passes at every
    push, so the server's frozen layers are the trainer's."""
    config = make_config(
        assets, STRATEGIES["pilot_commit"], run={"steps": 3, "run_id": "partial-push"},
        model={"train_top_layers": 1},
    )  # fmt: skip
    rows = run(config, tmp_path / "p", stack)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(r["landing_max_abs"] < 1e-3 for r in train_rows)
    newest = sorted((tmp_path / "p" / "weights").glob("step-*"))[-1]
    with safe_open(str(newest / "model.safetensors"), "pt") as pushed:
        names = set(pushed.keys())
    assert names and all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in names)


def test_a_push_sends_the_trained_parameters_only_to_servers_in_sync() -> None:
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)})
    t = SimpleNamespace(
        policy=SimpleNamespace(trainable={"b.weight", "b.bias"}),
        services=SimpleNamespace(weights=SimpleNamespace(partial=True)),
        in_sync={"http://s0", "http://s1"},
    )
    payload = loop.push_payload(t, model, ["http://s0", "http://s1"])  # type: ignore[arg-type]
    assert isinstance(payload, dict) and set(payload) == {"b.weight", "b.bias"}
    # a server not in sync (new, restarted, back from down, stale) gets the whole model
    assert loop.push_payload(t, model, ["http://s0", "http://s2"]) is model  # type: ignore[arg-type]
    t.services.weights.partial = False  # NCCL, SGLang: whole pushes only
    assert loop.push_payload(t, model, ["http://s0"]) is model  # type: ignore[arg-type]
    t.services.weights.partial, t.policy.trainable = True, None  # nothing frozen
    assert loop.push_payload(t, model, ["http://s0"]) is model  # type: ignore[arg-type]


def _data(config: TrainerConfig) -> Dataset:
    from transformers import AutoTokenizer

    assert config.model.path and config.data.train_path
    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    return load_dataset(config.data.train_path, config, tokenizer)


async def _start_trainer(
    config: TrainerConfig, output: Path, services, logbook, data: Dataset
) -> Trainer:
    from trainer.policy import Policy

    policy = Policy(config.model.path, config.optim, "cpu", "float32")
    trainer = Trainer(config, config.run.run_id, policy, data, data, services, logbook, output)
    await loop.start(trainer)
    return trainer


async def _one_step(trainer: Trainer) -> dict:
    """Run the loop for one step; its train row."""
    [row] = await loop.train_steps(trainer, until=trainer.step + 1)
    return row


async def _weight_version(url: str) -> str:
    async with httpx.AsyncClient() as http:
        return str((await http.get(f"{url}/weight_info")).json().get("weight_version"))


def test_restarted_generation_server_gets_current_weights(assets: Path, tmp_path: Path) -> None:
    """Kill the generation server mid-run and start a fresh one at the same URL: the trainer
    sees its stale weight version, pushes the current weights, and the run goes on."""
    config = make_config(assets, STRATEGIES["grpo"], run={"steps": 3, "run_id": "restart"})
    stack = EmbeddedStack(tmp_path / "stack", assets / "model")
    urls = stack.start()

    data = _data(config)

    async def scenario() -> list[dict]:
        out = tmp_path / "out"
        with Logbook(out, 3) as logbook:
            async with clients(config, urls, out, data) as services:
                trainer = await _start_trainer(config, out, services, logbook, data)
                rows = [await _one_step(trainer)]
                url = urls.generation_urls[0]
                old = next(p for p in stack.procs if p.name.startswith("generation"))
                old.kill()
                stack.procs.append(
                    start_service(
                        "generation-restarted",
                        ["generation", "serve", "--model", str(assets / "model")],
                        port=int(url.rsplit(":", 1)[1]),
                        log_dir=tmp_path / "logs",
                        timeout=120,
                    )
                )
                assert await _weight_version(url) == "0"
                rows.append(await _one_step(trainer))
                assert await _weight_version(url) == str(trainer.weight_version)
                return rows

    try:
        rows = asyncio.run(scenario())
    finally:
        stack.stop()
    assert [r["step"] for r in rows] == [1, 2]


def test_unreachable_services_retry_then_fail_clearly(assets: Path, tmp_path: Path) -> None:
    """A verifier back within the retry budget costs nothing; one that stays down ends the
    step with a clear error after bounded retries."""
    config = make_config(
        assets, STRATEGIES["grpo"], run={"steps": 3, "run_id": "outage"}, services={"retries": 8}
    )
    stack = EmbeddedStack(tmp_path / "stack", assets / "model")
    urls = stack.start()

    data = _data(config)

    async def scenario() -> None:
        out = tmp_path / "out"
        with Logbook(out, 3) as logbook:
            async with clients(config, urls, out, data) as services:
                trainer = await _start_trainer(config, out, services, logbook, data)
                verifier = next(p for p in stack.procs if p.name == "verifier")
                port = int(urls.verifier_url.rsplit(":", 1)[1])
                verifier.kill()

                async def bring_back() -> None:
                    await asyncio.sleep(1.0)
                    stack.procs.append(
                        await asyncio.to_thread(
                            start_service,
                            "verifier-again",
                            ["verifier", "serve"],
                            port=port,
                            log_dir=tmp_path / "logs",
                        )
                    )

                row, _ = await asyncio.gather(_one_step(trainer), bring_back())
                assert row["step"] == 1
                stack.procs[-1].kill()
                with pytest.raises(ServiceUnavailable, match="verifier unreachable"):
                    await _one_step(trainer)

    try:
        asyncio.run(scenario())
    finally:
        stack.stop()


async def test_landing_probe_passes_the_served_weights_and_catches_others(
    assets: Path, stack: StackUrls, tmp_path: Path
) -> None:
    """The post-push check compares the server's logprobs with the weights it is given:
    the served model passes; another model (a push that did not land) stops the step."""
    from transformers import AutoModelForCausalLM

    config = make_config(assets, STRATEGIES["grpo"])
    probe = LandingProbe(_data(config).prompt_tokens[:4], tolerance=1e-3, max_tokens=4)
    url = stack.generation_urls[0]
    served = AutoModelForCausalLM.from_pretrained(assets / "model")
    sync = VLLMReloadSync([url], weights_dir=tmp_path)
    version = 1000
    await sync.push(served, version)  # other tests trained the shared server's weights
    await sync.aclose()
    [report] = await probe.check(served, [url], version, step=0)
    assert report.mean_abs < 1e-4 and report.tokens > 0
    other = AutoModelForCausalLM.from_pretrained(assets / "model")
    with torch.no_grad():
        other.lm_head.weight.mul_(1.5)  # tied: the embedding changes too
    with pytest.raises(WeightLandingError, match=r"step 7: .*did not land on .*at most"):
        await probe.check(other, [url], version, step=7)
    await probe.aclose()


def test_stored_pilots_equal_the_allocator_buffer(
    assets: Path, stack: StackUrls, tmp_path: Path
) -> None:
    """Entries that leave the allocator's buffer by routes the trainer never sees (a manual
    eviction, an external epoch end) are released in the trainer at the next step's end:
    its stored pilot rollouts are then exactly the allocator's buffer."""
    import redis

    allocation = {**STRATEGIES["pilot_commit"], "gen_batch_size": 12}
    config = make_config(assets, allocation, run={"steps": 4, "run_id": "released"})
    data = _data(config)
    db = redis.Redis.from_url(stack.redis_url)
    buffer_key = RunKeys("released").buffer

    def allocator_buffer() -> set[int]:
        return {int(k) for k in db.hkeys(buffer_key)}

    async def scenario() -> list[tuple[set[int], set[int]]]:
        out = tmp_path / "out"
        seen = []
        with Logbook(out, 4) as logbook:
            async with clients(config, stack, out, data) as services:
                trainer = await _start_trainer(config, out, services, logbook, data)
                await _one_step(trainer)
                while not allocator_buffer():
                    await _one_step(trainer)
                seen.append((set(trainer.pilots), allocator_buffer()))
                victim = min(allocator_buffer())
                await services.allocator.evict("released", victim)  # not via the trainer
                assert victim in trainer.pilots and victim not in allocator_buffer()
                await services.allocator.complete_epoch("released")  # flushes the buffer
                await _one_step(trainer)
                seen.append((set(trainer.pilots), allocator_buffer()))
        return seen

    seen = asyncio.run(scenario())
    assert seen[0][1], "the run never buffered a prompt"
    for stored, buffered in seen:
        assert stored == buffered
