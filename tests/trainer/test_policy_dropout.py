"""The policy scores with dropout off: a model whose config sets dropout gives the same
old logprobs and loss on every pass (trainer/policy.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.config import OptimSection
from trainer.policy import Policy, Rollout
from trainer.scoring import collate
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
    # The update's forward (with grad) gives the no-grad pass's logprobs: with one
    # mini-batch the update's own logprobs are the old ones, and with several the first
    # update's ratio is 1 (nothing is clipped even with the narrowest clip range).
    with torch.enable_grad():
        scored = policy._logprobs(policy.model, collate(batch, policy.pad_id, policy.device))
    assert torch.allclose(scored.detach(), torch.tensor(policy._old_logprobs(batch)), atol=1e-6)
    narrow = OptimSection(mini_batches=1, clip_low=1e-6, clip_high=1e-6)
    policy = Policy(tmp_path / "m", narrow, "cpu", "float32")
    assert policy.train_step([batch[:2], batch[2:]])["clip_fraction"] == 0.0
