"""Running a suite's cells, each a resumable run whose result is kept.

A cell is (setting, strategy, seed); its folder `<output>/<suite>/<setting>/<strategy>/
seed<k>/` holds the trainer's outputs (`metrics.jsonl`, `config.json`, checkpoints while
it runs), `load.jsonl` (the 1-minute load average every 30 s), `parts.jsonl` (one row
per invocation that worked on it) and, once complete, `cell.json`. Running a suite:

- visits the cells in a fixed order: for each setting, every baseline (grpo) seed first,
  then the other strategies seed by seed (so an interrupted benchmark leaves whole pairs);
- skips a cell whose `cell.json` exists (and stops, naming it, if that came from another
  config: another budget, schedule, data or G); resumes one with a checkpoint from it (a fresh
  Redis each invocation: the trainer restores the allocator from the checkpoint's
  snapshot, and `metrics.jsonl` is cut back to the checkpoint's step so that no row is
  counted twice); restarts one without a checkpoint;
- freezes the setting's `target.json` as soon as all its baseline cells are complete,
  from those cells alone, before any other cell of the setting runs; a non-baseline cell
  never runs without it;
- starts no new cell once `max_hours` have passed (a running cell runs to its end;
  interrupting the command is safe: the cell resumes from its last checkpoint).

Seeds are paired: seed k is the same `run.seed` for every strategy of a setting. It fixes
the allocator's epoch orders (`EpochPermutation(n, seed, epoch)`: the same prompt order
for every strategy), the sampling seed of each (step, round) (`trainer.loop.round_seed`)
and of each evaluation (step -1, the train step), torch's and Python's generators, and
Pilot-Commit's buffer picks. So every strategy of a seed starts from the same step-0
evaluation and walks the same prompt order. It cannot pair what the strategies
themselves change: from the first round on they ask for different prompts and counts, so
the same round seed draws different completions, the policies diverge, and evaluations
fall at different steps (and seeds) for strategies that spend different rollouts per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from pilot_commit.bench.efficiency.stats import EvalPoint, fix_target, rollout_partition
from pilot_commit.bench.efficiency.suites import BASELINE, Setting, Suite
from services.allocator.client import AllocatorClient
from services.common.progress import LineProgress, clock, log_line
from services.stack import StackUrls
from trainer import run_checkpoint
from trainer.config import TrainerConfig, save_config

LOAD_EVERY_S = 30.0
TARGET_FRACTION = 0.7
FINAL_KEYS = (
    "step",
    "rollouts_total",
    "rollouts_pilot",
    "rollouts_commit",
    "rollouts_full",
    "rollouts_zero_variance",
    "groups_trained",
)


@dataclass(frozen=True)
class Cell:
    setting: Setting
    strategy: str
    seed: int

    def path(self, root: Path) -> Path:
        return root / self.setting.name / self.strategy / f"seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.setting.name} {self.strategy} seed {self.seed}"


def plan_cells(suite: Suite) -> list[Cell]:
    """Every cell, in the order they run (module docstring)."""
    others = [s for s in suite.strategies if s != BASELINE]
    cells = []
    for setting in suite.settings:
        if BASELINE in suite.strategies:
            cells += [Cell(setting, BASELINE, seed) for seed in suite.seeds]
        cells += [Cell(setting, s, seed) for seed in suite.seeds for s in others]
    return cells


def is_complete(path: Path) -> bool:
    return (path / "cell.json").is_file()


def write_json(path: Path, value: object) -> None:
    """Write `value` as JSON at once (a temporary file renamed over `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- the frozen target ----


def target_path(root: Path, setting: Setting) -> Path:
    return root / setting.name / "target.json"


def read_target(root: Path, setting: Setting) -> dict[str, Any] | None:
    path = target_path(root, setting)
    return json.loads(path.read_text()) if path.is_file() else None


def freeze_target(root: Path, suite: Suite, setting: Setting) -> dict[str, Any] | None:
    """The setting's target.json; written from the baseline cells when all of the suite's
    baseline seeds are complete and none exists yet (it never changes afterwards)."""
    frozen = read_target(root, setting)
    if frozen is not None or BASELINE not in suite.strategies:
        return frozen
    paths = {seed: Cell(setting, BASELINE, seed).path(root) for seed in suite.seeds}
    if not all(is_complete(p) for p in paths.values()):
        return None
    curves = {seed: load_curve(p / "cell.json") for seed, p in paths.items()}
    target = fix_target(curves, TARGET_FRACTION)
    record = {
        "baseline": BASELINE,
        **asdict(target),
        "seeds": list(target.seeds),
        "cells": [str(p.relative_to(root)) for p in paths.values()],
        "frozen_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(target_path(root, setting), record)
    return record


def load_curve(cell_json: Path) -> list[EvalPoint]:
    return [EvalPoint(**p) for p in json.loads(cell_json.read_text())["curve"]]


# ---- the machine's load ----


class LoadSampler:
    """Appends the 1-minute load average to `path` on entry, every `every_s`, and on exit."""

    def __init__(self, path: Path, every_s: float = LOAD_EVERY_S) -> None:
        self.path, self.every_s = path, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoadSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"t": round(time.time(), 1), "load1": os.getloadavg()[0]}) + "\n")


def machine_summary(load_path: Path) -> dict[str, Any]:
    loads = [row["load1"] for row in read_jsonl(load_path)]
    summary = {"min": min(loads), "mean": sum(loads) / len(loads), "max": max(loads)}
    return {
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": {**summary, "samples": len(loads), "every_s": LOAD_EVERY_S},
    }


# ---- one cell ----


def prepare_output(out: Path, config: TrainerConfig) -> int | None:
    """Ready `out` for the cell's run; the checkpoint step it resumes from, or None.

    SystemExit when `out` holds a run of another config (another budget, schedule or
    data): a cell's result must come from one config."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    wanted = config.model_dump(mode="json")
    if saved.is_file() and json.loads(saved.read_text()) != wanted:
        differ = sorted(k for k in wanted if json.loads(saved.read_text()).get(k) != wanted[k])
        raise SystemExit(
            f"{out} holds a run of another config (sections {differ} differ): "
            "give the benchmark another --output, or its earlier options"
        )
    save_config(config, saved)
    checkpoint = run_checkpoint.latest(out)
    if checkpoint is None:
        (out / "metrics.jsonl").unlink(missing_ok=True)  # a start killed before a checkpoint
        for name in ("tensorboard", "weights"):
            shutil.rmtree(out / name, ignore_errors=True)
        return None
    step = int(checkpoint.name.rsplit("-", 1)[1])
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["step"] <= step]
    tmp = out / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out / "metrics.jsonl")
    return step


def check_complete(suite: Suite, cell: Cell, root: Path) -> None:
    """SystemExit when a complete cell came from another config than the one this suite
    gives it (another budget, schedule, data or G): skipping it would mix two benchmarks
    in one report and one frozen target."""
    saved = json.loads((cell.path(root) / "cell.json").read_text()).get("config", {})
    wanted = suite.cell_config(cell.setting, cell.strategy, cell.seed).model_dump(mode="json")
    if saved != wanted:
        differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
        raise SystemExit(
            f"{cell.path(root)} is complete for another config (sections {differ} differ): "
            "give the benchmark another --output, or its earlier options"
        )


def drop_checkpoints(out: Path) -> None:
    """A complete cell keeps its results, not its checkpoints and pushed weights."""
    (out / run_checkpoint.POINTER).unlink(missing_ok=True)
    for child in out.iterdir():
        if child.name.startswith("checkpoint-") or child.name == "weights":
            shutil.rmtree(child)


async def allocator_counters(urls: StackUrls, config: TrainerConfig) -> dict[str, int]:
    assert config.run.run_id
    async with AllocatorClient(urls.allocator_url, token=config.services.allocator_token) as c:
        return (await c.summary(config.run.run_id)).counters


def eval_point(row: dict[str, Any]) -> EvalPoint:
    return EvalPoint(row["step"], row["rollouts_total"], row["eval_accuracy"],
                     row["eval_accuracy_stderr"], row["wall_s"])  # fmt: skip


def cell_record(
    suite: Suite, cell: Cell, config: TrainerConfig, out: Path, counters: dict[str, int]
) -> dict[str, Any]:
    """cell.json: the config, the eval curve, the counts, where the rollouts went, time
    and the machine's load."""
    rows = read_jsonl(out / "metrics.jsonl")
    curve = [eval_point(r) for r in rows if r["kind"] == "eval"]
    last = [r for r in rows if r["kind"] == "train"][-1]
    final = {key: last[key] for key in FINAL_KEYS}
    parts = read_jsonl(out / "parts.jsonl")
    return {
        "suite": suite.name,
        "setting": cell.setting.name,
        "regime": cell.setting.regime,
        "group_size": cell.setting.group_size,
        "strategy": cell.strategy,
        "seed": cell.seed,
        "run_id": config.run.run_id,
        "budget": suite.budget,
        "eval_every_rollouts": suite.eval_every,
        "config": config.model_dump(mode="json"),
        "curve": [asdict(p) for p in curve],
        "final": final,
        "allocator_counters": counters,
        "rollouts": rollout_partition(final, counters, cell.setting.group_size),
        "train_wall_s": last["wall_s"],
        "elapsed_s": sum(p["elapsed_s"] for p in parts),
        "parts": parts,
        "machine": machine_summary(out / "load.jsonl"),
    }


def run_cell(suite: Suite, cell: Cell, root: Path, urls: StackUrls, console: Console) -> dict:
    """Run (or resume) one cell to its budget and write its cell.json."""
    from trainer.logbook import Logbook
    from trainer.run import train

    out = cell.path(root)
    config = suite.cell_config(cell.setting, cell.strategy, cell.seed)
    resumed = prepare_output(out, config)
    if resumed is not None:
        log_line(console, f"{cell.label}: resuming from its checkpoint at step {resumed}")
    cell_console = console if suite.verbose_cells else Console(quiet=True)
    started = time.monotonic()
    part: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        with LoadSampler(out / "load.jsonl"), Logbook(out, config.run.steps, cell_console) as book:
            asyncio.run(train(config, out, urls, book))
        part["completed"] = True
    finally:
        part.update(elapsed_s=round(time.monotonic() - started, 1), resumed_from_step=resumed)
        with (out / "parts.jsonl").open("a") as f:
            f.write(json.dumps(part) + "\n")
    record = cell_record(suite, cell, config, out, asyncio.run(allocator_counters(urls, config)))
    write_json(out / "cell.json", record)
    drop_checkpoints(out)
    return record


# ---- the suite ----


@contextlib.contextmanager
def services(config: TrainerConfig, root: Path, console: Console) -> Iterator[StackUrls]:
    """The services for every cell of this invocation: the embedded stack (fresh Redis)
    unless the config names its own."""
    from trainer.run import services_for

    shutil.rmtree(root / "stack", ignore_errors=True)
    with services_for(config, root, console) as urls:
        yield urls


def run_pending(
    suite: Suite,
    root: Path,
    console: Console,
    max_hours: float,
    now: Callable[[], float] = time.monotonic,
) -> list[Cell]:
    """Run the suite's incomplete cells in order; the cells left when `max_hours` ran out."""
    pending = []
    for cell in plan_cells(suite):
        if is_complete(cell.path(root)):
            check_complete(suite, cell, root)
        else:
            pending.append(cell)
    for setting in suite.settings:  # an earlier invocation may have stopped right before
        freeze_target(root, suite, setting)
    if not pending:
        log_line(console, f"{suite.name}: every cell is complete")
        return []
    started, display = now(), LineProgress(console)
    task = display.add_task(f"{suite.name} cells", total=len(pending))
    with contextlib.ExitStack() as stack:
        urls: StackUrls | None = None
        for index, cell in enumerate(pending):
            if now() - started >= max_hours * 3600:
                display.stop()
                return pending[index:]
            require_target(root, cell)
            if urls is None:
                config = suite.cell_config(cell.setting, cell.strategy, cell.seed)
                urls = stack.enter_context(services(config, root, console))
            write_json(root / cell.setting.name / "setting.json", setting_info(suite, cell))
            record = run_cell(suite, cell, root, urls, console)
            log_line(console, cell_line(cell, record))
            display.advance(task)
            if cell.strategy == BASELINE:
                freeze_target(root, suite, cell.setting)
    return []


def require_target(root: Path, cell: Cell) -> None:
    if cell.strategy != BASELINE and read_target(root, cell.setting) is None:
        raise SystemExit(
            f"{cell.label}: the target of {cell.setting.name} is not frozen yet; "
            f"run its {BASELINE} cells first (include {BASELINE} in --strategies)"
        )


def setting_info(suite: Suite, cell: Cell) -> dict[str, Any]:
    return {
        "suite": suite.name,
        "setting": cell.setting.name,
        "regime": cell.setting.regime,
        "group_size": cell.setting.group_size,
        "train_batch_size": suite.train_batch_size,
        "budget": suite.budget,
        "eval_every_rollouts": suite.eval_every,
        "data": suite.describe(cell.setting),
    }


def cell_line(cell: Cell, record: dict[str, Any]) -> str:
    curve, load = record["curve"], record["machine"]["loadavg_1m"]
    return (
        f"{cell.label}: accuracy {curve[0]['accuracy']:.3f} -> best "
        f"{max(p['accuracy'] for p in curve):.3f} in {record['final']['rollouts_total']:,}"
        f" rollouts, {clock(record['elapsed_s'])}, load {load['min']:.1f}-{load['max']:.1f}"
    )
