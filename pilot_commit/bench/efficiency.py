"""`pilot-commit bench efficiency`: cumulative rollouts to a target accuracy, per strategy,
across regimes of zero-variance share, on the tiny task through the real embedded stack.

For each regime every strategy trains from the same warm start with the same G, B,
learning rate and evaluation schedule (in rollouts, so strategies that spend different
rollouts per step are evaluated at the same points), for K seeds. The target is fixed
from GRPO's runs before the others are read: warm-start accuracy + 70% of GRPO's mean
best gain. Every generated rollout counts (pilots and discarded groups included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from services.allocator.client import AllocatorClient
from services.allocator.strategies import load_all
from services.common.progress import progress
from services.stack import EmbeddedStack, StackUrls
from trainer.cli import train
from trainer.config import TrainerConfig, load_config
from trainer.logbook import Logbook

ROOT = Path(__file__).resolve().parents[1]
G, B = 32, 8
STRATEGY_CONFIGS: dict[str, dict[str, Any]] = {
    "grpo": {"strategy": "grpo", "train_batch_size": B, "n": G},
    "dapo": {"strategy": "dapo", "train_batch_size": B, "n": G, "gen_batch_size": B,
             "max_rounds": 50},
    # the paper's proportions: a quarter of G as pilot, band [0.125, 0.75], eviction only
    # when every pilot rollout succeeds, buffer max off-steps 4, max-variance pick
    "pilot_commit": {"strategy": "pilot_commit", "train_batch_size": B, "gen_batch_size": 3 * B,
                     "n_pilot": G // 4, "n_commit": G - G // 4, "p_lower": 0.125,
                     "p_upper": 0.25, "exclude_threshold": 1.0, "buffer_max_off_steps": 4,
                     "buffer_sampling": "max_variance", "max_rounds": 50},
}  # fmt: skip
EXTRA_STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {}  # other registered strategies: B only


@dataclass
class RunResult:
    strategy: str
    seed: int
    curve: list[tuple[int, float, float]]  # (rollouts_total, eval_accuracy, wall_s)
    final: dict[str, Any]
    allocator: dict[str, int] = field(default_factory=dict)

    @property
    def warm_start(self) -> float:
        return self.curve[0][1]

    @property
    def best(self) -> float:
        return max(acc for _, acc, _ in self.curve)

    def to_target(self, target: float) -> tuple[float, float]:
        """(rollouts, wall seconds) at the first evaluation at or above target; inf if never."""
        for rollouts, acc, wall in self.curve:
            if acc >= target:
                return float(rollouts), wall
        return math.inf, math.inf


def strategy_config(name: str) -> dict[str, Any]:
    if name in STRATEGY_CONFIGS:
        return STRATEGY_CONFIGS[name]
    if name not in load_all():
        raise SystemExit(f"unknown strategy {name!r}; registered: {sorted(load_all())}")
    return {"strategy": name, "train_batch_size": B, **EXTRA_STRATEGY_DEFAULTS.get(name, {})}


def run_config(args: argparse.Namespace, regime: tuple[Path, Path], model: Path,
               strategy: str, seed: int, run_id: str) -> TrainerConfig:  # fmt: skip
    train_path, test_path = regime
    overrides = [
        f"run.seed={seed}", "run.steps=100000", f"run.max_rollouts={args.budget}",
        "run.checkpoint_every=0", f'run.run_id="{run_id}"', "data.tiny=false",
        f'data.train_path="{train_path}"', f'data.test_path="{test_path}"',
        f'model.path="{model}"', "eval.every=0", f"eval.every_rollouts={args.eval_every}",
        f"eval.prompts={args.eval_prompts}", f"eval.samples={args.eval_samples}",
        "eval.greedy=false",
        # runs end on a rollout budget, which strategies reach in different step counts:
        # a step-based decay would treat them differently, so the rate stays constant
        'optim.lr_schedule="constant"',
    ]  # fmt: skip
    config = load_config(ROOT / "configs" / "tiny.toml", overrides)
    return config.model_copy(
        update={"allocation": TrainerConfig.model_validate(
            {**config.model_dump(), "allocation": strategy_config(strategy)}).allocation}
    )  # fmt: skip


def read_curve(output: Path) -> tuple[list[tuple[int, float, float]], dict[str, Any]]:
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["rollouts_total"], r["eval_accuracy"], r["wall_s"]) for r in rows
             if r["kind"] == "eval"]  # fmt: skip
    final = [r for r in rows if r["kind"] == "train"][-1]
    return curve, final


async def allocator_counters(urls: StackUrls, run_id: str, token: str | None) -> dict[str, int]:
    async with AllocatorClient(urls.allocator_url, token=token) as client:
        return (await client.summary(run_id)).counters


def run_one(
    args: argparse.Namespace,
    urls: StackUrls,
    regime: tuple[Path, Path],
    model: Path,
    strategy: str,
    seed: int,
    out: Path,
    console: Console,
) -> RunResult:
    run_id = f"{out.parent.parent.name}-{strategy}-s{seed}"
    if out.exists():
        shutil.rmtree(out)
    config = run_config(args, regime, model, strategy, seed, run_id)
    with Logbook(out, config.run.steps, Console(quiet=True)) as logbook:
        asyncio.run(train(config, out, urls, logbook))
    curve, final = read_curve(out)
    counters = asyncio.run(allocator_counters(urls, run_id, config.services.allocator_token))
    console.log(f"{out.parent.parent.name} {strategy} seed {seed}: "
                f"acc {curve[0][1]:.3f} -> best {max(a for _, a, _ in curve):.3f} "
                f"in {final['rollouts_total']:,} rollouts, {final['wall_s']:.0f}s")  # fmt: skip
    return RunResult(strategy, seed, curve, final, counters)


def bootstrap_ratio(num: list[float], den: list[float], rng: np.random.Generator,
                    draws: int = 4000) -> tuple[float, tuple[float, float]]:  # fmt: skip
    """median(num) / median(den) and a percentile bootstrap 95% interval over seeds.

    A run that never reached the target counts as infinitely many rollouts; quantiles are
    taken without interpolation so such runs give inf rather than NaN.
    """

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        top, bottom = float(np.median(a)), float(np.median(b))
        if math.isinf(bottom):
            return 0.0 if not math.isinf(top) else math.nan
        if bottom == 0.0:  # the warm start already met the target: a tie when both did
            return 1.0 if top == 0.0 else math.inf
        return top / bottom

    a, b = np.array(num, dtype=float), np.array(den, dtype=float)
    point = ratio(a, b)
    samples = [ratio(rng.choice(a, a.size), rng.choice(b, b.size)) for _ in range(draws)]
    samples_arr = np.array([s for s in samples if not math.isnan(s)])
    if samples_arr.size == 0:
        return point, (math.nan, math.nan)
    low, high = np.quantile(samples_arr, [0.025, 0.975], method="inverted_cdf")
    return point, (float(low), float(high))


def summarize_regime(target_pct: int, runs: list[RunResult], rng: np.random.Generator,
                     manifest: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    grpo = [r for r in runs if r.strategy == "grpo"]
    warm = statistics.mean(r.warm_start for r in grpo)
    gain = statistics.mean(r.best - r.warm_start for r in grpo)
    target = warm + 0.7 * gain
    strategies = sorted({r.strategy for r in runs})
    per: dict[str, list[RunResult]] = {s: [r for r in runs if r.strategy == s] for s in strategies}
    to_target = {s: {str(r.seed): r.to_target(target)[0] for r in rs} for s, rs in per.items()}
    wall = {s: {str(r.seed): r.to_target(target)[1] for r in rs} for s, rs in per.items()}
    out: dict[str, Any] = {
        "regime": f"{target_pct}%",
        "warm_start_accuracy": warm,
        "grpo_mean_best_gain": gain,
        "target_accuracy": target,
        "rollouts_to_target": {s: {k: _finite(v) for k, v in d.items()}
                               for s, d in to_target.items()},
        "seconds_to_target": {s: {k: _finite(v) for k, v in d.items()} for s, d in wall.items()},
        "median_rollouts_to_target": {s: _finite(float(np.median(list(d.values()))))
                                      for s, d in to_target.items()},
        "zero_variance_share": {s: statistics.mean(r.final["rollouts_zero_variance"]
                                                   / r.final["rollouts_total"] for r in rs)
                                for s, rs in per.items()},
        "rollouts_per_trained_group": {s: statistics.mean(r.final["rollouts_total"]
                                                          / r.final["groups_trained"] for r in rs)
                                       for s, rs in per.items()},
        "allocator_counters": {s: {k: statistics.mean(r.allocator.get(k, 0) for r in rs)
                                   for k in ("evicted", "expired", "flushed", "gate_pass",
                                             "gate_too_easy", "gate_too_hard")}
                               for s, rs in per.items()},
        "curves": {s: {str(r.seed): r.curve for r in rs} for s, rs in per.items()},
        "dataset": manifest,
    }  # fmt: skip
    for base in ("grpo", "dapo"):
        if base in to_target and "pilot_commit" in to_target:
            point, ci = bootstrap_ratio(list(to_target[base].values()),
                                        list(to_target["pilot_commit"].values()), rng)  # fmt: skip
            out[f"ratio_{base}_over_pc"], out[f"ratio_{base}_over_pc_ci"] = point, ci
    for other in strategies:
        if other not in ("grpo", "dapo", "pilot_commit"):
            for base in ("grpo", "pilot_commit"):
                point, ci = bootstrap_ratio(list(to_target[base].values()),
                                            list(to_target[other].values()), rng)  # fmt: skip
                out[f"ratio_{base}_over_{other}"], out[f"ratio_{base}_over_{other}_ci"] = point, ci
    return out


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def print_regime(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title=f"regime {summary['regime']} zero-variance: target accuracy "
                        f"{summary['target_accuracy']:.3f} (warm start "
                        f"{summary['warm_start_accuracy']:.3f} + 70% of GRPO's mean best gain "
                        f"{summary['grpo_mean_best_gain']:.3f})")  # fmt: skip
    for col in ("strategy", "rollouts to target (median)", "per seed", "zero-var share",
                "rollouts / trained group", "evicted", "expired"):  # fmt: skip
        table.add_column(col, justify="right")
    for s, seeds in summary["rollouts_to_target"].items():
        med = summary["median_rollouts_to_target"][s]
        table.add_row(
            s, "not reached" if med is None else f"{med:,.0f}",
            " ".join("-" if v is None else f"{v:,.0f}" for v in seeds.values()),
            f"{summary['zero_variance_share'][s]:.2f}",
            f"{summary['rollouts_per_trained_group'][s]:.1f}",
            f"{summary['allocator_counters'][s]['evicted']:.0f}",
            f"{summary['allocator_counters'][s]['expired']:.0f}",
        )  # fmt: skip
    console.print(table)
    for key in sorted(k for k in summary if k.startswith("ratio_") and not k.endswith("_ci")):
        low, high = summary[key + "_ci"]
        console.print(f"  {key} = {summary[key]:.2f}  (95% bootstrap CI {low:.2f} - {high:.2f})")


def plot_regime(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (strategy, seeds) in enumerate(summary["curves"].items()):
        colour = f"C{i}"
        grid = np.linspace(0, max(c[-1][0] for c in seeds.values()), 60)
        ys = np.array([np.interp(grid, [p[0] for p in c], [p[1] for p in c])
                       for c in seeds.values()])  # fmt: skip
        ax.plot(grid, ys.mean(axis=0), color=colour, label=strategy)
        ax.fill_between(grid, ys.min(axis=0), ys.max(axis=0), color=colour, alpha=0.2)
    ax.axhline(summary["target_accuracy"], color="k", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("cumulative rollouts")
    ax.set_ylabel("held-out accuracy (sampled, T = 1.0)")
    ax.set_title(f"regime {summary['regime']}: mean over seeds, band = min-max")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pilot-commit bench efficiency", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the 70%% regime, 3 seeds, a smaller budget (about 8 minutes)",
    )
    parser.add_argument("--seeds", type=int, help="seeds per strategy (default 5; quick 3)")
    parser.add_argument("--regimes", help="comma-separated zero-variance targets, e.g. 30,50,70")
    parser.add_argument("--strategies", default="grpo,dapo,pilot_commit,posterior_gate")
    parser.add_argument("--budget", type=int, help="rollouts per run (default 32000; quick 16000)")
    parser.add_argument("--eval-every", type=int, help="evaluate every N rollouts")
    parser.add_argument("--eval-prompts", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=2,
                        help="temperature-1.0 answers per held-out prompt (default 2)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("runs/bench-efficiency"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG path prefix: one PNG per regime")
    args = parser.parse_args(argv)  # fmt: skip
    args.seeds = args.seeds or (3 if args.quick else 5)
    args.budget = args.budget or (16000 if args.quick else 32000)
    args.eval_every = args.eval_every or max(1, args.budget // 12)
    regimes = [int(x) for x in (args.regimes or ("70" if args.quick else "30,50,70")).split(",")]
    strategies = [s.strip() for s in args.strategies.split(",")]
    if "grpo" not in strategies:
        raise SystemExit("the target is fixed from GRPO's runs: include grpo")
    return run_benchmark(args, regimes, ["grpo"] + [s for s in strategies if s != "grpo"])


def run_benchmark(args: argparse.Namespace, regimes: list[int], strategies: list[str]) -> int:
    from trainer.tiny.build import ensure_regimes, ensure_tiny

    console = Console()
    tiny = ensure_tiny()
    built = ensure_regimes()
    rng = np.random.default_rng(0)
    summaries = []
    shutil.rmtree(args.output / "stack", ignore_errors=True)  # a fresh Redis: fresh run ids
    with EmbeddedStack(args.output / "stack", tiny.model_dir, console=console) as urls:
        for pct in regimes:
            regime = built.paths[pct / 100]
            manifest = next(r for r in built.manifest["regimes"] if round(r["target"] * 100) == pct)
            runs = []
            with progress(console) as display:  # a line per run when not a terminal
                task = display.add_task(f"regime {pct} runs", total=len(strategies) * args.seeds)
                for s in strategies:
                    for seed in range(args.seeds):
                        runs.append(run_one(args, urls, regime, tiny.model_dir, s, seed,
                                            args.output / f"regime-{pct}" / s / f"seed{seed}",
                                            console))  # fmt: skip
                        display.advance(task)
            summary = summarize_regime(pct, runs, rng, manifest)
            print_regime(console, summary)
            if args.plot:
                path = args.plot.with_name(f"{args.plot.stem}-regime{pct}.png")
                path.parent.mkdir(parents=True, exist_ok=True)
                plot_regime(summary, path)
            summaries.append(summary)
    report: dict[str, Any] = {"regimes": summaries, "seeds": args.seeds, "budget": args.budget,
                              "eval_every_rollouts": args.eval_every, "group_size": G,
                              "train_batch_size": B, "strategies": strategies}  # fmt: skip
    highest = summaries[-1]
    for key in ("ratio_grpo_over_pc", "ratio_dapo_over_pc"):
        if key in highest:
            report[key], report[key + "_ci"] = highest[key], highest[key + "_ci"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=_json_default))
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        return None
    raise TypeError(f"cannot serialise {type(value)}")
