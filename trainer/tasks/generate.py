"""Draw a task set's prompts from reasoning-gym and split them three ways, offline.

reasoning-gym generates each item of a dataset from `Random(seed + index)`, so the same
seed and config give the same questions on any machine, with no download. Per task:

1. draw a pool of items (twice the prompts asked for; eight times if that holds too few
   distinct questions) with a seed derived from the set's seed and the task's source;
2. keep the first item of each distinct question (compared case-folded, whitespace
   collapsed), so that no question appears twice, in one split or across two;
3. shuffle the distinct questions with a seeded generator and deal them to test,
   validation and train, in that order; a task whose pool holds fewer distinct questions
   than its three sizes together is an error (`SpaceTooSmall`), never a silent shortfall.

Then each split's rows of all tasks are interleaved in a seeded shuffle. reasoning-gym is
imported only when a set is drawn: it is the optional `tasks` extra.

Seeds alone do not make the draw repeatable: some generators pick from a Python set
(`ransom_note` and `isomorphic_strings` choose letters with `rng.choice(list(letters))`),
and a set of strings iterates in an order that follows string hashing, which Python
randomises per process. So each task is drawn in a child process (`python -m
trainer.tasks.generate`) whose hash seed is fixed, `PYTHONHASHSEED=0`, unless this process
already runs with it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import trainer
from trainer.tasks.catalog import SPLITS, TaskSet, TaskSpec

DISTRIBUTION = "reasoning-gym"
# The string-hash seed tasks are drawn under (see the module docstring).
HASH_SEED = "0"
# Pool sizes tried, as multiples of the distinct questions a task needs.
POOL_FACTORS = (2, 8)


class ReasoningGymMissing(RuntimeError):
    """reasoning-gym (the `tasks` extra) is not installed."""


class SpaceTooSmall(ValueError):
    """A task's difficulty holds fewer distinct questions than its splits ask for."""


def _missing() -> ReasoningGymMissing:
    return ReasoningGymMissing(
        f"{DISTRIBUTION} is not installed: pip install 'pilot-commit[tasks]' "
        f"(the `tasks` extra pins the version the task sets were measured with)"
    )


def reasoning_gym() -> ModuleType:
    """The `reasoning_gym` module; `ReasoningGymMissing` names the extra when it is absent."""
    try:
        return importlib.import_module("reasoning_gym")
    except ModuleNotFoundError as exc:
        if exc.name != "reasoning_gym":
            raise
        raise _missing() from exc


