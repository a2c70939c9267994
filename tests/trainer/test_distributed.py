"""Several trainer ranks (trainer/distributed.py, trainer/policy.py): two gloo ranks on the
CPU, FSDP2-sharded, take the same optimiser step as one process on the same groups.

Each two-rank test spawns two fresh Python processes (torch import, model load): a few
seconds each on an idle core, under a minute on the shared ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from services.common.procs import free_port
from trainer import distributed
from trainer.config import OptimSection
from trainer.distributed import Ranks
from trainer.policy import Policy, Rollout
from trainer.tiny.model import build_tokenizer, init_model, tiny_llama_config


def small_model(path: Path) -> Path:
    """A 2-layer Llama (hidden 32, tied embeddings), random weights, float32."""
    tokenizer = build_tokenizer()
    config = tiny_llama_config(
        tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
    )
    init_model(config, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def groups(sizes: tuple[int, ...] = (4, 4, 3)) -> list[list[Rollout]]:
    """Groups of rollouts with uneven prompt and completion lengths and reward spread."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for size in sizes:
        prompt = torch.randint(
            5, 40, (int(torch.randint(3, 8, (1,), generator=gen)),), generator=gen
        )
        group = []
        for i in range(size):
            length = int(torch.randint(2, 7, (1,), generator=gen))
            completion = torch.randint(5, 40, (length,), generator=gen).tolist()
            logprobs = (-torch.rand(length, generator=gen) * 4).tolist()
            group.append(Rollout(prompt.tolist(), completion, logprobs, float(i % 2)))
        out.append(group)
    return out


OPTIM = OptimSection(
    lr=1e-3, micro_batch_rollouts=2, mini_batches=2, tis_cap=2.0, kl_coef=0.05, grad_clip=0.5
)
# Rollouts sampled at T = 0.7: every logprob is of logits / T (trainer/policy.py).
TEMPERATURE = 0.7


def one_rank_step(model: Path, optim: OptimSection, batch: list[list[Rollout]]) -> dict[str, Any]:
    torch.manual_seed(0)
    policy = Policy(model, optim, "cpu", "float32", temperature=TEMPERATURE)
    stats = policy.train_step(batch)
    weights = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
    return {"stats": stats, "weights": weights}


