"""The worker pool and the scorer with real worker processes (no HTTP)."""

from __future__ import annotations

import asyncio
import time

from services.verifier.models import ScoreItem
from services.verifier.pool import WorkerPool
from services.verifier.scoring import Scorer
from services.verifier.settings import VerifierSettings

HOSTILE = "9^{9^{9^{9}}}"


async def test_hung_worker_is_killed_and_the_rest_go_on() -> None:
    pool = WorkerPool(2, 4, memory_mb=2048, stuck_after_s=0.2)
    await pool.start()
    try:
        timeout = 1.0
        deadline = time.monotonic() + 10
        start = time.monotonic()
        jobs = [pool.judge("3", HOSTILE, timeout, deadline)]
        jobs += [pool.judge("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", timeout, deadline)] * 6
        reasons = await asyncio.gather(*jobs)
        elapsed = time.monotonic() - start
        assert reasons[0] == "timeout"
        assert reasons[1:] == ["match"] * 6
        assert elapsed < timeout + 1.0
        assert pool.kills == 1
        await asyncio.sleep(0.5)  # the replacement starts in the background
        assert pool.workers == 2
        assert await pool.judge("x+1", "1+x", timeout, time.monotonic() + 5) == "match"

        # A request that goes away mid-check must not leave a stale answer in a pipe.
        abandoned = asyncio.create_task(pool.judge("3", HOSTILE, 5.0, time.monotonic() + 5))
        await asyncio.sleep(0.2)
        abandoned.cancel()
        await asyncio.sleep(0.5)
        assert pool.workers == 2
        checks = [pool.judge("x^2-1", "(x-1)(x+1)", timeout, time.monotonic() + 5)] * 4
        assert await asyncio.gather(*checks) == ["match"] * 4
    finally:
        await pool.close()
    assert pool.workers == 0


async def test_scorer_dedups_and_caches() -> None:
    settings = VerifierSettings(workers=1, max_workers=2, timeout_s=2.0, request_timeout_s=5.0)
    pool = WorkerPool(settings.workers, settings.max_workers)
    await pool.start()
    try:
        scorer = Scorer(settings, pool)
        group = ["\\boxed{(x-1)(x+1)}", "\\boxed{x^2 - 1}", "\\boxed{(x-1)^2}",
                 "no answer", "\\boxed{(x+1)(x-1)}"] * 8  # fmt: skip
        items = [ScoreItem(response=r, reference="x^2-1") for r in group]
        first = await scorer.score(items)
        paths = {path for _, path in first}
        assert [r.reason for r, _ in first[:5]] == ["match", "match", "mismatch", "no_answer",
                                                     "match"]  # fmt: skip
        assert "symbolic" in paths and "fast" in paths
        assert len(scorer.cache) == 2  # two factorised spellings needed sympy, once each
        second = await scorer.score(items)
        assert [r for r, _ in second] == [r for r, _ in first]
        assert {path for _, path in second} == {"fast", "cache"}
    finally:
        await pool.close()
