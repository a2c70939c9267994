"""Pilot-Commit runs on several trainer ranks, end to end, as a user starts them:
`pilot-commit train CONFIG --nproc 2` (torchrun on this node, the embedded stack started
by rank 0), two torchrun "nodes" on loopback (c10d rendezvous), and a rank killed mid-run
then resumed from the last checkpoint. gloo on the CPU, the small fitted Llama.

Each run starts fresh Python processes (torch, the model, for the first one the stack): a
minute or so apiece on the shared cores, hence `slow` (the two tests took 7.5 minutes
together on two busy cores).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.procs import free_port
from services.stack import EmbeddedStack, StackUrls
from tests.assets import fitted_tiny_assets

pytestmark = pytest.mark.slow

CONFIG = """
[run]
steps = {steps}
seed = 0
checkpoint_every = 1

[data]
train_path = "{assets}/train.jsonl"
test_path = "{assets}/test.jsonl"
task = "leading_number"

[model]
path = "{assets}/model"
device = "cpu"

[sampling]
max_tokens = 4

[optim]
micro_batch_rollouts = 8

[eval]
every = 0
prompts = 16

[services]
retries = 2

[allocation]
strategy = "pilot_commit"
train_batch_size = 4
gen_batch_size = 8
n_pilot = 3
n_commit = 3
p_lower = 0.0
p_upper = 0.0
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_tiny_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def stack(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackUrls]:
    with EmbeddedStack(tmp_path_factory.mktemp("stack"), assets / "model") as urls:
        yield urls


def config(tmp_path: Path, assets: Path, steps: int) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(steps=steps, assets=assets))
    return path


def url_overrides(urls: StackUrls) -> list[str]:
    return [
        f"--set=services.allocator_url={json.dumps(urls.allocator_url)}",
        f"--set=services.verifier_url={json.dumps(urls.verifier_url)}",
        f"--set=services.generation_urls={json.dumps(urls.generation_urls)}",
    ]


def train_rows(output: Path) -> list[dict]:
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["kind"] == "train"]


def assert_same_training(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["rollouts_total"] == y["rollouts_total"]
        assert x["train_reward_mean"] == y["train_reward_mean"]
        for key in ("loss", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-9), (x["step"], key)


def pilot_commit(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pilot_commit.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"run did not finish in {timeout}s:\n{out[-4000:]}")
    return out


def test_two_ranks_and_two_loopback_nodes_train_alike(
    tmp_path: Path, assets: Path, stack: StackUrls
) -> None:
    """`--nproc 2` (its rank 0 starts the embedded stack) and two one-rank torchrun agents
    meeting by c10d rendezvous on 127.0.0.1 take the same steps on the same rollouts."""
    cfg = config(tmp_path, assets, steps=2)
    one_node = tmp_path / "one-node"
    proc = pilot_commit("train", str(cfg), "--nproc", "2", "--output", str(one_node))
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]
    assert "embedded stack up" in out
    # the run's end at a glance: accuracy from -> to, rollouts by role, and the plot
    assert re.search(r"held-out accuracy [\d.]+ \([\d.]+\) -> [\d.]+ \([\d.]+\)", out)
    assert re.search(r"rollouts [\d,]+: pilot [\d,]+ \(\d+%\)", out)
    assert (one_node / "accuracy-vs-rollouts.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (one_node / "checkpoint").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]

    two_nodes, port = tmp_path / "two-nodes", free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    command += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=pc"]
    command += ["-m", "pilot_commit.cli", "train", str(cfg), "--output", str(two_nodes)]
    command += [*url_overrides(stack), "--set=run.run_id='one-node'"]  # same allocator run id
    agents = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    outs = [finish(agent) for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert_same_training(train_rows(one_node), train_rows(two_nodes))


def rank_pid(tag: str, rank: int) -> int | None:
    """The pid of the trainer rank `rank` of the run whose environment carries `tag`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PC_TEST_TAG={tag}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_killed_rank_stops_the_run_which_resumes_from_its_checkpoint(
    tmp_path: Path, assets: Path, stack: StackUrls
) -> None:
    cfg, output, tag = config(tmp_path, assets, steps=4), tmp_path / "run", uuid.uuid4().hex
    args = ["train", str(cfg), "--nproc", "2", "--output", str(output), *url_overrides(stack)]
    proc = pilot_commit(*args, env={"PC_TEST_TAG": tag})
    deadline = time.monotonic() + 240
    while not (output / "checkpoint-000001").is_dir():
        assert proc.poll() is None, finish(proc)[-4000:]
        assert time.monotonic() < deadline, "no checkpoint of step 1"
        time.sleep(0.05)
    pid = rank_pid(tag, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # during step 2 (or its checkpoint)
    out = finish(proc)
    assert proc.returncode != 0
    assert "a trainer rank failed" in out and "the same command resumes from" in out, out[-4000:]
    assert "Signal 9 (SIGKILL)" in out  # torchrun's report names the killed rank
    saved = max(r["step"] for r in train_rows(output))
    assert saved < 4

    proc = pilot_commit(*args)
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]
    assert "resumed from" in out
    rows = train_rows(output)
    assert [r["step"] for r in rows][-1] == 4
    assert sorted({r["step"] for r in rows}) == [1, 2, 3, 4]
