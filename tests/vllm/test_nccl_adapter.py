"""The `vllm_nccl` adapter against vLLM 0.32's own trainer-side NCCL engine.

NCCL itself needs GPUs and is not run here: tests/vllm/nccl_handshake.py replaces only
the communicator and the broadcast, inside vLLM's venv, and records every HTTP call the
adapter and vLLM's engine make. This pins the handshake to the installed vLLM's code,
not to its documentation (which once described a backend vLLM 0.32 does not have).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]


def test_nccl_handshake_follows_vllms_trainer_engine(vllm_python: str) -> None:
    out = subprocess.run(
        [vllm_python, str(Path(__file__).with_name("nccl_handshake.py"))],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    calls = [(method, path) for method, path, _ in result["calls"]]
    one_push = [
        ("POST", "/pause?mode=wait"),
        ("POST", "/start_weight_update"),
        ("POST", "/update_weights"),
        ("POST", "/finish_weight_update"),
    ]
    assert calls == [
        ("POST", "/pause?mode=wait"),
        ("GET", "/get_world_size"),
        ("POST", "/init_weight_transfer_engine"),
        *one_push[1:],
        ("POST", "/update_weight_version"),
        ("POST", "/resume"),
        *one_push,
        ("POST", "/update_weight_version"),
        ("POST", "/resume"),
    ]
    bodies = {path: body for _, path, body in result["calls"]}
    init = bodies["/init_weight_transfer_engine"]["init_info"]
    assert init["master_address"] == "127.0.0.1" and init["master_port"] == 29555
    assert init["rank_offset"] == 1 and init["world_size"] == 2 and init["packed"] is True
    update = bodies["/update_weights"]["update_info"]
    names = ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert update["names"] == names and update["shapes"] == [[3, 4], [3], [3], [3]]
    assert update["dtype_names"] == ["float32"] * 4
    assert bodies["/update_weight_version"] == {"new_version": "6"}
    assert result["broadcast"] == names * 2
