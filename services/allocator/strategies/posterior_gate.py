"""Posterior gate: a Beta posterior per prompt decides whether a prompt is skipped, piloted
or committed without a pilot, and when it is solved for good.

Pilot-Commit pays a pilot for every prompt of every epoch and judges it on that pilot
alone. Here every reward a prompt ever receives (pilot, commit, full group, external
evidence) updates a Beta(alpha, beta) posterior over its pass rate p, kept in the
prompt's statistics record (`aux_a`, `aux_b`, `aux_step`) and discounted by a half-life
in steps as the policy moves. With the gate band [L, U] = [p_lower, 1 - p_upper]:

- P(p > U) >= skip_confidence: skipped, no rollouts (SKIPPED_CONFIDENT_EASY); likewise
  P(p < L) (SKIPPED_CONFIDENT_HARD). A `recheck_rate` share of such encounters is
  piloted anyway, so drift is noticed even before the discount erodes the confidence.
- P(L <= p <= U) >= direct_confidence: one `full` group of G rollouts, trained at once
  (DIRECT_COMMIT).
- otherwise a pilot topped up to `n_pilot` rollouts of evidence (at least `n_pilot_min`);
  it passes when the posterior mean lies in the band, and its train group is the pilot
  rollouts plus G - n fresh ones, committed from the buffer in a later round.
- Eviction only when P(p >= evict_pass_rate) >= evict_confidence on at least
  `evict_min_evidence` rollouts of evidence (EVICTED_POSTERIOR); external evidence that
  lowers that probability below the threshold restores the prompt.

Prompts piloted per round follow the need: enough that, at the observed pass-through
rate (an EWMA kept in the run's state hash), the buffer holds this step's missing groups
plus `lookahead_steps` steps' worth, so few buffer entries expire.
docs/strategies.md gives the formulas and defaults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from services.allocator.configs import PosteriorGateConfig
from services.allocator.core import (
    BufferEntry,
    Candidate,
    Counters,
    EvidenceContext,
    EvidenceOutcome,
    PlanContext,
    PlanItem,
    ResultContext,
    Role,
    RoundOutcome,
    RoundPlan,
    Strategy,
    TrainGroup,
    observe,
    summarize,
)
from services.allocator.records import Outcome, PromptStats, Status

_EPS = 1e-9
EWMA_KEY = "pass_through_ewma_ppm"  # run state hash: pass-through rate x 1e6
_PASS_RATE_FLOOR = 0.01


# ---- the posterior (pure math) ----


@dataclass(frozen=True)
class Posterior:
    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def signal(self) -> float:
        """E[p(1-p)]: the expected reward variance of one rollout."""
        total = self.alpha + self.beta
        return self.alpha * self.beta / (total * (total + 1.0))

    def cdf(self, x: float) -> float:
        return beta_cdf(x, self.alpha, self.beta)

    def updated(self, successes: int, failures: int) -> Posterior:
        return Posterior(self.alpha + successes, self.beta + failures)


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
        + b * math.log1p(-x)
    )  # fmt: skip
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return h


def prior(cfg: PosteriorGateConfig) -> Posterior:
    return Posterior(cfg.prior_alpha, cfg.prior_beta)


def evidence(cfg: PosteriorGateConfig, post: Posterior) -> float:
    """Rollouts' worth of (discounted) evidence beyond the prior."""
    return post.alpha + post.beta - cfg.prior_alpha - cfg.prior_beta


def posterior_at(cfg: PosteriorGateConfig, stats: PromptStats, step: int) -> Posterior:
    """The prompt's posterior discounted to `step`: evidence from k steps back weighs
    0.5 ** (k / half_life_steps). A manual restore forgets the evidence that evicted it."""
    if stats.aux_step < 0 or stats.last_outcome is Outcome.RESTORED:
        return prior(cfg)
    weight = 0.5 ** (max(step - stats.aux_step, 0) / cfg.half_life_steps)
    return Posterior(
        cfg.prior_alpha + max(stats.aux_a - cfg.prior_alpha, 0.0) * weight,
        cfg.prior_beta + max(stats.aux_b - cfg.prior_beta, 0.0) * weight,
    )


def with_posterior(stats: PromptStats, post: Posterior, step: int) -> PromptStats:
    return replace(stats, aux_a=post.alpha, aux_b=post.beta, aux_step=step)


