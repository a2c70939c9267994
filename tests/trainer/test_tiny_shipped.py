"""The default tiny build ships with the project (trainer/tiny/build.py `SHIPPED`): a run
on a fresh clone copies it instead of spending minutes on a warm start, and every machine
starts from the same weights."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from trainer.tiny import build as tiny_build
from trainer.tiny.build import SHIPPED, TinyConfig, build, build_dir, is_built


def test_the_shipped_build_is_the_default_configs() -> None:
    shipped = build_dir(SHIPPED, TinyConfig(seed=0))
    assert is_built(shipped), (
        f"{shipped} is missing: the tiny build's code or config changed; rebuild with "
        "`pilot-commit tiny build --force` and copy the new build into trainer/tiny/shipped"
    )
    assert [p.name for p in SHIPPED.iterdir() if not p.name.startswith(".")] == [shipped.name]
    recorded = json.loads((shipped / "config.json").read_text())
    assert recorded == json.loads(json.dumps({"version": tiny_build.BUILD_VERSION,
                                              **asdict(TinyConfig(seed=0))}))  # fmt: skip
    regimes = json.loads((shipped / "data" / "regimes.json").read_text())
    for regime in regimes["regimes"]:
        assert (shipped / "data" / regime["dir"] / "train.jsonl").is_file()


def test_a_fresh_cache_gets_the_shipped_build_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(root: Path, config: TinyConfig) -> None:
        raise AssertionError("the shipped build should have been copied")

    monkeypatch.setattr(tiny_build, "_build_into", no_build)
    artifacts = build(tmp_path, TinyConfig(seed=0))
    shipped = build_dir(SHIPPED, TinyConfig(seed=0))
    assert artifacts.root == build_dir(tmp_path, TinyConfig(seed=0))
    for name in ("model/model.safetensors", "data/train.jsonl", "calibration.json"):
        assert (artifacts.root / name).read_bytes() == (shipped / name).read_bytes()
    with pytest.raises(AssertionError, match="should have been copied"):
        build(tmp_path / "other", TinyConfig(seed=0), force=True)  # --force rebuilds


def test_the_build_command_says_the_build_was_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.tiny.cli import main

    assert main(["build", "--out", str(tmp_path)]) == 0
    assert "(copied from the shipped build, which was built in" in capsys.readouterr().out
    assert main(["build", "--out", str(tmp_path)]) == 0
    assert "(cached)" in capsys.readouterr().out
