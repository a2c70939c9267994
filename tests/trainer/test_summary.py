"""The end-of-run summary and plot (trainer/summary.py) read from metrics.jsonl rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.summary import plot_accuracy, read_summary


def eval_row(step: int, accuracy: float, rollouts: int) -> dict[str, object]:
    return {"kind": "eval", "step": step, "eval_accuracy": accuracy, "eval_accuracy_stderr": 0.02,
            "eval_prompts": 500, "eval_samples": 1, "rollouts_total": rollouts}  # fmt: skip


def train_row(step: int, pilot: int, commit: int) -> dict[str, object]:
    return {"kind": "train", "step": step, "rollouts_total": pilot + commit,
            "rollouts_pilot": pilot, "rollouts_commit": commit, "rollouts_full": 0,
            "rollouts_zero_variance": 30, "wall_s": 125.0}  # fmt: skip


def test_summary_reads_first_and_last_evaluation_and_the_last_counts(tmp_path: Path) -> None:
    rows = [
        eval_row(0, 0.3, 0),
        train_row(1, 40, 60),
        eval_row(2, 0.35, 200),
        train_row(2, 80, 120),
        eval_row(2, 0.45, 200),
    ]  # fmt: skip  (a resumed run wrote step 2's eval again)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = read_summary(metrics)
    assert summary.lines(367.0) == [
        "held-out accuracy 0.300 (0.020) -> 0.450 (0.020), +15.0 points (se 2.8), "
        "steps 0 -> 2, 500 prompts x 1 sample(s) at T = 1",
        "rollouts 200: pilot 80 (40%), commit 120 (60%); 30 (15%) in groups whose rewards "
        "were all equal",
        "time 0:06:07 for this command, 0:02:05 in 2 training steps",
    ]
    assert plot_accuracy(summary, tmp_path / "a.png", "run")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_without_two_evaluations_has_no_plot_and_says_so(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps(eval_row(0, 0.3, 0)) + "\n")
    summary = read_summary(metrics)
    assert summary.lines() == ["held-out accuracy: no evaluation in metrics.jsonl"]
    assert not plot_accuracy(summary, tmp_path / "a.png", "run")
    assert not (tmp_path / "a.png").exists()


def test_a_row_that_is_not_json_is_named_by_its_line(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps(eval_row(0, 0.3, 0)) + "\n{truncated\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON row"):
        read_summary(metrics)
