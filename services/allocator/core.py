"""The pure allocation core: the types every strategy speaks and the strategy interface.

Nothing here touches Redis or HTTP. The store reads a run's state, hands it to a
strategy as plain values (`PlanContext`, `ResultContext`), and writes back what the
strategy decides (`RoundPlan`, `RoundOutcome`). That keeps every selection rule a
tested pure function and lets a new strategy be one module under `strategies/`.

Vocabulary (see the paper, arXiv 2605.26606, and docs/allocator.md, docs/strategies.md):
- a *step* is one optimiser step; it trains on exactly `train_batch_size` groups;
- a *round* is one generation call; a step takes one or more rounds;
- a plan item's *role* is `pilot` (a few rollouts to estimate the pass rate), `commit`
  (fresh rollouts for a prompt that passed its pilot earlier; its train group is the
  stored pilot rollouts plus these) or `full` (a whole group, used as is: GRPO, DAPO).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from services.allocator.configs import EPS, FullGroupConfig, StrategyConfig
from services.allocator.records import BufferEntry, Outcome, PromptStats, Status
from services.common.rewards import rewards_constant

__all__ = ["FullGroupConfig", "StrategyConfig"]  # re-exported: strategies import them from here


class Role(StrEnum):
    PILOT = "pilot"
    COMMIT = "commit"
    FULL = "full"


class AllocationError(Exception):
    """The run cannot go on as configured (e.g. max_rounds exhausted); a 409 on the wire."""


@dataclass(frozen=True)
class Counters:
    """The run's small scalar state (one Redis hash)."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0  # next position in this epoch's order
    round: int = 0  # rounds planned in the current step
    committed: int = 0  # groups already in the current step's train batch
    buffer_seq: int = 0  # arrival counter for buffer entries (set by `RoundOutcome.buffer_seq`)
    # Cumulative counters only (gate_pass, groups_trained, ...): incremented, never set.
    totals: Mapping[str, int] = field(default_factory=dict, hash=False)
    # The run's fields its strategy owns (`Strategy.run_state_fields`), encoded by the
    # strategy's own codec; set through `RoundOutcome.run_state`, never added.
    strategy_state: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Candidate:
    """A prompt at some position of the epoch order, with its statistics."""

    position: int
    prompt_id: int
    stats: PromptStats


@dataclass(frozen=True)
class PlanItem:
    prompt_id: int
    role: Role
    n: int  # rollouts to generate
    reuse: tuple[int, ...] = ()  # commit: indices of stored pilot rollouts in the group


@dataclass(frozen=True)
class PlanContext:
    counters: Counters
    num_prompts: int
    seed: int
    window: Sequence[Candidate]  # next candidates of the epoch, evicted ones already removed
    window_end: int  # position just after the window
    epoch_exhausted: bool  # the window reaches the end of the epoch
    buffer: Sequence[BufferEntry]


@dataclass(frozen=True)
class RoundPlan:
    items: list[PlanItem]
    cursor: int  # new cursor: position after the last candidate consumed
    taken_from_buffer: list[BufferEntry] = field(default_factory=list)
    needs_more_candidates: bool = False  # ask the store for a wider window and plan again
    # Decisions about candidates the plan consumed without planning them (e.g. skipped on
    # their statistics): their new statistics and counter increments, written with the plan.
    stats: dict[int, PromptStats] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultContext:
    counters: Counters
    items: Sequence[PlanItem]
    rewards: Sequence[Sequence[float]]  # one list per item, in plan order
    stats: dict[int, PromptStats]  # current statistics of every prompt in the plan
    taken: dict[int, BufferEntry]  # buffer entries of the plan's commit items


@dataclass(frozen=True)
class TrainGroup:
    prompt_id: int
    role: Role  # `commit`: stored pilot rollouts `reuse` + this plan's; `full`: this plan's
    reuse: tuple[int, ...] = ()


@dataclass
class RoundOutcome:
    stats: dict[int, PromptStats] = field(default_factory=dict)
    gates: list[str] = field(default_factory=list)  # one per item: an Outcome name, lower case
    train: list[TrainGroup] = field(default_factory=list)
    buffer_add: list[BufferEntry] = field(default_factory=list)
    evict_pending: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # counter name -> increment
    buffer_seq: int | None = None  # the run's new arrival counter (None: unchanged)
    run_state: dict[str, str] = field(default_factory=dict)  # strategy-owned fields set


@dataclass(frozen=True)
class EvidenceContext:
    """Rewards of one prompt observed outside the run's plans (e.g. an evaluation)."""

    counters: Counters
    prompt_id: int
    stats: PromptStats
    rewards: Sequence[float]


@dataclass
class EvidenceOutcome:
    """The prompt's new statistics. Its status may leave EVICTED / EVICT_PENDING (a
    restore) for ACTIVE, DEFERRED or EASY; any other change of status is refused."""

    stats: PromptStats
    counts: dict[str, int] = field(default_factory=dict)


