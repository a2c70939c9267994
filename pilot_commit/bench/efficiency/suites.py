"""What a benchmark suite runs: its settings (the axis values), strategies, seeds and
budget, and the trainer config of each cell.

Every cell of a suite trains with the same base config (data, model, sampling, optimiser,
evaluation) and differs from the others only in `run.seed` and `[allocation]`; every
strategy has the same rollout budget (`run.max_rollouts`) and is evaluated on the same
rollout schedule (`eval.every_rollouts`, no step-based evaluations), so strategies that
spend different rollouts per step are compared at the same points.

- `tiny`: the tiny task's regimes (30 / 50 / 70% of GRPO's rollouts in zero-variance
  groups) at G = 32, and the group size G = 16 / 32 / 64 at the 70% regime; B = 8; lr
  constant after warmup (runs end on a rollout budget that strategies reach in different
  step counts, which a step-based decay would treat differently).
- `real`: a base run config (default `configs/smollm2.toml`) whose `[data]`, `[model]`,
  `[sampling]`, `[optim]` and `[eval]` are taken as given (`--set` overrides them); G
  defaults to 16; B and Pilot-Commit's gen_batch_size come from its `[allocation]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from trainer.config import TrainerConfig, load_config

REPO = Path(__file__).resolve().parents[3]
BASELINE = "grpo"
STRATEGIES = ("grpo", "dapo", "pilot_commit", "posterior_gate")
MAX_ROUNDS = 50


def strategy_table(strategy: str, g: int, b: int, gen_batch_size: int) -> dict[str, Any]:
    """The `[allocation]` of a strategy at group size `g` and train batch `b`.

    DAPO samples `b` prompts per round and drops zero-variance groups; Pilot-Commit takes
    the paper's proportions (a quarter of G as pilot, `gen_batch_size` prompts piloted
    per round, band [0.125, 0.75], eviction only when every pilot succeeds, buffer
    max off-steps 4, max-variance pick); posterior_gate its defaults with G and B.
    """
    common: dict[str, Any] = {"strategy": strategy, "train_batch_size": b}
    if strategy == "grpo":
        return {**common, "n": g}
    if strategy == "dapo":
        return {**common, "n": g, "gen_batch_size": b, "max_rounds": MAX_ROUNDS}
    if strategy == "pilot_commit":
        return {
            **common,
            "gen_batch_size": gen_batch_size,
            "n_pilot": g // 4,
            "n_commit": g - g // 4,
            "p_lower": 0.125,
            "p_upper": 0.25,
            "exclude_threshold": 1.0,
            "buffer_max_off_steps": 4,
            "buffer_sampling": "max_variance",
            "max_rounds": MAX_ROUNDS,
        }
    if strategy == "posterior_gate":
        return {**common, "n": g}
    raise SystemExit(f"unknown strategy {strategy!r}; the benchmark knows {list(STRATEGIES)}")


@dataclass(frozen=True)
class Setting:
    """One axis value: a group size, and on the tiny task a regime (zero-variance %)."""

    group_size: int
    regime: int | None = None

    @property
    def name(self) -> str:
        prefix = f"regime-{self.regime}-" if self.regime is not None else ""
        return f"{prefix}G{self.group_size}"


@dataclass
class Suite:
    """A set of cells: settings x strategies x seeds, with one budget and schedule."""

    name: str
    settings: list[Setting]
    strategies: list[str]
    seeds: list[int]
    budget: int
    eval_every: int
    checkpoint_every: int
    train_batch_size: int = 8
    gen_batch_size: int = 24
    verbose_cells: bool = False  # a cell's own eval lines and step progress

    def base_config(self, setting: Setting) -> TrainerConfig:
        """Everything but the run's seed, length, checkpoints and allocation."""
        raise NotImplementedError

    def describe(self, setting: Setting) -> dict[str, Any]:
        """What the setting's data are (written next to its cells)."""
        return {}

    def step_cap(self, setting: Setting) -> int:
        """`run.steps`: never the binding limit (every strategy spends >= B x G rollouts
        a step, so the budget ends every run first)."""
        return 2 * math.ceil(self.budget / (self.train_batch_size * setting.group_size)) + 10

    def cell_config(self, setting: Setting, strategy: str, seed: int) -> TrainerConfig:
        data = self.base_config(setting).model_dump(mode="json")
        data["run"].update(
            seed=seed,
            max_rollouts=self.budget,
            steps=self.step_cap(setting),
            checkpoint_every=self.checkpoint_every,
            run_id=f"{self.name}-{setting.name}-{strategy}-s{seed}",
        )
        data["eval"].update(every=0, every_rollouts=self.eval_every)
        data["allocation"] = strategy_table(
            strategy, setting.group_size, self.train_batch_size, self.gen_batch_size
        )
        return TrainerConfig.model_validate(data)


