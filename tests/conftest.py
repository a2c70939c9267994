"""Shared fixtures: a real redis-server per test session, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.procs import ManagedProcess, free_port, start_redis


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A redis-server started for this test session (never the machine's 6379)."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    proc.port = port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_url(redis_proc: ManagedProcess) -> str:
    return f"redis://127.0.0.1:{redis_proc.port}/0"  # type: ignore[attr-defined]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
