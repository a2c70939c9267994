"""Reading a suite's complete cells: rollouts to each setting's frozen target, paired
ratios with their intervals, where the rollouts went; printed as tables and written as
`report.json`, `report.md`, one accuracy-curve PNG per setting and one PNG of where the
rollouts went. A report reads targets, never fixes them (cells.py freezes them), and
lists every cell it is missing."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pilot_commit.bench.efficiency.cells import is_complete, plan_cells, read_target
from pilot_commit.bench.efficiency.stats import (
    METHOD,
    MIN_SEEDS,
    ROLLOUT_SHARES,
    EvalPoint,
    PairedRatio,
    ToTarget,
    paired_ratio,
    rollouts_to_target,
)
from pilot_commit.bench.efficiency.suites import BASELINE, Setting, Suite

COUNTERS = ("evicted", "expired", "flushed", "gate_pass", "gate_too_easy", "gate_too_hard")
ROLES = ("rollouts_pilot", "rollouts_commit", "rollouts_full")
Records = dict[str, dict[int, dict[str, Any]]]  # strategy -> seed -> cell.json


def ratio_pairs(strategies: list[str]) -> list[tuple[str, str]]:
    """Every strategy against the baseline, and DAPO/PC and PC/posterior_gate."""
    pairs = [(BASELINE, s) for s in strategies if s != BASELINE and BASELINE in strategies]
    for pair in (("dapo", "pilot_commit"), ("pilot_commit", "posterior_gate")):
        if set(pair) <= set(strategies):
            pairs.append(pair)
    return pairs


def complete_records(root: Path, suite: Suite, setting: Setting) -> Records:
    records: Records = {}
    for cell in plan_cells(suite):
        if cell.setting == setting and is_complete(cell.path(root)):
            record = json.loads((cell.path(root) / "cell.json").read_text())
            ran = (record["budget"], record["eval_every_rollouts"])
            if ran != (suite.budget, suite.eval_every):
                raise SystemExit(
                    f"{cell.path(root)} ran {ran[0]:,} rollouts evaluated every {ran[1]:,}, "
                    f"not the {suite.budget:,} / {suite.eval_every:,} asked: give --report "
                    "the options of the run it reports on"
                )
            records.setdefault(cell.strategy, {})[cell.seed] = record
    return records


def curve_of(record: dict[str, Any]) -> list[EvalPoint]:
    return [EvalPoint(**p) for p in record["curve"]]


def share(record: dict[str, Any], count: float) -> float:
    return count / record["final"]["rollouts_total"]


def strategy_summary(
    by_seed: dict[int, dict[str, Any]], to_target: dict[int, ToTarget] | None
) -> dict[str, Any]:
    """One strategy's cells: rollouts to target per seed and their median, and the means
    over seeds of where its rollouts went."""
    records = [by_seed[k] for k in sorted(by_seed)]
    out: dict[str, Any] = {
        "seeds": sorted(by_seed),
        "zero_variance_share": mean(
            share(r, r["final"]["rollouts_zero_variance"]) for r in records
        ),
        "rollouts_per_trained_group": mean(
            r["final"]["rollouts_total"] / r["final"]["groups_trained"] for r in records
        ),
        "shares": {k: mean(share(r, r["rollouts"][k]) for r in records) for k in ROLLOUT_SHARES},
        "roles": {k: mean(share(r, r["final"][k]) for r in records) for k in ROLES},
        "counters": {k: mean(r["allocator_counters"].get(k, 0) for r in records) for k in COUNTERS},
        "load_mean": {k: r["machine"]["loadavg_1m"]["mean"] for k, r in by_seed.items()},
        "elapsed_s": {k: r["elapsed_s"] for k, r in by_seed.items()},
        "curves": {
            k: [[p["rollouts"], p["accuracy"]] for p in r["curve"]] for k, r in by_seed.items()
        },
    }
    if to_target is not None:
        out["rollouts_to_target"] = {k: asdict(v) for k, v in sorted(to_target.items())}
        values = list(to_target.values())
        out["median_rollouts_to_target"] = float(np.median([v.rollouts for v in values]))
        out["median_censored"] = 2 * sum(v.censored for v in values) >= len(values)
    return out


def mean(values: Any) -> float:
    return float(statistics.mean(values))


def summarize_setting(
    setting: Setting, records: Records, target: dict[str, Any] | None, strategies: list[str]
) -> dict[str, Any]:
    """A setting's summary; rollouts to target and ratios only once its target is frozen."""
    present = [s for s in strategies if s in records]
    to_target = None
    if target is not None:
        to_target = {
            s: {
                k: rollouts_to_target(curve_of(r), target["accuracy"])
                for k, r in records[s].items()
            }
            for s in present
        }
    ratios = (
        [
            paired_ratio(pair, to_target[pair[0]], to_target[pair[1]])
            for pair in ratio_pairs(present)
        ]
        if to_target
        else []
    )
    return {
        "setting": setting.name,
        "regime": setting.regime,
        "group_size": setting.group_size,
        "target": target,
        "strategies": {
            s: strategy_summary(records[s], None if to_target is None else to_target[s])
            for s in present
        },
        "ratios": [ratio_json(r) for r in ratios if r is not None],
    }


