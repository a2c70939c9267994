"""Run outputs: metrics.jsonl (one row per step and per evaluation), TensorBoard event
files, and the progress display (a live bar on a terminal, log lines otherwise:
services/common/progress.py)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from tensorboardX import SummaryWriter

from services.common.progress import LineProgress, log_line, make_console, progress, say


class Logbook:
    def __init__(self, output: Path, total_steps: int, console: Console | None = None) -> None:
        output.mkdir(parents=True, exist_ok=True)
        self.console = console or make_console()
        self._jsonl = (output / "metrics.jsonl").open("a")
        self._tb = SummaryWriter(str(output / "tensorboard"))
        self._progress = progress(
            self.console,
            TextColumn("[bold]step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._task = self._progress.add_task("train steps", total=total_steps, status="starting")
        self.last_eval: dict[str, Any] = {}

    def __enter__(self) -> Logbook:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()
        self._jsonl.close()
        self._tb.close()

    def write(self, row: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for key, value in _scalars(row):
            self._tb.add_scalar(f"{row['kind']}/{key}", value, row["step"])
        if row["kind"] == "eval":
            self.last_eval = row
            say(
                self.console,
                f"eval step {row['step']}: sampled accuracy {row['eval_accuracy']:.3f} "
                f"(+/- {row['eval_accuracy_stderr']:.3f})"
                + (
                    f", greedy {row['eval_accuracy_greedy']:.3f}"
                    if "eval_accuracy_greedy" in row
                    else ""
                )
                + (f", answered {row['eval_answered']:.3f}" if "eval_answered" in row else "")
                + (
                    f" ({row['eval_accuracy_answered']:.3f} of them right)"
                    if row.get("eval_accuracy_answered") is not None
                    else ""
                ),
            )
        else:
            self._progress.update(self._task, completed=row["step"], status=self._status(row))

    def _status(self, row: dict[str, Any]) -> str:
        acc = self.last_eval.get("eval_accuracy")
        phases = " ".join(f"{k[5:-2]} {row[k]:.1f}s" for k in sorted(row) if k.startswith("time_"))
        return (f"held-out acc {acc:.3f}, " if acc is not None else "") + (
            f"train reward {row['train_reward_mean']:.2f}, rollouts {row['rollouts_total']:,}, "
            f"buffer {row['buffer_size']} | step phases {phases}"
        )

    def note(self, message: str) -> None:
        say(self.console, message)

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[None]:
        """Show `what` while it runs: the bar's status on a terminal, a line at its start
        and one with its duration in seconds otherwise."""
        if not isinstance(self._progress, LineProgress):
            self._progress.update(self._task, status=what)
            yield
            return
        started = time.monotonic()
        log_line(self.console, f"{what} ...")
        yield
        log_line(self.console, f"{what}: done in {time.monotonic() - started:.1f}s")


def _scalars(row: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The finite numbers of `row`, those of a nested table (`eval_accuracy_by_source`)
    as `key/name`."""
    for key, value in row.items():
        if isinstance(value, dict):
            yield from ((f"{key}/{k}", v) for k, v in _scalars(value))
        elif _number(value) and math.isfinite(value):
            yield key, value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
