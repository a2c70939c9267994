"""`pilot-commit bench verifier`: scoring throughput and latency under hostile input.

Two measurements, in one run and on the same machine:
1. Throughput on realistic RL batches (default 3 x 64 prompts x 32 rollouts, MATH-style
   references; per group a few distinct final answers: correct ones in several notations,
   wrong ones, and no answer). Through the service (a real process, cold verdict cache)
   versus math-verify's `parse` + `verify` on every item in this process, which is what
   TRL's accuracy reward does. Verdicts of the two are compared as a sanity check.
2. Latency of 256-item requests of fresh prompts of which 1% are hostile (exponent
   towers, huge powers, 10,000 nested braces, a 1 MB response): p50, p99 and max, which
   should stay under the per-item timeout plus one second.

With `--agreement` it does neither and instead compares the project's verdict with plain
math-verify's on every case of the verdict table and the regression corpus, printing the
agreement rate and every disagreement with the documented rule that decides it
(`agreement.py`; seconds, in 2 worker processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.common.procs import free_port, start_service
from services.verifier.client import VerifierClient
from services.verifier.models import ScoreItem, ScoreResult
from services.verifier.settings import VerifierSettings

# Per problem family: reference, correct spellings, wrong answers, all from an integer k
# so that every prompt of the batch has its own answers (no help from the verdict cache).
Family = tuple[str, list[str], list[str]]


def _families(k: int) -> list[Family]:
    n = 7 * k + 3
    return [
        (f"\\frac{{{k}}}{{{k + 1}}}",
         [f"\\frac{{{k}}}{{{k + 1}}}", f"\\dfrac{{{k}}}{{{k + 1}}}",
          f"\\frac{{{2 * k}}}{{{2 * k + 2}}}"],
         [f"\\frac{{{k + 1}}}{{{k}}}", f"\\frac{{{k}}}{{{k + 2}}}"]),
        (f"{k}\\sqrt{{2}}",
         [f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}", f"\\frac{{{2 * k}}}{{\\sqrt{{2}}}}"],
         [f"{k}\\sqrt{{3}}", f"{2 * k}"]),
        (f"\\frac{{{k}\\pi}}{{3}}", [f"\\frac{{{k}\\pi}}{{3}}", f"\\frac{{{k}}}{{3}}\\pi"],
         [f"\\frac{{{k}\\pi}}{{6}}", f"{k}\\pi"]),
        (f"[-{k}, {k + 1})", [f"\\left[-{k}, {k + 1}\\right)", f"[-{k},{k + 1})"],
         [f"(-{k},{k + 1})", f"[-{k},{k + 1}]"]),
        (f"x^2+{2 * k}x+{k * k}", [f"(x+{k})^2", f"x^2 + {2 * k}x + {k * k}"],
         [f"(x-{k})^2", f"x^2+{k * k}"]),
        (f"{n}", [f"{n}", f"{n}.0", f"{n} \\text{{ units}}"], [f"{n + 1}", f"{n * 10}"]),
        (f"\\{{{k}, -{k}\\}}", [f"\\{{-{k},{k}\\}}", f"-{k}, {k}"], [f"\\{{{k}\\}}", f"{k}"]),
        (f"({k}, -2)", [f"\\left({k},-2\\right)", f"({k}, -2)"], [f"(-2,{k})", f"({k},2)"]),
    ]  # fmt: skip


_FILLER = (
    "Let me work through this step by step. First, I restate the problem and identify "
    "the quantities involved. Then I set up the equations and simplify carefully. "
)


def _response(answer: str | None, rng: random.Random) -> str:
    reasoning = _FILLER * rng.randint(2, 8)
    if answer is None:
        return reasoning + "I am not sure how to finish this."
    return reasoning + f"Therefore, the final answer is $\\boxed{{{answer}}}$."


def rl_batch(prompts: int, rollouts: int, seed: int, offset: int = 0) -> list[ScoreItem]:
    """G rollouts per prompt: ~50% correct in 2-3 notations, ~35% wrong, ~15% no answer."""
    rng = random.Random(seed)
    items = []
    for p in range(prompts):
        families = _families(offset + p // 8 + 2)
        reference, correct, wrong = families[p % len(families)]
        for _ in range(rollouts):
            roll = rng.random()
            answer = (rng.choice(correct) if roll < 0.5 else rng.choice(wrong) if roll < 0.85
                      else None)  # fmt: skip
            items.append(ScoreItem(response=_response(answer, rng), reference=reference))
    return items


def _hostile(rng: random.Random) -> str:
    k = rng.randint(2, 10_000)
    return rng.choice([
        f"\\boxed{{9^{{9^{{9^{{{k}}}}}}}}}",
        f"\\boxed{{(x+1)^{{{100_000 + k}}}}}",
        f"\\boxed{{\\sum_{{n=1}}^{{10^{{12}}}} n^{{n+{k}}}}}",
        f"\\boxed{{{10**8 + k}!}}",
        "\\boxed{" + "{" * 10_000 + str(k) + "}" * 10_000 + "}",
        "x" * 1_000_000 + f" \\boxed{{{k}}}",
    ])  # fmt: skip


# ---------------------------------------------------------------- baseline


def baseline_verdicts(items: list[ScoreItem]) -> tuple[list[bool], float]:
    """math-verify on every item in this process, as TRL's accuracy reward does."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]
    verdicts = []
    start = time.perf_counter()
    for i, item in enumerate(items):
        gold = parse(f"\\boxed{{{item.reference}}}", extraction_mode="first_match")
        answer = parse(item.response, extraction_config=config, extraction_mode="first_match")
        verdicts.append(bool(answer) and verify(gold, answer))
        if (i + 1) % 256 == 0:
            print(f"  baseline: {i + 1}/{len(items)} items", file=sys.stderr, flush=True)
    return verdicts, time.perf_counter() - start


