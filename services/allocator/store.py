"""A run's state in Redis: a thin adapter around the pure protocol (`protocol.transition`).

Every mutation is an optimistic compare-and-set: read the run's state hash (its
`version` and generation), read the parts of the state the request declares
(`Request.reads`) into a `RunView`, let `transition` decide, and apply its `Delta` with
one script (`cas.SCRIPT`) that first checks the version and generation are still the
ones read, then writes the delta and bumps `state.version`. If any other replica mutated the
run in between, the script writes nothing and the mutation is retried from fresh reads,
so two allocator replicas can never hand out the same cursor position or buffer entry
twice. Every call also checks the run's generation (`runs.Run.check`).

Why a script and not WATCH + MULTI/EXEC: see `cas`.

Idempotency: plans are keyed by the caller's request id, results by plan id (with a
digest of the rewards), step completion by step number; a retry returns the stored
answer and changes nothing. Runs (create, delete) are in `runs`, snapshots and restores
in `snapshot`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.allocator import models as m
from services.allocator import protocol as p
from services.allocator.cas import REFUSED, Commands
from services.allocator.keys import RunKeys
from services.allocator.pool import pool_view
from services.allocator.protocol import Conflict, Invalid, NotFound
from services.allocator.records import BufferEntry, PromptStats
from services.allocator.runs import Run, StaleRun, fresh, s
from services.allocator.snapshot import RunSnapshots

__all__ = ["AllocatorStore", "Conflict", "Invalid", "NotFound", "Run", "StaleRun"]


# Statistics buckets read in one transaction by `pool` (64 prompts each: 65,536 prompts).
POOL_ATOMIC_BUCKETS = 1024


class AllocatorStore(RunSnapshots):
    # ---- the protocol's calls ----

    @fresh
    async def plan(self, run_id: str, request_id: str) -> m.Plan:
        plan: m.Plan = await self._call(run_id, p.PlanRequest(request_id))
        return plan

    async def report(
        self, run_id: str, plan_id: str, rewards: list[list[float]]
    ) -> m.ResultsResponse:
        """Apply a plan's rewards (one list per plan item, `n` rewards each, in [0, 1]);
        a retry with the same rewards gets the stored answer. Errors: NotFound (404),
        Conflict (409: other rewards, or the plan is not open), Invalid (422: shape)."""
        return (await self.report_applied(run_id, plan_id, rewards))[0]

    @fresh
    async def report_applied(
        self, run_id: str, plan_id: str, rewards: list[list[float]]
    ) -> tuple[m.ResultsResponse, bool]:
        """`report`, and whether this call applied the rewards (False for a retry)."""
        answer: tuple[m.ResultsResponse, bool] = await self._call(
            run_id, p.ReportRequest(plan_id, rewards)
        )
        return answer

    @fresh
    async def abandon(self, run_id: str, plan_id: str) -> m.Plan:
        """Close an open plan without results; its commit prompts go back to the buffer."""
        plan: m.Plan = await self._call(run_id, p.AbandonRequest(plan_id))
        return plan

    @fresh
    async def complete_step(self, run_id: str, step: int) -> m.StepCompleteResponse:
        done: m.StepCompleteResponse = await self._call(run_id, p.StepRequest(step))
        return done

    @fresh
    async def complete_epoch(self, run_id: str) -> m.EpochCompleteResponse:
        done: m.EpochCompleteResponse = await self._call(run_id, p.EpochRequest())
        return done

    @fresh
    async def prompt(self, run_id: str, prompt_id: int) -> m.PromptStatsOut:
        run = await self.run(run_id)
        self._check_prompt(run, prompt_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(run.keys.state)
            pipe.hmget(*run.keys.locate([prompt_id])[0])
            raw, (record,) = await pipe.execute()
        run.check({s(k): s(v) for k, v in raw.items()})
        return _stats_out(run, prompt_id, PromptStats.unpack(record))

    @fresh
    async def set_evicted(self, run_id: str, prompt_id: int, evicted: bool) -> m.PromptStatsOut:
        """Evict (at once) or restore a prompt by hand; idempotent."""
        self._check_prompt(await self.run(run_id), prompt_id)
        stats: PromptStats = await self._call(run_id, p.EvictRequest(prompt_id, evicted))
        return _stats_out(await self.run(run_id), prompt_id, stats)

    @fresh
    async def add_evidence(
        self, run_id: str, prompt_id: int, evidence: m.EvidenceRequest
    ) -> m.EvidenceResponse:
        """Fold external rewards into a prompt's statistics through the strategy's
        `apply_evidence`; the strategy may restore an evicted prompt. Idempotent by id."""
        self._check_prompt(await self.run(run_id), prompt_id)
        request = p.EvidenceRequest(prompt_id, evidence.evidence_id, evidence.rewards)
        stats, duplicate = await self._call(run_id, request)
        return m.EvidenceResponse(
            evidence_id=evidence.evidence_id,
            duplicate=duplicate,
            prompt=_stats_out(await self.run(run_id), prompt_id, stats),
        )

    @fresh
    async def summary(self, run_id: str) -> m.RunSummary:
        run = await self.run(run_id)
        keys = run.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.state)
            pipe.hlen(keys.buffer)
            pipe.scard(keys.evict_pending)
            raw, buffer_size, pending = await pipe.execute()
        return _summary(run, raw, buffer_size, pending)

    @fresh
    async def pool(self, run_id: str, bins: int = 20) -> m.PoolView:
        """The pool's histograms (`pool.pool_view`): reads every statistics bucket of the
        run, ~40 bytes per prompt seen. Up to `POOL_ATOMIC_BUCKETS` buckets (65k prompts)
        in one transaction with the state; a larger run's buckets are read in chunks after
        it, so its counts may mix a few records of the next round."""
        run = await self.run(run_id)
        keys = run.keys
        buckets = keys.stats_buckets(run.spec.num_prompts)
        head, rest = (buckets, []) if len(buckets) <= POOL_ATOMIC_BUCKETS else ([], buckets)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.state)
            pipe.hgetall(keys.buffer)
            pipe.scard(keys.evict_pending)
            for bucket in head:
                pipe.hvals(bucket)
            raw, buffer, pending, *values = await pipe.execute()
        for start in range(0, len(rest), POOL_ATOMIC_BUCKETS):
            async with self.redis.pipeline(transaction=False) as pipe:
                for bucket in rest[start : start + POOL_ATOMIC_BUCKETS]:
                    pipe.hvals(bucket)
                values += await pipe.execute()
        summary = _summary(run, raw, len(buffer), pending)
        records = (PromptStats.unpack(_b(v)) for bucket in values for v in bucket)
        entries = (BufferEntry.unpack(_b(v)) for v in buffer.values())
        return pool_view(run.spec, summary, records, entries, bins)

    def _check_prompt(self, run: Run, prompt_id: int) -> None:
        if not 0 <= prompt_id < run.spec.num_prompts:
            raise NotFound(
                f"prompt {prompt_id} is not in run {run.run_id!r} "
                f"(ids are 0..{run.spec.num_prompts - 1})"
            )

    # ---- read -> transition -> apply the delta if the run is as read ----

    async def _call(self, run_id: str, request: p.Request) -> Any:
        """The answer of `protocol.transition` for `request`, its delta committed.

        StaleRun (handled by `fresh`) when the cached config is not the run's current
        incarnation; Conflict (409) when the run keeps changing under the transaction.
        """
        run = await self.run(run_id)
        info = p.RunInfo(run.run_id, run.spec, run.strategy)
        keys = run.keys
        for _ in range(self.max_attempts):
            raw = await self.redis.hgetall(keys.state)
            state = {s(k): s(v) for k, v in raw.items()}
            run.check(state)
            try:
                view = await self._view(run, state, request)
                while True:
                    try:
                        answer, delta = p.transition(view, info, request)
                        break
                    except p.MissingStats as missing:
                        view.stats.update(await self._read_stats(keys, missing.ids))
            except Exception:
                # The reads are not one snapshot: if another replica committed meanwhile
                # they may disagree. Retry then.
                now = await self.redis.hmget(keys.state, ["version", "gen"])
                if now != [raw.get(b"version"), raw.get(b"gen")]:
                    continue
                raise
            if delta is None:
                return answer
            commands = Commands()
            self._apply(commands, keys, delta)
            if await self._cas(keys=[keys.state], args=commands.args(state, "b")) != REFUSED:
                return answer
        raise Conflict("the run is being changed by many requests at once; retry")

    async def _view(self, run: Run, state: dict[str, str], request: p.Request) -> p.RunView:
        """The parts of the run's state `request` reads, in one pipeline."""
        keys = run.keys
        view = p.view_of(state, run.strategy)
        reads = request.reads
        wanted: list[tuple[str, Any]] = []
        async with self.redis.pipeline(transaction=False) as pipe:

            def want(name: str, command: Any) -> None:
                wanted.append((name, command))

            if "buffer" in reads:
                want("buffer", pipe.hgetall(keys.buffer))
            for name, key in (
                ("evict_pending", keys.evict_pending),
                ("step_trained", keys.step_trained),
                ("released", keys.released),
                ("step_plans", keys.step_plans),
            ):
                if name in reads:
                    want(name, pipe.smembers(key))
            match request:
                case p.PlanRequest(request_id=rid):
                    want("known_plan_id", pipe.hget(keys.requests, rid))
                case p.ReportRequest(plan_id=pid):
                    want("applied", pipe.hget(keys.applied, pid))
                    want("result", pipe.get(keys.result(pid)))
                    want("plan", pipe.get(keys.plan(pid)))
                    want("taken", pipe.get(keys.taken(pid)))
                case p.AbandonRequest(plan_id=pid):
                    want("plan", pipe.get(keys.plan(pid)))
                    want("taken", pipe.get(keys.taken(pid)))
                case p.StepRequest():
                    want("last_step_done", pipe.get(keys.last_step_done))
                case p.EvidenceRequest(evidence_id=eid):
                    want("evidence", pipe.hget(keys.evidence, eid))
            values = await pipe.execute()
        for (name, _), value in zip(wanted, values, strict=True):
            if name == "buffer":
                entries = (BufferEntry.unpack(_b(v)) for v in value.values())
                view.buffer = sorted(entries, key=lambda e: e.seq)
            elif name == "step_plans":
                view.step_plans = [s(x) for x in value]
            elif name in ("evict_pending", "step_trained", "released"):
                setattr(view, name, frozenset(int(x) for x in value))
            else:
                view.records[name] = value
        known = view.records.get("known_plan_id")
        if known is not None:
            view.records["known_plan"] = await self.redis.get(keys.plan(s(known)))
        return view

    def _apply(self, c: Commands, keys: RunKeys, d: p.Delta) -> None:
        """The writes of `d` as commands of `cas.SCRIPT`, in the order `Delta` documents."""
        names = [self._key(keys, kind, arg) for kind, arg in d.drop]
        if d.clear_buffer:
            names.append(keys.buffer)
        if d.clear_evict_pending:
            names.append(keys.evict_pending)
        if d.clear_released:
            names.append(keys.released)
        c.delete(names)
        if d.buffer_del:
            c.variadic("HDEL", keys.buffer, list(d.buffer_del))
        if d.evict_pending_del:
            c.variadic("SREM", keys.evict_pending, list(d.evict_pending_del))
        _write_stats(c, keys, d.stats)
        if d.buffer_put:
            c.hset(keys.buffer, {e.prompt_id: e.pack() for e in d.buffer_put})
        for key, members in (
            (keys.evict_pending, d.evict_pending_add),
            (keys.step_trained, d.step_trained_add),
            (keys.released, d.released_add),
            (keys.step_plans, d.step_plans_add),
        ):
            if members:
                c.variadic("SADD", key, list(members))
        for (kind, arg), value in d.records.items():
            if kind == "last_step_done":
                c.add("SET", self._key(keys, kind, arg), value)
            else:
                c.add("SET", self._key(keys, kind, arg), value, "EX", self.ttl_s)
        for kind, field, value in d.fields:
            c.add("HSET", self._key(keys, kind, ""), field, value)
        if d.set_fields:
            c.hset(keys.state, dict(d.set_fields))
        for name, increment in d.add.items():
            c.add("HINCRBY", keys.state, name, increment)

    @staticmethod
    def _key(keys: RunKeys, kind: str, arg: str) -> str:
        if kind in ("plan", "result", "taken"):
            return str(getattr(keys, kind)(arg))
        return str(getattr(keys, kind))

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


