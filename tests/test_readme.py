"""The README's command examples, run as written where they can run here.

"The allocator API in one session" is executed line by line: the `pilot-commit allocator
serve` line starts the allocator (ports moved to free ones, Redis a real redis-server),
each `$ curl ...` command runs under bash, and what the README shows after it must be
what the allocator answers: each `{...}` object it shows must be one object of the
answer, holding every `"key": value` shown (`...` stands for the rest). The other
commands are checked by their own tests (the first screen's by `.ci/run` itself;
`dashboard` in test_dashboard.py; the `--set` examples in trainer/test_config.py).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.common.procs import ManagedProcess, free_port, wait_http_ok

ROOT = Path(__file__).resolve().parents[1]
MAIN = "import sys; from pilot_commit.cli import main; sys.exit(main())"
# a shown `"key": value` whose value is a string, a number, a literal or a flat list
PAIR = re.compile(r'"(\w+)": ("[^"]*"|-?\d+(?:\.\d+)?|true|false|null|\[[^\[\]{}.]*\])')


def console_block(heading: str) -> list[str]:
    """The lines of the first ```console block under `## heading` in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(f"## {heading}\n") :]
    block = section[section.index("```console\n") + len("```console\n") :]
    return block[: block.index("```")].splitlines()


def session(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown after it) for each `$ ` command; a command's
    continuation lines (after a trailing backslash) are joined to it."""
    out: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out and out[-1][0].endswith("\\"):
            out[-1] = (out[-1][0][:-1] + " " + line.strip(), out[-1][1])
        elif out:
            out[-1][1].append(line)
    return out


def objects(value: Any) -> list[dict[str, Any]]:
    """Every JSON object in a JSON value, at any depth."""
    if isinstance(value, dict):
        return [value] + [o for v in value.values() for o in objects(v)]
    if isinstance(value, list):
        return [o for v in value for o in objects(v)]
    return []


def shown_objects(text: str) -> list[list[tuple[str, Any]]]:
    """The `"key": value` pairs of each `{...}` object the README shows, innermost first
    (an object's nested objects are left out of its own pairs)."""
    out = []
    inner = re.compile(r"\{[^{}]*\}")
    while (found := inner.search(text)) is not None:
        out.append([(k, json.loads(v)) for k, v in PAIR.findall(found.group())])
        text = text[: found.start()] + "@" + text[found.end() :]
    return out


def unmatched(shown: str, answer: Any) -> list[list[tuple[str, Any]]]:
    """The shown objects that no object of `answer` holds all the pairs of."""
    have = objects(answer)
    return [
        pairs
        for pairs in shown_objects(shown)
        if not any(all(k in o and o[k] == v for k, v in pairs) for o in have)
    ]


def test_shown_objects_must_each_be_one_object_of_the_answer() -> None:
    shown = '{"plan_id": "p1", "items": [{"prompt_id": 705, "reuse": []}, ...], "ok": true, ...}'
    assert shown_objects(shown) == [
        [("prompt_id", 705), ("reuse", [])],
        [("plan_id", "p1"), ("ok", True)],
    ]
    answer = {"plan_id": "p1", "ok": True, "items": [{"prompt_id": 705, "reuse": []}]}
    assert unmatched(shown, answer) == []
    # the pairs are there, but not in one object: 705 is not the item with reuse []
    other = {"plan_id": "p1", "ok": True, "items": [{"prompt_id": 705}, {"reuse": []}]}
    assert unmatched(shown, other) == [[("prompt_id", 705), ("reuse", [])]]


def test_the_allocator_session_runs_as_written(redis_url: str, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("no curl on PATH")
    steps = session(console_block("The allocator API in one session"))
    serve, _ = steps[0]
    assert serve.startswith("pilot-commit allocator serve") and serve.endswith("&"), serve
    port = free_port()
    redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]

    def moved(command: str) -> str:
        command = re.sub(r"\b8001\b", str(port), command)
        return command.replace(":6379/", f":{redis_port}/")

    argv = shlex.split(moved(serve).removesuffix("&"))
    assert argv[0] == "pilot-commit"
    proc = ManagedProcess("readme-allocator", [sys.executable, "-c", MAIN, *argv[1:]],
                          tmp_path / "allocator.log").start()  # fmt: skip
    try:
        wait_http_ok(proc, f"http://127.0.0.1:{port}/health", 60)
        curls = steps[1:]
        assert len(curls) == 7 and all(c.startswith("curl ") for c, _ in curls)
        for command, shown in curls:
            done = subprocess.run(
                ["bash", "-c", moved(command)], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, (command, done.stderr)
            answer = json.loads(done.stdout)
            assert shown_objects(" ".join(shown)), f"the README shows no answer for {command}"
            missing = unmatched(" ".join(shown), answer)
            assert not missing, (command, missing, done.stdout[:600])
    finally:
        proc.stop()
