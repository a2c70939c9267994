"""Long work prints progress lines when its output is not a terminal (issue 14 item 19):
services/common/progress.py, used by the tiny build, the warm start, the train loop's
logbook, the embedded stack and the benchmarks."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from services.common.progress import LineProgress, progress
from trainer.logbook import Logbook

ROOT = Path(__file__).resolve().parents[2]

BUILD = """
import sys
from pathlib import Path
from trainer.tiny.build import ModelShape, TinyConfig, build
from trainer.tiny.task import TaskConfig
from trainer.tiny.warmstart import WarmStartConfig

build(Path(sys.argv[1]), TinyConfig(
    seed=1,
    task=TaskConfig(train_prompts=400, test_prompts=60),
    model=ModelShape(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    warm_start=WarmStartConfig(steps=40, batch_size=8, warmup_steps=2, eval_samples=2),
))
"""
STAMP = r"^\[\d\d:\d\d:\d\d\] "


def test_tiny_build_into_a_pipe_prints_stages_and_percent_lines(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
        check=True,
    )
    lines = proc.stdout.decode().splitlines()
    ours = [line for line in lines if re.match(STAMP, line)]
    text = "\n".join(ours)
    assert "building the tiny model and task into" in text
    assert "tiny build: generate the task's train/test splits: done in" in text
    assert "warm start steps: started of 40" in text
    # One line every 5% of the 40 steps (every 2 steps), with elapsed time and an estimate.
    steps = [line for line in ours if re.search(r"warm start steps: \d+/40 \(\d+%\)", line)]
    assert len(steps) >= 15, text
    assert all("elapsed" in line and "left" in line and "loss" in line for line in steps)
    assert re.search(r"warm start steps: done, 40/40 in \d:\d\d:\d\d", text)
    assert "warm start: evaluate on 60 test prompts (greedy + 2 sampled): done in" in text
    assert re.search(r"tiny build: done in [\d.]+s", text)
    assert not any("\x1b[" in line for line in lines)  # no terminal control codes


def test_line_progress_every_percent_and_every_interval() -> None:
    out = io.StringIO()
    console = Console(file=out)
    display = progress(console)
    assert isinstance(display, LineProgress)
    with display:
        task = display.add_task("work", total=200)
        for _ in range(100):
            display.advance(task)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("work: started of 200")
    assert [re.search(r"\((\d+)%\)", line).group(1) for line in lines[1:-1]] == [  # type: ignore[union-attr]
        str(p) for p in range(5, 51, 5)
    ]
    assert lines[-1].split("] ")[1].startswith("work: stopped, 100/200 in 0:00:0")
    # Without a total (or between percent steps): a line every `every_s` seconds.
    out = io.StringIO()
    slow = LineProgress(Console(file=out), every_s=0.05)
    task = slow.add_task("open-ended", total=None)
    for _ in range(3):
        time.sleep(0.06)
        slow.advance(task)
    assert len(out.getvalue().splitlines()) == 1 + 3


def test_logbook_prints_a_line_per_train_step_when_not_a_terminal(tmp_path: Path) -> None:
    out = io.StringIO()
    with Logbook(tmp_path, 4, Console(file=out, width=40)) as logbook:
        with logbook.phase("evaluate step 0"):
            pass
        logbook.write(
            {"kind": "eval", "step": 0, "eval_accuracy": 0.25, "eval_accuracy_stderr": 0.02,
             "eval_answered": 0.9, "eval_accuracy_answered": 0.277}
        )  # fmt: skip
        for step in (1, 2):
            logbook.write(
                {"kind": "train", "step": step, "train_reward_mean": 0.5,
                 "rollouts_total": 8 * step, "buffer_size": 0, "time_generate_s": 1.0}
            )  # fmt: skip
    lines = out.getvalue().splitlines()
    assert "evaluate step 0: done in" in lines[2]
    # one line however narrow the console, no source location (logbook.py:NN)
    assert re.match(
        STAMP + r"eval step 0: sampled accuracy 0\.250 \(\+/- 0\.020\), answered 0\.900 "
        r"\(0\.277 of them right\)$",
        lines[3],
    )
    assert re.search(
        r"train steps: 1/4 \(25%\), .* elapsed, ~.* left, held-out acc 0\.250, "
        r"train reward 0\.50, rollouts 8, buffer 0 \| step phases generate 1\.0s$",
        lines[4],
    )
    assert "train steps: 2/4 (50%)" in lines[5]
    assert "train steps: stopped, 2/4" in lines[-1]
