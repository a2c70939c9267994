"""The efficiency report's figures (matplotlib, imported only when a report is written):
accuracy against cumulative rollouts per setting, and where the rollouts went."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pilot_commit.bench.efficiency.stats import ROLLOUT_SHARES

SHARE_LABELS = (
    "trained, informative",
    "trained, zero-variance",
    "discarded, zero-variance",
    "discarded, other",
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seed_band(curves: dict[Any, list[list[float]]], points: int = 60) -> tuple[np.ndarray, ...]:
    """(grid, mean, min, max) of the seeds' curves interpolated on a common rollout grid."""
    grid = np.linspace(0, max(c[-1][0] for c in curves.values()), points)
    ys = np.array([np.interp(grid, [p[0] for p in c], [p[1] for p in c]) for c in curves.values()])
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    """Mean over seeds with a min-max band per strategy; the frozen target dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (strategy, s) in enumerate(summary["strategies"].items()):
        grid, mid, low, high = seed_band(s["curves"])
        ax.plot(grid, mid, color=f"C{i}", label=f"{strategy} ({len(s['seeds'])} seeds)")
        ax.fill_between(grid, low, high, color=f"C{i}", alpha=0.2)
    if summary["target"] is not None:
        ax.axhline(
            summary["target"]["accuracy"],
            color="k",
            linestyle="--",
            linewidth=1,
            label="target (frozen)",
        )
    ax.set_xlabel("cumulative rollouts (everything generated)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{summary['setting']}: mean over seeds, band = min-max")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rollouts(report: dict[str, Any], path: Path) -> None:
    """One panel per setting: a stacked bar per strategy of the shares of its rollouts."""
    plt = _pyplot()
    settings = report["settings"]
    fig, axes = plt.subplots(
        1, len(settings), figsize=(3.2 * len(settings) + 1.5, 4), squeeze=False, sharey=True
    )
    for ax, summary in zip(axes[0], settings, strict=True):
        names = list(summary["strategies"])
        bottom = np.zeros(len(names))
        for i, key in enumerate(ROLLOUT_SHARES):
            heights = np.array([summary["strategies"][n]["shares"][key] for n in names])
            ax.bar(names, heights, bottom=bottom, color=f"C{i}", label=SHARE_LABELS[i])
            bottom += heights
        ax.set_title(summary["setting"])
        ax.tick_params(axis="x", rotation=45)
    axes[0][0].set_ylabel("share of generated rollouts (mean over seeds)")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
