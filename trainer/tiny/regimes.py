"""Regime datasets: the tiny task with a chosen share of zero-variance GRPO groups.

Pilot-Commit saves rollouts only when many groups would be zero-variance (all G rewards
equal); calibration put break-even near 40%. To test that claim the task needs a knob.
After the warm start every candidate prompt gets two independent sets of temperature-1.0
answers from the warm-started model:

- `classify_samples` answers sort it: *easy* (all right), *hard* (all wrong) or *middle*;
- `group_size` (G) fresh answers give, per prompt, whether one GRPO group of G would be
  all-equal. Averaged over a class this is an unbiased estimate of the class's
  zero-variance probability; plugging the classifier's p into p^G + (1-p)^G is not,
  because an all-right handful of answers does not mean p = 1.

Each regime keeps every middle prompt and adds easy and hard prompts (half each, by
default) in the number that brings the expected zero-variance share to the target. The
held-out test set of a regime is built the same way from test prompts: all middle test
prompts plus easy and hard test prompts in the train set's proportions.
This module's selection logic is pure; `estimate_pass_rates` is the only part that runs
the model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.tiny.sampling import pass_counts

EASY, MIDDLE, HARD = "easy", "middle", "hard"
CLASSES = (EASY, MIDDLE, HARD)


@dataclass(frozen=True)
class RegimeConfig:
    """Knobs of the regime datasets."""

    targets: tuple[float, ...] = (0.3, 0.5, 0.7)
    group_size: int = 32
    classify_samples: int = 16
    train_pool: int = 6000  # train prompts estimated (a seeded subset of train.jsonl)
    easy_share: float = 0.5  # of the easy + hard prompts added beside the middle


@dataclass(frozen=True)
class Estimate:
    """One prompt's answers from the warm-started model."""

    row: dict
    classify_right: int  # of `classify_samples`
    group_right: int  # of `group_size`, drawn independently


def classify(right: int, samples: int) -> str:
    if right == samples:
        return EASY
    return HARD if right == 0 else MIDDLE


def zero_variance_probability(p: float, group_size: int) -> float:
    """P(all G binary rewards equal) for pass rate p."""
    return p**group_size + (1 - p) ** group_size


def estimate_pass_rates(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    rows: Sequence[dict],
    config: RegimeConfig,
    seed: int,
) -> list[Estimate]:
    """Both answer sets for every row (the second with a different sampling seed)."""
    first = pass_counts(
        model, tokenizer, rows, samples=config.classify_samples, temperature=1.0, seed=seed
    )
    second = pass_counts(
        model, tokenizer, rows, samples=config.group_size, temperature=1.0, seed=seed + 1
    )
    return [Estimate(row, a, b) for row, a, b in zip(rows, first, second, strict=True)]


@dataclass(frozen=True)
class ClassStats:
    """Per-class estimates the mixture is solved from."""

    counts: dict[str, int]
    zero_variance: dict[str, float]  # measured on the fresh group of G answers


def class_stats(estimates: Sequence[Estimate], config: RegimeConfig) -> ClassStats:
    counts = dict.fromkeys(CLASSES, 0)
    all_equal = dict.fromkeys(CLASSES, 0)
    for e in estimates:
        cls = classify(e.classify_right, config.classify_samples)
        counts[cls] += 1
        all_equal[cls] += e.group_right in (0, config.group_size)
    zv = {c: all_equal[c] / counts[c] if counts[c] else 0.0 for c in CLASSES}
    return ClassStats(counts, zv)


@dataclass(frozen=True)
class Mixture:
    """How many prompts of each class a regime takes, and its expected share."""

    target: float
    counts: dict[str, int]
    expected_zero_variance: float


def expected_share(counts: dict[str, int], zero_variance: dict[str, float]) -> float:
    total = sum(counts.values())
    return sum(counts[c] * zero_variance[c] for c in CLASSES) / total if total else 0.0


def solve_mixture(target: float, stats: ClassStats, easy_share: float) -> Mixture:
    """All middle prompts plus enough easy/hard ones to reach `target`.

    With m middle prompts at share z_m and x extra prompts at z_x (the easy/hard blend),
    (m z_m + x z_x) / (m + x) = target gives x = m (target - z_m) / (z_x - target).
    When the pool lacks easy or hard prompts for that x, the middle is cut instead,
    keeping the proportions.
    """
    zv, avail = stats.zero_variance, stats.counts
    z_x = easy_share * zv[EASY] + (1 - easy_share) * zv[HARD]
    if not zv[MIDDLE] < target < z_x:
        raise ValueError(
            f"target {target:.0%} is outside what this pool can reach "
            f"(middle alone {zv[MIDDLE]:.0%}, easy/hard blend {z_x:.0%})"
        )
    middle = avail[MIDDLE]
    extra = middle * (target - zv[MIDDLE]) / (z_x - target)
    wanted = {EASY: easy_share * extra, HARD: (1 - easy_share) * extra}
    scale = min([1.0] + [avail[c] / wanted[c] for c in (EASY, HARD) if wanted[c] > 0])
    counts = {
        MIDDLE: int(middle * scale),
        EASY: round(wanted[EASY] * scale),
        HARD: round(wanted[HARD] * scale),
    }
    return Mixture(target, counts, expected_share(counts, zv))


def proportional_counts(mixture: Mixture, available: dict[str, int]) -> dict[str, int]:
    """Test-side counts: every middle prompt, easy and hard in the train proportions."""
    middle = available[MIDDLE]
    ratio = {c: mixture.counts[c] / max(1, mixture.counts[MIDDLE]) for c in (EASY, HARD)}
    counts = {MIDDLE: middle}
    for c in (EASY, HARD):
        counts[c] = min(available[c], round(ratio[c] * middle))
    return counts


def pick(
    estimates: Sequence[Estimate], counts: dict[str, int], config: RegimeConfig, seed: int
) -> list[Estimate]:
    """A seeded choice of `counts[c]` estimates of each class, shuffled together."""
    rng = random.Random(seed)
    by_class: dict[str, list[Estimate]] = {c: [] for c in CLASSES}
    for e in estimates:
        by_class[classify(e.classify_right, config.classify_samples)].append(e)
    chosen: list[Estimate] = []
    for c in CLASSES:
        chosen += rng.sample(by_class[c], counts[c])
    rng.shuffle(chosen)
    return chosen


def plug_in_share(chosen: Sequence[Estimate], config: RegimeConfig) -> float:
    """The p^G + (1-p)^G prediction with p pooled from both answer sets (biased high)."""
    n = config.classify_samples + config.group_size
    probs = [
        zero_variance_probability((e.classify_right + e.group_right) / n, config.group_size)
        for e in chosen
    ]
    return sum(probs) / len(probs) if probs else 0.0