def fold(post: Posterior, rewards: Sequence[float], success_threshold: float) -> Posterior:
    successes = sum(1 for r in rewards if r >= success_threshold)
    return post.updated(successes, len(rewards) - successes)


class Verdict(Enum):
    SKIP_EASY = "skip_easy"
    SKIP_HARD = "skip_hard"
    DIRECT = "direct"
    PILOT = "pilot"


def judge(cfg: PosteriorGateConfig, post: Posterior) -> Verdict:
    """What a candidate's posterior says before any rollout is spent on it."""
    below = post.cdf(cfg.p_lower)
    above = 1.0 - post.cdf(1.0 - cfg.p_upper)
    if above >= cfg.skip_confidence:
        return Verdict.SKIP_EASY
    if below >= cfg.skip_confidence:
        return Verdict.SKIP_HARD
    direct = cfg.direct_confidence
    if direct is not None and 1.0 - below - above >= direct - _EPS:
        return Verdict.DIRECT
    return Verdict.PILOT


def pilot_size(cfg: PosteriorGateConfig, post: Posterior) -> int:
    """Top the evidence up to `n_pilot` rollouts, but pilot at least `n_pilot_min`."""
    missing = math.ceil(cfg.n_pilot - evidence(cfg, post) - _EPS)
    return min(cfg.n_pilot, max(cfg.n_pilot_min, missing))


def solved_probability(cfg: PosteriorGateConfig, post: Posterior) -> float:
    if cfg.evict_pass_rate is None:
        return 0.0
    return 1.0 - post.cdf(cfg.evict_pass_rate)


def is_solved(cfg: PosteriorGateConfig, post: Posterior) -> bool:
    """Confidently solved, on enough evidence: never on one small pilot."""
    return (
        cfg.evict_pass_rate is not None
        and evidence(cfg, post) >= cfg.evict_min_evidence - _EPS
        and solved_probability(cfg, post) >= cfg.evict_confidence
    )


def gate(cfg: PosteriorGateConfig, post: Posterior) -> tuple[Outcome, Status]:
    """The gate after a pilot, on the posterior mean (all evidence, not the pilot alone)."""
    if post.mean < cfg.p_lower - _EPS:
        return Outcome.TOO_HARD, Status.DEFERRED
    if post.mean > 1.0 - cfg.p_upper + _EPS:
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
    return min(cfg.max_pilots(), math.ceil(demand / max(rate, _PASS_RATE_FLOOR) - _EPS))


def pass_rate(cfg: PosteriorGateConfig, counters: Counters) -> float:
    ppm = counters.totals.get(EWMA_KEY)
    return cfg.pass_rate_init if ppm is None else ppm / 1e6


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


# ---- the strategy ----


