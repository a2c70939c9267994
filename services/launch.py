"""`python -m services.launch <service> serve ...`: start one service, without the trainer.

The services' own entry point: `start_service` (services/common/procs.py) starts every
service through it, and the `pilot-commit` console script (pilot_commit/cli.py) hands
these names to it, so a service process never needs the trainer or the top-level package.
A service module exposes `main(argv: list[str]) -> int`; uvicorn handles its signals.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with `main(argv)`, one-line help)
SERVICES: dict[str, tuple[str, str]] = {
    "allocator": ("services.allocator.cli", "the allocation service (serve)"),
    "verifier": ("services.verifier.cli", "the reward service (serve)"),
    "generation": ("services.generation.cli", "the embedded OpenAI-compatible generation server"),
}


def main(argv: list[str] | None = None) -> int:
    """Run `SERVICES[argv[0]]` with the rest of `argv`; 2 for an unknown service."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SERVICES:
        known = ", ".join(SERVICES)
        print(f"usage: python -m services.launch <{known}> [args...]", file=sys.stderr)
        return 2
    module = importlib.import_module(SERVICES[args[0]][0])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    raise SystemExit(main())
