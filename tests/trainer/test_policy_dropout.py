"""The policy scores with dropout off: a model whose config sets dropout gives the same
old logprobs, mismatch and loss on every pass (trainer/policy.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.config import OptimSection
from trainer.policy import Policy, Rollout
from trainer.tiny.model import build_tokenizer, init_model, tiny_llama_config


def dropout_model(path: Path) -> Path:
    tokenizer = build_tokenizer()
    config = tiny_llama_config(
        tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
    )
    config.attention_dropout = 0.1
    init_model(config, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def rollouts() -> list[Rollout]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for reward in (1.0, 0.0, 1.0, 0.0):
        prompt = torch.randint(5, 40, (6,), generator=gen).tolist()
        completion = torch.randint(5, 40, (5,), generator=gen).tolist()
        out.append(Rollout(prompt, completion, [-1.0] * 5, reward))
    return out


def test_two_scoring_passes_agree_exactly_with_dropout_in_the_config(tmp_path: Path) -> None:
    policy = Policy(dropout_model(tmp_path / "m"), OptimSection(), "cpu", "float32")
    assert policy.model.config.attention_dropout == 0.1
    batch = rollouts()
    assert policy._old_logprobs(batch) == policy._old_logprobs(batch)
    assert policy.mismatch(batch) == policy.mismatch(batch)
    # The first update's ratio is exactly 1 (old logprobs and the loss's logprobs agree):
    # nothing is clipped even with the narrowest clip range.
    narrow = OptimSection(mini_batches=1, clip_low=1e-6, clip_high=1e-6)
    policy = Policy(tmp_path / "m", narrow, "cpu", "float32")
    assert policy.train_step([batch[:2], batch[2:]])["clip_fraction"] == 0.0
