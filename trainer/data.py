"""Dataset rows read from local files and checked before a run starts.

`data.train_path` and `data.test_path` are each one of:
- a JSON Lines file (`.jsonl`, `.json`): one object per line;
- a Parquet file (`.parquet`), read with `datasets`;
- a directory written by `datasets`' `save_to_disk`: a `Dataset`, or a `DatasetDict`
  whose split `data.train_split` / `data.test_split` is read.

Nothing is fetched from the Hugging Face Hub at run time: a path that does not exist and
looks like a Hub id (`org/name`) gets an error saying how to save it locally first. The
`datasets` package is needed for Parquet and saved directories only (`pip install
'pilot-commit[datasets]'`).

Rows are then filtered (`data.keep_where`), shuffled with the run's seed (`data.shuffle`)
and cut (`data.max_rows`), in that order, and checked: a bad row (not an object, a missing
field, an empty prompt, a reference answer the verifier cannot read for the row's task
kind, a verifier kind the verifier does not have) is an error naming the file, the row and
the field, raised while the run's config is resolved, before any service starts: never a
crash in the middle of a run. JSON Lines rows are named by line number (`file:12`), table
rows by index (`file row 11`, as `dataset[11]`).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from services.verifier.answers import extract_reference, normalize, parse_number
from services.verifier.models import TASKS, Task
from trainer.config import DataSection

TABLE_SUFFIXES = (".parquet",)
JSONL_SUFFIXES = (".jsonl", ".json")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class DataError(ValueError):
    """A dataset that cannot be trained on; the message names the file, row and field."""


@dataclass(frozen=True)
class Row:
    """One prompt: its text (templated), reference answer, verifier kind and source (the
    `source` field when the row has one: the task it came from, for per-task accuracy)."""

    prompt: str
    answer: str
    task: Task
    source: str | None


def read_rows(path: Path, data: DataSection, *, split: str = "train", seed: int = 0) -> list[Row]:
    """Every kept row of `path` as `data` describes them (module docstring); `split` names
    the DatasetDict split to read from a saved directory, `seed` shuffles. Raises
    `DataError` on the first bad row and when no row is left."""
    records = list(_records(path, split))
    kept = [(where, raw) for where, raw in records if _kept(where, raw, data.keep_where)]
    if data.shuffle:
        random.Random(seed).shuffle(kept)
    if data.max_rows is not None:
        kept = kept[: data.max_rows]
    if not kept:
        filtered = f" ({len(records)} before data.keep_where)" if data.keep_where else ""
        raise DataError(f"{path}: no rows{filtered}")
    return [_row(where, raw, data) for where, raw in kept]


def _records(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    """(where, raw record) for each record of `path`, in file order."""
    if not path.exists():
        hint = ""
        if _HUB_ID.match(str(path)):
            hint = (
                "; datasets are read from local files only, never from the Hugging Face Hub at "
                f"run time: save it first (`datasets.load_dataset({str(path)!r})"
                ".save_to_disk(DIR)`) and point the config to DIR"
            )
        raise DataError(f"{path}: no such file or directory{hint}")
    if path.is_dir() or path.suffix in TABLE_SUFFIXES:
        yield from _table_records(path, split)
        return
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            kind = "Parquet file or saved dataset directory" if number == 1 else "JSON object"
            suffix = f" (JSON Lines: {', '.join(JSONL_SUFFIXES)})" if number == 1 else ""
            raise DataError(f"{path}:{number}: not a {kind}{suffix} ({exc.msg})") from exc


def _table_records(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    try:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets loads
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{path}: reading Parquet files and saved datasets needs the `datasets` package "
            "(pip install 'pilot-commit[datasets]')"
        ) from exc
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
        else:
            loaded = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as a dataset: {exc}") from exc
    where = str(path)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path}: no split {split!r} (splits: {', '.join(loaded)})")
        loaded, where = loaded[split], f"{path}[{split}]"
    for index, record in enumerate(cast(Any, loaded)):
        yield f"{where} row {index}", record


def _kept(where: str, raw: Any, keep_where: dict[str, list[Any]]) -> bool:
    if not keep_where:
        return True
    if not isinstance(raw, dict):
        raise DataError(f"{where}: not a JSON object")
    return all(_field(raw, name, where) in values for name, values in keep_where.items())


def _row(where: str, raw: Any, data: DataSection) -> Row:
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
    problem = reference_problem(str(answer), cast(Task, task))
    if problem is not None:
        raise DataError(f"{where}: field {data.answer_field!r} is {answer!r}: {problem}")
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise DataError(f"{where}: field 'source' is {source!r}, not a string")
    return Row(prompt, str(answer), cast(Task, task), source)


def reference_problem(answer: str, task: Task) -> str | None:
    """Why the verifier could never match `answer` as the reference of a `task` row, or
    None: `numeric` and `leading_number` compare numbers, so their reference must read as
    one (services/verifier/answers.py `parse_number`); `choice` compares letters."""
    reference = extract_reference(answer, task)
    if task in ("numeric", "leading_number") and parse_number(normalize(reference)) is None:
        return f"not a number, which task {task!r} compares"
    if task == "choice" and not re.fullmatch(r"[A-Za-z]", reference):
        return "not a choice letter, which task 'choice' compares"
    return None


def _field(raw: dict[str, Any], name: str, where: str) -> Any:
    if name not in raw:
        raise DataError(f"{where}: no field {name!r} (fields: {', '.join(sorted(raw)) or 'none'})")
    return raw[name]
