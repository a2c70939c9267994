"""`pilot-commit generation serve`: run the embedded server with uvicorn.
`pilot-commit generation vllm`: run vLLM's OpenAI server instead (services/generation/vllm.py).

Flags override the `PC_GENERATION_*` environment; anything not given keeps its setting.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

DEFAULT_PORT = 8003


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilot-commit generation")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve /v1/completions and vLLM's weight-update API")
    serve.add_argument("--model", help="model directory (PC_GENERATION_MODEL)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"])
    serve.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    serve.add_argument("--max-batch-size", type=int)
    serve.add_argument("--batch-window-ms", type=float)
    serve.add_argument("--max-batch-wait-ms", type=float)
    serve.add_argument(
        "--decode-step-delay-ms", type=float,
        help="sleep after every decoding step: a deliberately slow server (benchmarks)",
    )  # fmt: skip
    serve.add_argument("--weights-dir", help="base of relative update_info.path values")
    serve.add_argument("--served-model-name")
    serve.add_argument(
        "--api-key", dest="token", help="bearer token every route but /health and /metrics "
        "requires (PC_GENERATION_TOKEN)"
    )  # fmt: skip
    serve.add_argument("--log-level", default="info")
    vllm = sub.add_parser(
        "vllm", help="run vLLM's OpenAI server (its own venv) as the generation server"
    )
    vllm.add_argument("--model", required=True, help="model directory")
    vllm.add_argument("--host", default="127.0.0.1")
    vllm.add_argument("--port", type=int, default=8000, help="default: 8000, vLLM's")
    vllm.add_argument("--dtype", default="float32")
    vllm.add_argument("--max-model-len", type=int, help="default: the model's context length")
    vllm.add_argument(
        "--compile", action="store_true", help="let vLLM compile (slower start) instead of eager"
    )
    vllm.add_argument(
        "--api-key", help="vLLM's --api-key, passed as VLLM_API_KEY (default: "
        "PC_GENERATION_TOKEN); vLLM 0.32 checks it on /v1/* only, not on the control routes"
    )  # fmt: skip
    vllm.add_argument(
        "--workdir", default="runs/vllm", help="where the served (untied) model copy is written"
    )
    return parser


def run_vllm(args: argparse.Namespace) -> int:
    """Replace this process with vLLM, serving the untied copy of --model."""
    import os
    from pathlib import Path

    from services.generation.vllm import (
        VLLMNotFound,
        find_vllm_python,
        served_model_dir,
        vllm_command,
        vllm_env,
    )

    try:
        python = find_vllm_python()
    except VLLMNotFound as exc:
        print(f"pilot-commit generation vllm: {exc}")
        return 2
    served = served_model_dir(Path(args.model), Path(args.workdir) / "served-model")
    argv = vllm_command(
        python, served, port=args.port, host=args.host, dtype=args.dtype,
        max_model_len=args.max_model_len, enforce_eager=not args.compile,
    )  # fmt: skip
    env = {**os.environ, **vllm_env()}
    api_key = args.api_key or os.environ.get("PC_GENERATION_TOKEN")
    if api_key:  # in the environment, not on the command line that `ps` shows
        env["VLLM_API_KEY"] = api_key
    os.execve(python, argv, env)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ["model", "device", "dtype", "max_batch_size", "batch_window_ms"]
    names += ["max_batch_wait_ms", "weights_dir", "served_model_name", "token"]
    names += ["decode_step_delay_ms"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "vllm":
        return run_vllm(args)
    import uvicorn

    from services.generation.app import create_app
    from services.generation.settings import GenerationSettings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    settings = GenerationSettings(**_overrides(args))
    if settings.model is None:
        print("pilot-commit generation serve: --model DIR (or PC_GENERATION_MODEL) is required")
        return 2
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
