"""`model.train_top_layers` (trainer/policy.py): a step changes the top N decoder layers and
the final norm, nothing below them, and not the (tied) embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.test_policy_logprobs import uneven_rollouts
from trainer.config import OptimSection
from trainer.policy import Policy
from trainer.tiny.model import build_tokenizer, init_model, tiny_llama_config


def four_layer_model(path: Path) -> Path:
    tokenizer = build_tokenizer()
    config = tiny_llama_config(
        tokenizer, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64
    )
    init_model(config, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_step_moves_only_the_top_layers_and_the_final_norm(tmp_path: Path) -> None:
    model = four_layer_model(tmp_path / "m")
    policy = Policy(model, OptimSection(lr=1e-2), "cpu", "float32", train_top_layers=1)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    rollouts = uneven_rollouts()
    policy.train_step([rollouts[:3], rollouts[3:]])
    moved = {k for k, v in policy.model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith(("model.layers.3.", "model.norm.")) for k in moved), moved
    assert any(k.startswith("model.layers.3.") for k in moved)
    assert policy.trainable == {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert policy.trainable == {
        n
        for n, _ in policy.model.named_parameters()
        if n.startswith(("model.layers.3.", "model.norm."))
    }
    optimised = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in policy.model.parameters() if p.requires_grad}


def test_every_parameter_trains_by_default_and_too_many_layers_is_an_error(tmp_path: Path) -> None:
    model = four_layer_model(tmp_path / "m")
    assert Policy(model, OptimSection(), "cpu", "float32").trainable is None
    with pytest.raises(ValueError, match="train_top_layers = 5, but the model has 4 layers"):
        Policy(model, OptimSection(), "cpu", "float32", train_top_layers=5)
