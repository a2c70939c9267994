"""The allocation protocol as a pure state machine: `(view, run, request) -> (answer, delta)`.

Nothing here touches Redis. The store reads a `RunView` of the run's state (the parts the
request declares in `reads`, and prompt statistics on demand), calls `transition`, and
applies the returned `Delta` in one compare-and-set script (`cas`). Every rule of the
protocol lives here:

- a step trains exactly `train_batch_size` groups, a prompt at most once per step;
- the candidate window widens (x4) until the strategy has enough candidates;
- the epoch rolls over when the cursor passes the last prompt (or when nothing in the rest
  of the epoch can be planned): pending evictions are applied and the buffer is flushed;
- results, step completion and evidence are idempotent by their ids;
- evidence may only restore an evicted prompt, never change a status otherwise;
- every buffer entry that leaves the buffer is *released* exactly once, in an answer the
  trainer receives (`Plan.released`, `ResultsResponse.released`,
  `StepCompleteResponse.released`); entries released by calls the trainer does not make
  (a manual eviction, an external epoch end), or by an abandon (a commit prompt evicted
  while its plan was open), wait in the run's pending-release set until the next plan or
  step completion drains it.

Statistics are read lazily: `RunView.read` raises `MissingStats` for prompts the adapter
has not read yet; the adapter reads them and calls the transition again, from the same
view (a transition has no side effect, so a repeated call is harmless).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import ClassVar

from services.allocator import models as m
from services.allocator.core import (
    AllocationError,
    Candidate,
    Counters,
    EvidenceContext,
    PlanContext,
    PlanItem,
    ResultContext,
    RoundOutcome,
    RoundPlan,
    Strategy,
)
from services.allocator.permutation import EpochPermutation
from services.allocator.records import BufferEntry, Outcome, PromptStats, Status

_COUNTER_FIELDS = {f.name for f in fields(Counters)} - {"totals", "strategy_state"}
# Fields of the state hash that are neither core counters nor cumulative totals.
_NOT_TOTALS = _COUNTER_FIELDS | {
    "open_plan",
    "version",
    "plan_seq",
    "gen",
    "restored_from",
    "restoring",
}
_EVICTION = {Status.EVICTED, Status.EVICT_PENDING}
_RESTORED_TO = {Status.ACTIVE, Status.DEFERRED, Status.EASY}


class NotFound(LookupError):
    """Unknown run, plan or prompt: a 404."""


class Conflict(Exception):
    """The request contradicts the run's state: a 409."""


class Invalid(ValueError):
    """The request is malformed for this run: a 422."""


class MissingStats(Exception):
    """The transition needs statistics the view does not hold yet; read `ids`, call again."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(f"statistics of {len(ids)} prompts not read yet")
        self.ids = ids


@dataclass(frozen=True)
class RunInfo:
    """The run's fixed configuration."""

    run_id: str
    spec: m.RunSpec
    strategy: Strategy


@dataclass
class RunView:
    """What the adapter read of a run's state for one request (at one version of the run).

    Parts a request does not declare in `reads` are left empty. `records` holds the
    request's own records (a stored plan, result, taken entries, digests) by name:
    "known_plan_id", "known_plan", "plan", "applied", "result", "taken",
    "last_step_done", "evidence".
    """

    counters: Counters
    open_plan: str = ""
    plan_seq: int = 0
    buffer: list[BufferEntry] = field(default_factory=list)  # sorted by seq
    evict_pending: frozenset[int] = frozenset()
    step_trained: frozenset[int] = frozenset()
    released: frozenset[int] = frozenset()  # the pending-release set
    step_plans: list[str] = field(default_factory=list)
    records: dict[str, str | bytes | None] = field(default_factory=dict)
    stats: dict[int, PromptStats] = field(default_factory=dict)
    # Records parsed once per view, not once per call of the transition.
    parsed: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    def read(self, ids: Iterable[int]) -> dict[int, PromptStats]:
        """Statistics of `ids`; MissingStats for any the adapter has not read yet."""
        wanted = list(dict.fromkeys(ids))
        missing = [pid for pid in wanted if pid not in self.stats]
        if missing:
            raise MissingStats(missing)
        return {pid: self.stats[pid] for pid in wanted}


