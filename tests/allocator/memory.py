"""The pure protocol driven over plain dicts: the store's adapter without Redis.

`MemoryRun` keeps a run's state as the Redis keys would hold it (the state hash as
strings, the buffer, the sets, the records) and answers each request the way
`AllocatorStore._call` does: a view of the parts the request reads, `transition` until it
needs no more statistics, then the delta applied in `Delta`'s order. Property tests run
thousands of protocols through it in milliseconds each; test_adapters.py checks that it
answers as the store does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from services.allocator import models as m
from services.allocator import protocol as p
from services.allocator.records import BufferEntry, PromptStats
from services.allocator.strategies import STRATEGIES

_SETS = ("evict_pending", "step_trained", "released", "step_plans")


@dataclass
class MemoryRun:
    spec: m.RunSpec
    run_id: str = "mem"
    state: dict[str, str] = field(default_factory=dict)
    buffer: dict[int, BufferEntry] = field(default_factory=dict)
    sets: dict[str, set[Any]] = field(default_factory=lambda: defaultdict(set))
    records: dict[tuple[str, str], str | bytes] = field(default_factory=dict)
    hashes: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    stats: dict[int, PromptStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        strategy = STRATEGIES[self.spec.config.strategy](self.spec.config)
        self.info = p.RunInfo(self.run_id, self.spec, strategy)

    def call(self, request: p.Request) -> Any:
        view = self.view(request)
        while True:
            try:
                answer, delta = p.transition(view, self.info, request)
                break
            except p.MissingStats as missing:
                view.stats.update({i: self.stats.get(i, PromptStats()) for i in missing.ids})
        if delta is not None:
            self.apply(delta)
        return answer

    def view(self, request: p.Request) -> p.RunView:
        view = p.view_of(self.state, self.info.strategy)
        reads = request.reads
        if "buffer" in reads:
            view.buffer = sorted(self.buffer.values(), key=lambda e: e.seq)
        for name in _SETS:
            if name in reads:
                value = self.sets[name]
                setattr(view, name, list(value) if name == "step_plans" else frozenset(value))
        rec = view.records
        match request:
            case p.PlanRequest(request_id=rid):
                known = self.hashes["requests"].get(rid)
                rec["known_plan_id"] = known
                if known is not None:
                    rec["known_plan"] = self.records.get(("plan", known))
            case p.ReportRequest(plan_id=pid):
                rec["applied"] = self.hashes["applied"].get(pid)
                for kind in ("result", "plan", "taken"):
                    rec[kind] = self.records.get((kind, pid))
            case p.AbandonRequest(plan_id=pid):
                for kind in ("plan", "taken"):
                    rec[kind] = self.records.get((kind, pid))
            case p.StepRequest():
                rec["last_step_done"] = self.records.get(("last_step_done", ""))
            case p.EvidenceRequest(evidence_id=eid):
                rec["evidence"] = self.hashes["evidence"].get(eid)
        return view

    def apply(self, d: p.Delta) -> None:
        for kind, arg in d.drop:
            if kind in _SETS:
                self.sets[kind].clear()
            elif kind in ("requests", "applied", "evidence"):
                self.hashes[kind].clear()
            else:
                self.records.pop((kind, arg), None)
        if d.clear_buffer:
            self.buffer.clear()
        if d.clear_evict_pending:
            self.sets["evict_pending"].clear()
        if d.clear_released:
            self.sets["released"].clear()
        for pid in d.buffer_del:
            self.buffer.pop(pid, None)
        self.sets["evict_pending"] -= set(d.evict_pending_del)
        # Through the records' binary form, as Redis holds them (float32 fields).
        self.stats.update({pid: PromptStats.unpack(st.pack()) for pid, st in d.stats.items()})
        self.buffer.update({e.prompt_id: BufferEntry.unpack(e.pack()) for e in d.buffer_put})
        self.sets["evict_pending"] |= set(d.evict_pending_add)
        self.sets["step_trained"] |= set(d.step_trained_add)
        self.sets["released"] |= set(d.released_add)
        self.sets["step_plans"] |= set(d.step_plans_add)
        self.records.update(d.records)
        for kind, name, value in d.fields:
            self.hashes[kind][name] = value
        self.state.update({k: str(v) for k, v in d.set_fields.items()})
        for name, increment in d.add.items():
            self.state[name] = str(int(self.state.get(name, 0)) + increment)
        self.state["version"] = str(int(self.state.get("version", 0)) + 1)

    # the store's calls, by name

    def plan(self, request_id: str) -> m.Plan:
        plan: m.Plan = self.call(p.PlanRequest(request_id))
        return plan

    def report(self, plan_id: str, rewards: list[list[float]]) -> tuple[m.ResultsResponse, bool]:
        answer: tuple[m.ResultsResponse, bool] = self.call(p.ReportRequest(plan_id, rewards))
        return answer

    def complete_step(self, step: int) -> m.StepCompleteResponse:
        done: m.StepCompleteResponse = self.call(p.StepRequest(step))
        return done

    def complete_epoch(self) -> m.EpochCompleteResponse:
        done: m.EpochCompleteResponse = self.call(p.EpochRequest())
        return done

    def set_evicted(self, prompt_id: int, evicted: bool) -> PromptStats:
        stats: PromptStats = self.call(p.EvictRequest(prompt_id, evicted))
        return stats
