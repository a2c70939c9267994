"""The posterior gate's decision rules (pure functions of its config and a posterior) and
its typed state: `PosteriorRecord` per prompt (in the record's strategy bytes) and
`GateRunState` per run (one field of the run's state hash). docs/strategies.md gives the
formulas."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import ClassVar

from services.allocator.configs import EPS, PosteriorGateConfig
from services.allocator.core import BufferEntry, Counters, band_side
from services.allocator.records import Outcome, PromptStats, Status
from services.allocator.strategies.beta import Posterior

_PASS_RATE_FLOOR = 0.01
_RECORD = struct.Struct("<ffi")  # alpha, beta, step: 12 bytes, the record's strategy state


@dataclass(frozen=True)
class PosteriorRecord:
    """A prompt's posterior as last written: Beta(alpha, beta) at step `step` (>= 0)."""

    alpha: float
    beta: float
    step: int

    def encode(self) -> bytes:
        return _RECORD.pack(self.alpha, self.beta, self.step)

    @classmethod
    def decode(cls, raw: bytes) -> PosteriorRecord | None:
        """None for a prompt with no posterior yet (b"")."""
        if not raw:
            return None
        alpha, beta, step = _RECORD.unpack(raw)
        return cls(alpha, beta, step)


@dataclass(frozen=True)
class GateRunState:
    """The run's pass-through rate (share of pilots that pass), an EWMA; None before the
    first pilot. Stored as parts per million in one field of the run's state hash."""

    pass_rate: float | None = None
    FIELD: ClassVar[str] = "pass_through_ewma_ppm"

    @classmethod
    def decode(cls, fields: Mapping[str, str]) -> GateRunState:
        raw = fields.get(cls.FIELD)
        return cls(None if raw is None else int(raw) / 1e6)

    def encode(self) -> dict[str, str]:
        return {} if self.pass_rate is None else {self.FIELD: str(round(self.pass_rate * 1e6))}


def prior(cfg: PosteriorGateConfig) -> Posterior:
    return Posterior(cfg.prior_alpha, cfg.prior_beta)


def evidence(cfg: PosteriorGateConfig, post: Posterior) -> float:
    """Rollouts' worth of (discounted) evidence beyond the prior."""
    return post.alpha + post.beta - cfg.prior_alpha - cfg.prior_beta


def posterior_at(cfg: PosteriorGateConfig, stats: PromptStats, step: int) -> Posterior:
    """The prompt's posterior discounted to `step`: evidence from k steps back weighs
    0.5 ** (k / half_life_steps). A manual restore forgets the evidence that evicted it."""
    record = PosteriorRecord.decode(stats.strategy_state)
    if record is None or stats.last_outcome is Outcome.RESTORED:
        return prior(cfg)
    weight = 0.5 ** (max(step - record.step, 0) / cfg.half_life_steps)
    return Posterior(
        cfg.prior_alpha + max(record.alpha - cfg.prior_alpha, 0.0) * weight,
        cfg.prior_beta + max(record.beta - cfg.prior_beta, 0.0) * weight,
    )


def with_posterior(stats: PromptStats, post: Posterior, step: int) -> PromptStats:
    """`stats` holding `post` as of `step`."""
    state = PosteriorRecord(post.alpha, post.beta, step).encode()
    return replace(stats, strategy_state=state)


def fold(post: Posterior, rewards: Sequence[float], success_threshold: float) -> Posterior:
    successes = sum(1 for r in rewards if r >= success_threshold)
    return post.updated(successes, len(rewards) - successes)


class PriorCall(Enum):
    """What a candidate's posterior decides before any rollout is spent on it."""

    SKIP_EASY = "skip_easy"
    SKIP_HARD = "skip_hard"
    DIRECT = "direct"
    PILOT = "pilot"


