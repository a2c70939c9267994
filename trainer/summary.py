"""The end of a run at a glance: a few lines read from metrics.jsonl, and a PNG of
held-out accuracy against cumulative rollouts beside it.

    held-out accuracy 0.370 (0.011) -> 0.535 (0.011), +16.5 points (se 1.6), steps 0 -> 200,
        2,000 prompts x 1 sample(s) at T = 1
    rollouts 81,408: pilot 43,008 (53%), commit 38,400 (47%); 19,368 (24%) in groups whose
        rewards were all equal
    time 0:06:07 for this command, 0:04:09 in 200 training steps

Rows are read as `trainer/loop.py` writes them (`kind` train or eval; the counts in a
train row are cumulative). A resumed run appends to the same file, so for each
(kind, step) the last row written counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.progress import clock

PLOT_NAME = "accuracy-vs-rollouts.png"


@dataclass(frozen=True)
class RunSummary:
    """What a run did: its first and last evaluation, its last train row, and wall time."""

    first_eval: dict[str, Any] | None
    last_eval: dict[str, Any] | None
    last_train: dict[str, Any] | None
    evals: list[dict[str, Any]]

    def lines(self, command_s: float | None = None) -> list[str]:
        """The summary as lines of plain text (no markup)."""
        out = []
        first, last = self.first_eval, self.last_eval
        if first is not None and last is not None:
            gain = last["eval_accuracy"] - first["eval_accuracy"]
            se = math.hypot(first["eval_accuracy_stderr"], last["eval_accuracy_stderr"])
            out.append(
                f"held-out accuracy {first['eval_accuracy']:.3f} "
                f"({first['eval_accuracy_stderr']:.3f}) -> {last['eval_accuracy']:.3f} "
                f"({last['eval_accuracy_stderr']:.3f}), {100 * gain:+.1f} points "
                f"(se {100 * se:.1f}), steps {first['step']} -> {last['step']}, "
                f"{last['eval_prompts']:,} prompts x {last['eval_samples']} sample(s) at T = 1"
            )
        else:
            out.append("held-out accuracy: no evaluation in metrics.jsonl")
        train = self.last_train
        if train is not None:
            total = train["rollouts_total"]
            roles = [
                f"{role} {train[key]:,} ({train[key] / max(1, total):.0%})"
                for role, key in (
                    ("pilot", "rollouts_pilot"),
                    ("commit", "rollouts_commit"),
                    ("full", "rollouts_full"),
                )
                if train.get(key)
            ]
            zero = train.get("rollouts_zero_variance", 0)
            out.append(
                f"rollouts {total:,}: {', '.join(roles) or 'none'}; {zero:,} "
                f"({zero / max(1, total):.0%}) in groups whose rewards were all equal"
            )
            steps = f"{clock(train['wall_s'])} in {train['step']} training steps"
            out.append(
                f"time {clock(command_s)} for this command, {steps}"
                if command_s is not None
                else f"time {steps}"
            )
        return out


def metrics_rows(metrics: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(eval rows, train rows) of the metrics.jsonl at `metrics`, each sorted by step, the
    last row written for each (kind, step) (a missing file: none). A last line without its
    newline that is not JSON yet is a row being written, and is skipped. Raises ValueError
    naming the line for any other row that is not JSON."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    text = metrics.read_text() if metrics.exists() else ""
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{metrics}:{number}: not a JSON row ({exc})") from exc
        latest[(row["kind"], row["step"])] = row
    evals = sorted((r for (k, _), r in latest.items() if k == "eval"), key=lambda r: r["step"])
    trains = sorted((r for (k, _), r in latest.items() if k == "train"), key=lambda r: r["step"])
    return evals, trains


def read_summary(metrics: Path) -> RunSummary:
    """The summary of the metrics.jsonl at `metrics` (a missing file: an empty summary).
    Raises ValueError naming the line for a row that is not JSON."""
    evals, trains = metrics_rows(metrics)
    return RunSummary(
        first_eval=evals[0] if evals else None,
        last_eval=evals[-1] if len(evals) > 1 else None,
        last_train=trains[-1] if trains else None,
        evals=evals,
    )


def plot_accuracy(summary: RunSummary, path: Path, title: str) -> bool:
    """Held-out accuracy (with +/- 1 standard error) against cumulative rollouts, to `path`.
    Returns False, writing nothing, when there are fewer than two evaluations."""
    if len(summary.evals) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["rollouts_total"] for r in summary.evals]
    ys = [r["eval_accuracy"] for r in summary.evals]
    errors = [r["eval_accuracy_stderr"] for r in summary.evals]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label="sampled, T = 1")
    greedy = [(r["rollouts_total"], r["eval_accuracy_greedy"]) for r in summary.evals
              if "eval_accuracy_greedy" in r]  # fmt: skip
    if greedy:
        ax.plot(*zip(*greedy, strict=True), marker="s", linestyle="--", label="greedy")
    ax.set_xlabel("cumulative rollouts (everything generated)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