@dataclass
class Delta:
    """The writes of one transition. The adapter applies, in this order: `drop` (whole
    keys), the clears, the removals, then every put, `set_fields`, `add` and the version."""

    drop: list[tuple[str, str]] = field(default_factory=list)  # (kind, arg): keys deleted
    clear_buffer: bool = False
    clear_evict_pending: bool = False
    clear_released: bool = False
    buffer_del: list[int] = field(default_factory=list)
    evict_pending_del: list[int] = field(default_factory=list)
    stats: dict[int, PromptStats] = field(default_factory=dict)
    buffer_put: list[BufferEntry] = field(default_factory=list)
    evict_pending_add: list[int] = field(default_factory=list)
    step_trained_add: list[int] = field(default_factory=list)
    released_add: list[int] = field(default_factory=list)
    step_plans_add: list[str] = field(default_factory=list)
    records: dict[tuple[str, str], str | bytes] = field(default_factory=dict)  # kind, arg
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # hash kind, field, value
    set_fields: dict[str, int | str] = field(default_factory=dict)  # state hash fields set
    add: dict[str, int] = field(default_factory=dict)  # state hash counters incremented

    def count(self, name: str, by: int = 1, *, zero: bool = False) -> None:
        """Add `by` to counter `name`; a zero increment only with `zero` (which makes the
        counter appear in the run's summary)."""
        if by or zero:
            self.add[name] = self.add.get(name, 0) + by


def counters_from(state: Mapping[str, str], owned: frozenset[str] = frozenset()) -> Counters:
    """The run's counters from its state hash (string values, as Redis returns them);
    `owned`: the fields the run's strategy owns (`Strategy.run_state_fields`)."""
    core = {name: int(state.get(name, 0) or 0) for name in _COUNTER_FIELDS}
    totals = {k: int(v) for k, v in state.items() if k not in _NOT_TOTALS and k not in owned}
    mine = {k: v for k, v in state.items() if k in owned}
    return Counters(**core, totals=totals, strategy_state=mine)


def view_of(state: Mapping[str, str], strategy: Strategy) -> RunView:
    """A view holding only the state hash's parts (the adapter adds the rest)."""
    return RunView(
        counters=counters_from(state, strategy.run_state_fields),
        open_plan=state.get("open_plan", ""),
        plan_seq=int(state.get("plan_seq", 0) or 0),
    )


# ---- requests ----


@dataclass(frozen=True)
class Request:
    """A protocol call. `reads`: the parts of the run's state its transition looks at."""

    reads: ClassVar[frozenset[str]] = frozenset()


@dataclass(frozen=True)
class PlanRequest(Request):
    request_id: str
    reads: ClassVar[frozenset[str]] = frozenset(
        {"known_plan", "buffer", "evict_pending", "step_trained", "released"}
    )


@dataclass(frozen=True)
class ReportRequest(Request):
    plan_id: str
    rewards: Sequence[Sequence[float]]
    reads: ClassVar[frozenset[str]] = frozenset({"plan", "applied", "result", "taken"})

    @cached_property
    def digest(self) -> str:
        return digest(self.rewards)


@dataclass(frozen=True)
class AbandonRequest(Request):
    plan_id: str
    reads: ClassVar[frozenset[str]] = frozenset({"plan", "taken"})


@dataclass(frozen=True)
class StepRequest(Request):
    step: int
    reads: ClassVar[frozenset[str]] = frozenset(
        {"last_step_done", "buffer", "step_plans", "released"}
    )


@dataclass(frozen=True)
class EpochRequest(Request):
    reads: ClassVar[frozenset[str]] = frozenset({"buffer", "evict_pending"})


@dataclass(frozen=True)
class EvictRequest(Request):
    prompt_id: int
    evicted: bool
    reads: ClassVar[frozenset[str]] = frozenset({"buffer"})


@dataclass(frozen=True)
class EvidenceRequest(Request):
    prompt_id: int
    evidence_id: str
    rewards: Sequence[float]
    reads: ClassVar[frozenset[str]] = frozenset({"evidence"})

    @cached_property
    def digest(self) -> str:
        return digest([[float(self.prompt_id)], self.rewards])


def transition(view: RunView, run: RunInfo, request: Request) -> tuple[object, Delta | None]:
    """The answer to `request` and the writes it makes (None: a retry or a read, no write).

    Errors: Conflict (409), Invalid (422), NotFound (404), AllocationError (409: the run
    cannot go on as configured), MissingStats (the adapter reads more and calls again).
    """
    match request:
        case PlanRequest():
            return _plan(view, run, request)
        case ReportRequest():
            return _report(view, run, request)
        case AbandonRequest():
            return _abandon(view, request)
        case StepRequest():
            return _complete_step(view, run, request)
        case EpochRequest():
            return _complete_epoch(view, run)
        case EvictRequest():
            return _set_evicted(view, request)
        case EvidenceRequest():
            return _evidence(view, run, request)
    raise TypeError(f"unknown request {request!r}")


