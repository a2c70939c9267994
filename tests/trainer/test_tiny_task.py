"""The arithmetic ladder: seeded, covering every level, train and test disjoint."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from services.verifier import answers
from trainer.tiny.task import (
    LADDER,
    TaskConfig,
    difficulty_of,
    generate_splits,
    read_jsonl,
    sample_problem,
    score_completion,
    write_jsonl,
)

SMALL = TaskConfig(train_prompts=3000, test_prompts=600)


def _level(prompt: str) -> tuple[str, int]:
    op = next(o for o in "+-*" if o in prompt)
    return op, difficulty_of(prompt)


def test_same_seed_same_rows_other_seed_other_rows():
    assert generate_splits(3, SMALL) == generate_splits(3, SMALL)
    assert generate_splits(3, SMALL) != generate_splits(4, SMALL)


def test_default_splits_are_disjoint_and_test_is_large_enough():
    train, test = generate_splits(0, TaskConfig())
    train_prompts = {row["prompt"] for row in train}
    test_prompts = {row["prompt"] for row in test}
    assert len(test_prompts) == len(test) >= 2000
    assert len(train_prompts) == len(train)
    assert not train_prompts & test_prompts


def test_every_level_is_in_both_splits():
    train, test = generate_splits(0, SMALL)
    want = {(level.op, level.digits) for level in LADDER}
    assert {_level(row["prompt"]) for row in train} == want
    assert {_level(row["prompt"]) for row in test} == want
    assert Counter(row["difficulty"] for row in test).keys() == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("level", LADDER)
def test_answers_are_right_and_rows_have_the_documented_shape(level):
    rng = random.Random(0)
    for _ in range(50):
        prompt, answer = sample_problem(rng, level)
        assert prompt.endswith("=")
        assert difficulty_of(prompt) == level.digits
        a, b = (int(x) for x in prompt[:-1].split(level.op))
        assert int(answer) == {"+": a + b, "-": a - b, "*": a * b}[level.op]
        assert int(answer) >= 0


def test_difficulty_is_the_longer_operand():
    assert difficulty_of("12+345=") == 3
    assert difficulty_of("7*8=") == 1


# (completion of `12+345=`, the reference scorer's verdict, the verifier's `leading_number`)
COMPLETIONS = [
    ("357", True, True),
    ("357</s>", True, True),
    (" 357\nmore", True, True),
    ("357 12+4=16", False, True),  # the verifier ignores what follows the number
    ("3570", False, False),
    ("35 7", False, False),
    ("=357", False, False),  # the completion does not start with the answer
    ("", False, False),
]


@pytest.mark.parametrize(("completion", "ok", "_"), COMPLETIONS)
def test_score_completion(completion, ok, _):
    assert score_completion(completion, "357") is ok


@pytest.mark.parametrize(("completion", "reference_ok", "ok"), COMPLETIONS)
def test_the_verifier_task_is_never_stricter_than_the_reference(completion, reference_ok, ok):
    found = answers.extract_answer(completion, "leading_number")
    verdict = found.text is not None and answers.fast_verdict(
        "357", answers.normalize(found.text), "leading_number"
    )
    assert bool(verdict and verdict.correct) is ok
    assert ok or not reference_ok


def test_jsonl_round_trip(tmp_path):
    rows = [{"prompt": "1+2=", "answer": "3", "difficulty": 1}]
    write_jsonl(tmp_path / "d" / "x.jsonl", rows)
    assert list(read_jsonl(tmp_path / "d" / "x.jsonl")) == rows
