"""Wire types of the allocator API, shared by the service and its client."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

from services.allocator.configs import AnyStrategyConfig
from services.allocator.core import Role

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# A reward is a JSON number (an int is taken as a float); strings and booleans are refused.
Reward = Annotated[float, Strict()]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSpec(_Model):
    """What a run allocates over: prompt ids 0..num_prompts-1 of the trainer's dataset."""

    num_prompts: int = Field(
        ge=1, le=2**31 - 1, description="Prompts in the dataset; their ids are 0..num_prompts-1."
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seeds the epoch order and sampling.")
    config: AnyStrategyConfig = Field(description="The strategy and its parameters.")


class PlanRequest(_Model):
    request_id: str = Field(
        min_length=1,
        max_length=128,
        description="Idempotency key chosen by the caller: a retried request with the same "
        "key returns the same plan instead of planning again.",
    )


class PlanItemOut(_Model):
    prompt_id: int = Field(description="Dataset index of the prompt.")
    role: Role = Field(
        description="`pilot`: estimate the pass rate; `commit`: fresh rollouts for a prompt "
        "that passed its pilot earlier; `full`: a whole group used as is."
    )
    n: int = Field(description="Rollouts to generate for this prompt.")
    reuse: list[int] = Field(
        default_factory=list,
        description="For `commit`: indices of the prompt's stored pilot rollouts that join "
        "the train group.",
    )


class Plan(_Model):
    run_id: str
    plan_id: str = Field(description="Report this plan's rewards under this id.")
    step: int
    epoch: int
    round: int = Field(description="Round within the step, from 0.")
    items: list[PlanItemOut] = Field(description="Pilot, commit and full items of one round.")
    rollouts: int = Field(description="Total rollouts the plan asks for.")
    group_size: int = Field(description="Rollouts in one train group (G).")
    dropped_from_buffer: list[int] = Field(
        default_factory=list,
        description="Prompts whose stored pilot rollouts the trainer may drop (the buffer was "
        "flushed at an epoch boundary while planning). Superseded by `released`.",
    )
    released: list[int] = Field(
        default_factory=list,
        description="Buffer entries released, sorted: those flushed while this plan was made "
        "plus every entry released since the previous plan or step completion by a call the "
        "trainer does not make (a manual eviction, an epoch end through the epoch endpoint). "
        "The trainer drops their stored pilot rollouts. A retried request gets the same list.",
    )


def _check_rewards(groups: list[list[float]]) -> list[list[float]]:
    for i, group in enumerate(groups):
        for j, reward in enumerate(group):
            if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
                raise ValueError(f"rewards[{i}][{j}] = {reward!r} is not a number in [0, 1]")
    return groups


def _check_reward_list(rewards: list[float]) -> list[float]:
    for j, reward in enumerate(rewards):
        if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
            raise ValueError(f"rewards[{j}] = {reward!r} is not a number in [0, 1]")
    return rewards


class ResultsRequest(_Model):
    rewards: list[list[Reward]] = Field(
        description="One list per plan item, in plan order, with exactly `n` rewards in [0, 1]."
    )

    _valid = field_validator("rewards")(_check_rewards)


class GateOut(_Model):
    prompt_id: int
    role: Role
    outcome: str = Field(
        description="pass | too_easy | too_hard | trained | surplus | direct_commit | "
        "evicted_posterior: what the round did with this prompt's group."
    )


class TrainGroupOut(_Model):
    prompt_id: int
    role: Role = Field(
        description="`commit`: the group is the stored pilot rollouts listed in `reuse` plus "
        "this plan's rollouts; `full`: this plan's rollouts."
    )
    reuse: list[int] = Field(default_factory=list)


class ResultsResponse(_Model):
    plan_id: str
    step: int
    gates: list[GateOut] = Field(description="Per plan item, in plan order.")
    train: list[TrainGroupOut] = Field(description="Groups this round adds to the train batch.")
    buffered: list[int] = Field(description="Piloted prompts that entered the replay buffer.")
    released: list[int] = Field(
        default_factory=list,
        description="Buffer entries this report consumed (its commit items), sorted: the "
        "trainer reads their stored pilot rollouts for the train groups, then drops them. "
        "Applied before `buffered`.",
    )
    committed: int = Field(description="Groups in the step's train batch so far.")
    train_batch_size: int
    batch_complete: bool = Field(
        description="True: train, then complete the step. False: plan another round."
    )


class StepCompleteResponse(_Model):
    step_completed: int
    step: int = Field(description="The run's current step after completion.")
    epoch: int
    expired: list[int] = Field(
        description="Buffered prompts that expired; the trainer may drop their pilot rollouts. "
        "Superseded by `released`."
    )
    released: list[int] = Field(
        default_factory=list,
        description="Buffer entries released, sorted: those that expired at the step's end plus "
        "any released since the previous plan by a call the trainer does not make (a manual "
        "eviction, an epoch end through the epoch endpoint). The trainer drops their stored "
        "pilot rollouts; its stored prompts must then equal `buffer`.",
    )
    buffer: list[int] | None = Field(
        default=None,
        description="Every prompt in the buffer once the step is complete, sorted. The trainer "
        "keeps stored pilot rollouts for these prompts only, so an entry that left the buffer "
        "by any route (expiry, a manual eviction, an external epoch end) is released. None in "
        "answers stored by an older allocator.",
    )


class EpochCompleteResponse(_Model):
    epoch: int = Field(description="The new epoch.")
    evicted: list[int] = Field(description="Prompts evicted at this epoch end.")
    flushed: list[int] = Field(description="Prompts dropped from the buffer.")


class PromptStatsOut(_Model):
    prompt_id: int
    status: str = Field(description="active | deferred | easy | buffered | evict_pending | evicted")
    last_outcome: str
    rollouts: int = Field(description="Lifetime rollouts reported for this prompt.")
    successes: int = Field(description="Lifetime rollouts with reward >= success_threshold.")
    reward_mean: float | None
    pilot_pass_rate: float | None = Field(description="Pass rate of the latest pilot.")
    pilot_std: float | None = Field(description="Reward std of the latest pilot.")
    last_step: int = Field(description="Step of the latest reported group; -1 if never.")
    all_correct_streak: int
    all_wrong_streak: int
    strategy_state: dict[str, float] = Field(
        default_factory=dict, description="Strategy-owned values (e.g. a posterior)."
    )


class EvidenceRequest(_Model):
    evidence_id: str = Field(
        min_length=1,
        max_length=128,
        description="Idempotency key chosen by the caller: evidence already applied under "
        "this id is not applied again.",
    )
    rewards: list[Reward] = Field(
        min_length=1,
        max_length=1_000_000,
        description="Rewards in [0, 1] of answers to this prompt sampled outside the run's "
        "plans (e.g. an evaluation at temperature 1.0), one per answer.",
    )

    _valid = field_validator("rewards")(_check_reward_list)


class EvidenceResponse(_Model):
    evidence_id: str
    duplicate: bool = Field(description="True: this id was applied before; nothing changed.")
    prompt: PromptStatsOut = Field(description="The prompt's statistics after the evidence.")


class RunSummary(_Model):
    run_id: str
    spec: RunSpec
    step: int
    epoch: int
    cursor: int
    round: int
    committed: int
    open_plan: str | None
    buffer_size: int
    evict_pending: int
    counters: dict[str, int] = Field(
        description="Cumulative counts: rollouts_pilot / rollouts_commit / rollouts_full, "
        "gate_pass / gate_too_easy / gate_too_hard / gate_surplus, groups_trained, evicted, "
        "expired, flushed, steps_completed, epochs_completed; and the strategy's own "
        "(posterior_gate: gate_skipped_confident_easy / gate_skipped_confident_hard / "
        "gate_direct_commit / gate_evicted_posterior, pilots_recheck, restored_evidence, "
        "evidence_rewards)."
    )
    strategy_state: dict[str, float] = Field(
        default_factory=dict,
        description="The strategy's own run state, decoded (posterior_gate: "
        "`pass_through_rate`, the EWMA of the pilot pass-through rate).",
    )


class RunCreated(_Model):
    created: bool = Field(description="False when an identical run already existed.")
    run: RunSummary


class Snapshot(_Model):
    """Every Redis key of a run, as DUMP payloads (base64): a trainer checkpoint keeps one
    so that a resumed run continues from the allocator state of its checkpoint."""

    run_id: str
    keys: dict[str, str] = Field(description="Key name -> base64 of Redis DUMP.")


class SnapshotPage(_Model):
    """One page of a run's snapshot (`GET /v1/runs/{run}/snapshot/pages`)."""

    run_id: str
    version: str = Field(
        description="`gen:version` of the run's state the page was read at: every page of "
        "one snapshot must carry the same (the run did not change in between); otherwise "
        "start again from cursor 0."
    )
    keys: dict[str, str] = Field(description="Key name -> base64 of Redis DUMP.")
    next_cursor: int | None = Field(description="Cursor of the next page; null: the last one.")


class RestoreChunk(_Model):
    keys: dict[str, str] = Field(
        description="Some keys of a snapshot (name -> base64 of Redis DUMP); a restore "
        "stages its snapshot in chunks that each fit the body limit."
    )


class RestoreStaged(_Model):
    staged: int = Field(description="Keys of this chunk staged.")


class RestoreCommit(_Model):
    keys: int = Field(ge=0, description="Number of keys in the whole snapshot.")


class Health(_Model):
    status: Literal["ok"] = "ok"


class Ready(_Model):
    status: Literal["ready"] = "ready"
    redis: str


class PoolView(_Model):
    """The pool at a glance (`GET /v1/runs/{run}/pool`), for dashboards: the run's summary
    and, read with it in one transaction, how the latest pilot pass rates of all prompts
    sit against the gate band, how many prompts each status has and how old the buffer's
    entries are. Read-only; see `pool.pool_view`."""

    summary: RunSummary = Field(description="As `GET /v1/runs/{run}` answers it, read at once.")
    band: tuple[float, float] | None = Field(
        description="The gate band [p_lower, 1 - p_upper] of pass rates that commit; null "
        "for strategies without a pilot gate (grpo, dapo)."
    )
    exclude_threshold: float | None = Field(
        description="Pilot pass rate at or above which a prompt is evicted; null: never."
    )
    pass_rate_edges: list[float] = Field(
        description="bins + 1 edges over [0, 1]; bin i is [edge i, edge i+1), the last "
        "one includes 1."
    )
    pass_rate_counts: list[int] = Field(
        description="Prompts whose latest pilot pass rate falls in each bin (full groups of "
        "grpo and dapo are not pilots and are not counted)."
    )
    piloted: int = Field(description="Prompts with a pilot pass rate (the histogram's total).")
    pilot_all_equal: int = Field(
        description="Of them, prompts whose latest pilot was all right or all wrong (pass "
        "rate exactly 1 or 0): groups with zero reward variance."
    )
    statuses: dict[str, int] = Field(
        description="Prompts by status (active, deferred, easy, buffered, evict_pending, "
        "evicted); prompts never planned count as active."
    )
    buffer_ages: list[int] = Field(
        description="Buffer entries by age: element k counts entries that passed the gate "
        "k optimiser steps ago (they sum to the summary's buffer_size)."
    )
