"""Crash safety of the run checkpoint: SIGKILL a real process at every filesystem step of
a save (and at random instants of a loop of saves) and check that the old or the new
checkpoint is loadable each time, and that the run saves again on top of the leftovers."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import run_checkpoint

ROOT = Path(__file__).resolve().parents[2]

# A save of step N writes trainer.pt (N's bytes, `size` of them) and allocator.json; the
# same `payload` lets the parent check that a loaded checkpoint is whole and of one step.
SAVER = """
import json, sys, time
from pathlib import Path
from trainer import run_checkpoint

def payload(step, size):
    return bytes([step % 251]) * size

output, first, last, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for step in range(first, last + 1):
    def write(d, step=step):
        (d / "trainer.pt").write_bytes(payload(step, size))
        (d / "allocator.json").write_text(json.dumps({"step": step}))
    run_checkpoint.save(output, step, write)
    print(step, run_checkpoint.fs_steps(), flush=True)
"""


def payload(step: int, size: int) -> bytes:
    return bytes([step % 251]) * size


def save(output: Path, step: int, size: int = 64, crash_at: int | None = None) -> int:
    """Run a save of `step` in a fresh process; its return code (-9: killed)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if crash_at is not None:
        env["PC_CHECKPOINT_CRASH_AT"] = str(crash_at)
    argv = [sys.executable, "-c", SAVER, str(output), str(step), str(step), str(size)]
    return subprocess.run(argv, env=env, timeout=60, check=False).returncode


def loaded_step(output: Path, size: int = 64) -> int:
    """The step of the checkpoint `latest` finds, after checking it is whole."""
    found = run_checkpoint.latest(output)
    assert found is not None, sorted(p.name for p in output.iterdir())
    step = json.loads((found / "allocator.json").read_text())["step"]
    assert (found / "trainer.pt").read_bytes() == payload(step, size)
    return step


def legacy_checkpoint(output: Path, step: int) -> None:
    """A run folder as the previous version left it: a plain `checkpoint/` directory."""
    (output / "checkpoint").mkdir(parents=True)
    (output / "checkpoint" / "trainer.pt").write_bytes(payload(step, 64))
    (output / "checkpoint" / "allocator.json").write_text(json.dumps({"step": step}))


@pytest.mark.parametrize("start", ["step_dirs", "legacy"])
def test_kill_at_every_filesystem_step_leaves_old_or_new(start: str, tmp_path: Path) -> None:
    outcomes = []
    for k in range(1, 100):
        output = tmp_path / f"k{k}"
        if start == "legacy":
            legacy_checkpoint(output, 1)
        else:
            assert save(output, 1) == 0
        rc = save(output, 2, crash_at=k)
        step = loaded_step(output)
        assert step in (1, 2)
        outcomes.append(step)
        # Resume: the next save works on top of whatever the kill left, and cleans up.
        assert save(output, 3) == 0 and loaded_step(output) == 3
        left = sorted(p.name for p in output.iterdir())
        assert left == ["checkpoint", "checkpoint-000003"], left
        if rc == 0:
            break
        assert rc == -signal.SIGKILL
    else:
        pytest.fail("the save never finished")
    # Killed at k = 1 .. len-1, then a save that ran to the end; both states were seen.
    assert outcomes[0] == 1 and outcomes[-1] == 2 and len(outcomes) >= 10


def test_kill_at_random_instants_of_a_loop_of_saves(tmp_path: Path) -> None:
    rng = random.Random(0)
    output, size, step, kills = tmp_path / "run", 4_000_000, 0, 0
    for _ in range(15):
        first = step + 1
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        argv = [sys.executable, "-c", SAVER, str(output), str(first), str(first + 1000), str(size)]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
        time.sleep(rng.uniform(0.2, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(30)
        assert proc.stdout is not None
        printed = [int(line.split()[0]) for line in proc.stdout.read().decode().split()[::2]]
        proc.stdout.close()
        step = loaded_step(output, size)
        # Every save that reported done is loadable (or a newer one is).
        assert step >= (printed[-1] if printed else 0)
    assert kills == 15 and step > 0


def test_previous_versions_crash_leftover_is_resumed(tmp_path: Path) -> None:
    # The previous version deleted checkpoint/ and was killed before renaming
    # checkpoint.tmp/: the run "already has N steps" and refused to start.
    legacy_checkpoint(tmp_path, 4)
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.tmp")
    assert loaded_step(tmp_path) == 4
    assert save(tmp_path, 5) == 0 and loaded_step(tmp_path) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "checkpoint-000005"]