def reasoning_gym_version() -> str:
    """The installed reasoning-gym's version, read without importing it."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise _missing() from exc


def task_seed(seed: int, source: str) -> int:
    """The seed a task's reasoning-gym dataset is created with: tasks of one set drawn
    with the same seed would otherwise share their random streams."""
    return int(hashlib.sha256(f"{seed}:{source}".encode()).hexdigest()[:8], 16)


def question_key(question: str) -> str:
    """What makes two questions the same one: case and whitespace do not count."""
    return " ".join(question.casefold().split())


@dataclass(frozen=True)
class Drawn:
    """One reasoning-gym item: `dataset[index]` of `create_dataset(source, seed=task_seed,
    **config)`, so it can be drawn again (and scored by reasoning-gym) from its row id."""

    index: int
    entry: dict[str, Any]


def draw_distinct(spec: TaskSpec, seed: int) -> list[Drawn]:
    """At least `spec.wanted` items with distinct questions, in index order.

    Raises `SpaceTooSmall` when even the largest pool holds fewer.
    """
    gym = reasoning_gym()
    distinct: dict[str, Drawn] = {}
    pool = 0
    for factor in POOL_FACTORS:
        pool = max(16, spec.wanted * factor)
        dataset = gym.create_dataset(
            spec.source, seed=task_seed(seed, spec.source), size=pool, **spec.config
        )
        distinct = {}
        for index in range(pool):
            entry = dataset[index]
            distinct.setdefault(question_key(entry["question"]), Drawn(index, entry))
        if len(distinct) >= spec.wanted:
            return list(distinct.values())
    raise SpaceTooSmall(
        f"{spec.source} {spec.config}: {len(distinct)} distinct questions in {pool} draws, "
        f"{spec.wanted} asked ({spec.train} train + {spec.validation} validation + "
        f"{spec.test} test); lower the sizes or widen the difficulty"
    )


def make_row(spec: TaskSpec, drawn: Drawn) -> dict[str, Any]:
    """A dataset row: the question with the answer-format instruction, the reference, the
    verifier kind that reads it, and where it came from."""
    question, answer = drawn.entry["question"], drawn.entry["answer"]
    if not isinstance(answer, str | int | float) or not str(answer).strip():
        raise ValueError(f"{spec.source}[{drawn.index}]: answer {answer!r} is not a value")
    prompt = question.strip() + (f"\n\n{spec.instruction}" if spec.instruction else "")
    return {
        "id": f"{spec.source}-{drawn.index}",
        "prompt": prompt,
        "answer": str(answer).strip(),
        "task": spec.kind,
        "source": spec.source,
        "difficulty": spec.config,
    }


Rows = dict[str, list[dict[str, Any]]]  # split -> rows


def split_task(spec: TaskSpec, seed: int) -> Rows:
    """This task's rows per split, disjoint in their questions, drawn in this process
    (repeatable only under `PYTHONHASHSEED=HASH_SEED`: use `draw_tasks`)."""
    drawn = draw_distinct(spec, seed)
    random.Random(f"{seed}:{spec.source}:splits").shuffle(drawn)
    out, start = {}, 0
    for split in ("test", "validation", "train"):
        size = spec.size(split)
        out[split] = [make_row(spec, d) for d in drawn[start : start + size]]
        start += size
    return out


def draw_tasks(specs: Sequence[TaskSpec], seed: int) -> Iterator[tuple[TaskSpec, Rows]]:
    """Each task's rows per split, task by task, the same in every process: drawn here
    when this process hashes with `HASH_SEED`, else in one child process that does."""
    if os.environ.get("PYTHONHASHSEED") == HASH_SEED:
        for spec in specs:
            yield spec, split_task(spec, seed)
        return
    reasoning_gym()  # a missing extra is reported here, not by the child
    yield from _draw_in_child(specs, seed)


_ERRORS: dict[str, type[Exception]] = {
    "SpaceTooSmall": SpaceTooSmall,
    "ReasoningGymMissing": ReasoningGymMissing,
}


def _draw_in_child(specs: Sequence[TaskSpec], seed: int) -> Iterator[tuple[TaskSpec, Rows]]:
    """`draw_tasks` in `python -m trainer.tasks.generate` under the fixed hash seed: one
    JSON line per task comes back as soon as it is drawn; its errors are raised here."""
    root = str(Path(trainer.__file__).resolve().parent.parent)  # this checkout's packages
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONHASHSEED": HASH_SEED, "PYTHONPATH": path}
    request = {"specs": [spec.definition() for spec in specs], "seed": seed}
    with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
        [sys.executable, "-m", "trainer.tasks.generate"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, env=env,
    ) as child:  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(request))
        child.stdin.close()
        drawn = 0
        for spec, line in zip(specs, child.stdout, strict=False):
            answer = json.loads(line)
            if answer.get("error") in _ERRORS:
                raise _ERRORS[answer["error"]](answer["message"])
            yield spec, answer["rows"]
            drawn += 1
        if child.wait() != 0 or drawn < len(specs):
            errors.seek(0)
            raise RuntimeError(
                f"drawing tasks failed (exit status {child.returncode}): "
                f"{errors.read().strip()[-2000:]}"
            )


def build_splits(
    task_set: TaskSet, seed: int, on_task: Callable[[TaskSpec], None] | None = None
) -> Rows:
    """Every task's rows, each split's interleaved in a seeded shuffle; `on_task(spec)` is
    called after each task is drawn (progress)."""
    rows: Rows = {split: [] for split in SPLITS}
    for spec, task_rows in draw_tasks(task_set.tasks, seed):
        for split in SPLITS:
            rows[split] += task_rows[split]
        if on_task is not None:
            on_task(spec)
    for split in SPLITS:
        random.Random(f"{seed}:{split}").shuffle(rows[split])
    return rows


def _child() -> int:
    """The child of `_draw_in_child`: task definitions and the seed as JSON on stdin; one
    JSON line per task on stdout, its rows or its error (then it stops)."""
    request = json.loads(sys.stdin.read())
    specs = [TaskSpec.from_definition(d) for d in request["specs"]]
    try:
        for _, rows in draw_tasks(specs, request["seed"]):
            print(json.dumps({"rows": rows}), flush=True)
    except tuple(_ERRORS.values()) as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
