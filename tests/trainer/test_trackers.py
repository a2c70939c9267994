"""Experiment trackers (trainer/trackers.py) written offline and read back: TensorBoard's
event file, a W&B offline run's record log and an MLflow file store hold the rows of
metrics.jsonl, the config and the allocation tables."""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from trainer.logbook import Logbook
from trainer.trackers import open_trackers

CONFIG = {"optim": {"lr": 1e-4}, "allocation": {"strategy": "pilot_commit"}}
ROWS = [
    {"kind": "eval", "step": 0, "eval_accuracy": 0.25, "eval_accuracy_stderr": 0.02,
     "eval_accuracy_by_source": {"gcd": 0.5}},
    {"kind": "train", "step": 1, "train_reward_mean": 0.5, "rollouts_total": 96, "loss": 0.1,
     "buffer_size": 3,
     "clip_fraction": float("nan")},
    {"kind": "train", "step": 2, "train_reward_mean": 0.625, "rollouts_total": 192, "loss": 0.2,
     "buffer_size": 4},
]  # fmt: skip
TABLE = [
    {"step": 1, "round": 0, "prompt_id": 7, "role": "pilot", "n": 4, "pass_rate": 0.5,
     "outcome": "pass", "reused": 0},
    {"step": 1, "round": 0, "prompt_id": 9, "role": "pilot", "n": 4, "pass_rate": 0.0,
     "outcome": "too_hard", "reused": 0},
]  # fmt: skip


def write_run(output: Path, names: list[str]) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200)
    trackers = open_trackers(names, output, console, project="pc-test", run_name="r1")
    with Logbook(output, 2, console, trackers) as logbook:
        logbook.config(CONFIG)
        for row in ROWS:
            logbook.write(row)
            if row["kind"] == "train" and row["step"] == 1:
                logbook.table(1, TABLE)  # as the loop does: after the step's train row
    return out.getvalue()


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the TFRecord event files in `folder` (length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, list[tuple[int, float]]] = {}
    for path in folder.iterdir():
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            event = Event.FromString(data[12 : 12 + length])
            data = data[12 + length + 4 :]
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B run file. wandb 0.31 writes it from its Go core, in LevelDB's
    log format: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of
    records, each a 7-byte header (crc32c, length as 2 bytes little-endian, type: 1 full,
    2 first, 3 middle, 4 last) and its bytes; a block's last < 7 bytes are padding."""
    data, block, records, pending = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B" and data[4:7] == b"\xe1\xbe\x00", data[:7]
    offset = 7
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # padding to the next block
            offset += block - offset % block
            continue
        length, kind = struct.unpack("<HB", data[offset + 4 : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            break
        pending += chunk
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def wandb_history(output: Path) -> list[dict[str, Any]]:
    """History rows of the W&B offline run under `output`, as wandb's protobuf records."""
    from wandb.proto import wandb_internal_pb2

    [path] = output.glob("wandb/offline-run-*/run-*.wandb")
    history = []
    for data in wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})  # fmt: skip
    return history


def test_every_tracker_gets_the_rows_the_config_and_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    said = write_run(tmp_path, ["tensorboard", "wandb", "mlflow"])
    assert "tracker" not in said, said  # all three started

    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["train/train_reward_mean"] == [(1, 0.5), (2, 0.625)]
    assert scalars["eval/eval_accuracy_by_source/gcd"] == [(0, 0.5)]
    assert "train/clip_fraction" not in scalars  # NaN is left out, as in every tracker

    history = wandb_history(tmp_path)
    rewards = [(h["_step"], h["train/train_reward_mean"]) for h in history
               if "train/train_reward_mean" in h]  # fmt: skip
    assert rewards == [(1, 0.5), (2, 0.625)]
    [logged] = [h for h in history if "allocation/nrows" in h]
    assert (logged["_step"], logged["allocation/nrows"]) == (1, 2)
    [table] = tmp_path.glob("wandb/offline-run-*/files/media/table/allocation_*.table.json")
    assert json.loads(table.read_text())["data"][1][:5] == [1, 0, 9, "pilot", 4]

    from mlflow.tracking import MlflowClient

    client = MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "pc-test"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "r1"
    history_ml = client.get_metric_history(run.info.run_id, "train/train_reward_mean")
    assert [(m.step, m.value) for m in history_ml] == [(1, 0.5), (2, 0.625)]
    assert run.data.params["optim.lr"] == "0.0001"
    artifact = Path(client.download_artifacts(run.info.run_id, "allocation/step-00001.json"))
    assert json.loads(artifact.read_text())["data"][0][2] == 7

    assert [json.loads(line)["outcome"] for line in (tmp_path / "allocation.jsonl").open()] == [
        "pass",
        "too_hard",
    ]


def test_a_tracker_that_is_missing_is_one_line_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    said = write_run(tmp_path, ["wandb", "tensorboard"])
    lines = [line for line in said.splitlines() if "tracker" in line]
    assert lines == [
        "tracker wandb: not installed (wandb; pip install 'pilot-commit[trackers]'), the run "
        "goes on without it"
    ]
    losses = tensorboard_scalars(tmp_path / "tensorboard")["train/loss"]
    assert losses == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]  # float32 in events


def test_a_tracker_failing_mid_run_is_dropped_with_one_line(tmp_path: Path) -> None:
    class Broken:
        name = "broken"
        calls = 0

        def log_config(self, config: dict[str, Any]) -> None:
            pass

        def log_row(self, row: dict[str, Any]) -> None:
            Broken.calls += 1
            raise ConnectionError("server went away")

        def log_table(self, step: int, rows: list[dict[str, Any]]) -> None:
            pass

        def close(self) -> None:
            pass

    out = io.StringIO()
    with Logbook(tmp_path, 2, Console(file=out, width=200), [Broken()]) as logbook:
        for row in ROWS:
            logbook.write(row)
    assert Broken.calls == 1
    assert out.getvalue().count("tracker broken failed (ConnectionError: server went away)") == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