@dataclass
class TinySuite(Suite):
    """The tiny task's regimes, built (or read from the cache) when a cell first runs."""

    eval_prompts: int = 2000
    eval_samples: int = 2

    @cached_property
    def regimes(self) -> Any:
        from trainer.tiny.build import ensure_regimes

        return ensure_regimes()

    def base_config(self, setting: Setting) -> TrainerConfig:
        from trainer.tiny.build import ensure_tiny

        assert setting.regime is not None
        train_path, test_path = self.regimes.paths[setting.regime / 100]
        overrides = [
            "data.tiny=false",
            f'data.train_path="{train_path}"',
            f'data.test_path="{test_path}"',
            f'model.path="{ensure_tiny().model_dir}"',
            f"eval.prompts={self.eval_prompts}",
            f"eval.samples={self.eval_samples}",
            "eval.greedy=false",
            'optim.lr_schedule="constant"',
        ]
        return load_config(REPO / "configs" / "tiny.toml", overrides)

    def describe(self, setting: Setting) -> dict[str, Any]:
        regimes = self.regimes.manifest["regimes"]
        return next(r for r in regimes if round(r["target"] * 100) == setting.regime)


@dataclass
class RealSuite(Suite):
    """A real model's run config, with only seed, budget, schedule and allocation set."""

    config_path: Path = REPO / "configs" / "smollm2.toml"
    overrides: list[str] = field(default_factory=list)
    verbose_cells: bool = True

    @cached_property
    def base(self) -> TrainerConfig:
        from trainer.run import resolve_data

        config = resolve_data(load_config(self.config_path, self.overrides))
        if config.optim.lr_schedule != "constant":
            raise SystemExit(
                f"{self.config_path}: optim.lr_schedule = {config.optim.lr_schedule!r} decays "
                "over run.steps, which strategies spending different rollouts per step reach "
                "at different budgets; add --set optim.lr_schedule=constant"
            )
        return config

    def base_config(self, setting: Setting) -> TrainerConfig:
        return self.base

    def describe(self, setting: Setting) -> dict[str, Any]:
        return {"config": str(self.config_path), "overrides": self.overrides}


def real_batch_sizes(config_path: Path, overrides: list[str]) -> tuple[int, int]:
    """(B, Pilot-Commit's gen_batch_size) from a config's [allocation]; 3B if it has none."""
    allocation = load_config(config_path, overrides).allocation
    b = allocation.train_batch_size
    return b, getattr(allocation, "gen_batch_size", None) or 3 * b


def check_suite(suite: Suite) -> None:
    """SystemExit naming the option at fault, before any cell runs: a bad value would
    otherwise surface only when its first cell starts, possibly after hours of others."""
    unknown = [s for s in suite.strategies if s not in STRATEGIES]
    if unknown or not suite.strategies:
        raise SystemExit(f"--strategies: unknown {unknown}; the benchmark knows {list(STRATEGIES)}")
    if len(set(suite.strategies)) != len(suite.strategies):
        raise SystemExit(f"--strategies: {suite.strategies} names a strategy twice")
    if not suite.settings:
        raise SystemExit("no setting to run: --regimes / --group-sizes are empty")
    if not suite.seeds:
        raise SystemExit("--seeds: at least 1 paired seed")
    if suite.budget <= 0:
        raise SystemExit(f"--budget: {suite.budget} rollouts; a cell needs a positive budget")
    if not 0 < suite.eval_every <= suite.budget:
        raise SystemExit(
            f"--eval-every: {suite.eval_every} rollouts; it must be between 1 and the budget "
            f"({suite.budget})"
        )
    for setting in suite.settings:
        for strategy in suite.strategies:
            table = strategy_table(
                strategy, setting.group_size, suite.train_batch_size, suite.gen_batch_size
            )
            try:
                TrainerConfig.model_validate({"allocation": table})
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise SystemExit(
                    f"{setting.name}, {strategy}: G = {setting.group_size} gives an invalid "
                    f"[allocation] ({where}: {first['msg']})"
                ) from None


def tiny_settings(axis: str, regimes: list[int], group_sizes: list[int]) -> list[Setting]:
    """`regime`: each regime at G = 32; `group`: each G at the 70% regime; `all`: both
    (the shared regime-70-G32 once)."""
    out: list[Setting] = []
    if axis in ("regime", "all"):
        out += [Setting(32, r) for r in regimes]
    if axis in ("group", "all"):
        out += [Setting(g, 70) for g in group_sizes]
    return list(dict.fromkeys(out))