@dataclass
class _RoundBuilder:
    """The walk over one plan's window, with the quota recomputed as directs are found."""

    cfg: PosteriorGateConfig
    ctx: PlanContext
    open_slots: int  # train groups this step still misses after the round's commits
    buffer_left: int  # committable entries that stay in the buffer for later rounds
    rate: float
    forced: bool  # late in the step: pilot the most allowed
    items: list[PlanItem]
    pilots: int = 0

    def __post_init__(self) -> None:
        self.stats: dict[int, PromptStats] = {}
        self.counts: dict[str, int] = {}
        self.skipped: list[Candidate] = []

    def quota(self) -> int:
        if self.forced:
            return self.cfg.max_pilots()
        return pilot_quota(self.cfg, self.open_slots, self.buffer_left, self.rate)

    def walk(self) -> tuple[int, bool]:
        """Consume candidates; (new cursor, whether the window ran short)."""
        for cand in self.ctx.window:
            if not self.take(cand):
                return cand.position, False
        short = not self.ctx.epoch_exhausted and self.pilots < self.quota()
        return self.ctx.window_end, short

    def take(self, cand: Candidate) -> bool:
        """Decide about one candidate; False when it must wait for a later round."""
        counters = self.ctx.counters
        post = posterior_at(self.cfg, cand.stats, counters.step)
        verdict = judge(self.cfg, post)
        confident = verdict in (Verdict.SKIP_EASY, Verdict.SKIP_HARD)
        recheck = (
            recheck_draw(self.ctx.seed, counters.epoch, cand.prompt_id) < self.cfg.recheck_rate
        )
        if confident and not recheck:
            self.skip(cand, post, verdict)
            return True
        if verdict is Verdict.DIRECT and self.open_slots > 0:
            self.items.append(PlanItem(cand.prompt_id, Role.FULL, self.cfg.n))
            self.open_slots -= 1
            return True
        if self.pilots >= self.quota():
            return False
        if confident:
            self.bump("pilots_recheck")
        self.items.append(PlanItem(cand.prompt_id, Role.PILOT, pilot_size(self.cfg, post)))
        self.pilots += 1
        return True

    def skip(self, cand: Candidate, post: Posterior, verdict: Verdict) -> None:
        easy = verdict is Verdict.SKIP_EASY
        outcome = Outcome.SKIPPED_CONFIDENT_EASY if easy else Outcome.SKIPPED_CONFIDENT_HARD
        status = Status.EASY if easy else Status.DEFERRED
        if cand.stats.status is Status.EVICT_PENDING:
            status = Status.EVICT_PENDING
        new = replace(cand.stats, status=status, last_outcome=outcome)
        self.stats[cand.prompt_id] = with_posterior(new, post, self.ctx.counters.step)
        self.bump(f"gate_{outcome.name.lower()}")
        self.skipped.append(cand)

    def force_rechecks(self) -> None:
        """The whole epoch was skipped and nothing else is planned: recheck some skipped
        prompts rather than stall the run."""
        for cand in self.skipped[: max(1, self.quota())]:
            post = posterior_at(self.cfg, cand.stats, self.ctx.counters.step)
            self.items.append(PlanItem(cand.prompt_id, Role.PILOT, pilot_size(self.cfg, post)))
            outcome = self.stats.pop(cand.prompt_id).last_outcome
            self.bump(f"gate_{outcome.name.lower()}", -1)
            self.bump("pilots_recheck")

    def bump(self, name: str, by: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + by


class PosteriorGate(Strategy):
    name = "posterior_gate"
    config_model = PosteriorGateConfig
    config: PosteriorGateConfig

    def window_size(self, counters: Counters) -> int:
        return self.config.max_pilots() + self.config.train_batch_size + 8

    def plan_round(self, ctx: PlanContext) -> RoundPlan:
        cfg, counters = self.config, ctx.counters
        need = cfg.train_batch_size - counters.committed
        commits = pick_commits(ctx.buffer, need, counters.step, cfg.buffer_max_off_steps)
        chosen = {e.prompt_id for e in commits}
        buffer_left = sum(
            1
            for e in ctx.buffer
            if e.prompt_id not in chosen and counters.step + 1 - e.step <= cfg.buffer_max_off_steps
        )
        builder = _RoundBuilder(
            cfg,
            ctx,
            open_slots=need - len(commits),
            buffer_left=buffer_left,
            rate=pass_rate(cfg, counters),
            forced=counters.round >= max(1, cfg.max_rounds // 2),
            items=[self._commit_item(e) for e in commits],
        )
        cursor, short = builder.walk()
        whole_epoch = counters.cursor == 0 and ctx.window_end >= ctx.num_prompts
        if not builder.items and whole_epoch:
            builder.force_rechecks()
        return RoundPlan(
            builder.items,
            cursor,
            commits,
            needs_more_candidates=short,
            stats=builder.stats,
            counts={k: v for k, v in builder.counts.items() if v},
        )

    def _commit_item(self, entry: BufferEntry) -> PlanItem:
        reuse = tuple(range(len(entry.rewards)))
        return PlanItem(entry.prompt_id, Role.COMMIT, self.config.n - len(reuse), reuse)

    def apply_results(self, ctx: ResultContext) -> RoundOutcome:
        counts = {"rollouts_pilot": 0, "rollouts_commit": 0, "rollouts_full": 0}
        out = RoundOutcome(counts={**counts, "groups_trained": 0})
        seq, pilots, passes = ctx.counters.buffer_seq, 0, 0
        for item, rewards in zip(ctx.items, ctx.rewards, strict=True):
            out.counts[f"rollouts_{item.role.value}"] += len(rewards)
            if item.role is Role.PILOT:
                seq += 1
                pilots += 1
                passes += self._pilot(ctx, item, rewards, seq, out)
            else:
                self._trained(ctx, item, rewards, out)
        out.counts["buffer_seq"] = seq - ctx.counters.buffer_seq
        if pilots:
            old = pass_rate(self.config, ctx.counters)
            new = updated_pass_rate(self.config, old, pilots, passes)
            out.counts[EWMA_KEY] = round(new * 1e6) - ctx.counters.totals.get(EWMA_KEY, 0)
        return out

    def _pilot(
        self,
        ctx: ResultContext,
        item: PlanItem,
        rewards: Sequence[float],
        seq: int,
        out: RoundOutcome,
    ) -> bool:
        """Gate one pilot; True when it entered the buffer."""
        cfg, step = self.config, ctx.counters.step
        stats = ctx.stats[item.prompt_id]
        post = fold(posterior_at(cfg, stats, step), rewards, cfg.success_threshold)
        outcome, status = gate(cfg, post)
        group = summarize(rewards, cfg.success_threshold)
        updated = replace(
            with_posterior(observe(stats, group, step, status, outcome), post, step),
            pilot_pass_rate=group.pass_rate,
            pilot_std=group.std,
        )
        out.stats[item.prompt_id] = updated
        out.gates.append(outcome.name.lower())
        _bump(out, f"gate_{outcome.name.lower()}")
        if updated.status is Status.EVICT_PENDING:
            out.evict_pending.append(item.prompt_id)
        if updated.status is not Status.BUFFERED:
            return False
        std = math.sqrt(post.signal)
        out.buffer_add.append(
            BufferEntry(item.prompt_id, step, seq, post.mean, std, tuple(rewards))
        )
        return True

    def _trained(
        self, ctx: ResultContext, item: PlanItem, rewards: Sequence[float], out: RoundOutcome
    ) -> None:
        """A commit (stored pilot + fresh rollouts) or a direct `full` group: trained."""
        cfg, step = self.config, ctx.counters.step
        stats = ctx.stats[item.prompt_id]
        post = fold(posterior_at(cfg, stats, step), rewards, cfg.success_threshold)
        direct = item.role is Role.FULL
        whole = list(rewards)
        if not direct:
            stored = ctx.taken[item.prompt_id].rewards
            whole = [stored[i] for i in item.reuse] + whole
        group = summarize(whole, cfg.success_threshold)
        fresh = summarize(rewards, cfg.success_threshold)
        outcome = Outcome.DIRECT_COMMIT if direct else Outcome.TRAINED
        updated = observe(stats, fresh, step, Status.ACTIVE, outcome, streak_group=group)
        if updated.status is not Status.EVICTED and is_solved(cfg, post):
            updated = updated.with_status(Status.EVICT_PENDING, Outcome.EVICTED_POSTERIOR)
            out.evict_pending.append(item.prompt_id)
            _bump(out, "gate_evicted_posterior")
        out.stats[item.prompt_id] = with_posterior(updated, post, step)
        out.gates.append(outcome.name.lower())
        out.train.append(TrainGroup(item.prompt_id, item.role, item.reuse))
        out.counts["groups_trained"] += 1
        if direct:
            _bump(out, "gate_direct_commit")
        if group.all_equal:
            _bump(out, "groups_trained_zero_variance")

    def expire(self, step_done: int, buffer: Sequence[BufferEntry]) -> list[BufferEntry]:
        next_step = step_done + 1
        return [e for e in buffer if next_step - e.step > self.config.buffer_max_off_steps]

    def apply_evidence(self, ctx: EvidenceContext) -> EvidenceOutcome:
        """Fold the rewards into the posterior. An evicted (or evict-pending) prompt is
        restored when the evidence lowers its solved probability below evict_confidence."""
        cfg, step = self.config, ctx.counters.step
        before = posterior_at(cfg, ctx.stats, step)
        after = fold(before, ctx.rewards, cfg.success_threshold)
        new = with_posterior(replace(ctx.stats, last_outcome=Outcome.EVIDENCE), after, step)
        counts = {"evidence_rewards": len(ctx.rewards)}
        evicted = ctx.stats.status in (Status.EVICTED, Status.EVICT_PENDING)
        weaker = solved_probability(cfg, after) < solved_probability(cfg, before)
        if evicted and weaker and not is_solved(cfg, after):
            new = new.with_status(Status.ACTIVE, Outcome.RESTORED_EVIDENCE)
            counts["restored_evidence"] = 1
        return EvidenceOutcome(new, counts)


def _bump(out: RoundOutcome, name: str) -> None:
    out.counts[name] = out.counts.get(name, 0) + 1