# ---- planning ----


def _plan(view: RunView, run: RunInfo, req: PlanRequest) -> tuple[m.Plan, Delta | None]:
    known = view.records.get("known_plan_id")
    if known is not None:  # a retry: the stored plan, released list and all
        return _stored_plan(view, _s(known), "known_plan"), None
    if view.open_plan:
        raise Conflict(f"plan {view.open_plan} is still open: report its results or abandon it")
    counters, cfg, n = view.counters, run.strategy.config, run.spec.num_prompts
    if counters.round >= cfg.max_rounds:
        raise AllocationError(
            f"step {counters.step} used all max_rounds={cfg.max_rounds} rounds and has "
            f"{counters.committed}/{cfg.train_batch_size} train groups; too few prompts "
            "pass the gate: widen the band, pilot more prompts per round or raise max_rounds"
        )
    delta = Delta()
    rollover: _Rollover | None = None
    if counters.cursor >= n:
        rollover = _rollover(view, run.strategy)
        counters = rollover.counters
    excluded = set(view.step_trained)
    buffer = [] if rollover else [e for e in view.buffer if e.prompt_id not in excluded]
    if rollover:  # its evictions are not written yet
        excluded |= set(rollover.evicted)
    decision = _decide_plan(view, run, counters, buffer, excluded)
    if not decision.items and rollover is None and decision.cursor >= n:
        # Nothing in the rest of the epoch could be planned (all evicted or skipped by
        # the strategy): start the next epoch now instead of failing.
        tail = decision
        rollover = _rollover(view, run.strategy)
        counters = rollover.counters
        excluded |= set(rollover.evicted)
        decision = _after_tail(tail, _decide_plan(view, run, counters, [], excluded))
    if not decision.items:
        raise AllocationError(
            "nothing left to plan: every prompt is evicted and the buffer is empty"
        )
    plan_seq = view.plan_seq + 1
    dropped = rollover.flushed if rollover else []
    plan = m.Plan(
        run_id=run.run_id,
        plan_id=f"p{plan_seq}",
        step=counters.step,
        epoch=counters.epoch,
        round=counters.round,
        items=[_item_out(item) for item in decision.items],
        rollouts=sum(item.n for item in decision.items),
        group_size=cfg.group_size(),
        dropped_from_buffer=dropped,
        released=sorted(set(dropped) | view.released),
    )
    if rollover:
        rollover.write(delta)
    delta.stats.update(decision.stats)
    for name, increment in decision.counts.items():
        delta.count(name, increment)
    delta.clear_released = bool(view.released)
    delta.records[("plan", plan.plan_id)] = plan.model_dump_json()
    delta.fields.append(("requests", req.request_id, plan.plan_id))
    delta.step_plans_add.append(plan.plan_id)
    if decision.taken_from_buffer:
        delta.buffer_del += [e.prompt_id for e in decision.taken_from_buffer]
        delta.records[("taken", plan.plan_id)] = pack_entries(decision.taken_from_buffer)
    delta.set_fields.update(
        cursor=decision.cursor, round=counters.round + 1, open_plan=plan.plan_id, plan_seq=plan_seq
    )
    return plan, delta


def _decide_plan(
    view: RunView, run: RunInfo, counters: Counters, buffer: list[BufferEntry], excluded: set[int]
) -> RoundPlan:
    """Let the strategy plan over a window of plannable candidates, widening it (x4) as
    asked. Evicted prompts and prompts already trained this step (possible when a small
    dataset's epoch ends mid-step) are not plannable."""
    strategy, n, seed = run.strategy, run.spec.num_prompts, run.spec.seed
    width = strategy.window_size(counters)
    while True:
        end = min(n, counters.cursor + width)
        ids = EpochPermutation(n, seed, counters.epoch).ids(counters.cursor, end)
        stats = view.read(ids)
        window = [
            Candidate(counters.cursor + i, pid, stats[pid])
            for i, pid in enumerate(ids)
            if stats[pid].status is not Status.EVICTED and pid not in excluded
        ]
        ctx = PlanContext(counters, n, seed, window, end, end >= n, buffer)
        decision = strategy.plan_round(ctx)
        if not decision.needs_more_candidates or end >= n:
            return decision
        width *= 4


