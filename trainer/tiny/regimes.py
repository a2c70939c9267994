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

Each regime keeps every middle prompt and adds easy and hard prompts (hard ones longest
problem first, see `order_extras`) until the all-equal share of their fresh groups reaches
the target; when the pool has too few, the middle is cut instead. The held-out test set
of a regime holds every middle test prompt plus extras taken the same way from the test
prompts, in the train set's ratio of extras to middle.
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
    # Share of easy prompts among those added beside the middle. Off by default: at
    # temperature 1.0 the warm-started model solves almost nothing reliably (35 of 6,000
    # prompts were 16/16, and their fresh groups were all-right 6% of the time), so easy
    # prompts would act as more middle.
    easy_share: float = 0.0


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


def all_equal(e: Estimate, config: RegimeConfig) -> bool:
    """Whether the fresh group of G answers was all right or all wrong."""
    return e.group_right in (0, config.group_size)


def class_stats(estimates: Sequence[Estimate], config: RegimeConfig) -> dict[str, dict]:
    """Per class: how many prompts, and the share whose fresh group was all-equal."""
    stats: dict[str, dict] = {}
    for c in CLASSES:
        members = [e for e in estimates if classify(e.classify_right, config.classify_samples) == c]
        flat = sum(all_equal(e, config) for e in members)
        stats[c] = {"prompts": len(members), "zero_variance": flat / max(1, len(members))}
    return stats


def order_extras(estimates: Sequence[Estimate], config: RegimeConfig, seed: int) -> list[Estimate]:
    """Easy and hard prompts in the order a regime takes them.

    Hard prompts come longest problem first: 0 right of 16 answers still admits p = 0.05,
    whose group of 32 is all-wrong only a fifth of the time, while a 5-digit sum is truly
    out of reach. The order uses only the ladder level, never the fresh answers, so their
    all-equal rate stays an unbiased estimate. Easy prompts are interleaved at
    `easy_share`.
    """
    rng = random.Random(seed)
    by_class: dict[str, list[Estimate]] = {EASY: [], HARD: []}
    for e in estimates:
        cls = classify(e.classify_right, config.classify_samples)
        if cls in by_class:
            by_class[cls].append(e)
    rng.shuffle(by_class[EASY])
    rng.shuffle(by_class[HARD])
    by_class[HARD].sort(key=lambda e: -e.row["difficulty"])
    ordered: list[Estimate] = []
    easy, hard = iter(by_class[EASY]), iter(by_class[HARD])
    for i in range(len(by_class[EASY]) + len(by_class[HARD])):
        want_easy = int((i + 1) * config.easy_share) > int(i * config.easy_share)
        first, second = (easy, hard) if want_easy else (hard, easy)
        ordered.append(next(first, None) or next(second))
    return ordered


@dataclass(frozen=True)
class Mixture:
    """A regime: how many middle prompts, how many leading extras, the expected share."""

    target: float
    middle: int
    extras: int
    expected_zero_variance: float


def solve_mixture(
    target: float, middle_flat: Sequence[bool], extras_flat: Sequence[bool]
) -> Mixture:
    """The fewest leading extras that bring the all-equal share to `target`.

    `middle_flat` and `extras_flat` say, per prompt, whether its fresh group was all-equal.
    With every middle prompt kept, the share after x extras is
    (flat middle + flat among the first x extras) / (middle + x). When even all extras fall
    short, the middle is cut (a seeded prefix) until the target is met.
    """
    m, z_m = len(middle_flat), sum(middle_flat)
    if m and z_m / m >= target:
        raise ValueError(f"target {target:.0%} is below the middle's own share {z_m / m:.0%}")
    flat = 0
    for x, is_flat in enumerate(extras_flat, start=1):
        flat += is_flat
        if (z_m + flat) / (m + x) >= target:
            return Mixture(target, m, x, (z_m + flat) / (m + x))
    return _cut_middle(target, middle_flat, extras_flat)


def _cut_middle(target: float, middle_flat: Sequence[bool], extras_flat: Sequence[bool]) -> Mixture:
    """The largest middle (a prefix) that some prefix of extras can lift to `target`.

    Extras are ordered most-likely-flat first, so a shorter prefix can have a higher
    all-equal share than the whole list; every prefix length is tried.
    """
    best: tuple[int, int] | None = None
    flat = 0
    for x, is_flat in enumerate(extras_flat, start=1):
        flat += is_flat
        z_cut = 0
        for cut in range(len(middle_flat) + 1):
            if cut:
                z_cut += middle_flat[cut - 1]
            if (z_cut + flat) / (cut + x) < target:
                break
            if best is None or (cut, x) > best:
                best = (cut, x)
    if best is None:
        raise ValueError(f"target {target:.0%} is above what this pool can reach")
    cut, x = best
    total = sum(middle_flat[:cut]) + sum(extras_flat[:x])
    return Mixture(target, cut, x, total / (cut + x))


def share(flat: Sequence[bool]) -> float:
    return sum(flat) / len(flat) if flat else 0.0


def plug_in_share(chosen: Sequence[Estimate], config: RegimeConfig) -> float:
    """The p^G + (1-p)^G prediction with p pooled from both answer sets (biased high)."""
    n = config.classify_samples + config.group_size
    probs = [
        zero_variance_probability((e.classify_right + e.group_right) / n, config.group_size)
        for e in chosen
    ]
    return sum(probs) / len(probs) if probs else 0.0