def join(rank: int, world: int, port: int) -> Ranks | None:
    """This spawned process as `rank` of `world` gloo ranks on loopback, one thread each."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    return distributed.from_env()


def _rank_main(
    rank: int, world: int, port: int, model: Path, optim: OptimSection, batch: Any, out: Path
) -> None:
    ranks = join(rank, world, port)
    assert ranks == Ranks(rank, world, rank)
    torch.manual_seed(0)
    policy = Policy(model, optim, "cpu", "float32", ranks=ranks, temperature=TEMPERATURE)
    if ranks.driver:
        stats = policy.train_step(batch)
        pushed = policy.weights_for_push()
        weights = {k: v.detach().clone() for k, v in pushed.state_dict().items()}
        policy.stop()
        torch.save({"stats": stats, "weights": weights}, out)
    else:
        policy.follow()
    distributed.close()


def sharded_step(
    tmp_path: Path, model: Path, optim: OptimSection, batch: Any, world: int = 2
) -> dict[str, Any]:
    out = tmp_path / "sharded.pt"
    args = (world, free_port(), model, optim, batch, out)
    mp.start_processes(_rank_main, args=args, nprocs=world, start_method="spawn")
    result: dict[str, Any] = torch.load(out)
    return result


def assert_same_step(one: dict[str, Any], many: dict[str, Any]) -> None:
    """Same loss, gradient norm, mismatch and weights. (The clip_fraction, kl and
    tis_weight metrics are means of per-micro-batch token means, so they depend on how
    the rollouts fall into micro-batches, as they do in one process with another
    micro_batch_rollouts; the loss is normalised over the mini-batch's tokens.)"""
    for key in ("loss", "grad_norm", "logprob_mismatch"):
        assert many["stats"][key] == pytest.approx(one["stats"][key], rel=1e-5, abs=1e-9), key
    assert many["weights"].keys() == one["weights"].keys()
    for name, value in one["weights"].items():
        torch.testing.assert_close(many["weights"][name], value, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("mini_batches", [2, 1], ids=["old-logprob-pass", "one-update"])
def test_two_gloo_ranks_take_the_one_process_step(tmp_path: Path, mini_batches: int) -> None:
    optim = OPTIM.model_copy(update={"mini_batches": mini_batches})
    model = small_model(tmp_path / "model")
    batch = groups()
    one = one_rank_step(model, optim, batch)
    start = Policy(model, optim, "cpu", "float32").model.state_dict()
    moved = max((one["weights"][k] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-4  # the step changed the weights: the comparison below means something
    assert one["stats"]["grad_norm"] > 0
    assert one["stats"]["logprob_mismatch"] > 0
    assert_same_step(one, sharded_step(tmp_path, model, optim, batch))


def test_from_env_is_none_for_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.from_env() is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.from_env() == Ranks(0, 2, 0)
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(ValueError, match="incomplete"):
        distributed.from_env()


def test_gradient_checkpointing_recomputes_layers_and_takes_the_same_step(tmp_path: Path) -> None:
    model = small_model(tmp_path / "model")
    batch = groups()
    optim = OptimSection(lr=1e-3, micro_batch_rollouts=16)
    results, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        policy = Policy(model, optim, "cpu", "float32", gradient_checkpointing=checkpointing)
        count = [0]
        layer = distributed.decoder_layers(policy.model)[0]
        # transformers checkpoints the layer's `forward`: the recompute calls the mlp again
        # (a pre-hook: torch's recompute stops early, inside the mlp's last matmul)
        layer.mlp.register_forward_pre_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        results.append(policy.train_step(batch))
        calls.append(count[0])
        assert not any(
            m.training
            for m in policy.model.modules()
            if m is not layer and isinstance(m, torch.nn.Dropout)
        )
    # Without checkpointing (one mini-batch: no old-logprob pass) the prompts' pass and the
    # completions' pass on their KV cache; with it one pass over prompt + completion
    # (transformers turns the cache off under checkpointing) and the backward's recompute.
    assert calls == [2, 2]
    assert results[1]["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)
    assert results[1]["grad_norm"] == pytest.approx(results[0]["grad_norm"], rel=1e-5)


def _checkpoint_main(
    rank: int, world: int, port: int, model: Path, batch: Any, directory: Path, mode: str
) -> None:
    """save: one step, save the shards, one more step; load: load, one step. Rank 0
    writes the step's loss and the pushed weights to `directory/<mode>-<world>.pt`.
    world 1: this process, no process group."""
    ranks = None
    if world > 1:
        ranks = join(rank, world, port)
    policy = Policy(model, OPTIM, "cpu", "float32", ranks=ranks, total_steps=4)
    if ranks is not None and not ranks.driver:
        policy.follow()
        distributed.close()
        return
    torch.manual_seed(5)
    if mode == "save":
        policy.train_step(batch)
        state = policy.state()
        policy.save_sharded(directory)
        torch.save(state, directory / "policy.pt")
    else:
        policy.load_state(torch.load(directory / "policy.pt"), directory=directory)
    torch.manual_seed(7)
    stats = policy.train_step(batch)
    weights = {k: v.detach().clone() for k, v in policy.weights_for_push().state_dict().items()}
    torch.save({"stats": stats, "weights": weights}, directory / f"{mode}-{world}.pt")
    policy.stop()
    distributed.close()


@pytest.mark.slow  # three spawned runs: about a minute on the shared cores
def test_sharded_checkpoint_resumes_on_two_ranks_and_on_one(tmp_path: Path) -> None:
    """Saved by 2 ranks (DCP), then the next step taken straight on, after a resume on 2
    ranks, and after a resume in one process: the same step each time."""
    model = small_model(tmp_path / "model")
    batch, directory = groups(), tmp_path / "ckpt"
    directory.mkdir()
    for world, mode in ((2, "save"), (2, "load")):
        args = (world, free_port(), model, batch, directory, mode)
        mp.start_processes(_checkpoint_main, args=args, nprocs=world, start_method="spawn")
    assert sorted(p.name for p in directory.iterdir() if p.suffix == ".distcp") == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    _checkpoint_main(0, 1, 0, model, batch, directory, "load")  # one process, no torchrun
    straight = torch.load(directory / "save-2.pt")
    for resumed in (torch.load(directory / "load-2.pt"), torch.load(directory / "load-1.pt")):
        assert resumed["stats"]["loss"] == pytest.approx(straight["stats"]["loss"], rel=1e-5)
        assert resumed["stats"]["grad_norm"] == pytest.approx(
            straight["stats"]["grad_norm"], rel=1e-5
        )
        assert resumed["stats"]["lr"] == straight["stats"]["lr"]
        for name, value in straight["weights"].items():
            torch.testing.assert_close(resumed["weights"][name], value, rtol=0, atol=1e-6, msg=name)
