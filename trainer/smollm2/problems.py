"""Seeded arithmetic word problems for SmolLM2: one operation each, `\\boxed{}` answers.

A 135M-parameter instruct model reads a short story ("Tom has 7 apples and buys 5 more.
How many apples does he have?") and has to say the number. Small operands keep it in
the range where it is right some of the time and wrong some of the time, which is what
RL needs from a prompt; the operand range is the difficulty knob (see docs/smollm2.md for
the accuracies measured).

Train and test are disjoint in the arithmetic itself, not only in the text: every
(operation, a, b) triple lands in one split, so no test problem is a train problem with
another name. Everything here is pure: the same seed and config give identical rows.

A row is `{"prompt": "...", "answer": "12", "op": "add"}`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

INSTRUCTION = "Put the final answer in \\boxed{}."

NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Jack", "Emma", "Leo", "Zoe")
# Items only in the plural: "1 apples" never happens, operands are at least `min_operand`.
ITEMS = ("apples", "books", "pencils", "stickers", "marbles", "cookies", "cards", "shells")

# {n}: name, {p}: subject pronoun, {a}/{b}: operands, {items}: plural noun.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "{n} has {a} {items} and buys {b} more. How many {items} does {p} have now?",
        "{n} had {a} {items}. A friend gave {n} {b} more {items}. "
        "How many {items} does {n} have in total?",
    ),
    "sub": (
        "{n} has {a} {items} and gives {b} of them away. How many {items} does {p} have left?",
        "{n} had {a} {items} and lost {b} of them. How many {items} are left?",
    ),
    "mul": ("{n} has {a} bags with {b} {items} in each bag. How many {items} does {p} have?",),
}
PRONOUNS = {"Tom": "he", "Ben": "he", "Sam": "he", "Jack": "he", "Leo": "he"}


@dataclass(frozen=True)
class ProblemConfig:
    """Split sizes and the arithmetic each problem can hold.

    Operands are drawn from `[min_operand, max_operand]`; a subtraction puts the larger
    operand first, so answers are never negative. Raises `ValueError` (from
    `generate_splits`) when the range holds fewer distinct problems than requested.
    """

    operations: tuple[str, ...] = ("add", "sub")
    min_operand: int = 2
    max_operand: int = 25
    train_prompts: int = 600
    test_prompts: int = 200


def solve(op: str, a: int, b: int) -> int:
    """The answer of one problem; raises `KeyError` for an unknown operation."""
    return {"add": a + b, "sub": a - b, "mul": a * b}[op]


def _triples(config: ProblemConfig) -> list[tuple[str, int, int]]:
    lo, hi = config.min_operand, config.max_operand
    out = []
    for op in config.operations:
        if op not in TEMPLATES:
            raise ValueError(f"unknown operation {op!r}; known: {sorted(TEMPLATES)}")
        for a in range(lo, hi + 1):
            # Subtraction: a > b so that the answer is positive and "some are left".
            for b in range(lo, a if op == "sub" else hi + 1):
                out.append((op, a, b))
    return out


def render(op: str, a: int, b: int, rng: random.Random) -> dict:
    """One row for `op(a, b)` with a name, item and phrasing drawn from `rng`."""
    name, items = rng.choice(NAMES), rng.choice(ITEMS)
    template = rng.choice(TEMPLATES[op])
    story = template.format(n=name, p=PRONOUNS.get(name, "she"), a=a, b=b, items=items)
    return {"prompt": f"{story} {INSTRUCTION}", "answer": str(solve(op, a, b)), "op": op}


def generate_splits(seed: int, config: ProblemConfig) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows): disjoint in (operation, a, b), seeded, in a shuffled order."""
    triples = _triples(config)
    wanted = config.train_prompts + config.test_prompts
    if wanted > len(triples):
        raise ValueError(
            f"{len(triples)} distinct problems in operands {config.min_operand}.."
            f"{config.max_operand} for {config.operations}; {wanted} requested"
        )
    rng = random.Random(seed)
    rng.shuffle(triples)
    chosen = triples[:wanted]
    rows = [render(*t, rng) for t in chosen]
    return rows[config.test_prompts :], rows[: config.test_prompts]
