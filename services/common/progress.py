"""Progress of long work, on a terminal and in a log file alike.

Rich's live displays (`Progress`, `Console.status`) draw nothing when the output is not a
terminal (`pilot-commit train ... > log 2>&1`), so long work would be silent there. Every
long loop takes its display from `progress(console, ...)`: rich's bar on a terminal, and
otherwise a `LineProgress` that writes one plain line per task when it starts, whenever it
crosses another `every_percent` of its total or `every_s` seconds have passed since its
last line, and when it ends, each with the elapsed time and an estimate of the time left:

    [14:02:11] warm start: 240/4,000 (6%), 0:00:31 elapsed, ~0:08:06 left, loss 0.412

`stage(console, what)` brackets one step without a count the same way ("what ..." and
"what: done in 2.1s"; a spinner on a terminal).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

EVERY_PERCENT = 5.0
EVERY_S = 60.0


def clock(seconds: float) -> str:
    """`h:mm:ss` of a duration in seconds."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _field(key: str, value: Any) -> str:
    """`key value`; a field named `status` is a whole sentence already and goes bare."""
    return _shown(value) if key == "status" else f"{key} {_shown(value)}"


@dataclass
class _Task:
    description: str
    total: float | None
    fields: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    completed: float = 0.0
    last_line: float = field(default_factory=time.monotonic)
    last_bucket: int = 0
    finished: bool = False


class LineProgress:
    """The subset of `rich.progress.Progress` the long loops use, as plain log lines.

    Lines go to `console.file` (stdout unless the console says otherwise), flushed at once.
    `every_percent` (of the task's total) and `every_s` (seconds) set how often a line is
    written while a task runs; a task without a total gets one every `every_s`.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        every_percent: float = EVERY_PERCENT,
        every_s: float = EVERY_S,
    ) -> None:
        self.console = console or Console()
        self.every_percent, self.every_s = every_percent, every_s
        self.tasks: dict[TaskID, _Task] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        """Write the closing line of every task not yet complete."""
        for task in self.tasks.values():
            if not task.finished:
                self._finish(task, "stopped")

    def add_task(self, description: str, total: float | None = 100.0, **fields: Any) -> TaskID:
        task_id = TaskID(len(self.tasks))
        task = _Task(description, total, dict(fields))
        self.tasks[task_id] = task
        of = f" of {total:,.0f}" if total is not None else ""
        self._write(f"{description}: started{of}")
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        task.fields.update(fields)
        if task.finished:
            return
        now = time.monotonic()
        if task.total and task.completed >= task.total:
            self._finish(task, "done")
            return
        bucket = 0
        if task.total:
            bucket = int(100 * task.completed / task.total // self.every_percent)
        if bucket > task.last_bucket or now - task.last_line >= self.every_s:
            task.last_bucket = max(bucket, task.last_bucket)
            self._line(task, now)

    def _line(self, task: _Task, now: float) -> None:
        elapsed = now - task.started
        parts = [f"{task.completed:,.0f}"]
        if task.total:
            share = task.completed / task.total
            parts = [f"{task.completed:,.0f}/{task.total:,.0f} ({share:.0%})"]
        parts.append(f"{clock(elapsed)} elapsed")
        if task.total and task.completed > 0:
            left = elapsed * (task.total - task.completed) / task.completed
            parts.append(f"~{clock(left)} left")
        parts += [_field(key, value) for key, value in task.fields.items()]
        task.last_line = now
        self._write(f"{task.description}: " + ", ".join(parts))

    def _finish(self, task: _Task, how: str) -> None:
        task.finished = True
        count = f"{task.completed:,.0f}" + (f"/{task.total:,.0f}" if task.total else "")
        extra = "".join(f", {_field(key, value)}" for key, value in task.fields.items())
        elapsed = clock(time.monotonic() - task.started)
        self._write(f"{task.description}: {how}, {count} in {elapsed}{extra}")

    def _write(self, text: str) -> None:
        log_line(self.console, text)


def log_line(console: Console, text: str) -> None:
    """`[HH:MM:SS] text` on `console.file`, flushed at once (no markup, no wrapping);
    nothing on a quiet console."""
    if console.quiet:
        return
    console.file.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    console.file.flush()


def say(console: Console, text: str) -> None:
    """One timestamped line: through rich on a terminal (above a live bar, no source
    location), plain `log_line` otherwise (no wrapping, no markup)."""
    if console.is_terminal:
        console.log(text, markup=False, highlight=False)
    else:
        log_line(console, text)


LOG_WIDTH = 200


def make_console() -> Console:
    """The console for a command's progress: rich's, without the source location it puts
    on every `log` line (`logbook.py:64`); writing to a file or a pipe, `LOG_WIDTH`
    columns instead of rich's 80, so that tables (the benchmarks' reports) stay legible."""
    console = Console(log_path=False)
    if not console.is_terminal:
        console.width = LOG_WIDTH
    return console


def progress(
    console: Console | None = None, *columns: str | ProgressColumn, **kwargs: Any
) -> Progress | LineProgress:
    """Rich's `Progress(*columns, console=console, **kwargs)` on a terminal (default columns:
    description, bar, count, elapsed, time left); a `LineProgress` otherwise."""
    console = console or Console()
    if not console.is_terminal:
        return LineProgress(console)
    return Progress(*(columns or default_columns()), console=console, **kwargs)


def default_columns() -> tuple[ProgressColumn, ...]:
    """Description, bar, count, elapsed and time left: add a column with
    `progress(console, *default_columns(), TextColumn(...))`."""
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


@contextlib.contextmanager
def stage(console: Console, what: str) -> Iterator[None]:
    """One step of long work without a count: a spinner on a terminal, a "what ..." line
    otherwise; then, in both cases, a "what: done in 2.1s" line (none if it raises)."""
    started = time.monotonic()
    if console.is_terminal:
        with console.status(what):
            yield
    else:
        log_line(console, f"{what} ...")
        yield
    log_line(console, f"{what}: done in {time.monotonic() - started:.1f}s")
