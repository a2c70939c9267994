"""Fixtures: a tiny random model on disk and embedded servers started with uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.procs import ManagedProcess, free_port, start_service
from trainer.tiny.model import save_random_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", seed=0)


@pytest.fixture(scope="session")
def other_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture with different weights: what a trainer step would push."""
    return save_random_tiny_model(tmp_path_factory.mktemp("tiny1") / "tiny", seed=1)


def _serve(name: str, model: Path, logs: Path) -> Iterator[str]:
    port = free_port()
    command = ["generation", "serve", "--model", str(model), "--batch-window-ms", "20"]
    proc: ManagedProcess = start_service(name, command, port=port, log_dir=logs, timeout=90)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def server_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded server whose weights no test changes."""
    yield from _serve("generation-a", tiny_model_dir, tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="session")
def update_server_url(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second embedded server, for tests that change weights and pause generation."""
    yield from _serve("generation-b", tiny_model_dir, tmp_path_factory.mktemp("logs"))