def _summary(run: Run, raw: dict[Any, Any], buffer_size: int, pending: int) -> m.RunSummary:
    """The run's summary from its state hash as read (checked against the cached config)."""
    state = {s(k): s(v) for k, v in raw.items()}
    run.check(state)
    counters = p.counters_from(state, run.strategy.run_state_fields)
    return m.RunSummary(
        run_id=run.run_id,
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
        strategy_state=run.strategy.describe_run_state(counters),
    )


def _write_stats(c: Commands, keys: RunKeys, stats: dict[int, PromptStats]) -> None:
    by_bucket: dict[str, dict[str, bytes]] = {}
    ids = list(stats)
    for pid, (bucket, field) in zip(ids, keys.locate(ids), strict=True):
        by_bucket.setdefault(bucket, {})[field] = stats[pid].pack()
    for bucket, mapping in by_bucket.items():
        c.hset(bucket, mapping)


def _b(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _stats_out(run: Run, prompt_id: int, st: PromptStats) -> m.PromptStatsOut:
    def finite(x: float) -> float | None:
        return None if x != x else float(x)

    return m.PromptStatsOut(
        prompt_id=prompt_id,
        status=st.status.name.lower(),
        last_outcome=st.last_outcome.name.lower(),
        rollouts=st.rollouts,
        successes=st.successes,
        reward_mean=st.reward_sum / st.rollouts if st.rollouts else None,
        pilot_pass_rate=finite(st.pilot_pass_rate),
        pilot_std=finite(st.pilot_std),
        last_step=st.last_step,
        all_correct_streak=st.all_correct_streak,
        all_wrong_streak=st.all_wrong_streak,
        strategy_state=run.strategy.describe_prompt_state(st),
    )
