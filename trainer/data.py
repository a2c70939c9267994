"""Dataset rows read from JSONL and checked before a run starts.

A bad row (not JSON, a missing field, an empty prompt, a verifier kind the verifier does
not have) is an error naming the file, the line and the field, raised while the run's
config is resolved, before any service starts: never a crash in the middle of a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from services.verifier.models import TASKS, Task
from trainer.config import DataSection


class DataError(ValueError):
    """A dataset file that cannot be trained on; the message names file, line and field."""


@dataclass(frozen=True)
class Row:
    """One prompt: its text (templated), reference answer, verifier kind and source (the
    `source` field when the row has one: the task it came from, for per-task accuracy)."""

    prompt: str
    answer: str
    task: Task
    source: str | None


def read_rows(path: Path, data: DataSection) -> list[Row]:
    """Every row of `path` as `data` describes them; raises `DataError` on the first bad
    one and on a file with no rows."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    rows = [_row(path, number, line, data) for number, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _row(path: Path, number: int, line: str, data: DataSection) -> Row:
    where = f"{path}:{number}"
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not a JSON object ({exc.msg})") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{where}: not a JSON object")
    text = _field(raw, data.prompt_field, where)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field {data.prompt_field!r} is empty or not a string")
    try:
        prompt = data.prompt_template.format(prompt=text)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(f"{where}: data.prompt_template does not apply: {exc!r}") from exc
    answer = _field(raw, data.answer_field, where)
    if answer is None or isinstance(answer, dict | list) or not str(answer).strip():
        raise DataError(f"{where}: field {data.answer_field!r} is empty or not a value")
    task: str = data.task
    if data.task_field is not None:
        task = _field(raw, data.task_field, where)
        if task not in TASKS:
            raise DataError(
                f"{where}: field {data.task_field!r} is {task!r}, not a verifier task kind "
                f"({', '.join(TASKS)})"
            )
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise DataError(f"{where}: field 'source' is {source!r}, not a string")
    return Row(prompt, str(answer), cast(Task, task), source)


def _field(raw: dict[str, Any], name: str, where: str) -> Any:
    if name not in raw:
        raise DataError(f"{where}: no field {name!r} (fields: {', '.join(sorted(raw)) or 'none'})")
    return raw[name]
