"""Advantages and the policy loss on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trainer.algos import (
    PolicyLossInput,
    group_advantages,
    lr_factor,
    policy_loss,
    token_logprobs,
)


def test_group_advantages_hand_computed() -> None:
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), eps=0.0)
    assert adv.tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0])
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), eps=0.0)
    # mean 0.25, population std sqrt(0.1875)
    assert adv[0].item() == pytest.approx(0.75 / math.sqrt(0.1875))
    assert group_advantages(torch.tensor([1.0, 1.0, 1.0])).abs().max().item() == 0.0


def test_issue_case_eight_equal_rewards_get_exactly_zero_advantage() -> None:
    # float32 residue of the mean made every rollout -0.0563: one step against 8 right answers
    assert group_advantages(torch.tensor([0.9] * 8), 1e-6).tolist() == [0.0] * 8


@given(
    st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.7, 0.9, 1 / 3, 1.0]) | st.floats(0.0, 1.0),
    st.integers(1, 512),
    st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    st.sampled_from([0.0, 1e-6, 1e-4]),
)
def test_constant_group_gets_exactly_zero_advantages(
    value: float, n: int, dtype: torch.dtype, eps: float
) -> None:
    adv = group_advantages(torch.full((n,), value, dtype=dtype), eps)
    assert adv.dtype == dtype and adv.shape == (n,)
    assert torch.equal(adv, torch.zeros(n, dtype=dtype))


@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=64))
def test_advantages_of_a_varied_group_sum_to_zero(rewards: list[float]) -> None:
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64), 1e-6)
    assert abs(adv.sum().item()) < 1e-6 * len(rewards)
    if max(rewards) - min(rewards) > 1e-3:
        assert adv.abs().max().item() > 0.0


def loss_input(logprobs, old, adv, mask, **kw) -> PolicyLossInput:
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    mask_t = t(mask)
    return PolicyLossInput(t(logprobs), t(old), t(adv), mask_t, float(mask_t.sum()), **kw)


def test_ratio_one_gives_minus_mean_advantage_per_token() -> None:
    # two sequences, 3 and 1 completion tokens; token-level mean weighs every token equally
    out = policy_loss(
        loss_input(
            [[-1, -1, -1], [-2, 0, 0]],
            [[-1, -1, -1], [-2, 0, 0]],
            [1.0, -2.0],
            [[1, 1, 1], [1, 0, 0]],
        )
    )
    assert out.loss.item() == pytest.approx(-(3 * 1.0 + 1 * -2.0) / 4)
    assert out.clip_fraction.item() == 0.0


def test_clip_higher_bounds() -> None:
    # ratio e^0.5 = 1.65 > 1.28 with positive advantage: clipped to 1.28
    out = policy_loss(loss_input([[0.5]], [[0.0]], [1.0], [[1]]))
    assert out.loss.item() == pytest.approx(-1.28)
    assert out.clip_fraction.item() == 1.0
    # ratio e^-0.5 = 0.61 < 0.8 with negative advantage: -min(0.61*-1, 0.8*-1) = 0.8
    out = policy_loss(loss_input([[-0.5]], [[0.0]], [-1.0], [[1]]))
    assert out.loss.item() == pytest.approx(0.8)
    # inside the range nothing is clipped
    out = policy_loss(loss_input([[0.1]], [[0.0]], [1.0], [[1]]))
    assert out.loss.item() == pytest.approx(-math.exp(0.1))


def test_gradient_only_through_unclipped_tokens() -> None:
    logprobs = torch.tensor([[0.5, 0.0]], requires_grad=True)
    inp = PolicyLossInput(logprobs, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), 2.0)
    policy_loss(inp).loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad[0, 0].item() == 0.0  # clipped: no gradient
    assert logprobs.grad[0, 1].item() == pytest.approx(-0.5)  # -ratio * adv / tokens


def test_truncated_importance_sampling_weights() -> None:
    # trainer logprob 0 vs generator -1: weight e^1 = 2.72, capped at 2
    out = policy_loss(
        loss_input([[0.0]], [[0.0]], [1.0], [[1]], gen_logprobs=torch.tensor([[-1.0]]), tis_cap=2.0)
    )
    assert out.tis_weight.item() == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx(-2.0)


def test_k3_kl_penalty() -> None:
    ref = torch.tensor([[-1.0]])
    out = policy_loss(loss_input([[0.0]], [[0.0]], [0.0], [[1]], ref_logprobs=ref, kl_coef=0.5))
    kl = math.exp(-1.0) + 1.0 - 1.0  # exp(d) - d - 1 with d = ref - logp = -1
    assert out.kl.item() == pytest.approx(kl)
    assert out.loss.item() == pytest.approx(0.5 * kl)


def test_token_logprobs_matches_log_softmax() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))


def test_lr_factor_warms_up_then_follows_the_schedule() -> None:
    cosine = dict(warmup_steps=4, schedule="cosine", total_steps=104, min_ratio=0.1)
    assert [lr_factor(s, **cosine) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, **cosine) == pytest.approx(1.0)
    assert lr_factor(54, **cosine) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert lr_factor(104, **cosine) == pytest.approx(0.1)
    assert lr_factor(500, **cosine) == pytest.approx(0.1)  # past the end it stays at the floor
    constant = dict(warmup_steps=0, schedule="constant", total_steps=10, min_ratio=0.1)
    assert lr_factor(0, **constant) == lr_factor(1000, **constant) == 1.0
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor(5, warmup_steps=0, schedule="linear", total_steps=10, min_ratio=0.1)
