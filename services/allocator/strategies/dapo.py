"""DAPO dynamic sampling: full groups for `gen_batch_size` prompts per round; groups whose
rewards are all equal are dropped, and rounds continue until B informative groups exist.
Informative groups beyond B in the last round are discarded (`surplus`), as in DAPO."""

from __future__ import annotations

from services.allocator.configs import DAPOConfig
from services.allocator.core import (
    Counters,
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


class DAPO(Strategy):
    name = "dapo"
    config_model = DAPOConfig
    config: DAPOConfig

    def window_size(self, counters: Counters) -> int:
        return 2 * self.config.prompts_per_round()

    def plan_round(self, ctx: PlanContext) -> RoundPlan:
        chosen, cursor, short = take_candidates(ctx, self.config.prompts_per_round())
        items = [PlanItem(c.prompt_id, Role.FULL, self.config.n) for c in chosen]
        return RoundPlan(items, cursor, needs_more_candidates=short)

    def apply_results(self, ctx: ResultContext) -> RoundOutcome:
        out = RoundOutcome(counts={"rollouts_full": 0, "groups_trained": 0})
        room = self.config.train_batch_size - ctx.counters.committed
        for item, rewards in zip(ctx.items, ctx.rewards, strict=True):
            group = summarize(rewards, self.config.success_threshold)
            out.counts["rollouts_full"] += group.n
            if group.all_equal:
                easy = group.successes == group.n
                outcome = Outcome.TOO_EASY if easy else Outcome.TOO_HARD
                status = Status.EASY if easy else Status.DEFERRED
            elif room > 0:
                outcome, status = Outcome.TRAINED, Status.ACTIVE
                room -= 1
                out.train.append(TrainGroup(item.prompt_id, Role.FULL))
                out.counts["groups_trained"] += 1
            else:
                outcome, status = Outcome.SURPLUS, Status.ACTIVE
            out.gates.append(outcome.name.lower())
            out.counts[f"gate_{outcome.name.lower()}"] = (
                out.counts.get(f"gate_{outcome.name.lower()}", 0) + 1
            )
            out.stats[item.prompt_id] = observe(
                ctx.stats[item.prompt_id], group, ctx.counters.step, status, outcome
            )
        return out
