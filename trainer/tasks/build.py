"""Build-if-absent for a task set's splits: `train.jsonl`, `validation.jsonl`,
`test.jsonl` and `build.json`, offline and deterministic.

The directory is `<out>/<set>-seed<N>-<hash>/`, the hash covering the set's definition
(tasks, difficulty controls, kinds, instructions, sizes), the installed reasoning-gym's
version and `BUILD_VERSION`, so changing any of them builds anew instead of reusing stale
rows. Like the model builds (trainer/builds.py) it is assembled in a temporary sibling,
renamed into place, and marked finished by `build.json`, written last.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.builds import assemble, cache_root, digest
from trainer.tasks.catalog import SPLITS, TaskSet, TaskSpec, get_set
from trainer.tasks.generate import build_splits, reasoning_gym_version, task_seed
from trainer.tiny.task import write_jsonl

if TYPE_CHECKING:
    from rich.progress import Progress

    from services.common.progress import LineProgress

# Bump when the code changes what a build produces, so stale caches are not reused.
BUILD_VERSION = 2


@dataclass(frozen=True)
class TaskArtifacts:
    """Where a finished build lives; `info` is `build.json`."""

    root: Path
    info: dict[str, Any]

    @classmethod
    def at(cls, root: Path) -> TaskArtifacts:
        return cls(root, json.loads((root / "build.json").read_text()))

    def path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"no split {split!r}; the splits are {', '.join(SPLITS)}")
        return self.root / f"{split}.jsonl"

    @property
    def train_path(self) -> Path:
        return self.path("train")

    @property
    def validation_path(self) -> Path:
        return self.path("validation")

    @property
    def test_path(self) -> Path:
        return self.path("test")


def default_out_root() -> Path:
    """`$PILOT_COMMIT_CACHE/tasks`, else `.cache/tasks` under the working directory."""
    return cache_root("tasks")


def build_dir(out_root: Path, task_set: TaskSet, seed: int) -> Path:
    payload = {"version": BUILD_VERSION, "reasoning_gym": reasoning_gym_version()}
    key = digest({**payload, "seed": seed, "set": task_set.definition()})
    return out_root / f"{task_set.name}-seed{seed}-{key}"


def is_built(root: Path) -> bool:
    return (root / "build.json").is_file()


def build(
    out_root: Path,
    task_set: TaskSet,
    seed: int = 0,
    *,
    force: bool = False,
    progress: Progress | LineProgress | None = None,
) -> TaskArtifacts:
    """Build into `build_dir(out_root, task_set, seed)` unless it is already there.

    Raises `ReasoningGymMissing` without reasoning-gym and `SpaceTooSmall` when a task's
    difficulty holds fewer distinct questions than its sizes ask for.
    """
    final = build_dir(out_root, task_set, seed)
    if is_built(final) and not force:
        return TaskArtifacts.at(final)
    assemble(final, lambda staging: _build_into(staging, task_set, seed, progress))
    return TaskArtifacts.at(final)


def _build_into(
    root: Path, task_set: TaskSet, seed: int, progress: Progress | LineProgress | None
) -> None:
    started = time.monotonic()
    bar = None
    if progress is not None:
        bar = progress.add_task(f"{task_set.name}: draw and split", total=len(task_set.tasks))

    def done(spec: TaskSpec) -> None:
        if progress is not None and bar is not None:
            progress.update(bar, advance=1, description=f"{task_set.name}: {spec.source} drawn")

    rows = build_splits(task_set, seed, on_task=done)
    for split in SPLITS:
        write_jsonl(root / f"{split}.jsonl", rows[split])
    info = {
        "set": task_set.name,
        "description": task_set.description,
        "seed": seed,
        "reasoning_gym": reasoning_gym_version(),
        "version": BUILD_VERSION,
        "prompts": {split: len(rows[split]) for split in SPLITS},
        "by_source": {
            split: dict(sorted(Counter(r["source"] for r in rows[split]).items()))
            for split in SPLITS
        },
        "task_seeds": {spec.source: task_seed(seed, spec.source) for spec in task_set.tasks},
        "definition": task_set.definition(),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    # Written last: its presence marks the build as complete.
    (root / "build.json").write_text(json.dumps(info, indent=2) + "\n")


def ensure_tasks(name: str, seed: int = 0, out_root: Path | None = None) -> TaskArtifacts:
    """The catalog's set `name` built with `seed`, building it first if it is not cached."""
    return build(out_root or default_out_root(), get_set(name), seed)
