"""A run's state in Redis, read and written around the pure strategies.

Concurrency: every mutation runs as an optimistic transaction. It WATCHes the run's
state hash, reads what it needs, lets the strategy decide, and writes everything in one
MULTI/EXEC that also bumps `state.version`. If any other replica mutated the run in
between, EXEC fails and the mutation is retried from fresh reads, so two allocator
replicas can never hand out the same cursor position or buffer entry twice.

Identity: a run's config never changes, but a run can be deleted and re-created with
another config, or restored from a snapshot of another incarnation, by any replica. Each
incarnation gets a fresh generation (`state.gen`), and every call compares it with the
generation of the config this process cached, in the same WATCHed read of the state that
its writes depend on: a replica never acts on a config that is gone (it reloads it, or
answers 404 when the run is gone).

Idempotency: plans are keyed by the caller's request id, results by plan id (with a
digest of the rewards), step completion by step number; a retry returns the stored
answer and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError, WatchError

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
from services.allocator.keys import RUNS_INDEX, RunKeys
from services.allocator.permutation import EpochPermutation
from services.allocator.records import BufferEntry, Outcome, PromptStats, Status
from services.allocator.strategies import load_all

T = TypeVar("T")
P = ParamSpec("P")
Writer = Callable[[Pipeline], None]
_COUNTER_FIELDS = {f.name for f in fields(Counters)} - {"totals"}
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
_STAGE_TTL_MS = 3_600_000  # a restore's temporary keys outlive a crashed restore by this


class NotFound(LookupError):
    """Unknown run, plan or prompt: a 404."""


class Conflict(Exception):
    """The request contradicts the run's state: a 409."""


class Invalid(ValueError):
    """The request is malformed for this run: a 422."""


class _Torn(Conflict):
    """The run changed while a snapshot page was read: a 409, or read it again."""


class _StaleRun(Exception):
    """The cached config is not the run's current incarnation; reload it and start over."""


@dataclass(frozen=True)
class Run:
    run_id: str
    spec: m.RunSpec
    strategy: Strategy
    keys: RunKeys
    gen: str  # the incarnation this config belongs to ("" for runs created before gens)

    def check(self, state: dict[str, str]) -> None:
        """_StaleRun unless `state` (the run's state hash as read) is of this incarnation;
        Conflict (409) while a restore is being committed."""
        if "restoring" in state:
            raise Conflict(f"run {self.run_id!r} is being restored; retry when it is done")
        if not state or state.get("gen", "") != self.gen:
            raise _StaleRun(self.run_id)


_CREATE = """
local config = redis.call('GET', KEYS[1])
if config then return config end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'version', 0, 'gen', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return false
"""


# A restore's commit moves the staged keys into place in batches of this many keys, one
# script each, so that Redis is never busy with one restore for long.
_MOVE_BATCH = 2000
# Move staged keys (KEYS[1..n]) to their final names (KEYS[n+1..2n]); a key already moved
# by an interrupted commit is skipped.
_MOVE = """
local n = #KEYS / 2
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + n])
    redis.call('PERSIST', KEYS[i + n])
  end
end
return n
"""
# Finish a restore: the staged state (KEYS[1]) replaces the state (KEYS[2]), which drops
# the `restoring` mark; a fresh generation (ARGV[1]); the run index (KEYS[3]).
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('HGET', KEYS[2], 'restored_from') == ARGV[2] then return 0 end
  return redis.error_reply('staged state missing: ' .. KEYS[1])
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PERSIST', KEYS[2])
redis.call('HSET', KEYS[2], 'gen', ARGV[1], 'restored_from', ARGV[2])
redis.call('HDEL', KEYS[2], 'restoring')
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


def _fresh(
    method: Callable[Concatenate[AllocatorStore, str, P], Awaitable[T]],
) -> Callable[Concatenate[AllocatorStore, str, P], Awaitable[T]]:
    """Run a store method on the run's current config: when it finds its cached config
    stale, drop it and run the method again (on a reloaded config)."""

    @functools.wraps(method)
    async def wrapper(self: AllocatorStore, run_id: str, *args: P.args, **kw: P.kwargs) -> T:
        for _ in range(self.max_attempts):
            try:
                return await method(self, run_id, *args, **kw)
            except _StaleRun:
                self._runs.pop(run_id, None)
        raise Conflict(f"run {run_id!r} is being re-created by many requests at once; retry")

    return wrapper


