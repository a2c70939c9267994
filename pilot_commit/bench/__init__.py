"""`pilot-commit bench <name>`: dispatch to the benchmark that owns each figure.

Benchmarks print tables and, with `--json PATH`, write one JSON object; each compares
against a baseline measured in the same run. They are not part of the test suite.
"""

from __future__ import annotations

import importlib
import sys

BENCHES: dict[str, tuple[str, str]] = {
    "allocator": ("pilot_commit.bench.allocator", "plan/results latency and Redis memory at scale"),
    "verifier": ("pilot_commit.bench.verifier", "scoring throughput vs math-verify in-process"),
    "generation": ("pilot_commit.bench.generation", "server tokens/s vs in-process generate"),
    "fleet": ("pilot_commit.bench.fleet", "rollout share and wall time over a fast + slow fleet"),
    "efficiency": ("pilot_commit.bench.efficiency", "rollouts to target, paired seeds, in parts"),
    "memory": ("pilot_commit.bench.memory", "per-GPU training memory on paper (FSDP2, 1.5B-14B)"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: pilot-commit bench <name> [args...]\n\nbenchmarks:")
        for name, (_, helptext) in BENCHES.items():
            print(f"  {name:<11} {helptext}")
        return 0
    if argv[0] not in BENCHES:
        print(f"pilot-commit bench: unknown benchmark {argv[0]!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHES[argv[0]][0])
    result: int = module.main(argv[1:])
    return result
