"""`pilot-commit bench efficiency`: its options, and the suite they describe."""

from __future__ import annotations

import argparse
from pathlib import Path

from pilot_commit.bench.efficiency import report as rep
from pilot_commit.bench.efficiency.cells import run_pending
from pilot_commit.bench.efficiency.stats import MIN_SEEDS, sign_statement
from pilot_commit.bench.efficiency.suites import (
    BASELINE,
    REPO,
    STRATEGIES,
    RealSuite,
    Setting,
    Suite,
    TinySuite,
    check_suite,
    real_batch_sizes,
    tiny_settings,
)
from services.common.progress import make_console

TINY_BUDGET, QUICK_BUDGET = 32000, 16000
TINY_B, TINY_G = 8, 32


def parser() -> argparse.ArgumentParser:
    from pilot_commit.bench.efficiency import __doc__ as doc

    p = argparse.ArgumentParser(
        prog="pilot-commit bench efficiency",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--suite", choices=("tiny", "real"), default="tiny")
    p.add_argument(
        "--axis",
        choices=("regime", "group", "all"),
        default="all",
        help="tiny: the regimes at G = 32, G at the 70%% regime, or both",
    )
    p.add_argument("--regimes", default="30,50,70", help="tiny: zero-variance shares (%%)")
    p.add_argument("--group-sizes", help="G values (tiny default 16,32,64; real 16)")
    p.add_argument("--strategies", help=f"default {','.join(STRATEGIES)} (quick: grpo, PC)")
    p.add_argument(
        "--seeds",
        type=int,
        help="paired seeds 0..N-1 (default tiny 6, real 3, quick 6; a 95%% interval needs 6)",
    )
    p.add_argument(
        "--budget", type=int, help="rollouts per cell (tiny 32000, quick 16000; real: required)"
    )
    p.add_argument("--eval-every", type=int, help="evaluate every N rollouts (default budget/12)")
    p.add_argument("--eval-prompts", type=int, default=2000, help="tiny: held-out prompts")
    p.add_argument("--eval-samples", type=int, default=2, help="tiny: answers per prompt")
    p.add_argument("--checkpoint-every", type=int, help="steps (default tiny 10, real 2)")
    p.add_argument(
        "--max-hours",
        type=float,
        default=2.0,
        help="start no new cell after this many hours (default 2)",
    )
    p.add_argument("--output", type=Path, default=Path("runs/bench-efficiency"))
    p.add_argument(
        "--report",
        action="store_true",
        help="run no cell: report the complete ones, list the missing",
    )
    p.add_argument("--report-dir", type=Path, help="default <output>/<suite>/report")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny, the 70%% regime, G = 32, "
        "grpo and pilot_commit, 6 seeds, 16,000 rollouts: the sign of grpo/PC",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=REPO / "configs" / "smollm2.toml",
        help="real: the base run config",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="real: override a base config value",
    )
    return p


def ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{option}: {text!r} is not a comma-separated list of integers") from None


def given(value: int | None, default: int) -> int:
    """An option's value when given (0 included, which check_suite refuses), else the
    default."""
    return default if value is None else value


def known_regimes() -> list[int]:
    """The zero-variance shares (%) the tiny build makes datasets for."""
    from trainer.tiny.regimes import RegimeConfig

    return [round(t * 100) for t in RegimeConfig().targets]


def build_suite(args: argparse.Namespace) -> Suite:
    chosen = args.strategies or ("grpo,pilot_commit" if args.quick else ",".join(STRATEGIES))
    strategies = [s.strip() for s in chosen.split(",") if s.strip()]
    strategies = sorted(strategies, key=lambda s: s != BASELINE)  # the baseline first
    if args.quick:
        return quick_suite(args, strategies)
    if args.suite == "real":
        return real_suite(args, strategies)
    budget = given(args.budget, TINY_BUDGET)
    regimes = ints(args.regimes, "--regimes")
    unknown = [r for r in regimes if r not in known_regimes()]
    if unknown:
        raise SystemExit(f"--regimes: no tiny dataset for {unknown}; built: {known_regimes()}")
    settings = tiny_settings(
        args.axis, regimes, ints(args.group_sizes or "16,32,64", "--group-sizes")
    )
    return _tiny("tiny", settings, args, strategies, budget)


def quick_suite(args: argparse.Namespace, strategies: list[str]) -> Suite:
    budget = given(args.budget, QUICK_BUDGET)
    return _tiny("tiny-quick", [Setting(TINY_G, 70)], args, strategies, budget)


def _tiny(
    name: str,
    settings: list[Setting],
    args: argparse.Namespace,
    strategies: list[str],
    budget: int,
) -> TinySuite:
    """A tiny-task suite: B = TINY_B, 3B prompts piloted per round, evaluation every
    twelfth of the budget and a checkpoint every 10 steps unless the options say."""
    return TinySuite(
        name,
        settings,
        strategies,
        list(range(given(args.seeds, MIN_SEEDS))),
        budget,
        given(args.eval_every, budget // 12),
        given(args.checkpoint_every, 10),
        TINY_B,
        3 * TINY_B,
        eval_prompts=args.eval_prompts,
        eval_samples=args.eval_samples,
    )


def real_suite(args: argparse.Namespace, strategies: list[str]) -> Suite:
    if args.budget is None:
        raise SystemExit("--suite real needs --budget (rollouts per cell, the same for all)")
    b, gen = real_batch_sizes(args.config, args.overrides)
    settings = [Setting(g) for g in ints(args.group_sizes or "16", "--group-sizes")]
    return RealSuite(
        "real",
        settings,
        strategies,
        list(range(given(args.seeds, 3))),
        args.budget,
        given(args.eval_every, args.budget // 12),
        given(args.checkpoint_every, 2),
        b,
        gen,
        config_path=args.config,
        overrides=list(args.overrides),
    )


def quick_sign(report: dict) -> str:
    """The sign of grpo / pilot_commit in the quick suite's one setting."""
    for summary in report["settings"]:
        for r in summary["ratios"]:
            if (r["numerator"], r["denominator"]) == (BASELINE, "pilot_commit"):
                return "quick: " + sign_statement(rep.ratio_from_json(r))
    return "quick: no grpo / pilot_commit ratio yet (cells missing)"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    suite = build_suite(args)
    check_suite(suite)
    root = args.output / suite.name
    console = make_console()
    if not console.is_terminal:  # no carriage-return bars from transformers in a log file
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    left = [] if args.report else run_pending(suite, root, console, args.max_hours)
    report = rep.build_report(suite, root)
    rep.print_report(console, report)
    rep.write_report(report, args.report_dir or root / "report")
    console.print(f"report: {args.report_dir or root / 'report'}")
    if args.quick:
        console.print(quick_sign(report))
    if left:
        console.print(
            f"stopped after --max-hours {args.max_hours}: {len(left)} cells left "
            f"({rep.grouped([c.label for c in left])}); the same command continues"
        )
    return 0