def _after_tail(tail: RoundPlan, plan: RoundPlan) -> RoundPlan:
    """The next epoch's plan, carrying the decisions made on the previous epoch's tail."""
    counts = dict(tail.counts)
    for name, increment in plan.counts.items():
        counts[name] = counts.get(name, 0) + increment
    return replace(plan, stats={**tail.stats, **plan.stats}, counts=counts)


# ---- epoch boundaries ----


@dataclass
class _Rollover:
    counters: Counters  # the run's counters in the new epoch
    evicted: list[int]
    flushed: list[int]
    updates: dict[int, PromptStats]

    def write(self, delta: Delta) -> None:
        delta.stats.update(self.updates)
        delta.clear_buffer = delta.clear_evict_pending = True
        delta.set_fields.update(epoch=self.counters.epoch, cursor=0)
        delta.count("epochs_completed")
        delta.count("evicted", len(self.evicted), zero=True)
        delta.count("flushed", len(self.flushed), zero=True)


def _rollover(view: RunView, strategy: Strategy) -> _Rollover:
    """The end of the epoch: apply pending evictions, flush the buffer."""
    pending = sorted(view.evict_pending)
    stats = view.read(pending + [e.prompt_id for e in view.buffer])
    updates = {pid: _evicted(stats[pid], strategy) for pid in pending}
    for entry in view.buffer:
        if stats[entry.prompt_id].status is Status.BUFFERED:
            updates[entry.prompt_id] = stats[entry.prompt_id].with_status(
                Status.ACTIVE, Outcome.FLUSHED
            )
    c = view.counters
    new = replace(c, epoch=c.epoch + 1, cursor=0)
    return _Rollover(new, pending, [e.prompt_id for e in view.buffer], updates)


def _evicted(stats: PromptStats, strategy: Strategy) -> PromptStats:
    """Applied at epoch end; a strategy's more specific reason for the eviction
    (`Strategy.eviction_outcomes`) is kept."""
    keep = stats.last_outcome in strategy.eviction_outcomes
    return stats.with_status(Status.EVICTED, stats.last_outcome if keep else Outcome.EVICTED)


def _complete_epoch(view: RunView, run: RunInfo) -> tuple[m.EpochCompleteResponse, Delta]:
    if view.open_plan:
        raise Conflict(f"plan {view.open_plan} is open; report or abandon it first")
    rollover = _rollover(view, run.strategy)
    delta = Delta()
    rollover.write(delta)
    delta.released_add += rollover.flushed  # the trainer did not make this call
    answer = m.EpochCompleteResponse(
        epoch=rollover.counters.epoch, evicted=rollover.evicted, flushed=rollover.flushed
    )
    return answer, delta


# ---- results ----


def _report(
    view: RunView, run: RunInfo, req: ReportRequest
) -> tuple[tuple[m.ResultsResponse, bool], Delta | None]:
    digest = req.digest
    applied = view.records.get("applied")
    if applied is not None:
        if _s(applied) != digest:
            raise Conflict(f"plan {req.plan_id} was already reported with other rewards")
        stored = view.records.get("result")
        if stored is None:
            raise Conflict(f"plan {req.plan_id} was applied in a step that has completed")
        return (m.ResultsResponse.model_validate_json(stored), False), None
    plan = _stored_plan(view, req.plan_id)
    if view.open_plan != req.plan_id:
        raise Conflict(f"plan {req.plan_id} is not open (abandoned, or superseded)")
    _check_shape(plan, req.rewards)
    counters = view.counters
    items = [PlanItem(i.prompt_id, i.role, i.n, tuple(i.reuse)) for i in plan.items]
    stats = view.read(i.prompt_id for i in items)
    taken = {e.prompt_id: e for e in unpack_entries(view.records.get("taken"))}
    ctx = ResultContext(counters, items, req.rewards, stats, taken)
    outcome = run.strategy.apply_results(ctx)
    committed = counters.committed + len(outcome.train)
    cfg = run.strategy.config
    response = m.ResultsResponse(
        plan_id=plan.plan_id,
        step=plan.step,
        gates=[
            m.GateOut(prompt_id=i.prompt_id, role=i.role, outcome=g)
            for i, g in zip(items, outcome.gates, strict=True)
        ],
        train=[
            m.TrainGroupOut(prompt_id=t.prompt_id, role=t.role, reuse=list(t.reuse))
            for t in outcome.train
        ],
        buffered=[e.prompt_id for e in outcome.buffer_add],
        released=sorted(taken),
        committed=committed,
        train_batch_size=cfg.train_batch_size,
        batch_complete=committed >= cfg.train_batch_size,
    )
    delta = _outcome_delta(outcome, run.strategy)
    delta.drop.append(("taken", plan.plan_id))
    delta.set_fields.update(open_plan="", committed=committed)
    delta.step_trained_add += [t.prompt_id for t in outcome.train]
    delta.fields.append(("applied", plan.plan_id, digest))
    delta.records[("result", plan.plan_id)] = response.model_dump_json()
    return (response, True), delta


