"""`pilot-commit tasks`: build a task set's splits, and measure a model's spread on them.

    pilot-commit tasks build     [--set NAME] [--seed N] [--out DIR] [--force]
    pilot-commit tasks calibrate [--set NAME] [--seed N] [--out DIR] [--split validation]
                                 [--prompts-per-task N] [--samples K] [--max-tokens T]
                                 [--temperature 1.0] [--threads 1] [--model DIR]

`build` draws the set from reasoning-gym (the `tasks` extra), offline, into
`DIR/<set>-seed<N>-<hash>/{train,validation,test}.jsonl` + `build.json` (default DIR:
`$PILOT_COMMIT_CACHE/tasks`, else `.cache/tasks`); it returns at once when that build
exists. `calibrate` builds if needed, samples K answers for N prompts of each task of the
validation split with the model (default: the SmolLM2 build), scores them by each row's
verifier kind, prints a table per task and writes it, with every answer, to
`calibration-*.json` in the build directory; `--rescore JSON` judges such a file's answers
again with the verifier as it is now. It refuses the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from services.common.progress import progress
from trainer.tasks.build import TaskArtifacts, build, build_dir, default_out_root, is_built
from trainer.tasks.catalog import SETS, get_set
from trainer.tasks.generate import ReasoningGymMissing, SpaceTooSmall

DEFAULT_SET = "smollm2-mix"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilot-commit tasks", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("build", "draw a task set's train/validation/test splits (cached)"),
        ("calibrate", "a model's pass-rate spread per task on the validation split"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument(
            "--set", dest="task_set", default=DEFAULT_SET, choices=sorted(SETS),
            help=f"task set (default {DEFAULT_SET})",
        )  # fmt: skip
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--out", type=Path, default=None, help="cache root (.cache/tasks)")
    sub.choices["build"].add_argument("--force", action="store_true", help="rebuild")
    cal = sub.choices["calibrate"]
    cal.add_argument(
        "--split", default="validation", choices=("validation", "train", "test"),
        help="validation (default); test is refused",
    )  # fmt: skip
    cal.add_argument("--prompts-per-task", type=int, default=25)
    cal.add_argument("--samples", type=int, default=8, help="answers per prompt")
    cal.add_argument("--max-tokens", type=int, default=32)
    cal.add_argument("--temperature", type=float, default=1.0)
    cal.add_argument("--threads", type=int, default=1, help="torch threads")
    cal.add_argument("--batch-size", type=int, default=64)
    cal.add_argument("--model", type=Path, default=None, help="model dir (default: SmolLM2)")
    cal.add_argument(
        "--rescore", type=Path, default=None, metavar="JSON",
        help="judge a saved calibration's answers again with the verifier as it is now "
        "(no sampling) and print its table",
    )  # fmt: skip
    return parser


def _build(args: argparse.Namespace, console: Console) -> TaskArtifacts:
    task_set = get_set(args.task_set)
    out_root = args.out or default_out_root()
    cached = is_built(build_dir(out_root, task_set, args.seed)) and not args.force
    with progress(console) as bars:
        artifacts = build(out_root, task_set, args.seed, force=args.force, progress=bars)
    info = artifacts.info
    state = "cached" if cached else f"built in {info['wall_seconds']}s"
    sizes = ", ".join(f"{n} {split}" for split, n in info["prompts"].items())
    console.print(f"{artifacts.root} ({state}): {sizes} prompts", soft_wrap=True)
    return artifacts


def _calibrate(args: argparse.Namespace, console: Console) -> int:
    if args.split == "test":
        print(
            "pilot-commit tasks calibrate: refusing --split test: tasks and difficulties are "
            "chosen on the validation split only",
            file=sys.stderr,
        )
        return 2
    if args.rescore is not None:
        from trainer.tasks.calibrate import rescore, table

        spreads = rescore(json.loads(args.rescore.read_text()))
        console.print(table(spreads), markup=False, soft_wrap=True)
        return 0
    import torch

    from trainer.tasks import calibrate as cal
    from trainer.tiny.task import read_jsonl

    load_before = os.getloadavg()
    artifacts = _build(argparse.Namespace(**{**vars(args), "force": False}), console)
    torch.set_num_threads(args.threads)
    model_dir, model, tokenizer = _load_model(args.model)
    picked = cal.pick_rows(list(read_jsonl(artifacts.path(args.split))), args.prompts_per_task)
    sampling = cal.Sampling(
        args.samples, args.max_tokens, args.temperature, args.batch_size, args.seed
    )
    with progress(console) as bars:
        results = cal.calibrate(model, tokenizer, picked, sampling, bars)
    spreads = {source: result.spread for source, result in results.items()}
    spreads["all"] = cal.pooled(results)
    record = {
        "set": args.task_set, "split": args.split, "model": str(model_dir),
        "sampling": asdict(sampling), "torch_threads": torch.get_num_threads(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "all": spreads["all"].to_dict(),
        "tasks": {source: result.to_dict() for source, result in results.items()},
    }  # fmt: skip
    name = f"{args.prompts_per_task}x{args.samples}-{args.max_tokens}tok-t{args.temperature:g}"
    path = artifacts.root / f"calibration-{args.split}-{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(cal.table(spreads), markup=False, soft_wrap=True)
    loads = record["load_average"]
    shown = {when: ", ".join(f"{x:.2f}" for x in load) for when, load in loads.items()}
    console.print(f"{path} (load average {shown['start']} at the start, {shown['end']} at the end)",
                  soft_wrap=True)  # fmt: skip
    return 0


def _load_model(model_dir: Path | None) -> tuple[Path, Any, Any]:
    """(directory, model, tokenizer): `model_dir`, else the SmolLM2 build's model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir is None:
        from trainer.smollm2.build import ensure_smollm2

        model_dir = ensure_smollm2().model_dir
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return model_dir, model, AutoTokenizer.from_pretrained(model_dir)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    # Everything here is local: reasoning-gym draws offline, the model is a built directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console()
    try:
        if args.command == "build":
            _build(args, console)
            return 0
        return _calibrate(args, console)
    except (ReasoningGymMissing, SpaceTooSmall) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
