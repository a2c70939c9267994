"""Posterior gate: a Beta posterior per prompt decides whether a prompt is skipped, piloted
or committed without a pilot, and when it is solved for good.

Pilot-Commit pays a pilot for every prompt of every epoch and judges it on that pilot
alone. Here every reward a prompt ever receives (pilot, commit, full group, external
evidence) updates a Beta(alpha, beta) posterior over its pass rate p, kept in the
prompt's statistics record (its strategy bytes, `PosteriorRecord`) and discounted by a half-life
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
rate (an EWMA, the run's `GateRunState`), the buffer holds this step's missing groups
plus `lookahead_steps` steps' worth, so few buffer entries expire.
The Beta maths is in `beta`, the decision rules and the typed state in `posterior_rules`;
this module walks a plan's window (`_RoundBuilder`) and is the strategy. docs/strategies.md
gives the formulas and defaults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

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
    expired_entries,
    observe,
    summarize,
)
from services.allocator.records import Outcome, PromptStats, Status
from services.allocator.strategies.beta import Posterior
from services.allocator.strategies.posterior_rules import (
    GateRunState,
    PosteriorRecord,
    PriorCall,
    call_before_rollouts,
    fold,
    is_solved,
    pass_rate,
    pick_commits,
    pilot_quota,
    pilot_size,
    posterior_at,
    posterior_pilot_gate,
    recheck_draw,
    solved_probability,
    updated_pass_rate,
    with_posterior,
)

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
        verdict = call_before_rollouts(self.cfg, post)
        confident = verdict in (PriorCall.SKIP_EASY, PriorCall.SKIP_HARD)
        recheck = (
            recheck_draw(self.ctx.seed, counters.epoch, cand.prompt_id) < self.cfg.recheck_rate
        )
        if confident and not recheck:
            self.skip(cand, post, verdict)
            return True
        if verdict is PriorCall.DIRECT and self.open_slots > 0:
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

    def skip(self, cand: Candidate, post: Posterior, verdict: PriorCall) -> None:
        easy = verdict is PriorCall.SKIP_EASY
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
    run_state_fields = frozenset({GateRunState.FIELD})
    eviction_outcomes = frozenset({Outcome.EVICTED_POSTERIOR})

    def describe_prompt_state(self, stats: PromptStats) -> dict[str, float]:
        record = PosteriorRecord.decode(stats.strategy_state)
        if record is None:
            return {}
        return {"a": record.alpha, "b": record.beta, "step": float(record.step)}

    def describe_run_state(self, counters: Counters) -> dict[str, float]:
        rate = GateRunState.decode(counters.strategy_state).pass_rate
        return {} if rate is None else {"pass_through_rate": rate}

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
        out.buffer_seq = seq
        if pilots:
            old = pass_rate(self.config, ctx.counters)
            new = updated_pass_rate(self.config, old, pilots, passes)
            out.run_state = GateRunState(new).encode()
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
        outcome, status = posterior_pilot_gate(cfg, post)
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
        return expired_entries(buffer, step_done, self.config.buffer_max_off_steps)

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
