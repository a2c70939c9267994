"""What the efficiency suites run: strategy tables, settings, the real suite's config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pilot_commit.bench.efficiency.cells import Cell, plan_cells
from pilot_commit.bench.efficiency.suites import (
    RealSuite,
    Setting,
    Suite,
    check_suite,
    real_batch_sizes,
    strategy_table,
    tiny_settings,
)
from trainer.config import TrainerConfig


@pytest.mark.parametrize("g", [16, 32, 64])
def test_strategy_tables_follow_g_and_b(g: int) -> None:
    for name in ("grpo", "dapo", "pilot_commit", "posterior_gate"):
        config = TrainerConfig.model_validate({"allocation": strategy_table(name, g, 8, 24)})
        assert config.allocation.group_size() == g
        assert config.allocation.train_batch_size == 8
    pc = strategy_table("pilot_commit", g, 8, 24)
    assert (pc["n_pilot"], pc["n_commit"], pc["gen_batch_size"]) == (g // 4, g - g // 4, 24)
    assert (pc["p_lower"], 1 - pc["p_upper"], pc["exclude_threshold"]) == (0.125, 0.75, 1.0)
    assert strategy_table("dapo", g, 8, 24)["gen_batch_size"] == 8


def test_tiny_settings_share_the_70_percent_g32_cells() -> None:
    names = [s.name for s in tiny_settings("all", [30, 50, 70], [16, 32, 64])]
    assert names == [
        "regime-30-G32",
        "regime-50-G32",
        "regime-70-G32",
        "regime-70-G16",
        "regime-70-G64",
    ]
    assert [s.name for s in tiny_settings("group", [30], [16, 32])] == [
        "regime-70-G16",
        "regime-70-G32",
    ]


def test_cells_run_baseline_seeds_first_then_the_others_seed_by_seed() -> None:
    suite = Suite("t", [Setting(8)], ["grpo", "dapo", "pilot_commit"], [0, 1], 64, 16, 1)
    order = [(c.strategy, c.seed) for c in plan_cells(suite)]
    assert order == [
        ("grpo", 0),
        ("grpo", 1),
        ("dapo", 0),
        ("pilot_commit", 0),
        ("dapo", 1),
        ("pilot_commit", 1),
    ]
    assert Cell(Setting(8), "dapo", 1).path(Path("out")) == Path("out/G8/dapo/seed1")


BASE = """
[run]
seed = 7
steps = 3
[data]
train_path = "train.jsonl"
test_path = "test.jsonl"
[model]
path = "model"
threads = 2
[sampling]
max_tokens = 96
[optim]
lr = 1e-6
lr_schedule = "{schedule}"
[eval]
every = 5
prompts = 32
samples = 3
[allocation]
strategy = "pilot_commit"
train_batch_size = 4
gen_batch_size = 10
"""


def real_suite(tmp_path: Path, schedule: str = "constant") -> RealSuite:
    path = tmp_path / "base.toml"
    path.write_text(BASE.format(schedule=schedule))
    b, gen = real_batch_sizes(path, [])
    assert (b, gen) == (4, 10)
    return RealSuite(
        "real", [Setting(16)], ["grpo", "pilot_commit"], [0, 1], 4000, 400, 2, b, gen,
        config_path=path, overrides=["sampling.max_tokens=64"],
    )  # fmt: skip


def test_real_suite_overrides_only_seed_budget_schedule_checkpoints_allocation(
    tmp_path: Path,
) -> None:
    config = real_suite(tmp_path).cell_config(Setting(16), "pilot_commit", 1)
    assert (config.run.seed, config.run.max_rollouts, config.run.checkpoint_every) == (1, 4000, 2)
    assert (config.eval.every, config.eval.every_rollouts) == (0, 400)
    assert (config.eval.prompts, config.eval.samples, config.optim.lr) == (32, 3, 1e-6)
    assert config.sampling.max_tokens == 64 and config.model.threads == 2  # the base's, --set
    alloc = config.allocation.model_dump()
    assert (alloc["n_pilot"], alloc["n_commit"], alloc["gen_batch_size"]) == (4, 12, 10)
    assert config.run.steps >= 4000 // (4 * 16)  # the budget, not the steps, ends the run


def test_real_suite_refuses_a_decaying_learning_rate(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="lr_schedule=constant"):
        real_suite(tmp_path, "cosine").cell_config(Setting(16), "grpo", 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategies": ["grpo", "ppo"]}, "unknown \\['ppo'\\]"),
        ({"strategies": ["grpo", "grpo"]}, "twice"),
        ({"seeds": []}, "at least 1 paired seed"),
        ({"budget": 0}, "positive budget"),
        ({"eval_every": 0}, "between 1 and the budget"),
        ({"eval_every": 65}, "between 1 and the budget"),
        ({"settings": [Setting(3)]}, "G3, pilot_commit: G = 3 gives an invalid"),
        ({"settings": []}, "no setting"),
    ],
)
def test_bad_options_stop_before_any_cell_runs(change: dict[str, Any], message: str) -> None:
    suite = Suite("t", [Setting(8)], ["grpo", "pilot_commit"], [0, 1], 64, 16, 1)
    check_suite(suite)
    with pytest.raises(SystemExit, match=message):
        check_suite(dataclasses.replace(suite, **change))
