"""Score a batch: extract and normalise every item, judge each distinct pair once.

An RL batch holds G rollouts per prompt with only a few distinct final answers, and a
symbolic check costs 10-100+ ms. So, per request:
1. each item's answer is extracted and normalised (cheap, `answers.py`), and each
   distinct reference once;
2. the fast path (string and number comparison) decides what it can;
3. the remaining distinct (task, reference, answer) triples are looked up in a bounded
   LRU of earlier symbolic verdicts, and only the misses go to the worker pool, each once,
   cheapest-looking first so that a hostile item cannot hold the others back.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from services.verifier import answers
from services.verifier.answers import Reason, Task
from services.verifier.models import ScoreItem, ScoreResult
from services.verifier.pool import WorkerPool
from services.verifier.settings import VerifierSettings

Key = tuple[Task, str, str]
Path = Literal["fast", "cache", "symbolic"]
# Verdicts that say something about the pair itself, not about the load of the moment.
_CACHEABLE: frozenset[Reason] = frozenset({"match", "mismatch", "parse_error", "too_complex"})


@dataclass
class _Prepared:
    extracted: str | None
    boxed: bool
    verdict: answers.Verdict | None = None
    key: Key | None = None


class VerdictCache:
    """A bounded LRU of symbolic verdicts, shared by all requests of one process."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Key, Reason] = OrderedDict()

    def get(self, key: Key) -> Reason | None:
        reason = self._data.get(key)
        if reason is not None:
            self._data.move_to_end(key)
        return reason

    def put(self, key: Key, reason: Reason) -> None:
        if self.size <= 0 or reason not in _CACHEABLE:
            return
        self._data[key] = reason
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def _cost(key: Key) -> tuple[int, int]:
    # Powers, factorials and length are what make sympy slow; run those last.
    _, reference, answer = key
    risky = 10 * sum(answer.count(c) for c in "^!") + answer.count("\\")
    return risky, len(answer) + len(reference)


class Scorer:
    """Turns ScoreItems into ScoreResults using the fast path, the cache and the pool."""

    def __init__(self, settings: VerifierSettings, pool: WorkerPool) -> None:
        self.settings, self.pool = settings, pool
        self.cache = VerdictCache(settings.cache_size)

    def _reference(self, item: ScoreItem, seen: dict[tuple[Task, str], str]) -> str:
        key = (item.task, item.reference)
        if key not in seen:
            raw = answers.extract_reference(answers.sanitize(item.reference), item.task)
            seen[key] = answers.normalize(raw)
        return seen[key]

    def _prepare_one(self, item: ScoreItem, reference: str) -> _Prepared:
        s = self.settings
        found = answers.extract_answer(answers.sanitize(item.response), item.task)
        if found.text is None:
            return _Prepared(None, False, answers.Verdict(False, "no_answer"))
        # A hostile 1 MB box is not worth echoing back in full.
        prepared = _Prepared(found.text[: s.max_answer_chars], found.boxed)
        answer = answers.normalize(found.text)
        if answers.too_complex(answer, s.max_answer_chars, s.max_answer_depth):
            prepared.verdict = answers.Verdict(False, "too_complex")
        elif answers.too_complex(reference, s.max_chars, s.max_answer_depth * 4):
            prepared.verdict = answers.Verdict(False, "parse_error")
        else:
            prepared.verdict = answers.fast_verdict(
                reference, answer, item.task, rel_tol=s.numeric_rel_tol, abs_tol=s.numeric_abs_tol
            )
            prepared.key = (item.task, reference, answer)
        return prepared

    def prepare(self, items: Sequence[ScoreItem]) -> list[_Prepared]:
        """The CPU-bound part: extraction, normalisation, fast verdicts."""
        seen: dict[tuple[Task, str], str] = {}
        return [self._prepare_one(item, self._reference(item, seen)) for item in items]

    async def _symbolic(self, keys: set[Key], deadline: float) -> dict[Key, Reason]:
        ordered = sorted(keys, key=_cost)
        timeout = self.settings.timeout_s
        reasons = await asyncio.gather(
            *(self.pool.judge(ref, ans, timeout, deadline) for _, ref, ans in ordered)
        )
        for key, reason in zip(ordered, reasons, strict=True):
            self.cache.put(key, reason)
        return dict(zip(ordered, reasons, strict=True))

    async def score(self, items: Sequence[ScoreItem]) -> list[tuple[ScoreResult, Path]]:
        """Results in item order, each with the path that decided it."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        prepared = await asyncio.to_thread(self.prepare, items)
        pending = {p.key for p in prepared if p.verdict is None and p.key is not None}
        cached = {key: r for key in pending if (r := self.cache.get(key)) is not None}
        judged = await self._symbolic(pending - cached.keys(), deadline)
        return [self._result(p, cached, judged) for p in prepared]

    def _result(
        self, p: _Prepared, cached: dict[Key, Reason], judged: dict[Key, Reason]
    ) -> tuple[ScoreResult, Path]:
        path: Path = "fast"
        if p.verdict is not None:
            verdict = p.verdict
        else:
            assert p.key is not None
            path = "cache" if p.key in cached else "symbolic"
            reason = cached.get(p.key) or judged[p.key]
            verdict = answers.Verdict(reason == "match", reason)
        reward = answers.reward(verdict.correct, p.boxed, self.settings.format_bonus)
        result = ScoreResult(
            reward=reward, correct=verdict.correct, extracted=p.extracted, reason=verdict.reason
        )
        return result, path
