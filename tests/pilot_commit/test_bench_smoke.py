"""Every `pilot-commit bench` command runs, at its smallest sizes, and writes what it says.

Benchmarks are commands, not tests (their figures are read by people), so nothing else
runs them; without this, one can break unnoticed (`bench allocator` without `--cluster`
once crashed after printing its table, writing no JSON). Each runs as the console script
runs it, in seconds, and its JSON is checked for its fields and finite numbers. The
efficiency benchmark has its own tests (test_efficiency_cells.py, real cells).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

MAIN = "import sys; from pilot_commit.cli import main; sys.exit(main())"

# name -> (smallest arguments, fields its JSON must have)
BENCHES: dict[str, tuple[list[str], set[str]]] = {
    "allocator": (
        ["--prompts", "2000,5000", "--steps", "1"],
        {"pools", "plan_p99_ms", "results_p99_ms", "rewards_per_s", "redis_bytes_per_prompt",
         "plan_p99_growth", "results_p99_growth"},
    ),
    "verifier": (
        ["--prompts", "4", "--rollouts", "4", "--hostile-requests", "1", "--batches", "1"],
        {"items_per_s", "baseline_items_per_s", "speedup", "p99_ms_hostile",
         "verdicts_differing_from_baseline", "innocent_items_timed_out"},
    ),
    "generation": (
        ["--clients", "2", "--n", "2", "--max-tokens", "4", "--rounds", "1", "--updates", "1"],
        {"server_tokens_per_s", "inprocess_tokens_per_s", "ratio", "weight_update_ms"},
    ),
    "fleet": (
        ["--requests", "4", "--n", "2", "--max-tokens", "4", "--rounds", "1", "--cap", "2"],
        {"configs", "requests", "slow_ms"},
    ),
}  # fmt: skip


def numbers(value: Any) -> list[float]:
    """Every number in a JSON value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return []


def bench(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", MAIN, "bench", name, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_writes_its_json(name: str, tmp_path: Path) -> None:
    args, fields = BENCHES[name]
    out = tmp_path / f"{name}.json"
    done = bench(name, *args, "--json", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert fields <= set(report), sorted(fields - set(report))
    values = numbers(report)
    assert values and all(math.isfinite(v) for v in values)


def test_bench_memory_prints_its_table() -> None:
    done = bench("memory", "--ranks", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("per-GPU GB, FSDP2 over 8 ranks"), done.stdout[:500]
    rows = [
        line for line in done.stdout.splitlines() if line.startswith(("| 1.5B", "| 7B", "| 14B"))
    ]
    assert len(rows) == 3, done.stdout
