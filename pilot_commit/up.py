"""`pilot-commit up`: Redis and every service as local processes until Ctrl-C.

The stack itself is services/stack.py (the trainer's `train` starts it too); this command
adds the default model, the tiny one, which the trainer builds.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from rich.console import Console

from services.stack import EmbeddedStack


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pilot-commit up", description="Run Redis and every service locally until Ctrl-C."
    )
    parser.add_argument("--model", type=Path, help="model directory (default: the tiny model)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs/stack"),
        help="folder for the services' logs, Redis's data and pushed weights (default runs/stack)",
    )
    parser.add_argument(
        "--generation-servers",
        type=int,
        default=1,
        help="how many generation servers to start, each on its own port; the trainer "
        "balances calls over them (default 1)",
    )
    parser.add_argument(
        "--generation",
        choices=["embedded", "vllm"],
        default="embedded",
        help="which generation server to start: the embedded one, or vLLM from its own venv "
        "(.venv-vllm or PC_VLLM_PYTHON; `bash .ci/vllm-venv` builds it)",
    )
    args = parser.parse_args(argv)
    if args.generation_servers < 1:
        parser.error("--generation-servers must be at least 1")
    if args.generation == "vllm":
        from services.generation.vllm import VLLMNotFound, find_vllm_python

        try:
            find_vllm_python()
        except VLLMNotFound as exc:
            print(f"pilot-commit up: {exc}")
            return 2
    model = args.model
    if model is None:
        from trainer.tiny.build import ensure_tiny

        model = ensure_tiny().model_dir
    console = Console()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    stack = EmbeddedStack(
        args.workdir, model, args.generation_servers, console, generation=args.generation
    )
    with stack as urls:
        console.print(f"redis      {urls.redis_url}")
        console.print(f"allocator  {urls.allocator_url}")
        console.print(f"verifier   {urls.verifier_url}")
        for url in urls.generation_urls:
            console.print(f"generation {url}")
        console.print(
            f"logs in {args.workdir / 'logs'}; Ctrl-C (or SIGTERM, SIGHUP) stops everything"
        )
        stop.wait()
    console.print("stopped")
    return 0
