"""The trainer with two generation servers (the real embedded stack on loopback): a server
that dies is skipped by the weight push, and a server back on its port (restarted, with
its initial weights) is never sampled from before it has the current weights."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.procs import ManagedProcess, start_service
from services.generation.client import GenerationRequest, SamplingParams
from services.stack import EmbeddedStack
from tests.assets import fitted_tiny_assets
from tests.trainer.test_e2e import (
    STRATEGIES,
    _data,
    _one_step,
    _start_trainer,
    _weight_version,
    make_config,
)
from trainer import loop
from trainer.logbook import Logbook
from trainer.loop import Trainer
from trainer.run import clients


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_tiny_assets(tmp_path_factory.mktemp("assets"))


def restart(stack: EmbeddedStack, model: Path, url: str, name: str) -> ManagedProcess:
    """A fresh embedded server on `url`'s port: it reports its initial weight version."""
    proc = start_service(
        name,
        ["generation", "serve", "--model", str(model)],
        port=int(url.rsplit(":", 1)[1]),
        log_dir=stack.workdir / "logs",
        timeout=120,
    )
    stack.procs.append(proc)
    return proc


async def round_on_both(trainer: Trainer, url: str) -> None:
    """One generation round through the trainer's `generate`; it must reach `url` with the
    current weights, and no answer may be stale (a stale answer makes the trainer push a
    new version, so the version must not move)."""
    version = trainer.weight_version
    gen = trainer.services.generation
    served = gen.served[url]
    params = SamplingParams(max_tokens=4, seed=3)
    requests = [GenerationRequest(p, 2, params) for p in trainer.data.prompt_tokens[:8]]
    completions = await loop.generate(trainer, requests)
    assert trainer.weight_version == version
    assert {c.weight_version for c in completions} == {str(version)}
    assert gen.served[url] > served
    assert await _weight_version(url) == str(version)


def test_a_server_back_on_its_port_gets_the_current_weights_before_it_is_used(
    assets: Path, tmp_path: Path
) -> None:
    config = make_config(assets, STRATEGIES["grpo"], run={"steps": 6, "run_id": "fleet"})
    stack = EmbeddedStack(tmp_path / "stack", assets / "model", generation_servers=2)
    urls = stack.start()
    first, second = urls.generation_urls
    data = _data(config)

    async def scenario() -> list[int]:
        out = tmp_path / "out"
        with Logbook(out, config.run.steps) as logbook:
            async with clients(config, urls, out, data) as services:
                gen = services.generation
                gen.reprobe_s = 0.0  # re-probe a server down at every round
                gen.max_prompts = 1  # a round's prompts spread over both servers
                trainer = await _start_trainer(config, out, services, logbook, data)
                steps = [(await _one_step(trainer))["step"]]

                # Dies between rounds: the next round runs on the other server, the push
                # after it skips the dead one.
                next(p for p in stack.procs if p.name == "generation-1").kill()
                steps.append((await _one_step(trainer))["step"])
                assert second in gen.down and gen.rotation == [first]
                assert await _weight_version(first) == str(trainer.weight_version)

                # Back on its port with its initial weights: pushed to before any call.
                restart(stack, assets / "model", second, "generation-1-back")
                assert await _weight_version(second) == "0"
                await round_on_both(trainer, second)

                # Restarted between two rounds without ever being seen down: the probe
                # before the round finds its initial version.
                next(p for p in stack.procs if p.name == "generation-1-back").kill()
                restart(stack, assets / "model", second, "generation-1-again")
                assert second not in gen.down
                await round_on_both(trainer, second)

                steps.append((await _one_step(trainer))["step"])
                return steps

    try:
        steps = asyncio.run(scenario())
    finally:
        stack.stop()
    assert steps == [1, 2, 3]


def test_a_lone_server_restarted_mid_step_is_waited_for_then_pushed_to(
    assets: Path, tmp_path: Path
) -> None:
    """One generation server, killed before a step and started again while the step waits
    for it: the client retries until it answers, holds it (initial weights), the trainer
    pushes the current version to it (no stale answer is drawn, so no new version), and
    the step completes on the current weights."""
    config = make_config(
        assets, STRATEGIES["grpo"], run={"steps": 3, "run_id": "lone"}, services={"retries": 40}
    )
    stack = EmbeddedStack(tmp_path / "stack", assets / "model")
    urls = stack.start()
    [url] = urls.generation_urls
    data = _data(config)

    async def scenario() -> tuple[list[int], int, int]:
        out = tmp_path / "out"
        with Logbook(out, config.run.steps) as logbook:
            async with clients(config, urls, out, data) as services:
                trainer = await _start_trainer(config, out, services, logbook, data)
                steps = [(await _one_step(trainer))["step"]]
                next(p for p in stack.procs if p.name == "generation-0").kill()
                back = asyncio.create_task(
                    asyncio.to_thread(restart, stack, assets / "model", url, "generation-0-back")
                )
                row = await _one_step(trainer)
                await back
                steps.append(row["step"])
                return steps, row["stale_repushes"], trainer.weight_version

    try:
        steps, repushes, version = asyncio.run(scenario())
        served = asyncio.run(_weight_version(url))
    finally:
        stack.stop()
    assert steps == [1, 2]
    # pushed to before it served the step: no stale answer, so no extra version
    assert repushes == 0 and version == 1 + 2  # the initial push + one per step
    assert served == str(version)