class Strategy(ABC):
    """One allocation rule, registered by `name` in `strategies.STRATEGIES`."""

    name: ClassVar[str]
    config_model: ClassVar[type[StrategyConfig]]
    # Fields of the run's state hash this strategy owns (its per-run state, set whole by
    # `RoundOutcome.run_state`); the store passes them in `Counters.strategy_state`.
    run_state_fields: ClassVar[frozenset[str]] = frozenset()
    # Last outcomes of an evict-pending prompt that the epoch-end eviction keeps, as a more
    # specific reason than Outcome.EVICTED.
    eviction_outcomes: ClassVar[frozenset[Outcome]] = frozenset()

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def window_size(self, counters: Counters) -> int:
        """How many candidates of the epoch order the store should read for a plan."""
        return 2 * self.config.train_batch_size

    @abstractmethod
    def plan_round(self, ctx: PlanContext) -> RoundPlan:
        """Choose this round's items from the candidate window and the buffer."""

    @abstractmethod
    def apply_results(self, ctx: ResultContext) -> RoundOutcome:
        """Gate, update statistics and pick the round's train groups from its rewards."""

    def expire(self, step_done: int, buffer: Sequence[BufferEntry]) -> list[BufferEntry]:
        """Buffer entries too old to commit after step `step_done` (default: none)."""
        return []

    def apply_evidence(self, ctx: EvidenceContext) -> EvidenceOutcome:
        """Fold external evidence into a prompt's statistics (default: ignore it)."""
        return EvidenceOutcome(ctx.stats)

    def describe_prompt_state(self, stats: PromptStats) -> dict[str, float]:
        """The prompt's `strategy_state`, decoded for people (`PromptStatsOut`)."""
        return {}

    def describe_run_state(self, counters: Counters) -> dict[str, float]:
        """The run's `strategy_state`, decoded for people (`RunSummary`)."""
        return {}


# ---- helpers shared by strategies (all pure) ----


@dataclass(frozen=True)
class GroupSummary:
    n: int
    successes: int
    reward_sum: float
    pass_rate: float
    std: float  # population std of the rewards; exactly 0.0 for a constant group

    @property
    def all_equal(self) -> bool:
        return self.std == 0.0


def summarize(rewards: Sequence[float], success_threshold: float) -> GroupSummary:
    """Counts, pass rate (share of rewards >= `success_threshold`) and std of one group."""
    n = len(rewards)
    total = math.fsum(rewards)
    successes = sum(1 for r in rewards if r >= success_threshold)
    if rewards_constant(rewards):
        return GroupSummary(n, successes, total, successes / n, 0.0)
    mean = total / n
    var = math.fsum((r - mean) ** 2 for r in rewards) / n
    return GroupSummary(n, successes, total, successes / n, math.sqrt(var))


def observe(
    stats: PromptStats,
    group: GroupSummary,
    step: int,
    status: Status,
    outcome: Outcome,
    streak_group: GroupSummary | None = None,
) -> PromptStats:
    """Fold one observed group into a prompt's lifetime statistics.

    The all-correct / all-wrong streaks judge `streak_group` (default: `group`). An
    evicted prompt stays evicted whatever happens to a group already in flight.
    """
    judged = streak_group or group
    all_correct = judged.successes == judged.n
    all_wrong = judged.successes == 0
    if stats.status is Status.EVICTED:
        status = Status.EVICTED
    return PromptStats(
        rollouts=stats.rollouts + group.n,
        successes=stats.successes + group.successes,
        reward_sum=stats.reward_sum + group.reward_sum,
        pilot_pass_rate=stats.pilot_pass_rate,
        pilot_std=stats.pilot_std,
        last_step=step,
        status=status,
        last_outcome=outcome,
        all_correct_streak=stats.all_correct_streak + 1 if all_correct else 0,
        all_wrong_streak=stats.all_wrong_streak + 1 if all_wrong else 0,
        strategy_state=stats.strategy_state,
    )


def take_candidates(ctx: PlanContext, count: int) -> tuple[list[Candidate], int, bool]:
    """The first `count` window candidates, the new cursor, and whether the window ran short.

    The window holds only plannable prompts; the cursor moves past the last one taken (or
    to the window's end when it ran short, since everything before it was skipped).
    """
    chosen = list(ctx.window[:count])
    if len(chosen) == count and count > 0:
        return chosen, chosen[-1].position + 1, False
    short = not ctx.epoch_exhausted
    return chosen, ctx.window_end, short


def pick_from_buffer(
    buffer: Sequence[BufferEntry], count: int, sampling: str, rng_seed: tuple[int, ...]
) -> list[BufferEntry]:
    """Buffered prompts to commit: highest pilot std first (ties: most recent), or random."""
    if count <= 0 or not buffer:
        return []
    if sampling == "random":
        rng = random.Random(":".join(map(str, rng_seed)))
        ordered = sorted(buffer, key=lambda e: e.seq)
        return rng.sample(ordered, min(count, len(ordered)))
    ranked = sorted(buffer, key=lambda e: (e.std, e.step, e.seq), reverse=True)
    return ranked[:count]


def expired_entries(
    buffer: Sequence[BufferEntry], step_done: int, max_off_steps: int
) -> list[BufferEntry]:
    """Entries no longer committable in the step after `step_done`: buffered more than
    `max_off_steps` steps before it."""
    next_step = step_done + 1
    return [e for e in buffer if next_step - e.step > max_off_steps]


def band_side(value: float, p_lower: float, p_upper: float) -> int:
    """-1 below the gate band [p_lower, 1 - p_upper], 1 above it, 0 inside (EPS slack)."""
    if value < p_lower - EPS:
        return -1
    if value > 1.0 - p_upper + EPS:
        return 1
    return 0


def balanced_subset(rewards: Sequence[float], k: int, success_threshold: float) -> tuple[int, ...]:
    """Indices of k rewards as close to half successes / half failures as possible."""
    if k >= len(rewards):
        return tuple(range(len(rewards)))
    good = [i for i, r in enumerate(rewards) if r >= success_threshold]
    bad = [i for i, r in enumerate(rewards) if r < success_threshold]
    take_good = min(len(good), max(k - len(bad), k // 2))
    return tuple(sorted(good[:take_good] + bad[: k - take_good]))
