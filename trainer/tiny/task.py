"""The procedural arithmetic task: a seeded difficulty ladder and its reference scorer.

RL on a CPU needs a task whose pass rates a sub-million-parameter model can spread over
the whole range: some problems always solved, some never, many in between. Addition,
subtraction and multiplication by a single digit, from 1 to 5 digits, give that ladder.
Everything here is pure: the same seed gives byte-identical files.

A row is `{"prompt": "12+345=", "answer": "357", "difficulty": 3}`: the prompt is the raw
expression ending in `=`, the model completes it with the answer's digits and then EOS.
`difficulty` is the number of digits of the longer operand.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

OPS = ("+", "-", "*")
MAX_DIGITS = 5


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: an operator and the digit count of the longer operand."""

    op: str
    digits: int

    @property
    def name(self) -> str:
        return f"{self.op}{self.digits}"


LADDER: tuple[Level, ...] = tuple(Level(op, d) for d in range(1, MAX_DIGITS + 1) for op in OPS)


@dataclass(frozen=True)
class TaskConfig:
    """Split sizes and how they are shared over the ladder.

    `digit_weights[d - 1]` is the relative share of each d-digit level, in the data files
    and in the warm start alike. Most of it goes to 2 and 3 digits: those are the levels a
    model this size learns part of in a few minutes, so that is where pass rates between 0
    and 1 come from; the 4- and 5-digit levels supply the never-solved end.
    """

    train_prompts: int = 20_000
    test_prompts: int = 2_600
    digit_weights: tuple[float, ...] = (0.5, 6.0, 3.0, 0.5, 0.25)

    def level_weights(self) -> list[float]:
        return [self.digit_weights[level.digits - 1] for level in LADDER]


def _operand(rng: random.Random, digits: int) -> int:
    """A number with exactly `digits` digits (0-9 for one digit)."""
    if digits == 1:
        return rng.randrange(10)
    return rng.randrange(10 ** (digits - 1), 10**digits)


def sample_problem(rng: random.Random, level: Level) -> tuple[str, str]:
    """One (prompt, answer) pair of `level`.

    For + and - both operands have `level.digits` digits, and subtraction puts the larger
    one first: digit alignment and the sign then stay fixed within a level, so a level's
    difficulty is its length. Multiplication is always by one digit: long multiplication
    is out of reach for a model this size, and the ladder should reach "never solved"
    through length, not through a new skill.
    """
    a, b = _operand(rng, level.digits), _operand(rng, level.digits)
    if level.op == "*":
        b = _operand(rng, 1)
        return f"{a}*{b}=", str(a * b)
    if level.op == "+":
        return f"{a}+{b}=", str(a + b)
    a, b = max(a, b), min(a, b)
    return f"{a}-{b}=", str(a - b)


def level_of(prompt: str) -> Level:
    """The ladder level of a prompt such as `12+345=` (here `Level("+", 3)`)."""
    body = prompt.rstrip("=")
    for op in OPS:
        # Operands are non-negative, so the first operator found is the only one.
        if op in body:
            left, right = body.split(op, 1)
            return Level(op, max(len(left), len(right)))
    raise ValueError(f"not an arithmetic prompt: {prompt!r}")


def difficulty_of(prompt: str) -> int:
    """Digits of the longer operand."""
    return level_of(prompt).digits


def _unique_problems(rng: random.Random, level: Level, count: int) -> list[tuple[str, str]]:
    """Up to `count` distinct problems of one level (fewer where the level has fewer)."""
    seen: dict[str, str] = {}
    # The 1-digit levels hold only 100 distinct problems; give up after enough misses.
    misses = 0
    while len(seen) < count and misses < 20 * count:
        prompt, answer = sample_problem(rng, level)
        if prompt in seen:
            misses += 1
        seen[prompt] = answer
    return list(seen.items())


def generate_splits(seed: int, config: TaskConfig) -> tuple[list[dict], list[dict]]:
    """Disjoint train and test rows, seeded; test takes its share of each level first."""
    rng = random.Random(seed)
    total_weight = sum(config.level_weights())
    train: list[dict] = []
    test: list[dict] = []
    for level, weight in zip(LADDER, config.level_weights(), strict=True):
        n_train = round(config.train_prompts * weight / total_weight)
        n_test = round(config.test_prompts * weight / total_weight)
        problems = _unique_problems(rng, level, n_train + n_test)
        # Small levels (1 digit: 100 problems) are split in proportion, so both splits
        # still cover every level.
        n_test = min(n_test, len(problems) * n_test // (n_train + n_test))
        rows = [make_row(p, a) for p, a in problems]
        test += rows[:n_test]
        train += rows[n_test:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def make_row(prompt: str, answer: str) -> dict:
    return {"prompt": prompt, "answer": answer, "difficulty": difficulty_of(prompt)}


def score_completion(completion: str, answer: str) -> bool:
    """True when the completion, up to EOS or the first line break, is exactly the answer.

    A reference for calibration only; real runs use the verifier service's `leading_number`
    task, which reads the number the completion starts with and ignores what follows (so it
    also accepts `357 12+4=16`): every completion this accepts, that task accepts.
    """
    text = completion.split("</s>", 1)[0].split("\n", 1)[0].strip()
    return text == answer


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> Iterator[dict]:
    with path.open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
