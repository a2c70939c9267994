"""`pilot-commit tiny`: build the tiny model and task, and the regime datasets.

    pilot-commit tiny build   [--out DIR] [--seed N] [--force]
    pilot-commit tiny regimes [--out DIR] [--seed N] [--force] [--pool N]

`build` writes `DIR/seed<N>-<hash>/` (default DIR: `$PILOT_COMMIT_CACHE/tiny`, else
`.cache/tiny`) with `model/`, `data/train.jsonl`, `data/test.jsonl` and `calibration.json`,
and returns at once when that build already exists. `regimes` builds first if needed, then
writes `data/regime-30/`, `data/regime-50/` and `data/regime-70/` beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.tiny.build import (
    SHIPPED,
    RegimeArtifacts,
    TinyArtifacts,
    TinyConfig,
    build,
    build_dir,
    build_regimes,
    default_out_root,
    ensure_tiny,
    is_built,
)
from trainer.tiny.regimes import RegimeConfig

__all__ = ["RegimeArtifacts", "TinyArtifacts", "ensure_tiny", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilot-commit tiny", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("build", "dataset + warm-started model (cached)"),
        ("regimes", "datasets with 30/50/70%% zero-variance groups at G=32"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--out", type=Path, default=None, help="cache root (default: .cache/tiny)")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.choices["regimes"].add_argument(
        "--pool", type=int, default=RegimeConfig().train_pool, help="train prompts to estimate"
    )
    return parser


def _build(args: argparse.Namespace) -> TinyArtifacts:
    config = TinyConfig(seed=args.seed)
    out_root = args.out or default_out_root()
    cached = is_built(build_dir(out_root, config)) and not args.force
    shipped = not cached and not args.force and is_built(build_dir(SHIPPED, config))
    artifacts = build(out_root, config, force=args.force)
    calibration = artifacts.calibration
    state = "cached" if cached else f"built in {calibration['wall_seconds']}s"
    if shipped:
        state = f"copied from the shipped build, which was {state}"
    print(
        f"{artifacts.root} ({state}): {calibration['parameters']:,} parameters, "
        f"greedy {calibration['greedy_accuracy']:.1%}, "
        f"sampled {calibration['sampled_accuracy']:.1%}"
    )
    return artifacts


def _regimes(args: argparse.Namespace) -> None:
    artifacts = _build(argparse.Namespace(**{**vars(args), "force": False}))
    regimes = build_regimes(artifacts, RegimeConfig(train_pool=args.pool), force=args.force)
    for regime in regimes.manifest["regimes"]:
        train, test = regime["train"], regime["test"]
        print(
            f"{regime['dir']}: train {train['prompts']} prompts {json.dumps(train['counts'])}, "
            f"predicted zero-variance {train['predicted_zero_variance']:.1%} "
            f"(plug-in p^G+(1-p)^G {train['plug_in_zero_variance']:.1%}); "
            f"test {test['prompts']} prompts, predicted {test['predicted_zero_variance']:.1%}"
        )
    print(regimes.manifest_path)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        _build(args)
    else:
        _regimes(args)
    return 0
