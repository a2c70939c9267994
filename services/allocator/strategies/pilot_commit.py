"""Pilot-Commit (arXiv 2605.26606): pilot many prompts cheaply, commit the budget to the
ones whose pilot pass rate is informative.

Each round plans, in one generation call ("one-step binding"):
- `gen_batch_size` new prompts of the epoch order with `n_pilot` rollouts each, and
- up to the missing number of train groups from the replay buffer with `n_commit`
  fresh rollouts each (their train group = stored pilot rollouts + these).
Piloted prompts are gated on p_hat: inside [p_lower, 1 - p_upper] they enter the buffer
stamped with the step; above it they are skipped (and evicted at the epoch's end when
p_hat >= exclude_threshold); below it they are deferred to later epochs. Buffer entries
older than `buffer_max_off_steps` steps expire; the protocol clears the buffer at epoch end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from services.allocator.configs import EPS, PilotCommitConfig
from services.allocator.core import (
    BufferEntry,
    Counters,
    GroupSummary,
    PlanContext,
    PlanItem,
    ResultContext,
    Role,
    RoundOutcome,
    RoundPlan,
    Strategy,
    TrainGroup,
    balanced_subset,
    band_side,
    expired_entries,
    observe,
    pick_from_buffer,
    summarize,
    take_candidates,
)
from services.allocator.records import Outcome, PromptStats, Status


def pilot_gate(config: PilotCommitConfig, group: GroupSummary) -> tuple[Outcome, Status]:
    """The gate on a pilot's pass rate: pass, too easy (maybe evict) or too hard."""
    p = group.pass_rate
    side = band_side(p, config.p_lower, config.p_upper)
    if side < 0:
        return Outcome.TOO_HARD, Status.DEFERRED
    if side > 0:
        evict = config.exclude_threshold is not None and p >= config.exclude_threshold - EPS
        return Outcome.TOO_EASY, Status.EVICT_PENDING if evict else Status.EASY
    return Outcome.PASS, Status.BUFFERED


class PilotCommit(Strategy):
    name = "pilot_commit"
    config_model = PilotCommitConfig
    config: PilotCommitConfig

    def window_size(self, counters: Counters) -> int:
        return self.config.pilots_per_round() + self.config.pilots_per_round() // 4 + 8

    def plan_round(self, ctx: PlanContext) -> RoundPlan:
        cfg = self.config
        need = cfg.train_batch_size - ctx.counters.committed
        seed = (ctx.seed, ctx.counters.step, ctx.counters.round)
        commits = pick_from_buffer(ctx.buffer, need, cfg.buffer_sampling, seed)
        pilots, cursor, short = take_candidates(ctx, cfg.pilots_per_round())
        items = [PlanItem(e.prompt_id, Role.COMMIT, cfg.n_commit, self._reuse(e)) for e in commits]
        items += [PlanItem(c.prompt_id, Role.PILOT, cfg.n_pilot) for c in pilots]
        return RoundPlan(items, cursor, commits, needs_more_candidates=short)

    def _reuse(self, entry: BufferEntry) -> tuple[int, ...]:
        return balanced_subset(entry.rewards, self.config.reused(), self.config.success_threshold)

    def apply_results(self, ctx: ResultContext) -> RoundOutcome:
        out = RoundOutcome(counts={"rollouts_pilot": 0, "rollouts_commit": 0, "groups_trained": 0})
        seq = ctx.counters.buffer_seq
        for item, rewards in zip(ctx.items, ctx.rewards, strict=True):
            stats = ctx.stats[item.prompt_id]
            if item.role is Role.COMMIT:
                self._commit(ctx, item, rewards, stats, out)
                continue
            seq += 1
            self._pilot(ctx, item, rewards, stats, seq, out)
        out.buffer_seq = seq
        return out

    def _commit(
        self,
        ctx: ResultContext,
        item: PlanItem,
        rewards: Sequence[float],
        stats: PromptStats,
        out: RoundOutcome,
    ) -> None:
        pilot = ctx.taken[item.prompt_id]
        group = summarize(
            [pilot.rewards[i] for i in item.reuse] + list(rewards), self.config.success_threshold
        )
        fresh = summarize(rewards, self.config.success_threshold)
        # Lifetime counts take only the fresh rollouts (the pilot ones were counted when
        # reported); the streaks judge the whole train group.
        out.stats[item.prompt_id] = observe(
            stats, fresh, ctx.counters.step, Status.ACTIVE, Outcome.TRAINED, streak_group=group
        )
        out.gates.append("trained")
        out.train.append(TrainGroup(item.prompt_id, Role.COMMIT, item.reuse))
        out.counts["rollouts_commit"] += len(rewards)
        out.counts["groups_trained"] += 1
        if group.all_equal:
            out.counts["groups_trained_zero_variance"] = (
                out.counts.get("groups_trained_zero_variance", 0) + 1
            )

    def _pilot(
        self,
        ctx: ResultContext,
        item: PlanItem,
        rewards: Sequence[float],
        stats: PromptStats,
        seq: int,
        out: RoundOutcome,
    ) -> None:
        group = summarize(rewards, self.config.success_threshold)
        outcome, status = pilot_gate(self.config, group)
        updated = replace(
            observe(stats, group, ctx.counters.step, status, outcome),
            pilot_pass_rate=group.pass_rate,
            pilot_std=group.std,
        )
        out.stats[item.prompt_id] = updated
        out.gates.append(outcome.name.lower())
        out.counts["rollouts_pilot"] += group.n
        key = f"gate_{outcome.name.lower()}"
        out.counts[key] = out.counts.get(key, 0) + 1
        if updated.status is Status.BUFFERED:
            out.buffer_add.append(
                BufferEntry(
                    item.prompt_id,
                    ctx.counters.step,
                    seq,
                    group.pass_rate,
                    group.std,
                    tuple(rewards),
                )
            )
        elif updated.status is Status.EVICT_PENDING:
            out.evict_pending.append(item.prompt_id)

    def expire(self, step_done: int, buffer: Sequence[BufferEntry]) -> list[BufferEntry]:
        return expired_entries(buffer, step_done, self.config.buffer_max_off_steps)