class AllocatorStore:
    def __init__(self, redis: Redis, *, ttl_s: int = 7 * 86400, max_attempts: int = 64) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_attempts = max_attempts
        # Configs by run; each call checks that its config's generation is still current.
        self._runs: dict[str, Run] = {}
        self._create = redis.register_script(_CREATE)
        self._move = redis.register_script(_MOVE)
        self._finish = redis.register_script(_FINISH)
        load_all()

    # ---- runs ----

    async def create_run(self, run_id: str, spec: m.RunSpec) -> tuple[Run, bool]:
        """Create the run (config, state with a fresh generation, index entry) in one
        script: a crash never leaves half a run. An identical run already there is a
        no-op; Conflict (409) when it has another config."""
        keys = RunKeys(run_id)
        gen = uuid.uuid4().hex
        argv = [spec.model_dump_json(), gen, run_id]
        existing = await self._create(keys=[keys.config, keys.state, RUNS_INDEX], args=argv)
        if existing is not None:
            if m.RunSpec.model_validate_json(existing) != spec:
                raise Conflict(f"run {run_id!r} exists with a different configuration")
            return await self.run(run_id), False
        self._runs.pop(run_id, None)
        return await self.run(run_id), True

    async def run(self, run_id: str) -> Run:
        """The run's config, cached. The cache may be stale (another replica re-created
        the run): every use of it checks `Run.check` against the state it reads."""
        cached = self._runs.get(run_id)
        if cached is not None:
            return cached
        keys = RunKeys(run_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.config)
            pipe.hget(keys.state, "gen")
            raw, gen = await pipe.execute()
        if raw is None:
            raise NotFound(f"unknown run {run_id!r}")
        spec = m.RunSpec.model_validate_json(raw)
        strategy_cls = load_all()[spec.config.strategy]  # type: ignore[attr-defined]
        first_epoch = EpochPermutation(spec.num_prompts, spec.seed, 0)
        keys = RunKeys(run_id, first_epoch.positions)
        run = Run(run_id, spec, strategy_cls(spec.config), keys, _s(gen or b""))
        self._runs[run_id] = run
        return run

    async def list_runs(self) -> list[str]:
        members = await self.redis.smembers(RUNS_INDEX)
        return sorted(x.decode() if isinstance(x, bytes) else x for x in members)

    async def delete_run(self, run_id: str) -> int:
        """Delete every key of the run in one MULTI/EXEC (retried if a mutation of the
        run commits meanwhile, so none of its writes survives the delete); the number of
        keys deleted. NotFound (404) for an unknown run."""
        keys = RunKeys(run_id)
        self._runs.pop(run_id, None)
        for _ in range(self.max_attempts):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(keys.state, keys.config)
                    if not await pipe.exists(keys.config):
                        raise NotFound(f"unknown run {run_id!r}")
                    names = [n async for n in _scan_names(self.redis, keys.pattern)]
                    pipe.multi()
                    for batch in _chunks(names):
                        pipe.delete(*batch)
                    pipe.srem(RUNS_INDEX, run_id)
                    *counts, _ = await pipe.execute()
                    return int(sum(counts))
                except WatchError:
                    continue
        raise Conflict(f"run {run_id!r} is being changed by many requests at once; retry")

    async def snapshot(self, run_id: str) -> m.Snapshot:
        """Every key of the run as base64 DUMP payloads, in one piece (small runs; large
        ones are read page by page with `snapshot_page`). Conflict (409) if the run keeps
        changing while it is read."""
        for _ in range(self.max_attempts):
            pages, cursor = [], 0
            try:
                while True:
                    page = await self.snapshot_page(run_id, cursor, 2**62)
                    pages.append(page)
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
            except _Torn:
                continue
            if len({p.version for p in pages}) == 1:
                return m.Snapshot(
                    run_id=run_id, keys={k: v for p in pages for k, v in p.keys.items()}
                )
        raise Conflict(f"run {run_id!r} is being changed by many requests at once; retry")

    @_fresh
    async def snapshot_page(self, run_id: str, cursor: int, max_bytes: int) -> m.SnapshotPage:
        """One page of the run's snapshot: the keys a Redis SCAN from `cursor` finds, as
        base64 DUMP payloads, until they pass `max_bytes` (of base64) or the scan ends
        (`next_cursor` None). Each batch is dumped in one MULTI with the run's
        `gen:version`; a page whose batches disagree is Conflict (409). A snapshot is
        consistent when all its pages carry one `version` (every mutation bumps it); a
        key may come twice (SCAN's rule), with the same payload."""
        run = await self.run(run_id)
        keys = run.keys
        out: dict[str, str] = {}
        size, version = 0, None
        while True:
            cursor, found = await self.redis.scan(cursor, match=keys.pattern, count=256)
            names = [n for n in map(_s, found) if keys.redis_type(n)]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys.state)
                for name in names:
                    pipe.dump(name)
                raw, *dumps = await pipe.execute()
            state = {_s(k): _s(v) for k, v in raw.items()}
            run.check(state)
            now = f"{state['gen']}:{state.get('version', '0')}" if "gen" in state else ""
            if version is not None and now != version:
                raise _Torn(f"run {run_id!r} changed while its snapshot was read; retry")
            version = now
            for name, dump in zip(names, dumps, strict=True):
                if dump is not None:
                    out[name] = base64.b64encode(dump).decode()
                    size += len(out[name])
            if cursor == 0 or size >= max_bytes:
                break
        return m.SnapshotPage(run_id=run_id, version=version, keys=out, next_cursor=cursor or None)

    async def restore_snapshot(self, run_id: str, snapshot: m.Snapshot) -> None:
        """Replace the run's state with a snapshot taken earlier, in one call (small runs;
        large ones use `stage_restore` chunk by chunk, then `commit_restore`)."""
        if snapshot.run_id != run_id:
            raise Invalid(f"snapshot of run {snapshot.run_id!r} is not a snapshot of {run_id!r}")
        restore_id = uuid.uuid4().hex
        try:
            await self.stage_restore(run_id, restore_id, snapshot.keys)
            await self.commit_restore(run_id, restore_id, len(snapshot.keys))
        finally:
            await self._drop_staged(RunKeys(run_id), restore_id)

    async def stage_restore(self, run_id: str, restore_id: str, chunk: dict[str, str]) -> int:
        """Stage a chunk of a snapshot (key name -> base64 DUMP payload) for the restore
        `restore_id`; retrying a chunk is harmless. The number of keys staged.

        Invalid (422) for a key outside the run or of an unknown kind, bad base64, a
        payload Redis refuses (bad checksum or RDB version), a key of the wrong type, or
        a config that is not a run spec; this chunk's keys are then dropped again. The
        run itself is not touched until `commit_restore`.

        How: every payload is RESTOREd into a temporary key under the run's hash tag
        (`pc:{run}:restore:<restore_id>:...`, expiring in an hour, should the restore
        never be committed) and checked there. Redis itself validates the payloads that
        way (checksum, version, type), which parsing the RDB format here would only
        imitate.
        """
        keys = RunKeys(run_id)
        payloads = _decode_keys(keys, chunk)
        staged = {name: _staged_name(keys, restore_id, name) for name in payloads}
        try:
            await self._stage(keys, payloads, staged)
        except Invalid:
            await self._delete(list(staged.values()))
            raise
        return len(staged)

    async def commit_restore(self, run_id: str, restore_id: str, expected_keys: int) -> None:
        """Replace the run's keys by the `expected_keys` keys staged for `restore_id`: no
        call ever sees a mix of the two. A retry of a committed restore is a no-op, and
        a retry of an interrupted one finishes it.

        Invalid (422) when another number of keys is staged (a chunk is missing or came
        from another snapshot) or the config or state is missing; Conflict (409) when
        another restore is being committed or the run keeps changing meanwhile.

        How: one MULTI/EXEC (under a WATCH of the run's state) marks the state
        `restoring` and deletes the run's keys the snapshot does not replace; from then
        on every other call on the run gets 409. The staged keys are then renamed into
        place by scripts of `_MOVE_BATCH` keys, and a last script puts the staged state
        in place, which drops the mark. One script for everything would be simpler, but
        at 10M prompts (~156k keys) it kept Redis busy for seconds, answering nothing
        else. The cost: Redis holds the run twice while a restore is staged.
        """
        keys = RunKeys(run_id)
        temp = _staged_name(keys, restore_id, keys.prefix + ":")
        for _ in range(self.max_attempts):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(keys.state)
                    mark, done = map(
                        _opt_s, await pipe.hmget(keys.state, ["restoring", "restored_from"])
                    )
                    if mark is None and done == restore_id:
                        return
                    if mark is not None and mark != restore_id:
                        raise Conflict(f"run {run_id!r} is being restored by restore {mark!r}")
                    found: set[str] = set()  # SCAN may return a key twice
                    async for name in _scan_names(self.redis, keys.pattern):
                        found.add(name)
                    staged = sorted(n for n in found if n.startswith(temp))
                    finals = [keys.prefix + ":" + name[len(temp) :] for name in staged]
                    if mark is None:
                        if len(staged) != expected_keys:
                            raise Invalid(
                                f"restore {restore_id!r} has {len(staged)} keys staged, "
                                f"the snapshot has {expected_keys}"
                            )
                        for needed in ("config", "state"):
                            if temp + needed not in staged:
                                raise Invalid(f"restore {restore_id!r} has no {needed!r} key")
                        # Keys the snapshot does not have; the others are replaced by RENAME.
                        stale = sorted(found - set(staged) - set(finals))
                        pipe.multi()
                        pipe.hset(keys.state, "restoring", restore_id)
                        for batch in _chunks(stale):
                            pipe.delete(*batch)
                        await pipe.execute()
                    break
                except WatchError:
                    continue
        else:
            raise Conflict(f"run {run_id!r} is being changed by many requests at once; retry")
        moves = [(a, b) for a, b in zip(staged, finals, strict=True) if b != keys.state]
        for group in _chunks(moves, _MOVE_BATCH):
            await self._move(keys=[a for a, _ in group] + [b for _, b in group])
        try:
            await self._finish(
                keys=[temp + "state", keys.state, RUNS_INDEX],
                args=[uuid.uuid4().hex, restore_id, run_id],  # a restored run is new
            )
        except ResponseError as exc:
            if "staged state missing" in str(exc):
                raise Invalid(f"restore {restore_id!r} lost its staged keys (expired?)") from None
            raise
        self._runs.pop(run_id, None)

    async def _drop_staged(self, keys: RunKeys, restore_id: str) -> None:
        pattern = _staged_name(keys, restore_id, keys.prefix + ":*")
        await self._delete([n async for n in _scan_names(self.redis, pattern)])

    async def _delete(self, names: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch in _chunks(names):
                pipe.delete(*batch)
            await pipe.execute()

    async def _stage(
        self, keys: RunKeys, payloads: dict[str, bytes], staged: dict[str, str]
    ) -> None:
        """RESTORE every payload into its temporary key and check its type and content;
        Invalid if Redis refuses one or it is not what a key of that name holds."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, payload in payloads.items():
                pipe.restore(staged[name], _STAGE_TTL_MS, payload, replace=True)
            answers = await pipe.execute(raise_on_error=False)
        for name, answer in zip(payloads, answers, strict=True):
            if isinstance(answer, Exception):
                raise Invalid(f"snapshot key {name!r} is not a valid DUMP payload: {answer}")
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in payloads:
                pipe.type(staged[name])
            types = await pipe.execute()
        for name, found in zip(payloads, types, strict=True):
            want = keys.redis_type(name)
            if _s(found) != want:
                raise Invalid(f"snapshot key {name!r} holds a {_s(found)}, not a {want}")
        if keys.config in payloads:
            try:
                m.RunSpec.model_validate_json(await self.redis.get(staged[keys.config]) or b"")
            except ValueError as exc:
                raise Invalid(f"the snapshot's config is not a run spec: {exc}") from None

    # ---- the optimistic transaction ----

    async def _transact(
        self, run: Run, body: Callable[[dict[str, str]], Awaitable[tuple[T, Writer | None]]]
    ) -> T:
        """Run `body(state)` -> (result, writer) until its writes commit without interference.

        _StaleRun (handled by `_fresh`) when `run` is not the run's current incarnation.
        """
        keys = run.keys
        for _ in range(self.max_attempts):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(keys.state)
                    raw = await pipe.hgetall(keys.state)
                    state = {_s(k): _s(v) for k, v in raw.items()}
                    run.check(state)
                    try:
                        result, writer = await body(state)
                    except Exception:
                        # Reads after WATCH go through other connections; if another
                        # replica committed meanwhile they may disagree. Retry then.
                        now = await pipe.hmget(keys.state, ["version", "gen"])
                        if now != [raw.get(b"version"), raw.get(b"gen")]:
                            continue
                        raise
                    if writer is None:
                        return result
                    pipe.multi()
                    writer(pipe)
                    pipe.hincrby(keys.state, "version", 1)
                    await pipe.execute()
                    return result
                except WatchError:
                    continue
        raise Conflict("the run is being changed by many requests at once; retry")

    # ---- planning ----

    @_fresh
    async def plan(self, run_id: str, request_id: str) -> m.Plan:
        run = await self.run(run_id)
        keys = run.keys

        async def body(state: dict[str, str]) -> tuple[m.Plan, Writer | None]:
            known = await self.redis.hget(keys.requests, request_id)
            if known is not None:
                return await self._stored_plan(keys, _s(known)), None
            if state.get("open_plan"):
                raise Conflict(
                    f"plan {state['open_plan']} is still open: report its results or abandon it"
                )
            return await self._make_plan(run, keys, state, request_id)

        return await self._transact(run, body)

    async def _stored_plan(self, keys: RunKeys, plan_id: str) -> m.Plan:
        raw = await self.redis.get(keys.plan(plan_id))
        if raw is None:
            raise NotFound(f"plan {plan_id!r} is unknown or expired")
        return m.Plan.model_validate_json(raw)

    async def _make_plan(
        self, run: Run, keys: RunKeys, state: dict[str, str], request_id: str
    ) -> tuple[m.Plan, Writer]:
        counters = _counters(state)
        cfg = run.strategy.config
        if counters.round >= cfg.max_rounds:
            raise AllocationError(
                f"step {counters.step} used all max_rounds={cfg.max_rounds} rounds and has "
                f"{counters.committed}/{cfg.train_batch_size} train groups; too few prompts "
                "pass the gate: widen the band, pilot more prompts per round or raise max_rounds"
            )
        rollover: _Rollover | None = None
        if counters.cursor >= run.spec.num_prompts:
            rollover = await self._rollover(keys, counters)
            counters = rollover.counters
        excluded = {int(x) for x in await self.redis.smembers(keys.step_trained)}
        buffer = [] if rollover else await self._buffer(keys)
        buffer = [e for e in buffer if e.prompt_id not in excluded]
        if rollover:  # its evictions are not written yet
            excluded |= set(rollover.evicted)
        decision = await self._decide_plan(run, keys, counters, buffer, excluded)
        if not decision.items and rollover is None and decision.cursor >= run.spec.num_prompts:
            # Nothing in the rest of the epoch could be planned (all evicted or skipped by
            # the strategy): start the next epoch now instead of failing.
            tail = decision
            rollover = await self._rollover(keys, counters)
            counters = rollover.counters
            excluded |= set(rollover.evicted)
            decision = _after_tail(tail, await self._decide_plan(run, keys, counters, [], excluded))
        if not decision.items:
            raise AllocationError(
                "nothing left to plan: every prompt is evicted and the buffer is empty"
            )
        plan_seq = int(state.get("plan_seq", 0)) + 1
        plan = m.Plan(
            run_id=run.run_id,
            plan_id=f"p{plan_seq}",
            step=counters.step,
            epoch=counters.epoch,
            round=counters.round,
            items=[_item_out(item) for item in decision.items],
            rollouts=sum(item.n for item in decision.items),
            group_size=cfg.group_size(),
            dropped_from_buffer=rollover.flushed if rollover else [],
        )

        def write(pipe: Pipeline) -> None:
            if rollover:
                rollover.write(pipe)
            _write_stats(pipe, keys, decision.stats)
            _write_counts(pipe, keys, decision.counts)
            pipe.set(keys.plan(plan.plan_id), plan.model_dump_json(), ex=self.ttl_s)
            pipe.hset(keys.requests, request_id, plan.plan_id)
            pipe.sadd(keys.step_plans, plan.plan_id)
            if decision.taken_from_buffer:
                pipe.hdel(keys.buffer, *[e.prompt_id for e in decision.taken_from_buffer])
                pipe.set(
                    keys.taken(plan.plan_id),
                    _pack_entries(decision.taken_from_buffer),
                    ex=self.ttl_s,
                )
            pipe.hset(
                keys.state,
                mapping={
                    "cursor": decision.cursor,
                    "round": counters.round + 1,
                    "open_plan": plan.plan_id,
                    "plan_seq": plan_seq,
                },
            )

        return plan, write

    async def _decide_plan(
        self,
        run: Run,
        keys: RunKeys,
        counters: Counters,
        buffer: list[BufferEntry],
        excluded: set[int],
    ) -> RoundPlan:
        """Let the strategy plan over a window of plannable candidates, widening it as asked.

        Evicted prompts and prompts already trained this step (possible when a small
        dataset's epoch ends mid-step) are not plannable.
        """
        strategy, n = run.strategy, run.spec.num_prompts
        width = strategy.window_size(counters)
        while True:
            end = min(n, counters.cursor + width)
            ids = EpochPermutation(n, run.spec.seed, counters.epoch).ids(counters.cursor, end)
            stats = await self._read_stats(keys, ids)
            window = [
                Candidate(counters.cursor + i, pid, stats[pid])
                for i, pid in enumerate(ids)
                if stats[pid].status is not Status.EVICTED and pid not in excluded
            ]
            ctx = PlanContext(counters, n, run.spec.seed, window, end, end >= n, buffer)
            decision = strategy.plan_round(ctx)
            if not decision.needs_more_candidates or end >= n:
                return decision
            width *= 4

    # ---- epoch boundaries ----

    async def _rollover(self, keys: RunKeys, counters: Counters) -> _Rollover:
        """The writes that end the epoch: apply pending evictions, flush the buffer."""
        pending = sorted(int(x) for x in await self.redis.smembers(keys.evict_pending))
        buffer = await self._buffer(keys)
        touched = pending + [e.prompt_id for e in buffer]
        stats = await self._read_stats(keys, touched)
        updates = {pid: _evicted(stats[pid]) for pid in pending}
        for entry in buffer:
            if stats[entry.prompt_id].status is Status.BUFFERED:
                updates[entry.prompt_id] = stats[entry.prompt_id].with_status(
                    Status.ACTIVE, Outcome.FLUSHED
                )
        new = Counters(**{**counters.__dict__, "epoch": counters.epoch + 1, "cursor": 0})
        flushed = [e.prompt_id for e in buffer]
        return _Rollover(keys, self, new, pending, flushed, updates)

    @_fresh
    async def complete_epoch(self, run_id: str) -> m.EpochCompleteResponse:
        run = await self.run(run_id)
        keys = run.keys

        async def body(state: dict[str, str]) -> tuple[m.EpochCompleteResponse, Writer]:
            if state.get("open_plan"):
                raise Conflict(f"plan {state['open_plan']} is open; report or abandon it first")
            rollover = await self._rollover(keys, _counters(state))
            answer = m.EpochCompleteResponse(
                epoch=rollover.counters.epoch, evicted=rollover.evicted, flushed=rollover.flushed
            )
            return answer, rollover.write

        return await self._transact(run, body)

    # ---- results ----

    async def report(
        self, run_id: str, plan_id: str, rewards: list[list[float]]
    ) -> m.ResultsResponse:
        """Apply a plan's rewards (one list per plan item, `n` rewards each, in [0, 1]);
        a retry with the same rewards gets the stored answer. Errors: NotFound (404),
        Conflict (409: other rewards, or the plan is not open), Invalid (422: shape)."""
        return (await self.report_applied(run_id, plan_id, rewards))[0]

    @_fresh
    async def report_applied(
        self, run_id: str, plan_id: str, rewards: list[list[float]]
    ) -> tuple[m.ResultsResponse, bool]:
        """`report`, and whether this call applied the rewards (False for a retry)."""
        run = await self.run(run_id)
        keys = run.keys
        digest = _digest(rewards)

        async def body(
            state: dict[str, str],
        ) -> tuple[tuple[m.ResultsResponse, bool], Writer | None]:
            applied = await self.redis.hget(keys.applied, plan_id)
            if applied is not None:
                if _s(applied) != digest:
                    raise Conflict(f"plan {plan_id} was already reported with other rewards")
                stored = await self.redis.get(keys.result(plan_id))
                if stored is None:
                    raise Conflict(f"plan {plan_id} was applied in a step that has completed")
                return (m.ResultsResponse.model_validate_json(stored), False), None
            plan = await self._stored_plan(keys, plan_id)
            if state.get("open_plan") != plan_id:
                raise Conflict(f"plan {plan_id} is not open (abandoned, or superseded)")
            _check_shape(plan, rewards)
            response, write = await self._apply(run, keys, state, plan, rewards, digest)
            return (response, True), write

        return await self._transact(run, body)

    async def _apply(
        self,
        run: Run,
        keys: RunKeys,
        state: dict[str, str],
        plan: m.Plan,
        rewards: list[list[float]],
        digest: str,
    ) -> tuple[m.ResultsResponse, Writer]:
        counters = _counters(state)
        items = [PlanItem(i.prompt_id, i.role, i.n, tuple(i.reuse)) for i in plan.items]
        stats = await self._read_stats(keys, [i.prompt_id for i in items])
        taken_raw = await self.redis.get(keys.taken(plan.plan_id))
        taken = {e.prompt_id: e for e in _unpack_entries(taken_raw)}
        outcome = run.strategy.apply_results(ResultContext(counters, items, rewards, stats, taken))
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
            committed=committed,
            train_batch_size=cfg.train_batch_size,
            batch_complete=committed >= cfg.train_batch_size,
        )

        def write(pipe: Pipeline) -> None:
            self._write_outcome(pipe, keys, outcome)
            pipe.hset(keys.state, mapping={"open_plan": "", "committed": committed})
            if outcome.train:
                pipe.sadd(keys.step_trained, *[t.prompt_id for t in outcome.train])
            pipe.hset(keys.applied, plan.plan_id, digest)
            pipe.set(keys.result(plan.plan_id), response.model_dump_json(), ex=self.ttl_s)
            pipe.delete(keys.taken(plan.plan_id))

        return response, write

    def _write_outcome(self, pipe: Pipeline, keys: RunKeys, outcome: RoundOutcome) -> None:
        _write_stats(pipe, keys, outcome.stats)
        if outcome.buffer_add:
            pipe.hset(keys.buffer, mapping={e.prompt_id: e.pack() for e in outcome.buffer_add})
        if outcome.evict_pending:
            pipe.sadd(keys.evict_pending, *outcome.evict_pending)
        _write_counts(pipe, keys, outcome.counts)

    @_fresh
    async def abandon(self, run_id: str, plan_id: str) -> m.Plan:
        """Close an open plan without results; its commit prompts go back to the buffer."""
        run = await self.run(run_id)
        keys = run.keys

        async def body(state: dict[str, str]) -> tuple[m.Plan, Writer | None]:
            plan = await self._stored_plan(keys, plan_id)
            if state.get("open_plan") != plan_id:
                raise Conflict(f"plan {plan_id} is not open")
            taken = _unpack_entries(await self.redis.get(keys.taken(plan_id)))

            def write(pipe: Pipeline) -> None:
                if taken:
                    pipe.hset(keys.buffer, mapping={e.prompt_id: e.pack() for e in taken})
                pipe.hset(keys.state, "open_plan", "")
                pipe.hincrby(keys.state, "plans_abandoned", 1)
                pipe.delete(keys.taken(plan_id))

            return plan, write

        return await self._transact(run, body)

    # ---- steps ----

    @_fresh
    async def complete_step(self, run_id: str, step: int) -> m.StepCompleteResponse:
        run = await self.run(run_id)
        keys = run.keys

        async def body(state: dict[str, str]) -> tuple[m.StepCompleteResponse, Writer | None]:
            done = await self.redis.get(keys.last_step_done)
            if done is not None:
                last = m.StepCompleteResponse.model_validate_json(done)
                if last.step_completed == step:
                    return last, None
            counters = _counters(state)
            if step != counters.step:
                raise Conflict(f"step {step} is not the current step {counters.step}")
            need = run.strategy.config.train_batch_size
            if counters.committed < need or state.get("open_plan"):
                raise Conflict(
                    f"step {step} has {counters.committed}/{need} train groups and "
                    f"open plan {state.get('open_plan') or 'none'}"
                )
            buffer = await self._buffer(keys)
            # The step's plans and results were kept for retries within the step; once it
            # completes only their digests (`applied`) remain, keeping memory per step flat.
            plan_ids = [_s(p) for p in await self.redis.smembers(keys.step_plans)]
            records = [k for p in plan_ids for k in (keys.plan(p), keys.result(p), keys.taken(p))]
            expired = run.strategy.expire(step, buffer)
            stats = await self._read_stats(keys, [e.prompt_id for e in expired])
            updates = {
                pid: s.with_status(Status.ACTIVE, Outcome.EXPIRED) for pid, s in stats.items()
            }
            answer = m.StepCompleteResponse(
                step_completed=step,
                step=step + 1,
                epoch=counters.epoch,
                expired=[e.prompt_id for e in expired],
                buffer=sorted({e.prompt_id for e in buffer} - {e.prompt_id for e in expired}),
            )

            def write(pipe: Pipeline) -> None:
                if expired:
                    pipe.hdel(keys.buffer, *[e.prompt_id for e in expired])
                    pipe.hincrby(keys.state, "expired", len(expired))
                _write_stats(pipe, keys, updates)
                pipe.hset(keys.state, mapping={"step": step + 1, "round": 0, "committed": 0})
                pipe.delete(keys.step_trained, keys.requests, keys.step_plans, *records)
                pipe.hincrby(keys.state, "steps_completed", 1)
                pipe.set(keys.last_step_done, answer.model_dump_json())

            return answer, write

        return await self._transact(run, body)

    # ---- prompts ----

    def _check_prompt(self, run: Run, prompt_id: int) -> None:
        if not 0 <= prompt_id < run.spec.num_prompts:
            raise NotFound(
                f"prompt {prompt_id} is not in run {run.run_id!r} "
                f"(ids are 0..{run.spec.num_prompts - 1})"
            )

    @_fresh
    async def prompt(self, run_id: str, prompt_id: int) -> m.PromptStatsOut:
        run = await self.run(run_id)
        self._check_prompt(run, prompt_id)

        async def body(state: dict[str, str]) -> tuple[m.PromptStatsOut, None]:
            stats = (await self._read_stats(run.keys, [prompt_id]))[prompt_id]
            return _stats_out(prompt_id, stats), None

        return await self._transact(run, body)

    @_fresh
    async def set_evicted(self, run_id: str, prompt_id: int, evicted: bool) -> m.PromptStatsOut:
        """Evict (at once) or restore a prompt by hand; idempotent."""
        run = await self.run(run_id)
        keys = run.keys
        self._check_prompt(run, prompt_id)

        async def body(state: dict[str, str]) -> tuple[m.PromptStatsOut, Writer | None]:
            stats = (await self._read_stats(keys, [prompt_id]))[prompt_id]
            was = stats.status is Status.EVICTED
            if was == evicted and stats.status is not Status.EVICT_PENDING:
                return _stats_out(prompt_id, stats), None
            new = stats.with_status(
                Status.EVICTED if evicted else Status.ACTIVE,
                Outcome.EVICTED if evicted else Outcome.RESTORED,
            )

            def write(pipe: Pipeline) -> None:
                _write_stats(pipe, keys, {prompt_id: new})
                pipe.srem(keys.evict_pending, prompt_id)
                if evicted:
                    pipe.hdel(keys.buffer, prompt_id)
                if was != evicted:
                    pipe.hincrby(keys.state, "evicted", 1 if evicted else -1)

            return _stats_out(prompt_id, new), write

        return await self._transact(run, body)

    @_fresh
    async def add_evidence(
        self, run_id: str, prompt_id: int, evidence: m.EvidenceRequest
    ) -> m.EvidenceResponse:
        """Fold external rewards into a prompt's statistics through the strategy's
        `apply_evidence`; the strategy may restore an evicted prompt. Idempotent by id."""
        run = await self.run(run_id)
        keys = run.keys
        self._check_prompt(run, prompt_id)
        digest = _digest([[float(prompt_id)], evidence.rewards])

        async def body(state: dict[str, str]) -> tuple[m.EvidenceResponse, Writer | None]:
            known = await self.redis.hget(keys.evidence, evidence.evidence_id)
            stats = (await self._read_stats(keys, [prompt_id]))[prompt_id]
            if known is not None:
                if _s(known) != digest:
                    raise Conflict(
                        f"evidence {evidence.evidence_id!r} was already reported with other "
                        "rewards or for another prompt"
                    )
                return _evidence_out(evidence.evidence_id, True, prompt_id, stats), None
            ctx = EvidenceContext(_counters(state), prompt_id, stats, evidence.rewards)
            outcome = run.strategy.apply_evidence(ctx)
            new = outcome.stats
            _check_evidence_status(run.strategy, stats.status, new.status)
            restored = stats.status in _EVICTION and new.status not in _EVICTION

            def write(pipe: Pipeline) -> None:
                _write_stats(pipe, keys, {prompt_id: new})
                _write_counts(pipe, keys, outcome.counts)
                pipe.hset(keys.evidence, evidence.evidence_id, digest)
                if restored:
                    pipe.srem(keys.evict_pending, prompt_id)
                if restored and stats.status is Status.EVICTED:
                    pipe.hincrby(keys.state, "evicted", -1)

            return _evidence_out(evidence.evidence_id, False, prompt_id, new), write

        return await self._transact(run, body)

    @_fresh
    async def summary(self, run_id: str) -> m.RunSummary:
        run = await self.run(run_id)
        keys = run.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.state)
            pipe.hlen(keys.buffer)
            pipe.scard(keys.evict_pending)
            raw, buffer_size, pending = await pipe.execute()
        state = {_s(k): _s(v) for k, v in raw.items()}
        run.check(state)
        counters = _counters(state)
        return m.RunSummary(
            run_id=run_id,
            spec=run.spec,
            step=counters.step,
            epoch=counters.epoch,
            cursor=counters.cursor,
            round=counters.round,
            committed=counters.committed,
            open_plan=state.get("open_plan") or None,
            buffer_size=buffer_size,
            evict_pending=pending,
            counters=dict(sorted(counters.totals.items())),
        )

    # ---- reads ----

    async def _buffer(self, keys: RunKeys) -> list[BufferEntry]:
        raw = await self.redis.hgetall(keys.buffer)
        return sorted((BufferEntry.unpack(_b(v)) for v in raw.values()), key=lambda e: e.seq)

    async def _read_stats(self, keys: RunKeys, ids: Iterable[int]) -> dict[int, PromptStats]:
        unique = list(dict.fromkeys(ids))
        by_bucket: dict[str, tuple[list[int], list[str]]] = {}
        for pid, (bucket, field) in zip(unique, keys.locate(unique), strict=True):
            pids, names = by_bucket.setdefault(bucket, ([], []))
            pids.append(pid)
            names.append(field)
        if not by_bucket:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket, (_, names) in by_bucket.items():
                pipe.hmget(bucket, names)
            answers = await pipe.execute()
        out: dict[int, PromptStats] = {}
        for (pids, _), values in zip(by_bucket.values(), answers, strict=True):
            for pid, raw in zip(pids, values, strict=True):
                out[pid] = PromptStats.unpack(raw)
        return out


@dataclass
class _Rollover:
    keys: RunKeys
    store: AllocatorStore
    counters: Counters
    evicted: list[int]
    flushed: list[int]
    updates: dict[int, PromptStats]

    def write(self, pipe: Pipeline) -> None:
        _write_stats(pipe, self.keys, self.updates)
        pipe.delete(self.keys.buffer, self.keys.evict_pending)
        pipe.hset(self.keys.state, mapping={"epoch": self.counters.epoch, "cursor": 0})
        pipe.hincrby(self.keys.state, "epochs_completed", 1)
        pipe.hincrby(self.keys.state, "evicted", len(self.evicted))
        pipe.hincrby(self.keys.state, "flushed", len(self.flushed))


def _write_stats(pipe: Pipeline, keys: RunKeys, stats: dict[int, PromptStats]) -> None:
    by_bucket: dict[str, dict[str, bytes]] = {}
    ids = list(stats)
    for pid, (bucket, field) in zip(ids, keys.locate(ids), strict=True):
        by_bucket.setdefault(bucket, {})[field] = stats[pid].pack()
    for bucket, mapping in by_bucket.items():
        pipe.hset(bucket, mapping=mapping)  # type: ignore[arg-type]


def _write_counts(pipe: Pipeline, keys: RunKeys, counts: dict[str, int]) -> None:
    for name, increment in counts.items():
        if increment:
            pipe.hincrby(keys.state, name, increment)


def _counters(state: dict[str, str]) -> Counters:
    core = {name: int(state.get(name, 0) or 0) for name in _COUNTER_FIELDS}
    totals = {k: int(v) for k, v in state.items() if k not in _NOT_TOTALS}
    return Counters(**core, totals=totals)


def _after_tail(tail: RoundPlan, plan: RoundPlan) -> RoundPlan:
    """The next epoch's plan, carrying the decisions made on the previous epoch's tail."""
    counts = dict(tail.counts)
    for name, increment in plan.counts.items():
        counts[name] = counts.get(name, 0) + increment
    return replace(plan, stats={**tail.stats, **plan.stats}, counts=counts)


def _evicted(stats: PromptStats) -> PromptStats:
    """Applied at epoch end; a strategy's more specific reason for the eviction is kept."""
    keep = stats.last_outcome is Outcome.EVICTED_POSTERIOR
    return stats.with_status(Status.EVICTED, stats.last_outcome if keep else Outcome.EVICTED)


def _check_evidence_status(strategy: Strategy, old: Status, new: Status) -> None:
    if new is old or (old in _EVICTION and new in _RESTORED_TO):
        return
    raise RuntimeError(
        f"strategy {strategy.name!r} moved a prompt from {old.name} to {new.name} on "
        "evidence; only a restore (EVICTED / EVICT_PENDING to ACTIVE, DEFERRED, EASY) is allowed"
    )


def _b(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _opt_s(value: bytes | str | None) -> str | None:
    return None if value is None else _s(value)


def _item_out(item: PlanItem) -> m.PlanItemOut:
    return m.PlanItemOut(prompt_id=item.prompt_id, role=item.role, n=item.n, reuse=list(item.reuse))


def _check_shape(plan: m.Plan, rewards: list[list[float]]) -> None:
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


def _digest(rewards: Sequence[Sequence[float]]) -> str:
    """A digest of the rewards by value: a retry sending -0.0 for 0, or 1 for 1.0, is the
    same report (`+ 0.0` turns -0.0 into 0.0)."""
    h = hashlib.blake2b(digest_size=16)
    for group in rewards:
        h.update(struct.pack(f"<I{len(group)}d", len(group), *(float(r) + 0.0 for r in group)))
    return h.hexdigest()


def _pack_entries(entries: Sequence[BufferEntry]) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in (e.pack() for e in entries))


def _unpack_entries(raw: bytes | str | None) -> list[BufferEntry]:
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    out, offset = [], 0
    while raw and offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        out.append(BufferEntry.unpack(raw[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return out


def _evidence_out(
    evidence_id: str, duplicate: bool, prompt_id: int, stats: PromptStats
) -> m.EvidenceResponse:
    return m.EvidenceResponse(
        evidence_id=evidence_id, duplicate=duplicate, prompt=_stats_out(prompt_id, stats)
    )


def _stats_out(prompt_id: int, s: PromptStats) -> m.PromptStatsOut:
    def finite(x: float) -> float | None:
        return None if x != x else float(x)

    aux = {"a": s.aux_a, "b": s.aux_b, "step": float(s.aux_step)} if s.aux_step >= 0 else {}
    return m.PromptStatsOut(
        prompt_id=prompt_id,
        status=s.status.name.lower(),
        last_outcome=s.last_outcome.name.lower(),
        rollouts=s.rollouts,
        successes=s.successes,
        reward_mean=s.reward_sum / s.rollouts if s.rollouts else None,
        pilot_pass_rate=finite(s.pilot_pass_rate),
        pilot_std=finite(s.pilot_std),
        last_step=s.last_step,
        all_correct_streak=s.all_correct_streak,
        all_wrong_streak=s.all_wrong_streak,
        strategy_state=aux,
    )


def _decode_keys(keys: RunKeys, chunk: dict[str, str]) -> dict[str, bytes]:
    """Key name -> DUMP payload; Invalid (422) unless every name is a key of the run and
    every value is base64."""
    out: dict[str, bytes] = {}
    for name, value in chunk.items():
        if keys.redis_type(name) is None:
            raise Invalid(f"snapshot key {name!r} is not a key of run {keys.run_id!r}")
        try:
            out[name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(f"snapshot key {name!r}: value is not base64") from None
    return out


def _staged_name(keys: RunKeys, restore_id: str, name: str) -> str:
    """Where a restore stages the run's key `name` (a name under `keys.prefix`)."""
    return f"{keys.restore_prefix}{restore_id}:{name[len(keys.prefix) + 1 :]}"


def _chunks(names: list[T], size: int = 500) -> Iterable[list[T]]:
    return (names[i : i + size] for i in range(0, len(names), size))


async def _scan_names(redis: Redis, pattern: str) -> Any:
    async for key in redis.scan_iter(match=pattern, count=1000):
        yield _s(key)
