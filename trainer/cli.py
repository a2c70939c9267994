"""`pilot-commit train CONFIG [--output DIR] [--set KEY=VALUE ...] [--nproc N]`.

Parses and validates the command line and the config before torch loads, so that a user
error (a missing file, a misspelt key, a value out of range) is one line and exit status 2
within a second; the run itself is trainer/run.py's `execute`.

`--nproc N` (or `torchrun --nproc-per-node N -m trainer.cli CONFIG`) trains on N ranks
(trainer/distributed.py): rank 0 starts or reaches the services and runs the loop, the
others join each training step.

Environment variables override `[services]` (used by compose.yaml), below `--set`:
PC_TRAINER_ALLOCATOR_URL, PC_TRAINER_ALLOCATOR_TOKEN, PC_TRAINER_VERIFIER_URL,
PC_TRAINER_GENERATION_URLS (comma-separated), PC_TRAINER_WEIGHT_SYNC,
PC_TRAINER_WEIGHTS_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from trainer.config import ConfigError, load_config

ENV_OVERRIDES = {
    "PC_TRAINER_ALLOCATOR_URL": "services.allocator_url",
    "PC_TRAINER_ALLOCATOR_TOKEN": "services.allocator_token",
    "PC_TRAINER_VERIFIER_URL": "services.verifier_url",
    "PC_TRAINER_GENERATION_URLS": "services.generation_urls",  # comma-separated
    "PC_TRAINER_WEIGHT_SYNC": "services.weight_sync",
    "PC_TRAINER_WEIGHTS_DIR": "services.weights_dir",
}


def env_overrides() -> list[str]:
    """`--set` items from the PC_TRAINER_* variables that are set (ENV_OVERRIDES)."""
    out = []
    for var, path in ENV_OVERRIDES.items():
        value = os.environ.get(var)
        if value:
            if path.endswith("_urls"):
                value = json.dumps([u.strip() for u in value.split(",") if u.strip()])
            else:
                value = json.dumps(value)
            out.append(f"{path}={value}")
    return out


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pilot-commit train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, help="TOML config (see configs/tiny.toml)")
    parser.add_argument("--output", type=Path, help="run folder (default runs/<config name>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (value read as TOML, else as a string), e.g. "
        "optim.lr=3e-4 or data.eval_split='\"validation\"'; repeatable",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="trainer ranks on this node: >1 starts torchrun, which shards the policy with "
        "FSDP2 (rank 0 drives the services); default 1, one process",
    )
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.nproc < 1:
        parser().error("--nproc must be at least 1")
    try:
        config = load_config(args.config, env_overrides() + args.overrides)
    except ConfigError as exc:
        print(f"pilot-commit train: {exc}", file=sys.stderr)
        return 2
    from trainer.run import execute  # torch, transformers and the services load here

    return execute(config, args.output or Path("runs") / args.config.stem, argv, args.nproc)


if __name__ == "__main__":  # each rank that `launch` starts (pilot_commit.cli's signals)
    from services.common.procs import stop_on_signals

    with stop_on_signals():
        raise SystemExit(main(sys.argv[1:]))
