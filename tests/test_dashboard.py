"""The allocator's pool view and `pilot-commit dashboard`, read in a real headless browser.

The allocator runs under uvicorn over a real redis-server; a run is driven through it as a
trainer would (plan, report, complete the step) with scripted rewards, so its state is
known exactly when the page is read. The page is loaded by Debian's Chromium (`--headless
--dump-dom`): what the browser rendered after its scripts ran is compared with what the
allocator answers. Without Chromium the browser tests skip, unless PC_REQUIRE_BROWSER is
set (CI sets it), which makes a missing browser a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from pilot_commit.dashboard import RunNotFound, find_run
from services.allocator import models as m
from services.allocator.client import AllocatorClient
from services.common.procs import ManagedProcess, free_port, wait_http_ok
from tests.allocator.test_service import new_run_id, start_allocator
from trainer.summary import metrics_rows

PC = {
    "strategy": "pilot_commit",
    "train_batch_size": 4,
    "gen_batch_size": 8,
    "n_pilot": 4,
    "n_commit": 4,
    "p_lower": 0.25,
    "p_upper": 0.25,
    "exclude_threshold": 1.0,
}
NUM_PROMPTS = 40
# `pilot-commit dashboard ...` as the console script runs it
MAIN = "import sys; from pilot_commit.cli import main; sys.exit(main())"
DASHBOARD = [sys.executable, "-c", MAIN, "dashboard"]


@pytest.fixture(scope="module")
def allocator(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_allocator(redis_url, tmp_path_factory.mktemp("alloc"))
    yield url
    proc.stop()


def scripted_rewards(plan: m.Plan) -> list[list[float]]:
    """Prompt i is right in (i mod 5) of 4 samples, capped at 4: ids 0 mod 5 never, 4 mod 5
    always, the rest in the band or at its edges."""
    return [[1.0 if k < min(4, p.prompt_id % 5) else 0.0 for k in range(p.n)] for p in plan.items]


async def drive(client: AllocatorClient, run_id: str, steps: int) -> None:
    """Complete `steps` optimiser steps of `run_id` the way the trainer does."""
    for _ in range(steps):
        step = (await client.summary(run_id)).step
        while True:
            plan = await client.plan(run_id)
            result = await client.report(run_id, plan.plan_id, scripted_rewards(plan))
            if result.batch_complete:
                break
        await client.complete_step(run_id, step)


async def new_run(allocator: str, steps: int) -> str:
    run_id = new_run_id()
    async with AllocatorClient(allocator) as client:
        await client.create_run(run_id, m.RunSpec(num_prompts=NUM_PROMPTS, seed=5, config=PC))
        await drive(client, run_id, steps)
    return run_id


async def test_pool_counts_every_prompt_as_the_prompt_endpoint_reads_it(allocator: str) -> None:
    run_id = await new_run(allocator, steps=3)
    async with AllocatorClient(allocator) as client:
        pool = await client.pool(run_id, bins=4)
        summary = await client.summary(run_id)
        prompts = [await client.prompt(run_id, i) for i in range(NUM_PROMPTS)]
    rates = [p.pilot_pass_rate for p in prompts if p.pilot_pass_rate is not None]
    expected = [0, 0, 0, 0]
    for rate in rates:
        expected[min(3, int(rate * 4))] += 1
    assert pool.pass_rate_edges == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert pool.pass_rate_counts == expected and sum(expected) == pool.piloted == len(rates)
    assert pool.pilot_all_equal == sum(r in (0.0, 1.0) for r in rates) > 0
    by_status = Counter(p.status for p in prompts)
    assert pool.statuses == {**dict.fromkeys(pool.statuses, 0), **by_status}
    assert sum(pool.statuses.values()) == NUM_PROMPTS
    assert pool.band == (0.25, 0.75) and pool.exclude_threshold == 1.0
    assert pool.summary == summary  # nothing moved in between: the same summary
    assert summary.buffer_size == sum(pool.buffer_ages) > 0


async def test_pool_of_a_strategy_without_a_gate_has_no_band(allocator: str) -> None:
    run_id = new_run_id()
    grpo = {"strategy": "grpo", "train_batch_size": 2, "n": 4}
    async with AllocatorClient(allocator) as client:
        await client.create_run(run_id, m.RunSpec(num_prompts=10, seed=1, config=grpo))
        await drive(client, run_id, 1)
        pool = await client.pool(run_id)
    assert pool.band is None and pool.exclude_threshold is None
    # full groups are not pilots: no pass rate to place against a band
    assert pool.piloted == 0 and pool.pass_rate_counts == [0] * 20
    assert pool.statuses["active"] == 10 and sum(pool.statuses.values()) == 10
    assert pool.summary.buffer_size == 0 and pool.buffer_ages == []


async def test_pool_refuses_bad_input(allocator: str) -> None:
    run_id = await new_run(allocator, steps=1)
    with httpx.Client(base_url=allocator) as http:
        before = http.get(f"/v1/runs/{run_id}").json()
        for bins in ("0", "101", "x"):
            response = http.get(f"/v1/runs/{run_id}/pool", params={"bins": bins})
            assert response.status_code == 422, response.text
        missing = http.get("/v1/runs/no-such-run/pool")
        assert missing.status_code == 404 and "no-such-run" in missing.json()["detail"]
        assert http.get(f"/v1/runs/{run_id}").json() == before


# ---- finding a run, reading metrics.jsonl as it is written ----


def test_find_run_reads_services_json_then_config(tmp_path: Path) -> None:
    run = tmp_path / "my-run"
    run.mkdir()
    with pytest.raises(RunNotFound, match=r"no services\.json or config\.json"):
        find_run(run)
    (run / "config.json").write_text(
        json.dumps({"services": {"allocator_url": "http://a:1/", "allocator_token": "t"}})
    )
    found = find_run(run)
    assert (found.allocator_url, found.run_id, found.token) == ("http://a:1", "my-run", "t")
    (run / "services.json").write_text(json.dumps({"allocator_url": "http://b:2", "run_id": "r7"}))
    found = find_run(run)
    assert (found.allocator_url, found.run_id) == ("http://b:2", "r7")
    assert find_run(run, "http://c:3", "r8").run_id == "r8"
    (run / "services.json").write_text("{not json")
    with pytest.raises(RunNotFound, match=r"services\.json: cannot read it"):
        find_run(run)


def test_dashboard_command_names_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    done = subprocess.run([*DASHBOARD, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"pilot-commit dashboard: {tmp_path}: no services.json or config.json saying where the "
        "allocator is (is it a `pilot-commit train --output` folder? or give --allocator and "
        "--run-id)"
    ]


def test_metrics_rows_skip_a_row_being_written(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": 1, "x": 1}, {"kind": "train", "step": 1, "x": 2}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "tra')
    assert metrics_rows(metrics) == ([], [rows[1]])  # the last row of a step counts
    metrics.write_text('{"kind": "tra\n' + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: not a JSON row"):
        metrics_rows(metrics)


# ---- the page, in Chromium ----


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("PC_REQUIRE_BROWSER"):
        pytest.fail("PC_REQUIRE_BROWSER is set but no chromium is on PATH")
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")


def browse(url: str, *extra: str) -> str:
    """The DOM of `url` after its scripts ran (virtual time waits for pending fetches)."""
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--virtual-time-budget=5000", *extra, url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Page(HTMLParser):
    """The numbers of the page's cards (`data-key`), its notes, and its SVG shapes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.text: dict[str, str] = {}
        self.shapes: Counter[tuple[str, str]] = Counter()
        self.attrs: dict[str, dict[str, str | None]] = {}
        self._key: str | None = None
        self._chart: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.attrs[str(a["id"])] = a
            self._key = f"#{a['id']}"
        if a.get("data-key"):
            self._key = str(a["data-key"])
        if tag == "svg":
            self._chart = a.get("id")
        elif self._chart and tag in ("rect", "polyline", "polygon"):
            self.shapes[(self._chart, tag)] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None

    def handle_data(self, data: str) -> None:
        if self._key and data.strip():
            target = self.text if self._key.startswith("#") else self.values
            target[self._key.lstrip("#")] = data.strip()
            self._key = None