def ratio_json(ratio: PairedRatio) -> dict[str, Any]:
    """A ratio for report.json; `low` and `high` are null when it has no interval."""
    out = asdict(ratio)
    out["per_seed"] = {str(k): v for k, v in ratio.per_seed.items()}
    out["seeds"], out["censored_seeds"] = list(ratio.seeds), list(ratio.censored_seeds)
    if ratio.coverage is None:
        out["low"] = out["high"] = None
    out["excludes_one"] = ratio.excludes_one()
    return out


def ratio_from_json(out: dict[str, Any]) -> PairedRatio:
    """The PairedRatio that ratio_json wrote."""
    fields = {f.name for f in dataclasses.fields(PairedRatio)}
    values = {k: out[k] for k in fields}
    if values["coverage"] is None:
        values["low"], values["high"] = 0.0, math.inf
    values["per_seed"] = {int(k): v for k, v in values["per_seed"].items()}
    values["seeds"], values["censored_seeds"] = tuple(out["seeds"]), tuple(out["censored_seeds"])
    return PairedRatio(**values)


def missing_cells(root: Path, suite: Suite) -> list[str]:
    return [c.label for c in plan_cells(suite) if not is_complete(c.path(root))]


def build_report(suite: Suite, root: Path) -> dict[str, Any]:
    settings = []
    for setting in suite.settings:
        records = complete_records(root, suite, setting)
        if records:
            target = read_target(root, setting)
            settings.append(summarize_setting(setting, records, target, suite.strategies))
    return {
        "suite": suite.name,
        "paired": True,
        "baseline": BASELINE,
        "method": METHOD,
        "budget": suite.budget,
        "eval_every_rollouts": suite.eval_every,
        "train_batch_size": suite.train_batch_size,
        "seeds": suite.seeds,
        "strategies": suite.strategies,
        "settings": settings,
        "missing": missing_cells(root, suite),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---- tables ----

COLUMNS = (
    "strategy",
    "to target, per seed",
    "median",
    f"{BASELINE} / strategy (95% CI, n)",
    "zero-var share",
    "rollouts / trained group",
    "trained: informative / zero-var",
    "discarded: zero-var / other",
    "pilot / commit / full",
    "evicted / expired / flushed",
    "load (mean)",
)


def fmt_to_target(value: dict[str, Any]) -> str:
    return (">" if value["censored"] else "") + f"{value['rollouts']:,.0f}"


def fmt_median(strategy: dict[str, Any]) -> str:
    """`>` when at least half the cells were censored (the median is a lower bound)."""
    return (
        ">" if strategy["median_censored"] else ""
    ) + f"{strategy['median_rollouts_to_target']:,.0f}"


def fmt_ratio(ratio: dict[str, Any] | None) -> str:
    if ratio is None:
        return ""
    if ratio["coverage"] is None:
        return f"{ratio['point']:.2f} (no interval below {MIN_SEEDS} seeds, {len(ratio['seeds'])})"
    bold = "**" if ratio["excludes_one"] else ""
    return (
        f"{ratio['point']:.2f} ({bold}{ratio['low']:.2f} - {ratio['high']:.2f}{bold}, "
        f"{len(ratio['seeds'])})"
    )


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    ratios = {(r["numerator"], r["denominator"]): r for r in summary["ratios"]}
    rows = []
    for name, s in summary["strategies"].items():
        reached = s.get("rollouts_to_target", {})
        rows.append(
            [
                name,
                " / ".join(fmt_to_target(v) for v in reached.values()) or "(no target yet)",
                fmt_median(s) if reached else "",
                fmt_ratio(ratios.get((BASELINE, name))),
                f"{s['zero_variance_share']:.2f}",
                f"{s['rollouts_per_trained_group']:.1f}",
                " / ".join(f"{s['shares'][k]:.2f}" for k in ROLLOUT_SHARES[:2]),
                " / ".join(f"{s['shares'][k]:.2f}" for k in ROLLOUT_SHARES[2:]),
                " / ".join(f"{s['roles'][k]:.2f}" for k in ROLES),
                " / ".join(f"{s['counters'][k]:.0f}" for k in COUNTERS[:3]),
                f"{mean(s['load_mean'].values()):.1f}",
            ]
        )
    return rows


def title(summary: dict[str, Any]) -> str:
    target = summary["target"]
    if target is None:
        return f"{summary['setting']}: target not frozen yet (baseline cells missing)"
    return (
        f"{summary['setting']}: target {target['accuracy']:.3f} = warm start "
        f"{target['warm_start']:.3f} + {target['fraction']} x {BASELINE}'s mean best gain "
        f"{target['mean_best_gain']:.3f} (frozen from seeds {target['seeds']})"
    )


def other_ratios(summary: dict[str, Any]) -> list[str]:
    return [
        f"{r['numerator']} / {r['denominator']} = {fmt_ratio(r)}"
        + (f"; censored seeds {r['censored_seeds']}" if r["censored_seeds"] else "")
        + (f"; coverage {r['coverage']:.3f}" if r["coverage"] is not None else "")
        + f"; seeds for 1.5x: {r['seeds_for_1_5x']} (80% power: {r['seeds_for_1_5x_80pct']})"
        for r in summary["ratios"]
    ]


def print_report(console: Console, report: dict[str, Any]) -> None:
    for summary in report["settings"]:
        table = Table(title=title(summary))
        for column in COLUMNS:
            table.add_column(column, justify="right")
        for row in table_rows(summary):
            table.add_row(*(cell.replace("**", "") for cell in row))
        console.print(table)
        for line in other_ratios(summary):
            console.print(f"  {line.replace('**', '')}")
    if report["missing"]:
        console.print(f"missing {len(report['missing'])} cells: {grouped(report['missing'])}")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Efficiency benchmark, suite `{report['suite']}` (paired seeds)", ""]
    for summary in report["settings"]:
        lines += [
            f"## {title(summary)}",
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|" + "---|" * len(COLUMNS),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
        lines += [""] + [f"- {line}" for line in other_ratios(summary)] + [""]
    if report["missing"]:
        lines += [f"Missing cells ({len(report['missing'])}): {grouped(report['missing'])}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    from pilot_commit.bench.efficiency.plots import plot_curves, plot_rollouts

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report))
    for summary in report["settings"]:
        plot_curves(summary, out_dir / f"curves-{summary['setting']}.png")
    if report["settings"]:
        plot_rollouts(report, out_dir / "rollouts.png")


def grouped(labels: list[str]) -> str:
    """Cell labels (`setting strategy seed k`) as `setting strategy seeds k,l; ...`."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        head, seed = label.rsplit(" seed ", 1)
        groups.setdefault(head, []).append(seed)
    return "; ".join(f"{k} seeds {','.join(v)}" for k, v in groups.items())