def call_before_rollouts(cfg: PosteriorGateConfig, post: Posterior) -> PriorCall:
    """Skip (confidently outside the band), commit directly (confidently inside) or pilot."""
    below = post.cdf(cfg.p_lower)
    above = 1.0 - post.cdf(1.0 - cfg.p_upper)
    if above >= cfg.skip_confidence:
        return PriorCall.SKIP_EASY
    if below >= cfg.skip_confidence:
        return PriorCall.SKIP_HARD
    direct = cfg.direct_confidence
    if direct is not None and 1.0 - below - above >= direct - EPS:
        return PriorCall.DIRECT
    return PriorCall.PILOT


def pilot_size(cfg: PosteriorGateConfig, post: Posterior) -> int:
    """Top the evidence up to `n_pilot` rollouts, but pilot at least `n_pilot_min`."""
    missing = math.ceil(cfg.n_pilot - evidence(cfg, post) - EPS)
    return min(cfg.n_pilot, max(cfg.n_pilot_min, missing))


def solved_probability(cfg: PosteriorGateConfig, post: Posterior) -> float:
    if cfg.evict_pass_rate is None:
        return 0.0
    return 1.0 - post.cdf(cfg.evict_pass_rate)


def is_solved(cfg: PosteriorGateConfig, post: Posterior) -> bool:
    """Confidently solved, on enough evidence: never on one small pilot."""
    return (
        cfg.evict_pass_rate is not None
        and evidence(cfg, post) >= cfg.evict_min_evidence - EPS
        and solved_probability(cfg, post) >= cfg.evict_confidence
    )


def posterior_pilot_gate(cfg: PosteriorGateConfig, post: Posterior) -> tuple[Outcome, Status]:
    """The gate after a pilot, on the posterior mean (all evidence, not the pilot alone)."""
    side = band_side(post.mean, cfg.p_lower, cfg.p_upper)
    if side < 0:
        return Outcome.TOO_HARD, Status.DEFERRED
    if side > 0:
        if is_solved(cfg, post):
            return Outcome.EVICTED_POSTERIOR, Status.EVICT_PENDING
        return Outcome.TOO_EASY, Status.EASY
    return Outcome.PASS, Status.BUFFERED


def pilot_quota(cfg: PosteriorGateConfig, open_slots: int, buffer_left: int, rate: float) -> int:
    """Prompts to pilot so that the expected passes cover this step's open slots plus
    `lookahead_steps` steps of commits, beyond what the buffer already holds."""
    demand = open_slots + cfg.lookahead_steps * cfg.train_batch_size - buffer_left
    if demand <= 0:
        return 0
    return min(cfg.max_pilots(), math.ceil(demand / max(rate, _PASS_RATE_FLOOR) - EPS))


def pass_rate(cfg: PosteriorGateConfig, counters: Counters) -> float:
    """The run's pass-through rate; `pass_rate_init` before the first pilot."""
    rate = GateRunState.decode(counters.strategy_state).pass_rate
    return cfg.pass_rate_init if rate is None else rate


def updated_pass_rate(cfg: PosteriorGateConfig, rate: float, pilots: int, passes: int) -> float:
    """EWMA with weight `pass_rate_smoothing` per pilot, folded in one round at a time."""
    keep = (1.0 - cfg.pass_rate_smoothing) ** pilots
    new = keep * rate + (1.0 - keep) * passes / pilots
    return min(1.0, max(_PASS_RATE_FLOOR, new))


def recheck_draw(seed: int, epoch: int, prompt_id: int) -> float:
    """A uniform draw fixed by (seed, epoch, prompt): whether this encounter is a recheck."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + prompt_id) & (2**64 - 1)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = ((x ^ (x >> shift)) * mult) & (2**64 - 1)
    return ((x ^ (x >> 31)) >> 11) / float(1 << 53)


def pick_commits(
    buffer: Sequence[BufferEntry], count: int, step: int, max_off: int
) -> list[BufferEntry]:
    """Buffered prompts to commit: those on their last committable step first, then the
    highest expected reward std, then the most recent."""
    if count <= 0:
        return []
    ranked = sorted(
        buffer, key=lambda e: (step - e.step >= max_off, e.std, e.step, e.seq), reverse=True
    )
    return ranked[:count]