# ----------------------------------------------------------------- service


@dataclass
class HostileRun:
    latencies_ms: list[float]
    hostile_timeouts: int
    innocent_timeouts: int


async def _throughput(url: str, items: list[ScoreItem]) -> tuple[list[ScoreResult], float]:
    async with VerifierClient(url, timeout=120.0) as client:
        start = time.perf_counter()
        results = await client.score(items)
        return results, time.perf_counter() - start


async def _hostile_requests(url: str, requests: int, seed: int) -> HostileRun:
    rng = random.Random(seed + 1)
    run = HostileRun([], 0, 0)
    async with VerifierClient(url, timeout=120.0) as client:
        for r in range(requests):
            items = rl_batch(8, 32, seed + 100 + r, offset=1000 + 40 * r)
            bad = set(rng.sample(range(len(items)), max(1, len(items) // 100)))
            for i in bad:
                items[i] = ScoreItem(response=_hostile(rng), reference="3")
            start = time.perf_counter()
            results = await client.score(items)
            run.latencies_ms.append((time.perf_counter() - start) * 1000)
            timeouts = {i for i, res in enumerate(results) if res.reason == "timeout"}
            run.hostile_timeouts += len(timeouts & bad)
            run.innocent_timeouts += len(timeouts - bad)
            print(f"  hostile request {r + 1}/{requests}: {run.latencies_ms[-1]:.0f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
    return run


def _items_by_path(url: str) -> dict[str, float]:
    """Items scored so far per deciding path (fast, cache, symbolic), from /metrics."""
    paths: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        found = re.match(r'verifier_items_total\{path="(\w+)",reason="\w+"\} (\S+)', line)
        if found:
            paths[found.group(1)] = paths.get(found.group(1), 0.0) + float(found.group(2))
    return paths


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _throughput_all(
    url: str, batches: list[list[ScoreItem]]
) -> tuple[list[ScoreResult], float]:
    results: list[ScoreResult] = []
    total = 0.0
    for batch in batches:
        batch_results, seconds = await _throughput(url, batch)
        results += batch_results
        total += seconds
    return results, total


def _measure(args: argparse.Namespace, batches: list[list[ScoreItem]]) -> dict[str, float | int]:
    settings = VerifierSettings()
    items = [item for batch in batches for item in batch]
    with tempfile.TemporaryDirectory(prefix="verifier-bench-") as logs:
        port = free_port()
        print("starting the verifier service ...", file=sys.stderr, flush=True)
        proc = start_service("verifier", ["verifier", "serve"], port=port, log_dir=Path(logs))
        url = f"http://127.0.0.1:{port}"
        try:
            print(f"scoring {len(batches)} batches of {len(batches[0])} items through the "
                  "service ...", file=sys.stderr, flush=True)  # fmt: skip
            results, cold_s = asyncio.run(_throughput_all(url, batches))
            paths = _items_by_path(url)
            _, warm_s = asyncio.run(_throughput(url, batches[0]))
            hostile = asyncio.run(_hostile_requests(url, args.hostile_requests, args.seed))
        finally:
            proc.stop()
    print(f"math-verify in process on {len(items)} items ...", file=sys.stderr, flush=True)
    baseline, base_s = baseline_verdicts(items)
    disagree = sum(r.correct != b for r, b in zip(results, baseline, strict=True))
    lat = hostile.latencies_ms
    return {
        "batch_items": len(batches[0]), "batches": len(batches), "items_per_s": len(items) / cold_s,
        "items_per_s_warm_cache": len(batches[0]) / warm_s,
        "baseline_items_per_s": len(items) / base_s, "speedup": base_s / cold_s,
        "verdicts_differing_from_baseline": disagree,
        "correct_fraction": sum(r.correct for r in results) / len(results),
        "items_decided_by_sympy": int(paths.get("symbolic", 0)),
        "p50_ms_hostile": statistics.median(lat), "p99_ms_hostile": _percentile(lat, 0.99),
        "max_ms_hostile": max(lat), "hostile_requests": len(lat),
        "hostile_items_timed_out": hostile.hostile_timeouts,
        "innocent_items_timed_out": hostile.innocent_timeouts,
        "timeout_s": settings.timeout_s, "workers": settings.workers,
    }  # fmt: skip


def _print_table(figures: dict[str, float | int]) -> None:
    width = max(len(name) for name in figures)
    print(f"\n{'figure':<{width}}  value")
    for name, value in figures.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {shown}")


def _agreement(json_path: Path | None) -> int:
    from services.verifier import agreement

    outcomes = agreement.judge_all(agreement.table_items())
    rate, found, text = agreement.report(outcomes)
    print(text)
    if json_path:
        rows = [{"rule": d.rule, "source": d.outcome.item.source, "task": d.outcome.item.task,
                 "response": d.outcome.item.response, "reference": d.outcome.item.reference,
                 "project": d.outcome.project, "project_reason": d.outcome.project_reason,
                 "math_verify": d.outcome.math_verify} for d in found]  # fmt: skip
        figures = {"cases": len(outcomes), "agreement": rate, "disagreements": rows}
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pilot-commit bench verifier", description=__doc__)
    parser.add_argument("--prompts", type=int, default=64, help="prompts in the RL batch")
    parser.add_argument("--rollouts", type=int, default=32, help="rollouts per prompt")
    parser.add_argument("--hostile-requests", type=int, default=20,
                        help="256-item requests with 1%% hostile items")  # fmt: skip
    parser.add_argument("--batches", type=int, default=3,
                        help="distinct batches scored cold, one after the other")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--agreement", action="store_true",
                        help="compare verdicts with math-verify on the test tables")  # fmt: skip
    parser.add_argument("--suite", type=Path,
                        help="with --agreement: a JSONL suite (verifier_suite.py)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.agreement and args.suite:
        from pilot_commit.bench.verifier_suite import run_suite

        return run_suite(args.suite, args.json)
    if args.agreement:
        return _agreement(args.json)
    # Each batch has its own answers (offset), so every batch meets a cold verdict cache.
    batches = [rl_batch(args.prompts, args.rollouts, args.seed + b, offset=100 * b)
               for b in range(args.batches)]  # fmt: skip
    figures = _measure(args, batches)
    _print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0
