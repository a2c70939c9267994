"""A stopped `up`, `train` or `bench` leaves no process behind (issue 14 item 21).

Each command runs as a real `python -m pilot_commit.cli ...` process; once its processes are
up, it gets SIGTERM, SIGINT, SIGHUP or SIGKILL, and every process that was below it in
the process tree must be gone soon after (a SIGKILLed parent's children go by their
parent-death signal: services/common/procs.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.assets import fitted_tiny_assets

ROOT = Path(__file__).resolve().parents[2]
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_tiny_assets(tmp_path_factory.mktemp("assets"))


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a live process, None when gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return None if state in "ZX" else (state, int(ppid))


def descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            parents[int(entry)] = found[1]
    out: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - out
        out |= frontier
    return out


class Command:
    """A `pilot-commit` command in its own session, its output collected line by line."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pilot_commit.cli", *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in " ".join(" ".join(self.lines).split()):  # rich may wrap a long line
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"no {text!r} in the output:\n" + "\n".join(self.lines[-40:]))


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids of the commands this test started and of their processes; whatever of them
    is still alive at the end (a failed test) is killed, ours alone."""
    pids: list[int] = []
    yield pids
    for pid in list(pids):
        if _stat(pid) is not None:
            pids += descendants(pid)
    for pid in pids:
        if _stat(pid) is not None:
            os.kill(pid, signal.SIGKILL)


def stop_and_check(command: Command, sig: signal.Signals, least: int, started: list[int]) -> None:
    children = descendants(command.proc.pid)
    started += children
    assert len(children) >= least, children
    os.kill(command.proc.pid, sig)
    rc = command.proc.wait(90)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_stat(pid) for pid in children):
        time.sleep(0.2)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children if _stat(pid)}
    assert not left, left
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 128 + sig
    assert rc in (expected, 0), (rc, command.lines[-20:])


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_up(sig: signal.Signals, assets: Path, tmp_path: Path, started: list[int]) -> None:
    argv = ["up", "--model", str(assets / "model"), "--workdir", str(tmp_path / "stack")]
    command = Command(argv, tmp_path)
    started.append(command.proc.pid)
    command.wait_for("stops everything", 180)
    stop_and_check(command, sig, 4, started)  # redis, allocator, verifier, generation


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_train(sig: signal.Signals, assets: Path, tmp_path: Path, started: list[int]) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        f"""
[run]
steps = 1000
run_id = "signals-{sig.name}"
[data]
train_path = "{assets / "train.jsonl"}"
test_path = "{assets / "test.jsonl"}"
task = "leading_number"
[model]
path = "{assets / "model"}"
[sampling]
max_tokens = 4
[eval]
every = 0
prompts = 8
[allocation]
strategy = "grpo"
train_batch_size = 4
n = 6
"""
    )
    command = Command(["train", str(config), "--output", str(tmp_path / "run")], tmp_path)
    started.append(command.proc.pid)
    command.wait_for("evaluate step 0", 240)  # the stack is up, the run is in its loop
    stop_and_check(command, sig, 4, started)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_bench(sig: signal.Signals, tmp_path: Path, started: list[int]) -> None:
    command = Command(["bench", "allocator", "--prompts", "1000", "--steps", "100000"], tmp_path)
    started.append(command.proc.pid)
    command.wait_for("1,000 prompts: started", 120)  # its redis-server and allocator are up
    stop_and_check(command, sig, 2, started)


def test_a_child_started_from_a_worker_thread_outlives_that_thread(tmp_path: Path) -> None:
    """The parent-death signal follows the starting thread, not the process: a child
    started from a worker thread (as tests/vllm restarts vLLM) must not be killed when
    that thread returns."""
    from services.common.procs import ManagedProcess

    proc = ManagedProcess("sleeper", ["sleep", "60"], tmp_path / "sleeper.log")
    worker = threading.Thread(target=proc.start)
    worker.start()
    worker.join()
    try:
        time.sleep(1.0)
        assert proc.proc is not None and proc.proc.poll() is None, "killed with its thread"
    finally:
        proc.stop()
