"""The trainer's logprobs are those of the distribution sampled (trainer/policy.py): for
rollouts of uneven prompt and completion lengths, the padded micro-batch (prompts
left-padded, completions right-padded, logits of completion positions only) gives, at
T = 0.7, a plain unpadded forward pass's log_softmax(logits / T); and a train step on that
layout has finite gradients (no NaN from the rows' padding)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer.algos import token_logprobs
from trainer.config import OptimSection
from trainer.generation.landing import reference_logprobs
from trainer.policy import Policy, Rollout
from trainer.scoring import collate, score
from trainer.tiny.model import build_tokenizer, init_model, tiny_llama_config

TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model")
    tokenizer = build_tokenizer()
    config = tiny_llama_config(
        tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
    )
    init_model(config, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(params=["sdpa", "eager"])
def attention(request: pytest.FixtureRequest) -> str:
    """Both attention kernels the CPU runs: each masks the padding its own way."""
    return str(request.param)


def policy_with(model_dir: Path, attention: str, optim: OptimSection) -> Policy:
    policy = Policy(model_dir, optim, "cpu", "float32", temperature=TEMPERATURE)
    policy.model.set_attn_implementation(attention)
    assert policy.model.config._attn_implementation == attention
    return policy


def uneven_rollouts() -> list[Rollout]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for prompt_len, completion_len in ((3, 7), (9, 1), (5, 4), (12, 6), (1, 2)):
        prompt = torch.randint(5, 40, (prompt_len,), generator=gen).tolist()
        completion = torch.randint(5, 40, (completion_len,), generator=gen).tolist()
        out.append(Rollout(prompt, completion, [-1.0] * completion_len, float(prompt_len % 2)))
    return out


def test_padded_batch_gives_each_rows_unpadded_tempered_logprobs(
    model_dir: Path, attention: str
) -> None:
    policy = policy_with(model_dir, attention, OptimSection())
    rollouts = uneven_rollouts()
    scored = policy._old_logprobs(rollouts)
    for rollout, row in zip(rollouts, scored, strict=True):
        plain = reference_logprobs(
            policy.model, rollout.prompt_ids, rollout.completion_ids, TEMPERATURE
        )
        assert len(row) == len(rollout.completion_ids)
        assert row == pytest.approx(plain, abs=1e-5)
        raw = reference_logprobs(policy.model, rollout.prompt_ids, rollout.completion_ids)
        assert row != pytest.approx(raw, abs=1e-3)  # the temperature is applied, not ignored


def test_collate_keeps_each_distinct_prompt_once_and_lines_completions_up() -> None:
    rollouts = uneven_rollouts()
    rollouts = [*rollouts, Rollout(rollouts[1].prompt_ids, [7, 8, 9], [-1.0] * 3, 0.0)]
    batch = collate(rollouts, pad_id=0, device=torch.device("cpu"))
    assert batch.prompts.shape[0] == len(rollouts) - 1  # the repeated prompt is kept once
    assert batch.rows.tolist() == [0, 1, 2, 3, 4, 1]
    for i, r in enumerate(rollouts):
        c = len(r.completion_ids)
        assert batch.targets[i, :c].tolist() == r.completion_ids
        assert batch.mask[i].tolist() == [1.0] * c + [0.0] * (batch.mask.shape[1] - c)
        row = int(batch.rows[i])
        prompt = batch.prompts[row][batch.prompt_mask[row].bool()].tolist()
        assert prompt == r.prompt_ids


def test_shared_prompts_give_the_joint_pass_logprobs_and_gradients(
    model_dir: Path, attention: str
) -> None:
    """The G rollouts of a group scored on one copy of their prompt's KV cache equal one
    pass over each prompt + completion: values and the gradients they send back."""
    policy = policy_with(model_dir, attention, OptimSection())
    rollouts = uneven_rollouts()
    groups = [Rollout(r.prompt_ids, r.completion_ids[::-1], r.gen_logprobs, 0.0) for r in rollouts]
    batch = collate(rollouts + groups, policy.pad_id, policy.device)
    results = []
    for shared in (True, False):
        policy.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logp = score(policy.model, batch, TEMPERATURE, shared_prompts=shared)
            (logp * batch.mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in policy.model.named_parameters()}
        results.append(((logp * batch.mask).detach(), grads))
    (shared_logp, shared_grads), (joint_logp, joint_grads) = results
    assert torch.allclose(shared_logp, joint_logp, atol=1e-5)
    for name, grad in joint_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_token_logprobs_divides_by_the_temperature() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    # p(1) at T = 0.5: 9 / (1 + 9)
    assert token_logprobs(logits, torch.tensor([[1]]), 0.5).item() == pytest.approx(math.log(0.9))


def test_a_train_step_on_the_padded_layout_has_finite_gradients(
    model_dir: Path, attention: str
) -> None:
    policy = policy_with(model_dir, attention, OptimSection(lr=1e-3, micro_batch_rollouts=3))
    rollouts = uneven_rollouts()
    stats = policy.train_step([rollouts[:3], rollouts[3:]])
    assert math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])
    assert stats["grad_norm"] > 0
    for param in policy.model.parameters():
        assert torch.isfinite(param).all()


def test_temperature_must_be_positive(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Policy(model_dir, OptimSection(), "cpu", "float32", temperature=0.0)
