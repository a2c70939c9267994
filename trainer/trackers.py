"""Experiment trackers: TensorBoard, Weights & Biases and MLflow, chosen by `[log] trackers`.

Each receives what metrics.jsonl holds, in the same rows: the resolved config once
(`log_config`), every train and eval row's finite numbers (`log_row`; a nested table such
as `eval_accuracy_by_source` as `key/name`, names prefixed `train/` or `eval/`, the
row's `step` as the tracker's step), and one allocation table per step (`log_table`: a
row per plan item and round, with its role, pilot pass rate and gate outcome, as the
reference implementation's per-prompt counters; the same rows go to allocation.jsonl).

A tracker that is not installed or cannot start is reported in one line and left out;
the run goes on with the others. Nothing here needs a network:
- W&B runs in `log.wandb_mode` (default `offline`: files under `<output>/wandb`, uploaded
  later with `wandb sync` if wanted);
- MLflow logs to `log.mlflow_tracking_uri`, else `$MLFLOW_TRACKING_URI`, else a file store
  at `<output>/mlruns` (MLflow 3 keeps its file store only when MLFLOW_ALLOW_FILE_STORE is
  set, which this sets for that default); parameters are the config's flattened keys.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

TRACKERS = ("tensorboard", "wandb", "mlflow")


class Tracker(Protocol):
    name: str

    def log_config(self, config: dict[str, Any]) -> None: ...
    def log_row(self, row: dict[str, Any]) -> None: ...
    def log_table(self, step: int, rows: list[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


def scalars(row: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The finite numbers of `row`, those of a nested table (`eval_accuracy_by_source`)
    as `key/name`."""
    for key, value in row.items():
        if isinstance(value, dict):
            yield from ((f"{key}/{k}", v) for k, v in scalars(value))
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            yield key, value


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optim": {"lr": 1e-4}}` -> `{"optim.lr": 1e-4}`."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    return {f"{row['kind']}/{key}": value for key, value in scalars(row) if key != "step"}


class TensorBoardTracker:
    """Scalars as `train/<field>` and `eval/<field>`; the config as text."""

    name = "tensorboard"

    def __init__(self, output: Path) -> None:
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(output / "tensorboard"))

    def log_config(self, config: dict[str, Any]) -> None:
        self._writer.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```")

    def log_row(self, row: dict[str, Any]) -> None:
        for key, value in _metrics(row).items():
            self._writer.add_scalar(key, value, row["step"])

    def log_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        pass  # allocation.jsonl holds them; TensorBoard has no table type

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    """One W&B run (`log.project`, named after the run folder unless `log.run_name`)."""

    name = "wandb"

    def __init__(self, output: Path, project: str, run_name: str, mode: Any) -> None:
        import wandb

        self._wandb = wandb
        self._run = wandb.init(
            project=project, name=run_name, dir=str(output), mode=mode, reinit="finish_previous"
        )

    def log_config(self, config: dict[str, Any]) -> None:
        self._run.config.update(config, allow_val_change=True)

    def log_row(self, row: dict[str, Any]) -> None:
        self._run.log(_metrics(row), step=row["step"])

    def log_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        if rows:
            columns: list[Any] = list(rows[0])
            table = self._wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
            self._run.log({"allocation": table}, step=step)

    def close(self) -> None:
        self._run.finish()


class MLflowTracker:
    """One MLflow run in experiment `log.project`; tables as `allocation/step-<k>.json`."""

    name = "mlflow"

    def __init__(self, output: Path, project: str, run_name: str, uri: str | None) -> None:
        if uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
            uri = (output / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        self._mlflow = mlflow
        if uri is not None:
            mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(project)
        self._run = mlflow.start_run(run_name=run_name)

    def log_config(self, config: dict[str, Any]) -> None:
        # MLflow caps a parameter value at 6,000 characters; none of ours comes near.
        self._mlflow.log_params({k: json.dumps(v) for k, v in flatten(config).items()})

    def log_row(self, row: dict[str, Any]) -> None:
        self._mlflow.log_metrics(_metrics(row), step=row["step"])

    def log_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        if rows:
            data = {c: [r[c] for r in rows] for c in rows[0]}
            self._mlflow.log_table(data, artifact_file=f"allocation/step-{step:05d}.json")

    def close(self) -> None:
        self._mlflow.end_run()


def open_trackers(
    names: Sequence[str],
    output: Path,
    console: Console,
    *,
    project: str = "pilot-commit",
    run_name: str | None = None,
    wandb_mode: str = "offline",
    mlflow_tracking_uri: str | None = None,
) -> list[Tracker]:
    """The trackers in `names` that start; one line on `console` for each that does not."""
    run_name = run_name or output.resolve().name
    opened: list[Tracker] = []
    for name in dict.fromkeys(names):
        try:
            if name == "tensorboard":
                opened.append(TensorBoardTracker(output))
            elif name == "wandb":
                opened.append(WandbTracker(output, project, run_name, wandb_mode))
            elif name == "mlflow":
                opened.append(MLflowTracker(output, project, run_name, mlflow_tracking_uri))
            else:
                raise ValueError(f"unknown tracker (known: {', '.join(TRACKERS)})")
        except ImportError as exc:
            console.print(
                f"tracker {name}: not installed ({exc.name}; pip install "
                f"'pilot-commit[trackers]'), the run goes on without it",
                markup=False,
                highlight=False,
            )
        except Exception as exc:
            console.print(
                f"tracker {name}: cannot start ({type(exc).__name__}: {exc}), the run goes on "
                "without it",
                markup=False,
                highlight=False,
            )
    return opened
