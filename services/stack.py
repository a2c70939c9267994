"""The embedded stack: Redis, allocator, verifier and generation server as local processes.

`pilot-commit up` (pilot_commit/up.py) keeps them running until Ctrl-C; `pilot-commit
train` starts them for a run when its config names no service URLs. Only the processes
started here are ever stopped, through their own handles. It lives with the services it
starts, so the trainer imports it and no service imports the trainer.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from rich.console import Console

from services.common.procs import ManagedProcess, free_port, start_redis, start_service
from services.common.progress import stage


@dataclass
class StackUrls:
    redis_url: str
    allocator_url: str
    verifier_url: str
    generation_urls: list[str]


@dataclass
class EmbeddedStack:
    """Start with `with EmbeddedStack(workdir, model_dir) as urls: ...`."""

    workdir: Path
    model_dir: Path
    generation_servers: int = 1
    console: Console = field(default_factory=Console)
    procs: list[ManagedProcess] = field(default_factory=list)
    # "vllm": vLLM's OpenAI server from its own venv (services/generation/vllm.py);
    # None: no generation server (the caller has its own).
    generation: Literal["embedded", "vllm"] | None = "embedded"

    def start(self) -> StackUrls:
        logs = self.workdir / "logs"
        atexit.register(self.stop)  # also on an exit that skips the context manager
        try:
            redis_port = free_port()
            with stage(self.console, f"stack: redis-server on port {redis_port}"):
                self.procs.append(start_redis(redis_port, self.workdir / "redis"))
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            with stage(self.console, "stack: allocator"):
                allocator = self._service(
                    "allocator", ["allocator", "serve"], logs, {"PC_ALLOCATOR_REDIS_URL": redis_url}
                )
            with stage(self.console, "stack: verifier"):
                verifier = self._service("verifier", ["verifier", "serve"], logs, {})
            generation = []
            for i in range(self.generation_servers if self.generation else 0):
                what = f"stack: {self.generation} generation server {i}"
                slow = " (minutes)" if self.generation == "vllm" else ""
                with stage(self.console, what + slow):
                    generation.append(self._generation(i, logs))
        except BaseException:
            self.stop()
            raise
        return StackUrls(redis_url, allocator, verifier, generation)

    def _service(
        self, name: str, command: list[str], logs: Path, env: dict[str, str], timeout: float = 60
    ) -> str:
        port = free_port()
        self.procs.append(
            start_service(name, command, port=port, log_dir=logs, env=env, timeout=timeout)
        )
        return f"http://127.0.0.1:{port}"

    def _generation(self, index: int, logs: Path) -> str:
        if self.generation == "embedded":
            command = ["generation", "serve", "--model", str(self.model_dir)]
            return self._service(f"generation-{index}", command, logs, {}, timeout=180)
        from services.generation.vllm import start_vllm

        port = free_port()
        workdir = self.workdir / f"vllm-{index}"
        self.procs.append(
            start_vllm(self.model_dir, port=port, workdir=workdir, name=f"vllm-{index}")
        )
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def __enter__(self) -> StackUrls:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
