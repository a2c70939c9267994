"""Saving and resuming a run: what a checkpoint holds, how a run resumes from it, and
the crash-safe layout that makes any instant of a save survivable.

A checkpoint is two files: `trainer.pt` (torch.save of the policy and its optimiser,
the stored pilot rollouts, the trainer's own counts, the step, the weight version, the
wall time and the torch and Python RNG states) and `allocator.json` (the allocator's
snapshot of the run, taken after the step completed). A run on several ranks keeps the
model and optimiser out of trainer.pt: each rank writes its shards into the same
directory with torch.distributed.checkpoint (`.metadata`, `__<rank>_0.distcp`), which
any number of ranks, one process included, can load (Policy.load_state). `save_run` writes both;
`resume_or_create` puts a run back in its latest checkpoint's state (the trainer's side
and the allocator's), or creates the allocator run when there is none.

Layout under the run folder `output`:

    checkpoint-000040/     one complete checkpoint per directory (step zero-padded to 6)
    checkpoint -> checkpoint-000040     the pointer: a relative symlink to the newest

A save writes `checkpoint-<step>.tmp/`, fsyncs every file and the directory, renames it
to `checkpoint-<step>/`, then switches the pointer with `os.replace` of a fresh symlink
(atomic on POSIX), and only then deletes the older checkpoints. A process killed at any
instant of a save therefore leaves either the old or the new checkpoint loadable:
`latest` follows the pointer, and where the pointer is missing or dangling (a kill
between the steps, or a run folder written by an older version with a plain
`checkpoint/` directory) it takes the complete `checkpoint-<step>/` with the highest
step. Leftover `.tmp` directories and older checkpoints are ignored and removed by the
next save.

`PC_CHECKPOINT_CRASH_AT=k` (tests only) SIGKILLs the process at the k-th filesystem step
of a save (1-based; `fs_steps` counts them), to test exactly that.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from services.allocator import models as am
from trainer.rollouts import RolloutStore

if TYPE_CHECKING:
    from trainer.loop import Trainer

POINTER = "checkpoint"
_DIR = re.compile(r"^checkpoint-(\d+)$")
REQUIRED = ("trainer.pt", "allocator.json")

_steps_done = 0


def _fs_step() -> None:
    """Count one filesystem step; SIGKILL ourselves at the one PC_CHECKPOINT_CRASH_AT names."""
    global _steps_done
    _steps_done += 1
    crash_at = os.environ.get("PC_CHECKPOINT_CRASH_AT")
    if crash_at and int(crash_at) == _steps_done:
        os.kill(os.getpid(), signal.SIGKILL)


def fs_steps() -> int:
    """Filesystem steps taken by saves in this process so far (see PC_CHECKPOINT_CRASH_AT)."""
    return _steps_done


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def step_dir(output: Path, step: int) -> Path:
    return output / f"checkpoint-{step:06d}"


def _complete(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED)


def candidates(output: Path) -> list[tuple[int, Path]]:
    """Every complete `checkpoint-<step>/` in `output`, highest step first."""
    if not output.is_dir():
        return []
    found = []
    for child in output.iterdir():
        match = _DIR.match(child.name)
        if match and not child.is_symlink() and _complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found, reverse=True)


def latest(output: Path) -> Path | None:
    """The checkpoint directory to resume from, or None when `output` has none.

    The pointer's target if it is complete; else a legacy plain `checkpoint/` directory
    if it is complete; else the complete `checkpoint-<step>/` with the highest step; else
    a complete `checkpoint.tmp/` (the previous version deleted `checkpoint/` before
    renaming it, and wrote allocator.json last, so a kill in between left it complete).
    """
    pointer = output / POINTER
    if pointer.is_symlink():
        target = pointer.resolve()
        if _complete(target):
            return target
    elif _complete(pointer):
        return pointer  # written by a version without step directories
    found = candidates(output)
    if found:
        return found[0][1]
    legacy_tmp = output / "checkpoint.tmp"
    return legacy_tmp if _complete(legacy_tmp) else None


def save(output: Path, step: int, write: Callable[[Path], None]) -> Path:
    """Write the checkpoint of `step` with `write(directory)` and make it the latest.

    `write` must create every file of `REQUIRED` in the directory it is given (files
    only, no subdirectories). Returns the new `checkpoint-<step>/`. Raises whatever
    `write` raises, with the previous checkpoint still the latest.
    """
    output.mkdir(parents=True, exist_ok=True)
    final = step_dir(output, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # a save killed half-way
    tmp.mkdir()
    _fs_step()
    write(tmp)
    _fs_step()
    missing = [name for name in REQUIRED if not (tmp / name).is_file()]
    if missing:
        raise RuntimeError(f"checkpoint writer did not create {missing} in {tmp}")
    for child in sorted(tmp.iterdir()):
        _fsync_file(child)
        _fs_step()
    _fsync_dir(tmp)
    _fs_step()
    if final.exists():  # this step saved before, by a run resumed from an older one
        current = latest(output)
        if current is not None and current.resolve() == final.resolve():
            raise RuntimeError(f"{final} is already the latest checkpoint")
        shutil.rmtree(final)
        _fs_step()
    tmp.rename(final)
    _fs_step()
    _fsync_dir(output)
    _fs_step()
    pointer = output / POINTER
    if pointer.is_dir() and not pointer.is_symlink():
        # A legacy plain directory cannot be replaced by a link in one step: move it
        # aside first (a kill in between leaves no pointer; `latest` then takes `final`).
        legacy = output / "checkpoint-legacy"
        if legacy.exists():
            shutil.rmtree(legacy)
        pointer.rename(legacy)
        _fs_step()
    link_tmp = output / f".{POINTER}.link.tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    link_tmp.symlink_to(final.name)
    _fs_step()
    os.replace(link_tmp, pointer)
    _fs_step()
    _fsync_dir(output)
    _fs_step()
    for child in sorted(output.iterdir()):
        # .tmp: a save killed half-way, or the previous version's checkpoint.tmp
        stale = child.name == "checkpoint-legacy" or child.name.endswith(".tmp")
        stale = stale or (bool(_DIR.match(child.name)) and child.name != final.name)
        if stale and child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
            _fs_step()
    return final


# ---- a run's checkpoint ----


async def save_run(t: Trainer) -> Path:
    """Save the trainer and its allocator snapshot as `output/checkpoint-<step>/` and make
    it the latest (crash-safe: `save`). Returns the directory."""
    import torch  # here, not at the top: the crash tests start a process per kill

    snapshot = await t.services.allocator.snapshot(t.run_id)

    def write(directory: Path) -> None:
        if t.policy.ranks is not None:  # every rank writes its shards (DCP) here first
            t.policy.save_sharded(directory)
        torch.save(trainer_state(t), directory / "trainer.pt")
        (directory / "allocator.json").write_text(snapshot.model_dump_json())

    return save(t.output, t.step, write)


def trainer_state(t: Trainer) -> dict[str, object]:
    import torch

    return {
        "policy": t.policy.state(),
        "pilots": t.pilots.state(),
        "counts": dataclasses.asdict(t.counts),
        "step": t.step,
        "weight_version": t.weight_version,
        "wall_s": t.wall_s,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
    }


def load_trainer_state(t: Trainer, path: Path) -> None:
    """Put `t` in the state `trainer_state` saved to `path` (a `trainer.pt`). A file of
    the previous version keeps its counts under `tally`, most of them now the allocator's."""
    import torch

    state = torch.load(path, weights_only=False)
    t.policy.load_state(state["policy"], directory=path.parent)
    t.pilots = RolloutStore(state["pilots"])
    counts = state.get("counts") or {
        "rollouts_zero_variance": state["tally"]["rollouts_zero_variance"]
    }
    t.counts = dataclasses.replace(t.counts, **counts)
    t.step, t.weight_version = state["step"], state["weight_version"]
    t.wall_s = state["wall_s"]
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])


async def resume_or_create(t: Trainer) -> None:
    """Resume the latest checkpoint in `t.output` (trainer state and allocator snapshot),
    or create the allocator run when there is none. Raises SystemExit when the allocator
    already has steps of this run id but the output has no checkpoint."""
    alloc = t.services.allocator
    checkpoint = latest(t.output)
    if checkpoint is not None:
        load_trainer_state(t, checkpoint / "trainer.pt")
        snapshot = am.Snapshot.model_validate_json((checkpoint / "allocator.json").read_text())
        await alloc.restore_snapshot(t.run_id, snapshot)
        t.log.resumed(t.step)
        t.log.note(f"resumed from {checkpoint} at step {t.step}")
        return
    spec = am.RunSpec(num_prompts=len(t.data.answers), seed=t.cfg.run.seed, config=t.cfg.allocation)
    created = await alloc.create_run(t.run_id, spec)
    if not created.created and created.run.step > 0:
        raise SystemExit(
            f"allocator run {t.run_id!r} already has {created.run.step} steps "
            "and this output has no checkpoint; use another run id or output"
        )
