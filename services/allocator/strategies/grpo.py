"""GRPO: every prompt of the batch gets a full group of G rollouts; nothing is filtered."""

from __future__ import annotations

from services.allocator.configs import GRPOConfig
from services.allocator.core import (
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
    take_candidates,
)
from services.allocator.records import Outcome, Status


class GRPO(Strategy):
    name = "grpo"
    config_model = GRPOConfig
    config: GRPOConfig

    def plan_round(self, ctx: PlanContext) -> RoundPlan:
        need = self.config.train_batch_size - ctx.counters.committed
        chosen, cursor, short = take_candidates(ctx, need)
        items = [PlanItem(c.prompt_id, Role.FULL, self.config.n) for c in chosen]
        return RoundPlan(items, cursor, needs_more_candidates=short)

    def apply_results(self, ctx: ResultContext) -> RoundOutcome:
        out = RoundOutcome(counts={"rollouts_full": 0, "groups_trained": 0})
        for item, rewards in zip(ctx.items, ctx.rewards, strict=True):
            group = summarize(rewards, self.config.success_threshold)
            out.stats[item.prompt_id] = observe(
                ctx.stats[item.prompt_id], group, ctx.counters.step, Status.ACTIVE, Outcome.TRAINED
            )
            out.gates.append("trained")
            out.train.append(TrainGroup(item.prompt_id, Role.FULL))
            out.counts["rollouts_full"] += group.n
            out.counts["groups_trained"] += 1
            if group.all_equal:
                out.counts["groups_trained_zero_variance"] = (
                    out.counts.get("groups_trained_zero_variance", 0) + 1
                )
        return out
