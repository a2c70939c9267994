"""`pilot-commit bench fleet`: how `GenerationClient` spreads a batch over a fleet.

Two embedded servers on loopback serve the same model; one is slowed down on purpose
(`--decode-step-delay-ms`, a sleep after every decoding step: the server's
`decode_step_delay_ms` setting). In one run, rounds alternating, each round one batch of
`--requests` prompts x n through the client, `--prompts-per-call` prompts per call:

- `fast alone`: the fast server only (the baseline);
- `fast + slow`: both, no cap on calls in flight (the client's default): every call of
  the batch is sent at once, so the split is even whatever the speeds;
- `fast + slow, cap K` (one per `--cap` value): both, at most K calls in flight per
  server (`max_outstanding_per_server`): a call goes to whichever server frees a slot
  first. A small cap also shrinks the batches a server decodes together, which costs
  throughput on a batching server: the table shows both effects.

Printed: the median wall time per round, its ratio to `fast alone`, and the share of
rollouts (samples) each server produced. With `--kill`, a last round of the last capped
configuration kills the slow server while it holds calls: its calls are re-sent to the
fast one, and the round's wall time and answered rollouts are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from services.common.procs import ManagedProcess, free_port, start_service
from services.generation.client import GenerationClient, GenerationRequest, SamplingParams


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilot-commit bench fleet")
    parser.add_argument("--model", type=Path, help="model directory (default: a random tiny one)")
    parser.add_argument("--requests", type=int, default=32, help="prompts per batch")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompts-per-call", type=int, default=1)
    parser.add_argument(
        "--slow-ms", type=float, default=20.0, help="the slow server's sleep per decoding step"
    )
    parser.add_argument(
        "--cap", type=int, nargs="+", default=[2, 8], help="max_outstanding_per_server values"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--kill", action="store_true", help="kill the slow server mid-round")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    return parser


def progress(message: str) -> None:
    print(f"[bench fleet] {message}", file=sys.stderr, flush=True)


def batch(args: argparse.Namespace) -> list[GenerationRequest]:
    sampling = SamplingParams(max_tokens=args.max_tokens, seed=7)
    return [GenerationRequest(f"{i}+{i + 1}=", args.n, sampling) for i in range(args.requests)]


async def one_round(
    urls: list[str], args: argparse.Namespace, cap: int | None, kill: ManagedProcess | None = None
) -> tuple[float, dict[str, int]]:
    """Seconds for one batch and the rollouts (samples) each server produced; with `kill`,
    that server is killed once it holds a call."""
    async with GenerationClient(
        urls, max_prompts_per_request=args.prompts_per_call, max_outstanding_per_server=cap,
        model="tiny",
    ) as client:  # fmt: skip
        began = time.perf_counter()
        task = asyncio.create_task(client.generate(batch(args)))
        if kill is not None:
            victim = urls[-1]
            while client.outstanding[victim] == 0 and not task.done():
                await asyncio.sleep(0.005)
            await asyncio.to_thread(kill.kill)
        completions = await task
        seconds = time.perf_counter() - began
    rollouts = dict.fromkeys(urls, 0)
    for completion in completions:
        rollouts[completion.base_url] += len(completion.samples)
    return seconds, rollouts


def serve(model: Path, workdir: Path, name: str, args: argparse.Namespace, delay_ms: float):
    port = free_port()
    command = ["generation", "serve", "--model", str(model), "--served-model-name", "tiny"]
    command += ["--decode-step-delay-ms", str(delay_ms)]
    env = {"PC_GENERATION_TORCH_THREADS": str(args.threads)}
    proc = start_service(name, command, port=port, log_dir=workdir, env=env, timeout=120)
    return proc, f"http://127.0.0.1:{port}"


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model_dir = args.model
    if model_dir is None:
        from trainer.tiny.model import save_random_tiny_model

        progress("building a random tiny model")
        model_dir = save_random_tiny_model(workdir / "tiny", seed=0)
    progress(f"starting a fast server and a slow one ({args.slow_ms:g} ms per decoding step)")
    fast_proc, fast = serve(model_dir, workdir, "fleet-fast", args, 0.0)
    slow_proc, slow = serve(model_dir, workdir, "fleet-slow", args, args.slow_ms)
    configs: dict[str, tuple[list[str], int | None]] = {
        "fast alone": ([fast], None),
        "fast + slow": ([fast, slow], None),
    }
    for cap in args.cap:
        configs[f"fast + slow, cap {cap}"] = ([fast, slow], cap)
    walls: dict[str, list[float]] = {name: [] for name in configs}
    shares: dict[str, dict[str, int]] = {name: {"fast": 0, "slow": 0} for name in configs}
    killed: dict[str, Any] = {}
    try:
        for urls, cap in configs.values():  # warm-up: first batches pay for start-up
            asyncio.run(one_round(urls, args, cap))
        for index in range(args.rounds):
            for name, (urls, cap) in configs.items():
                seconds, rollouts = asyncio.run(one_round(urls, args, cap))
                walls[name].append(seconds)
                shares[name]["fast"] += rollouts[fast]
                shares[name]["slow"] += rollouts.get(slow, 0)
            progress(f"round {index + 1}/{args.rounds} done")
        if args.kill:
            progress("a capped round that kills the slow server mid-round")
            seconds, rollouts = asyncio.run(one_round([fast, slow], args, args.cap[-1], slow_proc))
            killed = {"wall_s": seconds, "rollouts": sum(rollouts.values())}
            killed["expected_rollouts"] = args.requests * args.n
    finally:
        slow_proc.stop()
        fast_proc.stop()
    baseline = statistics.median(walls["fast alone"])
    figures: dict[str, Any] = {"configs": {}}
    for name in configs:
        wall = statistics.median(walls[name])
        total = shares[name]["fast"] + shares[name]["slow"]
        figures["configs"][name] = {
            "wall_s_median": wall,
            "vs_fast_alone": wall / baseline,
            "share_fast": shares[name]["fast"] / total,
            "share_slow": shares[name]["slow"] / total,
        }
    if killed:
        figures["killed_mid_round"] = killed
    figures.update(
        requests=args.requests, n=args.n, max_tokens=args.max_tokens,
        prompts_per_call=args.prompts_per_call, slow_ms=args.slow_ms, cap=args.cap,
        rounds=args.rounds, threads=args.threads,
        model=str(args.model or "random tiny (trainer.tiny.model, seed 0)"),
    )  # fmt: skip
    return figures


def print_table(figures: dict[str, Any]) -> None:
    configs = figures["configs"]
    width = max(len(name) for name in configs)
    print(f"{'configuration':<{width}}  wall s (median)  vs fast alone  rollouts fast  slow")
    for name, row in configs.items():
        print(
            f"{name:<{width}}  {row['wall_s_median']:>15.3f}  {row['vs_fast_alone']:>13.2f}"
            f"  {row['share_fast']:>13.0%}  {row['share_slow']:>4.0%}"
        )
    if "killed_mid_round" in figures:
        k = figures["killed_mid_round"]
        print(
            f"slow server killed mid-round (cap {figures['cap'][-1]}): {k['wall_s']:.3f} s, "
            f"{k['rollouts']}/{k['expected_rollouts']} rollouts answered"
        )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        figures = run(args, Path(tmp))
    print_table(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        progress(f"wrote {args.json}")
    return 0