def number(text: str) -> int:
    return int(text.replace(",", ""))


def write_metrics(run_dir: Path, steps: int) -> None:
    rows = [{"kind": "eval", "step": 0, "eval_accuracy": 0.3, "eval_accuracy_stderr": 0.02,
             "rollouts_total": 0}]  # fmt: skip
    for step in range(1, steps + 1):
        rows.append({"kind": "train", "step": step, "rollouts_total": 100 * step,
                     "rollouts_pilot": 60 * step, "rollouts_commit": 40 * step,
                     "rollouts_full": 0, "rollouts_zero_variance": 25 * step})  # fmt: skip
    rows.append({"kind": "eval", "step": steps, "eval_accuracy": 0.4,
                 "eval_accuracy_stderr": 0.02, "rollouts_total": 100 * steps})  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def start_dashboard(
    run_dir: Path, log_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[ManagedProcess, str]:
    """`pilot-commit dashboard RUN_DIR` as its own process on a free port; its URL."""
    port = free_port()
    argv = [*DASHBOARD, str(run_dir), "--port", str(port), *extra]
    proc = ManagedProcess(
        f"dashboard-{port}", argv, log_dir / f"dashboard-{port}.log", env=env or {}
    )
    proc.start()
    try:
        wait_http_ok(proc, f"http://127.0.0.1:{port}/health", 60)
    except BaseException:
        proc.stop()
        raise
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def dashboard(allocator: str, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """`pilot-commit dashboard RUN_DIR` as its own process, over a run driven 2 steps;
    yields (dashboard URL, run id, run folder)."""
    import asyncio

    run_id = asyncio.run(new_run(allocator, steps=2))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "services.json").write_text(
        json.dumps({"run_id": run_id, "allocator_url": allocator})
    )
    write_metrics(run_dir, steps=2)
    proc, url = start_dashboard(run_dir, tmp_path, "--refresh", "60")
    try:
        yield f"{url}/", run_id, run_dir
    finally:
        proc.stop()


def assert_page_matches(page: Page, summary: m.RunSummary, pool: m.PoolView) -> None:
    assert pool.summary == summary  # the run is still between the two reads
    c = summary.counters
    assert page.text["status"] == "live" and page.text["run-id"] == summary.run_id
    shown = {key: page.values[key] for key in page.values}
    assert number(shown["step"]) == summary.step and number(shown["epoch"]) == summary.epoch
    for key in ("rollouts_pilot", "rollouts_commit", "rollouts_full", "groups_trained",
                "gate_pass", "gate_too_easy", "gate_too_hard", "evicted", "expired"):  # fmt: skip
        assert number(shown[key]) == c.get(key, 0), key
    assert number(shown["buffer_size"]) == summary.buffer_size
    assert number(shown["evict_pending"]) == summary.evict_pending
    assert number(shown["piloted"]) == pool.piloted
    assert number(shown["pilot_all_equal"]) == pool.pilot_all_equal
    assert shown["strategy"] == "pilot_commit"
    # one bar per bin (the band is one more rect), per status, per buffer age
    assert page.shapes[("chart-pass", "rect")] == len(pool.pass_rate_counts) + 1
    assert page.shapes[("chart-status", "rect")] == len(pool.statuses)
    assert page.shapes[("chart-ages", "rect")] == max(1, len(pool.buffer_ages))
    share = 100 * pool.pilot_all_equal / pool.piloted
    assert page.text["note-pass"] == (
        f"{pool.piloted} of {summary.spec.num_prompts} prompts piloted; {share:.1f}% of them "
        "all right or all wrong"
    )


async def test_page_shows_the_allocator_state_as_the_run_advances(
    dashboard: tuple[str, str, Path], allocator: str, tmp_path: Path
) -> None:
    url, run_id, run_dir = dashboard
    async with AllocatorClient(allocator) as client:
        page = Page(browse(url, "--dump-dom"))
        assert_page_matches(page, await client.summary(run_id), await client.pool(run_id))
        # from metrics.jsonl: three role lines, the zero-variance line, the accuracy band
        assert page.shapes[("chart-roles", "polyline")] == 3
        assert page.shapes[("chart-zv", "polyline")] == 1
        assert page.shapes[("chart-acc", "polygon")] == 1
        assert page.text["note-acc"] == "0.300 at step 0 → 0.400 at step 2"
        assert page.text["note-zv"] == "whole run: 25.0% of rollouts"
        # the run goes on: the next load shows the new step, still equal to the allocator
        await drive(client, run_id, 2)
        write_metrics(run_dir, steps=4)
        later = Page(browse(url, "--dump-dom"))
        summary = await client.summary(run_id)
        assert summary.step == 4 and number(later.values["step"]) == 4
        assert_page_matches(later, summary, await client.pool(run_id))
        assert later.text["note-roles"] == "400 rollouts in 4 steps"
    shot = tmp_path / "dashboard.png"
    browse(url, f"--screenshot={shot}", "--window-size=1400,1000")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"


def test_page_says_when_the_allocator_is_unreachable(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    (run_dir / "services.json").write_text(json.dumps({"run_id": "r", "allocator_url": dead}))
    proc, url = start_dashboard(run_dir, tmp_path)
    try:
        state = httpx.get(f"{url}/api/state").json()
        assert state["pool"] is None
        assert "allocator unreachable at /v1/runs/r" in state["allocator_error"]
        assert state["metrics"] == {"train": [], "eval": []} and state["metrics_error"] is None
        page = Page(browse(f"{url}/", "--dump-dom"))
        assert page.text["status"] == "allocator unreachable"
        assert page.text["errors"].startswith("allocator unreachable at /v1/runs/r")
        assert page.text["where"] == f"allocator {dead}"
        assert not page.values  # no numbers it cannot vouch for
    finally:
        proc.stop()


async def test_the_token_stays_in_the_dashboard_process(redis_url: str, tmp_path: Path) -> None:
    """Behind a token-protected allocator: the dashboard reads with the token from
    PC_TRAINER_ALLOCATOR_TOKEN (as `train` does); without it the allocator's 401 is shown;
    neither the page nor /api/state ever carries the token."""
    secret = "s3cret-dashboard-token"
    proc, allocator = start_allocator(redis_url, tmp_path, PC_ALLOCATOR_TOKEN=secret)
    try:
        run_id = new_run_id()
        async with AllocatorClient(allocator, token=secret) as client:
            await client.create_run(run_id, m.RunSpec(num_prompts=8, seed=1, config=PC))
            summary = await client.summary(run_id)
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "services.json").write_text(
            json.dumps({"run_id": run_id, "allocator_url": allocator})
        )
        for env, expect in (({}, 401), ({"PC_TRAINER_ALLOCATOR_TOKEN": secret}, 200)):
            dash, base = start_dashboard(run_dir, tmp_path, env=env)
            try:
                answer = httpx.get(f"{base}/api/state").text
                page = httpx.get(f"{base}/").text
            finally:
                dash.stop()
            assert secret not in answer and secret not in page
            state = json.loads(answer)
            if expect == 401:
                assert state["pool"] is None and "answered 401" in state["allocator_error"]
            else:
                assert state["allocator_error"] is None
                assert state["pool"]["summary"] == summary.model_dump(mode="json")
    finally:
        proc.stop()
