"""The trainer config: TOML, dotted overrides, validation, the shipped tiny config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import ConfigError, apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_tiny_config_loads() -> None:
    config = load_config(ROOT / "configs" / "tiny.toml")
    assert config.allocation.strategy == "pilot_commit"
    assert config.allocation.group_size() == 32
    assert config.data.tiny and config.eval.prompts >= 2000
    assert config.data.task == "leading_number"


def test_overrides_parse_toml_values_and_switch_strategy() -> None:
    config = load_config(
        ROOT / "configs" / "tiny.toml",
        [
            "optim.lr=3e-4",
            "allocation={strategy='grpo', train_batch_size=8, n=32}",
            'sampling.stop=["\\n"]',
            "run.run_id=abc",
        ],
    )
    assert config.optim.lr == 3e-4 and config.allocation.strategy == "grpo"
    assert config.sampling.stop == ["\n"] and config.run.run_id == "abc"


def test_bad_values_are_rejected_with_the_field_named() -> None:
    with pytest.raises(ConfigError, match=r"tiny\.toml: optim\.lr: .*greater than 0 \(got -1\)"):
        load_config(ROOT / "configs" / "tiny.toml", ["optim.lr=-1"])
    with pytest.raises(ConfigError, match=r"optim\.unknown_field: extra inputs .* \(got 1\)$"):
        load_config(ROOT / "configs" / "tiny.toml", ["optim.unknown_field=1"])
    with pytest.raises(ConfigError, match=r"optim\.lr: .*valid number.* \(got 'abc'\)"):
        load_config(ROOT / "configs" / "tiny.toml", ["optim.lr=abc"])
    with pytest.raises(
        ConfigError, match=r"optim\.warmup_step: .*did you mean optim\.warmup_steps\?$"
    ):
        load_config(ROOT / "configs" / "tiny.toml", ["optim.warmup_step=2"])
    with pytest.raises(ConfigError, match=r"did you mean sampling\?$"):
        load_config(ROOT / "configs" / "tiny.toml", ["samplng.top_p=1"])
    with pytest.raises(ConfigError, match=r"run\.steps \(4\) must be larger"):
        load_config(ROOT / "configs" / "tiny.toml", ["run.steps=4"])  # 10 warmup, cosine
    with pytest.raises(ConfigError, match=r"nope\.toml: .*No such file"):
        load_config(ROOT / "configs" / "nope.toml")
    with pytest.raises(ConfigError, match=r"'steps' is not a table"):
        load_config(ROOT / "configs" / "tiny.toml", ["run.steps.x=1"])
    with pytest.raises(ConfigError, match=r"data\.tiny and data\.smollm2 are both true"):
        load_config(ROOT / "configs" / "tiny.toml", ["data.smollm2=true"])
    with pytest.raises(ValueError, match=r"key\.path=value"):
        apply_overrides({}, ["no-equals-sign"])


def test_a_user_error_is_one_line_and_exit_2_before_torch_loads(tmp_path: Path) -> None:
    script = (
        "import sys; from trainer.cli import main; "
        "code = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(code)"
    )
    cases = [
        ["configs/nope.toml"],
        ["configs/tiny.toml", "--set", "optim.lr"],
        ["configs/tiny.toml", "--set", "optim.lr=abc"],
        ["configs/tiny.toml", "--set", "optim.lrr=1e-4"],
    ]
    for args in cases:
        done = subprocess.run(
            [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout.strip() == "False", args  # nothing heavy was imported
        [line] = done.stderr.splitlines()
        assert line.startswith("pilot-commit train: configs/"), line
