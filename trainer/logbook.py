"""Run outputs: metrics.jsonl (one row per step and per evaluation), TensorBoard event
files, and the progress display (a live bar on a terminal, log lines otherwise:
services/common/progress.py)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from services.common.progress import LineProgress, log_line, make_console, progress, say
from trainer.trackers import TensorBoardTracker, Tracker


class Logbook:
    """metrics.jsonl and allocation.jsonl, the experiment trackers (trainer/trackers.py;
    default: TensorBoard alone) and the progress display of one run."""

    def __init__(
        self,
        output: Path,
        total_steps: int,
        console: Console | None = None,
        trackers: Sequence[Tracker] | None = None,
    ) -> None:
        output.mkdir(parents=True, exist_ok=True)
        self.console = console or make_console()
        self._jsonl = (output / "metrics.jsonl").open("a")
        self._allocation_path = output / "allocation.jsonl"
        self._allocation = self._allocation_path.open("a")
        self.trackers: list[Tracker] = (
            list(trackers) if trackers is not None else [TensorBoardTracker(output)]
        )
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
        self._allocation.close()
        for tracker in self.trackers:
            self._each(tracker, "close")

    def _each(self, tracker: Tracker, method: str, *args: Any) -> None:
        """Call a tracker; one that fails is reported once and dropped (the run goes on)."""
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:
            say(self.console, f"tracker {tracker.name} failed ({type(exc).__name__}: {exc}); "
                "the run goes on without it")  # fmt: skip
            if tracker in self.trackers:
                self.trackers.remove(tracker)

    def config(self, config: dict[str, Any]) -> None:
        """The run's resolved config, to every tracker."""
        for tracker in list(self.trackers):
            self._each(tracker, "log_config", config)

    def resumed(self, step: int) -> None:
        """The run resumes after `step`: drop allocation.jsonl's rows of later steps (an
        attempt the checkpoint does not hold, to be redone with other plans) and a row cut
        short by a crash, so the file holds each step's rounds once. The file is replaced
        atomically. metrics.jsonl keeps its rows: there the last row of a step counts."""
        self._allocation.close()
        path = self._allocation_path
        kept = []
        for line in path.read_text().splitlines(keepends=True):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if line.endswith("\n") and row.get("step", 0) <= step:
                kept.append(line)
        partial = path.with_name(path.name + ".tmp")
        partial.write_text("".join(kept))
        os.replace(partial, path)
        self._allocation = path.open("a")

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        """One step's allocation rows: to allocation.jsonl and every tracker."""
        for row in rows:
            self._allocation.write(json.dumps(row) + "\n")
        self._allocation.flush()
        for tracker in list(self.trackers):
            self._each(tracker, "log_table", step, rows)

    def write(self, row: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for tracker in list(self.trackers):
            self._each(tracker, "log_row", row)
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
