"""Drives a run through the real store the way a trainer would, recording every event."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from services.allocator import models as m
from services.allocator.store import AllocatorStore


@dataclass
class StepLog:
    step: int
    train: list[m.TrainGroupOut] = field(default_factory=list)
    plans: list[m.Plan] = field(default_factory=list)
    results: list[m.ResultsResponse] = field(default_factory=list)
    rewards: list[list[list[float]]] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)


def bernoulli_rewards(pass_rates: dict[int, float], seed: int):
    rng = random.Random(seed)

    def rewards(plan: m.Plan) -> list[list[float]]:
        return [
            [1.0 if rng.random() < pass_rates[item.prompt_id] else 0.0 for _ in range(item.n)]
            for item in plan.items
        ]

    return rewards


async def drive(store: AllocatorStore, run_id: str, reward_fn, steps: int) -> list[StepLog]:
    logs: list[StepLog] = []
    for _ in range(steps):
        summary = await store.summary(run_id)
        log = StepLog(summary.step)
        while True:
            plan = await store.plan(run_id, f"{run_id}-{summary.step}-{len(log.plans)}")
            log.plans.append(plan)
            rewards = reward_fn(plan)
            log.rewards.append(rewards)
            result = await store.report(run_id, plan.plan_id, rewards)
            log.results.append(result)
            log.train.extend(result.train)
            if result.batch_complete:
                break
        done = await store.complete_step(run_id, log.step)
        log.expired = done.expired
        logs.append(log)
    return logs