def _outcome_delta(outcome: RoundOutcome, strategy: Strategy) -> Delta:
    delta = Delta(stats=dict(outcome.stats))
    delta.buffer_put += outcome.buffer_add
    delta.evict_pending_add += outcome.evict_pending
    for name, increment in outcome.counts.items():
        delta.count(name, increment)
    if outcome.buffer_seq is not None:
        delta.set_fields["buffer_seq"] = outcome.buffer_seq
    unknown = set(outcome.run_state) - strategy.run_state_fields
    if unknown or set(outcome.counts) & strategy.run_state_fields:
        raise RuntimeError(
            f"strategy {strategy.name!r} wrote run fields it does not own or added to its "
            f"own: {sorted(unknown | (set(outcome.counts) & strategy.run_state_fields))}"
        )
    delta.set_fields.update(outcome.run_state)
    return delta


def _abandon(view: RunView, req: AbandonRequest) -> tuple[m.Plan, Delta]:
    """Close an open plan without results; its commit prompts go back to the buffer, but
    those evicted by hand while the plan was open are released instead."""
    plan = _stored_plan(view, req.plan_id)
    if view.open_plan != req.plan_id:
        raise Conflict(f"plan {req.plan_id} is not open")
    taken = unpack_entries(view.records.get("taken"))
    stats = view.read(e.prompt_id for e in taken)
    evicted = {e.prompt_id for e in taken if stats[e.prompt_id].status is Status.EVICTED}
    delta = Delta(buffer_put=[e for e in taken if e.prompt_id not in evicted])
    delta.released_add += sorted(evicted)
    delta.drop.append(("taken", req.plan_id))
    delta.set_fields["open_plan"] = ""
    delta.count("plans_abandoned")
    return plan, delta


# ---- steps ----


def _complete_step(
    view: RunView, run: RunInfo, req: StepRequest
) -> tuple[m.StepCompleteResponse, Delta | None]:
    step, counters = req.step, view.counters
    done = view.records.get("last_step_done")
    if done is not None:
        last = m.StepCompleteResponse.model_validate_json(done)
        if last.step_completed == step:
            return last, None
    if step != counters.step:
        raise Conflict(f"step {step} is not the current step {counters.step}")
    need = run.strategy.config.train_batch_size
    if counters.committed < need or view.open_plan:
        raise Conflict(
            f"step {step} has {counters.committed}/{need} train groups and "
            f"open plan {view.open_plan or 'none'}"
        )
    expired = run.strategy.expire(step, view.buffer)
    gone = [e.prompt_id for e in expired]
    stats = view.read(gone)
    answer = m.StepCompleteResponse(
        step_completed=step,
        step=step + 1,
        epoch=counters.epoch,
        expired=gone,
        released=sorted(set(gone) | view.released),
        buffer=sorted({e.prompt_id for e in view.buffer} - set(gone)),
    )
    delta = Delta(
        stats={pid: s.with_status(Status.ACTIVE, Outcome.EXPIRED) for pid, s in stats.items()},
        buffer_del=gone,
        clear_released=bool(view.released),
    )
    delta.count("expired", len(gone))
    delta.set_fields.update(step=step + 1, round=0, committed=0)
    # The step's plans and results were kept for retries within the step; once it
    # completes only their digests (`applied`) remain, keeping memory per step flat.
    delta.drop += [("step_trained", ""), ("requests", ""), ("step_plans", "")]
    delta.drop += [(kind, p) for p in view.step_plans for kind in ("plan", "result", "taken")]
    delta.count("steps_completed")
    delta.records[("last_step_done", "")] = answer.model_dump_json()
    return answer, delta


# ---- prompts ----


