"""`pilot-commit verifier serve`: run the verifier service under uvicorn."""

from __future__ import annotations

import argparse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilot-commit verifier")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve POST /v1/score, /health and /metrics")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind")
    serve.add_argument("--port", type=int, default=8002, help="TCP port (default 8002)")
    serve.add_argument("--log-level", default="info", help="uvicorn log level")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import uvicorn

    from services.verifier.app import create_app

    # Settings come from PC_VERIFIER_* variables, read when the app starts.
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level)
    return 0
