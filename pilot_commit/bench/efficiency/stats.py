"""The efficiency benchmark's arithmetic, as pure functions of the cells' results.

Rollouts to target: the cumulative rollouts (everything generated: pilots, discarded
groups) at a cell's first evaluation at or above the target. A cell that never reaches
it is *censored*: it enters at the rollouts it spent (its last evaluation's cumulative
rollouts, a lower bound on the true value), is flagged `censored` and is never dropped.

The target of a setting is fixed from its baseline cells alone: the mean warm-start
accuracy (step 0) + `fraction` x the mean over seeds of (best accuracy - warm start).

Ratios are paired by seed: seed k of two strategies shares the run seed (cells.py says
what that pairs), so the unit of evidence is the per-seed ratio r_k = x_num,k / x_den,k
(> 1: the denominator strategy needed fewer rollouts). The statistic is the *median of
the paired ratios*, computed as exp(median(log r_k)) so that num/den is exactly 1 /
(den/num) also for an even number of seeds. Its 95% interval is the distribution-free one
for a median, from the order statistics of the paired log-ratios: [x_(k), x_(n+1-k)] with
k the largest rank for which P(Binomial(n, 1/2) < k) <= 2.5%, so that it covers the true
median ratio with probability >= 95% whatever the ratios' distribution (the coverage it
reaches is reported). It takes whole pairs: both strategies' cells of a seed stay together.
No such interval exists below 6 seeds (with 5, even [min, max] covers only 93.75%): the
ratio then has no interval and the sign is not told. (A percentile bootstrap over seed
indices, used at first, is [min, max] at 3 to 5 seeds: on paired log-ratios with no
difference it excluded 1 in 25% of draws at 3 seeds, 13% at 4 and 6% at 5, not 5%.)

A censored cell enters at its lower bound, which pulls its ratio towards 1 whichever
side it is on (a censored baseline understates the other's win, a censored other
strategy understates its loss), and never past 1: a censored cell does not count as the
faster of its pair (that seed is then a tie); a seed where both were censored counts as
a tie too (ratio 1: the budget ran out for both, no evidence either way). The seeds
involved are listed with each ratio.

Seeds needed: with s the standard deviation of the paired log-ratios, the median of n of
them has a standard error of about sqrt(pi / 2) s / sqrt(n) (normal approximation; the
order-statistic interval has the same large-n efficiency), so a true ratio of 1.5 gives
an interval whose lower end reaches 1 on average when n = (pi / 2) (1.96 s / ln 1.5)^2,
and excludes 1 four times in five when n = (pi / 2) ((1.96 + 0.84) s / ln 1.5)^2; never
fewer than 6, the fewest seeds with a 95% interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Z_95 = 1.959964
Z_80_POWER = 0.841621
MEDIAN_VARIANCE = math.pi / 2  # var(median) / var(mean) of a normal sample, large n
LEVEL = 0.95
MIN_SEEDS = 6  # the fewest paired seeds with a distribution-free 95% interval for a median
METHOD = (
    "paired seeds; per setting, the median over seeds of the paired ratio of rollouts to "
    "target (exp of the median log-ratio); distribution-free 95% interval for the median "
    "from the order statistics of the paired log-ratios (binomial ranks, coverage >= 95%, "
    f"reported; none below {MIN_SEEDS} seeds); a cell that never reached the target enters "
    "at the rollouts it spent (censored, listed) and never counts as the faster of its "
    "pair; a seed where both were censored is a tie; seeds for 1.5x: "
    f"max({MIN_SEEDS}, (pi/2) (z s / ln 1.5)^2), s the standard deviation of the paired "
    "log-ratios"
)


@dataclass(frozen=True)
class EvalPoint:
    """One held-out evaluation of a cell."""

    step: int
    rollouts: int
    accuracy: float
    stderr: float
    wall_s: float


@dataclass(frozen=True)
class ToTarget:
    """A cell's rollouts to target; censored: not reached (rollouts = what it spent)."""

    rollouts: float
    censored: bool
    wall_s: float | None = None  # training seconds to the target; None when censored


@dataclass(frozen=True)
class Target:
    accuracy: float
    warm_start: float
    mean_best_gain: float
    fraction: float
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class PairedRatio:
    """x_numerator / x_denominator over the seeds both strategies completed."""

    numerator: str
    denominator: str
    point: float
    low: float
    high: float
    seeds: tuple[int, ...]
    per_seed: dict[int, float] = field(default_factory=dict)
    censored_seeds: tuple[int, ...] = ()
    seeds_for_1_5x: int | None = None
    seeds_for_1_5x_80pct: int | None = None
    coverage: float | None = None  # the interval's; None: no interval (too few seeds)

    def excludes_one(self) -> bool:
        return self.coverage is not None and (self.low > 1.0 or self.high < 1.0)


def rollouts_to_target(curve: Sequence[EvalPoint], target: float) -> ToTarget:
    """The first evaluation at or above `target`; censored at the last one if none is."""
    for point in curve:
        if point.accuracy >= target:
            return ToTarget(float(point.rollouts), False, point.wall_s)
    return ToTarget(float(curve[-1].rollouts), True)


def fix_target(curves: Mapping[int, Sequence[EvalPoint]], fraction: float = 0.7) -> Target:
    """The target from the baseline's cells (seed -> curve, each starting at step 0)."""
    if not curves:
        raise ValueError("no baseline cells to fix a target from")
    warm = [curve[0].accuracy for curve in curves.values()]
    gains = [max(p.accuracy for p in curve) - curve[0].accuracy for curve in curves.values()]
    warm_start, gain = float(np.mean(warm)), float(np.mean(gains))
    return Target(warm_start + fraction * gain, warm_start, gain, fraction, tuple(sorted(curves)))