def _set_evicted(view: RunView, req: EvictRequest) -> tuple[PromptStats, Delta | None]:
    """Evict (at once) or restore a prompt by hand; idempotent. An evicted prompt's buffer
    entry is released (pending until the next plan or step completion)."""
    pid = req.prompt_id
    stats = view.read([pid])[pid]
    was = stats.status is Status.EVICTED
    if was == req.evicted and stats.status is not Status.EVICT_PENDING:
        return stats, None
    new = stats.with_status(
        Status.EVICTED if req.evicted else Status.ACTIVE,
        Outcome.EVICTED if req.evicted else Outcome.RESTORED,
    )
    delta = Delta(stats={pid: new}, evict_pending_del=[pid])
    if req.evicted and any(e.prompt_id == pid for e in view.buffer):
        delta.buffer_del.append(pid)
        delta.released_add.append(pid)
    if was != req.evicted:
        delta.count("evicted", 1 if req.evicted else -1)
    return new, delta


def _evidence(
    view: RunView, run: RunInfo, req: EvidenceRequest
) -> tuple[tuple[PromptStats, bool], Delta | None]:
    """Fold external rewards into a prompt's statistics through the strategy's
    `apply_evidence`; the strategy may restore an evicted prompt. Idempotent by id."""
    pid, digest = req.prompt_id, req.digest
    stats = view.read([pid])[pid]
    known = view.records.get("evidence")
    if known is not None:
        if _s(known) != digest:
            raise Conflict(
                f"evidence {req.evidence_id!r} was already reported with other "
                "rewards or for another prompt"
            )
        return (stats, True), None
    ctx = EvidenceContext(view.counters, pid, stats, req.rewards)
    outcome = run.strategy.apply_evidence(ctx)
    new = outcome.stats
    check_evidence_status(run.strategy, stats.status, new.status)
    restored = stats.status in _EVICTION and new.status not in _EVICTION
    delta = Delta(stats={pid: new})
    for name, increment in outcome.counts.items():
        delta.count(name, increment)
    delta.fields.append(("evidence", req.evidence_id, digest))
    if restored:
        delta.evict_pending_del.append(pid)
    if restored and stats.status is Status.EVICTED:
        delta.count("evicted", -1)
    return (new, False), delta


def check_evidence_status(strategy: Strategy, old: Status, new: Status) -> None:
    """RuntimeError unless `old` -> `new` is no change or a restore from eviction."""
    if new is old or (old in _EVICTION and new in _RESTORED_TO):
        return
    raise RuntimeError(
        f"strategy {strategy.name!r} moved a prompt from {old.name} to {new.name} on "
        "evidence; only a restore (EVICTED / EVICT_PENDING to ACTIVE, DEFERRED, EASY) is allowed"
    )


# ---- helpers ----


def _stored_plan(view: RunView, plan_id: str, record: str = "plan") -> m.Plan:
    raw = view.records.get(record)
    if raw is None:
        raise NotFound(f"plan {plan_id!r} is unknown or expired")
    plan = view.parsed.get(record)
    if not isinstance(plan, m.Plan):
        plan = view.parsed[record] = m.Plan.model_validate_json(raw)
    return plan


def _item_out(item: PlanItem) -> m.PlanItemOut:
    return m.PlanItemOut(prompt_id=item.prompt_id, role=item.role, n=item.n, reuse=list(item.reuse))


def _check_shape(plan: m.Plan, rewards: Sequence[Sequence[float]]) -> None:
    if len(rewards) != len(plan.items):
        raise Invalid(
            f"plan {plan.plan_id} has {len(plan.items)} items, got {len(rewards)} reward lists"
        )
    for index, (item, group) in enumerate(zip(plan.items, rewards, strict=True)):
        if len(group) != item.n:
            raise Invalid(
                f"item {index} (prompt {item.prompt_id}, {item.role}) expects "
                f"{item.n} rewards, got {len(group)}"
            )


def digest(rewards: Sequence[Sequence[float]]) -> str:
    """A digest of the rewards by value: a retry sending -0.0 for 0, or 1 for 1.0, is the
    same report (`+ 0.0` turns -0.0 into 0.0)."""
    h = hashlib.blake2b(digest_size=16)
    for group in rewards:
        h.update(struct.pack(f"<I{len(group)}d", len(group), *(float(r) + 0.0 for r in group)))
    return h.hexdigest()


def pack_entries(entries: Sequence[BufferEntry]) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in (e.pack() for e in entries))


def unpack_entries(raw: bytes | str | None) -> list[BufferEntry]:
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    out, offset = [], 0
    while raw and offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        out.append(BufferEntry.unpack(raw[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return out


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
