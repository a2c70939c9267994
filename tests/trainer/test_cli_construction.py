"""The CLI builds every weight-sync kind it accepts, and refuses vLLM clearly when absent."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from services.stack import StackUrls
from trainer.config import ServicesSection, TrainerConfig
from trainer.generation.weight_sync import SGLangDiskSync, VLLMNcclSync, VLLMReloadSync
from trainer.loop import Dataset
from trainer.run import clients

ROOT = Path(__file__).resolve().parents[2]
KINDS = typing.get_args(ServicesSection.model_fields["weight_sync"].annotation)
EXPECTED = {"vllm": VLLMReloadSync, "vllm_nccl": VLLMNcclSync, "sglang": SGLangDiskSync}


def test_every_kind_the_config_accepts_has_an_adapter() -> None:
    assert set(KINDS) == set(EXPECTED)


@pytest.mark.parametrize("kind", KINDS)
async def test_clients_builds_each_weight_sync(kind: str, tmp_path: Path) -> None:
    config = TrainerConfig.model_validate({
        "model": {"path": str(tmp_path)},
        "services": {"weight_sync": kind},
        "allocation": {"strategy": "grpo", "train_batch_size": 2, "n": 2},
    })  # fmt: skip
    urls = StackUrls("", "http://127.0.0.1:1", "http://127.0.0.1:2", ["http://127.0.0.1:3"])
    data = Dataset([[1, 2, 3]], ["1"])
    async with clients(config, urls, tmp_path, data) as services:
        assert type(services.weights) is EXPECTED[kind]
        assert services.landing is not None and services.landing.prompts == [[1, 2, 3]]


def test_up_with_vllm_missing_says_what_to_do(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pilot_commit.cli", "up", "--generation", "vllm", "--model", "x"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={
            "PC_VLLM_PYTHON": str(tmp_path / "no-python"),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),  # this checkout, not whichever one is installed
        },
    )  # fmt: skip
    assert result.returncode == 2
    assert "PC_VLLM_PYTHON" in result.stdout and "does not exist" in result.stdout