def pair_ratio(numerator: ToTarget, denominator: ToTarget) -> float:
    """One seed's ratio: 1 when both were censored (neither reached the target within
    the budget: no evidence either way) or both met it at the start; a cell at the
    target from the start otherwise counts as 1 rollout. A censored cell never counts as
    the faster of its pair: strategies overshoot the budget by different amounts, so one
    that reached the target at its last evaluation can show more rollouts than the other
    spent without reaching it; that seed is a tie, not a win for the censored cell."""
    both_censored = numerator.censored and denominator.censored
    if both_censored or (numerator.rollouts == 0 and denominator.rollouts == 0):
        return 1.0
    ratio = max(numerator.rollouts, 1.0) / max(denominator.rollouts, 1.0)
    if numerator.censored:
        return max(ratio, 1.0)
    if denominator.censored:
        return min(ratio, 1.0)
    return ratio


def median_ratio(log_ratios: np.ndarray) -> float:
    return float(np.exp(np.median(log_ratios)))


def median_rank(n: int, level: float = LEVEL) -> tuple[int, float] | None:
    """(k, coverage): the largest k with P(Binomial(n, 1/2) < k) <= (1 - level) / 2, so
    that [x_(k), x_(n+1-k)] covers the median with probability `coverage` >= level for any
    continuous distribution; None when not even [min, max] reaches `level`."""
    tail, k = 0.0, 0
    while k < n and tail + math.comb(n, k) / 2**n <= (1 - level) / 2:
        tail += math.comb(n, k) / 2**n
        k += 1
    return (k, 1 - 2 * tail) if k >= 1 else None


def median_interval(log_ratios: np.ndarray) -> tuple[float, float, float | None]:
    """(low, high, coverage) of the median ratio from the order statistics of the paired
    log-ratios; (0, inf, None) with too few seeds for a 95% interval."""
    rank = median_rank(log_ratios.size)
    if rank is None:
        return 0.0, math.inf, None
    k, coverage = rank
    ordered = np.sort(log_ratios)
    return float(np.exp(ordered[k - 1])), float(np.exp(ordered[-k])), coverage


def seeds_needed(log_ratios: np.ndarray, ratio: float = 1.5, z: float = Z_95) -> int | None:
    """Paired seeds for a true `ratio` to put the interval's end at 1 (see the module
    docstring), at least MIN_SEEDS; None with fewer than two seeds to measure the spread
    on."""
    if log_ratios.size < 2:
        return None
    spread = float(np.std(log_ratios, ddof=1))
    return max(MIN_SEEDS, math.ceil(MEDIAN_VARIANCE * (z * spread / math.log(ratio)) ** 2))


def paired_ratio(
    names: tuple[str, str],
    numerator: Mapping[int, ToTarget],
    denominator: Mapping[int, ToTarget],
) -> PairedRatio | None:
    """The paired median ratio and its interval over the seeds both have; None if none."""
    seeds = tuple(sorted(set(numerator) & set(denominator)))
    if not seeds:
        return None
    per_seed = {k: pair_ratio(numerator[k], denominator[k]) for k in seeds}
    logs = np.log(np.array([per_seed[k] for k in seeds]))
    low, high, coverage = median_interval(logs)
    censored = tuple(k for k in seeds if numerator[k].censored or denominator[k].censored)
    return PairedRatio(
        *names,
        median_ratio(logs),
        low,
        high,
        seeds,
        per_seed,
        censored,
        seeds_needed(logs),
        seeds_needed(logs, z=Z_95 + Z_80_POWER),
        coverage,
    )


def sign_statement(ratio: PairedRatio) -> str:
    """Which strategy needs fewer rollouts, or that the interval cannot tell."""
    num, den, n = ratio.numerator, ratio.denominator, len(ratio.seeds)
    if ratio.coverage is None:
        return (
            f"{num}/{den} = {ratio.point:.2f} ({n} paired seeds): cannot tell the sign (a 95% "
            f"interval for a median needs at least {MIN_SEEDS} paired seeds)"
        )
    shown = f"{num}/{den} = {ratio.point:.2f} (95% interval {ratio.low:.2f} - {ratio.high:.2f}, "
    shown += f"{n} paired seeds)"
    if ratio.low > 1.0:
        return f"{shown}: {den} needs fewer rollouts to target than {num}"
    if ratio.high < 1.0:
        return f"{shown}: {num} needs fewer rollouts to target than {den}"
    return f"{shown}: cannot tell the sign (the interval includes 1)"


# ---- where the rollouts went ----

ROLLOUT_SHARES = (
    "trained_informative",
    "trained_zero_variance",
    "discarded_zero_variance",
    "discarded_other",
)


def rollout_partition(
    final: Mapping[str, int], counters: Mapping[str, int], group_size: int
) -> dict[str, int]:
    """Every generated rollout in exactly one of ROLLOUT_SHARES.

    Trained: `groups_trained` x G (reused pilots included), of which the allocator's
    `groups_trained_zero_variance` groups had all-equal rewards. Discarded zero-variance:
    the trainer's zero-variance rollouts that were not trained (DAPO's dropped groups,
    all-right or all-wrong pilots). Discarded other: the rest (pilots gated out with
    mixed rewards, pilots of buffer entries that expired or were flushed, surplus groups).
    """
    trained_zv = counters.get("groups_trained_zero_variance", 0) * group_size
    trained = final["groups_trained"] * group_size
    discarded_zv = final["rollouts_zero_variance"] - trained_zv
    return {
        "trained_informative": trained - trained_zv,
        "trained_zero_variance": trained_zv,
        "discarded_zero_variance": discarded_zv,
        "discarded_other": final["rollouts_total"] - trained - discarded_zv,
    }
