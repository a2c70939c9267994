"""The efficiency benchmark's cell bookkeeping, on runs of a few seconds against the real
embedded stack: order, skipping, the frozen target, --max-hours, resuming an interrupted
cell with a fresh Redis, and reports of partial results."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pilot_commit.bench.efficiency import report as rep
from pilot_commit.bench.efficiency.cells import (
    Cell,
    freeze_target,
    prepare_output,
    read_target,
    run_pending,
    target_path,
)
from pilot_commit.bench.efficiency.stats import ROLLOUT_SHARES, ToTarget, paired_ratio
from pilot_commit.bench.efficiency.suites import Setting, Suite
from tests.assets import fitted_tiny_assets
from trainer import run_checkpoint
from trainer.config import TrainerConfig

SETTING = Setting(8)
VARIES = ("train_wall_s", "elapsed_s", "parts", "machine")  # wall clock and the machine


@dataclass
class AssetSuite(Suite):
    """G = 8, B = 2, 64 rollouts per cell on the fitted tiny assets."""

    assets: Path = field(default_factory=Path)

    def base_config(self, setting: Setting) -> TrainerConfig:
        a = self.assets
        return TrainerConfig.model_validate(
            {
                "data": {
                    "train_path": str(a / "train.jsonl"),
                    "test_path": str(a / "test.jsonl"),
                    "task": "leading_number",
                },
                "model": {"path": str(a / "model")},
                "sampling": {"max_tokens": 4},
                "eval": {"prompts": 16, "samples": 1, "greedy": False},
                "services": {"retries": 2},
                "allocation": {"strategy": "grpo"},
            }
        )


def make_suite(assets: Path, strategies: list[str], seeds: list[int]) -> AssetSuite:
    return AssetSuite("t", [SETTING], strategies, seeds, 64, 16, 1, 2, 6, assets=assets)


def ticking(step_s: float) -> Callable[[], float]:
    """A clock that moves `step_s` seconds each time it is read."""
    now = [-step_s]

    def read() -> float:
        now[0] += step_s
        return now[0]

    return read


def cell_json(root: Path, strategy: str, seed: int) -> dict[str, Any]:
    return json.loads((Cell(SETTING, strategy, seed).path(root) / "cell.json").read_text())


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_tiny_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def bench(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two parts: the first stops (its clock says an hour passed) after the grpo cells,
    the second runs the rest."""
    root = tmp_path_factory.mktemp("bench")
    suite = make_suite(assets, ["grpo", "pilot_commit"], [0, 1])
    console = Console(quiet=True)
    left = run_pending(suite, root, console, max_hours=1, now=ticking(1300))
    partial = rep.build_report(suite, root)
    target = read_target(root, SETTING)
    grpo_mtime = (Cell(SETTING, "grpo", 0).path(root) / "cell.json").stat().st_mtime
    left_after = run_pending(suite, root, console, max_hours=2)
    return {"root": root, "suite": suite, "left": left, "partial": partial, "target": target,
            "grpo_mtime": grpo_mtime, "left_after": left_after}  # fmt: skip


@pytest.mark.slow
def test_max_hours_stops_between_cells_after_the_baseline(bench: dict[str, Any]) -> None:
    assert [(c.strategy, c.seed) for c in bench["left"]] == [
        ("pilot_commit", 0),
        ("pilot_commit", 1),
    ]
    target = bench["target"]  # frozen as soon as both grpo cells were complete
    assert target["seeds"] == [0, 1] and target["baseline"] == "grpo"
    assert bench["left_after"] == []


@pytest.mark.slow
def test_report_of_partial_results_lists_the_missing(bench: dict[str, Any]) -> None:
    partial = bench["partial"]
    assert partial["paired"] is True
    assert partial["missing"] == ["G8 pilot_commit seed 0", "G8 pilot_commit seed 1"]
    [setting] = partial["settings"]
    assert list(setting["strategies"]) == ["grpo"] and setting["ratios"] == []
    assert setting["target"] == bench["target"]


@pytest.mark.slow
def test_complete_cells_are_skipped_and_the_target_stays(bench: dict[str, Any]) -> None:
    root = bench["root"]
    assert (Cell(SETTING, "grpo", 0).path(root) / "cell.json").stat().st_mtime == bench[
        "grpo_mtime"
    ]
    assert read_target(root, SETTING) == bench["target"]


@pytest.mark.slow
def test_cell_json_holds_curve_counts_shares_and_load(bench: dict[str, Any]) -> None:
    root = bench["root"]
    for strategy in ("grpo", "pilot_commit"):
        cell = cell_json(root, strategy, 0)
        assert cell["final"]["rollouts_total"] >= 64 and cell["curve"][0]["rollouts"] == 0
        assert len(cell["curve"]) >= 4  # every 16 rollouts, and at the end
        assert sum(cell["rollouts"].values()) == cell["final"]["rollouts_total"]
        assert all(cell["rollouts"][k] >= 0 for k in ROLLOUT_SHARES)
        assert cell["machine"]["loadavg_1m"]["samples"] >= 2 and cell["machine"]["cpu_count"]
        assert "gate_pass" in cell["allocator_counters"] or strategy == "grpo"
        assert not list(Cell(SETTING, strategy, 0).path(root).glob("checkpoint*"))
    assert cell_json(root, "pilot_commit", 0)["final"]["rollouts_pilot"] > 0


@pytest.mark.slow
def test_a_seed_pairs_the_warm_start_evaluation(bench: dict[str, Any]) -> None:
    root = bench["root"]
    for seed in (0, 1):
        grpo, pc = cell_json(root, "grpo", seed), cell_json(root, "pilot_commit", seed)
        assert grpo["curve"][0] == pc["curve"][0]


