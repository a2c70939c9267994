"""`pilot-commit allocator serve`: run the allocation service with uvicorn."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pilot-commit allocator")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the allocator API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument("--redis-url", help="overrides PC_ALLOCATOR_REDIS_URL")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import os

    import uvicorn

    if args.redis_url:
        os.environ["PC_ALLOCATOR_REDIS_URL"] = args.redis_url
    uvicorn.run(
        "services.allocator.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0