@pytest.mark.slow
def test_full_report_pairs_seeds_and_writes_its_files(bench: dict[str, Any], tmp_path: Path):
    report = rep.build_report(bench["suite"], bench["root"])
    assert report["missing"] == []
    [ratio] = report["settings"][0]["ratios"]
    assert (ratio["numerator"], ratio["denominator"], ratio["seeds"]) == (
        "grpo",
        "pilot_commit",
        [0, 1],
    )
    rep.write_report(report, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"report.json", "report.md", "curves-G8.png", "rollouts.png"}
    assert "| grpo |" in (tmp_path / "report.md").read_text()


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_an_interrupted_cell_resumes_to_the_same_cell_json(
    bench: dict[str, Any], assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = make_suite(assets, ["pilot_commit"], [0])
    target_path(tmp_path, SETTING).parent.mkdir(parents=True)
    shutil.copy(target_path(bench["root"], SETTING), target_path(tmp_path, SETTING))
    save, saves = run_checkpoint.save_run, []

    async def save_once_then_stop(t: Any) -> Path:
        saves.append(t.step)
        if len(saves) == 2:
            raise Interrupted  # after step 2's rows were written, before its checkpoint
        return await save(t)

    monkeypatch.setattr(run_checkpoint, "save_run", save_once_then_stop)
    with pytest.raises(Interrupted):
        run_pending(suite, tmp_path, Console(quiet=True), max_hours=2)
    monkeypatch.setattr(run_checkpoint, "save_run", save)
    assert run_pending(suite, tmp_path, Console(quiet=True), max_hours=2) == []  # fresh Redis
    resumed, straight = (
        cell_json(tmp_path, "pilot_commit", 0),
        cell_json(bench["root"], "pilot_commit", 0),
    )
    assert [p["resumed_from_step"] for p in resumed["parts"]] == [None, 1]
    for cell in (resumed, straight):
        for key in VARIES:
            cell.pop(key)
        for point in cell["curve"]:
            point.pop("wall_s")
    assert resumed == straight


def test_a_cell_folder_of_another_config_is_refused(tmp_path: Path) -> None:
    config = make_suite(tmp_path / "assets", ["grpo"], [0]).cell_config(SETTING, "grpo", 0)
    assert prepare_output(tmp_path, config) is None
    other = config.model_copy(update={"run": config.run.model_copy(update={"max_rollouts": 9})})
    with pytest.raises(SystemExit, match="another config"):
        prepare_output(tmp_path, other)


def test_a_complete_cell_of_another_config_is_refused_not_skipped(tmp_path: Path) -> None:
    suite = make_suite(tmp_path / "assets", ["grpo"], [0])
    other = make_suite(tmp_path / "assets", ["grpo"], [0])
    other.budget = 128
    path = Cell(SETTING, "grpo", 0).path(tmp_path)
    path.mkdir(parents=True)
    config = other.cell_config(SETTING, "grpo", 0).model_dump(mode="json")
    curve = [{"step": 0, "rollouts": 0, "accuracy": 0.2, "stderr": 0.01, "wall_s": 0.0}]
    record = {"config": config, "curve": curve, "budget": 128, "eval_every_rollouts": 16}
    (path / "cell.json").write_text(json.dumps(record))
    assert run_pending(other, tmp_path, Console(quiet=True), max_hours=0) == []
    with pytest.raises(SystemExit, match=r"complete for another config \(sections \['run'\]"):
        run_pending(suite, tmp_path, Console(quiet=True), max_hours=0)
    with pytest.raises(SystemExit, match="ran 128 rollouts evaluated every 16, not the 64 / 16"):
        rep.build_report(suite, tmp_path)


def test_the_frozen_target_does_not_move_when_other_cells_appear(tmp_path: Path) -> None:
    def write_cell(strategy: str, seed: int, best: float) -> None:
        path = Cell(SETTING, strategy, seed).path(tmp_path)
        path.mkdir(parents=True)
        curve = [
            {"step": 0, "rollouts": 0, "accuracy": 0.2, "stderr": 0.01, "wall_s": 0.0},
            {"step": 5, "rollouts": 80, "accuracy": best, "stderr": 0.01, "wall_s": 1.0},
        ]
        (path / "cell.json").write_text(json.dumps({"curve": curve}))

    suite = Suite("t", [SETTING], ["grpo", "pilot_commit"], [0, 1], 64, 16, 1)
    write_cell("grpo", 0, 0.3)
    assert freeze_target(tmp_path, suite, SETTING) is None  # seed 1 still missing
    write_cell("grpo", 1, 0.4)
    frozen = freeze_target(tmp_path, suite, SETTING)
    assert frozen is not None and frozen["accuracy"] == pytest.approx(0.2 + 0.7 * 0.15)
    write_cell("pilot_commit", 0, 0.9)
    write_cell("grpo", 2, 0.9)  # a later, larger benchmark's extra baseline seed
    more = Suite("t", [SETTING], ["grpo", "pilot_commit"], [0, 1, 2], 64, 16, 1)
    assert freeze_target(tmp_path, more, SETTING) == frozen
    assert read_target(tmp_path, SETTING) == frozen


@pytest.mark.parametrize("n", [3, 6])
def test_ratios_go_through_report_json_and_back(n: int) -> None:
    grpo = {k: ToTarget(200.0 + k, k == 0) for k in range(n)}
    pc = {k: ToTarget(100.0, False) for k in range(n)}
    ratio = paired_ratio(("grpo", "pilot_commit"), grpo, pc)
    assert ratio is not None
    written = json.loads(json.dumps(rep.ratio_json(ratio), allow_nan=False))
    assert rep.ratio_from_json(written) == ratio
    assert (written["high"] is None) == (n < 6) and written["excludes_one"] == (n >= 6)
