"""The catalog of task sets: which reasoning-gym datasets, how hard, how many prompts.

A task is one reasoning-gym dataset with its config kwargs (its difficulty controls), the
verifier task kind that reads its answers (`numeric` for a number, `exact` for a string),
an instruction appended to reasoning-gym's question that tells a small chat model the
answer format, and how many distinct prompts each split gets. A set is several tasks
mixed; its rows carry each prompt's verifier kind, so one run trains on all of them.

Sets are chosen by measuring a model's pass rates on the validation split
(`pilot-commit tasks calibrate`), never on the test split; docs/tasks.md has the figures
behind each choice. Everything here is plain data: importing it needs no reasoning-gym.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.verifier.models import TASKS

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskSpec:
    """One reasoning-gym dataset at one difficulty, and its share of each split."""

    source: str
    config: dict[str, Any] = field(default_factory=dict)
    kind: str = "numeric"
    instruction: str = ""
    train: int = 500
    validation: int = 100
    test: int = 100

    def size(self, split: str) -> int:
        return {"train": self.train, "validation": self.validation, "test": self.test}[split]

    @property
    def wanted(self) -> int:
        """Distinct questions needed over the three splits."""
        return self.train + self.validation + self.test

    def definition(self) -> dict[str, Any]:
        """Everything that changes this task's rows, as JSON-ready data."""
        return {
            "source": self.source,
            "config": self.config,
            "kind": self.kind,
            "instruction": self.instruction,
            "sizes": {split: self.size(split) for split in SPLITS},
        }

    @classmethod
    def from_definition(cls, definition: dict[str, Any]) -> TaskSpec:
        """The spec `definition()` describes (lists where the catalog had tuples)."""
        sizes = definition["sizes"]
        return cls(
            definition["source"], dict(definition["config"]), definition["kind"],
            definition["instruction"], sizes["train"], sizes["validation"], sizes["test"],
        )  # fmt: skip


@dataclass(frozen=True)
class TaskSet:
    """Named tasks mixed into one dataset. Raises `ValueError` for a task kind the
    verifier does not have, a source used twice (rows are told apart by source) or a
    split size below zero."""

    name: str
    description: str
    tasks: tuple[TaskSpec, ...]

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError(f"task set {self.name!r} has no tasks")
        sources = [t.source for t in self.tasks]
        for task in self.tasks:
            if task.kind not in TASKS:
                raise ValueError(
                    f"task set {self.name!r}: {task.source} has kind {task.kind!r}; the "
                    f"verifier's kinds are {', '.join(TASKS)}"
                )
            if sources.count(task.source) > 1:
                raise ValueError(f"task set {self.name!r}: {task.source} appears twice")
            if min(task.size(split) for split in SPLITS) < 0:
                raise ValueError(f"task set {self.name!r}: {task.source} has a negative size")

    def size(self, split: str) -> int:
        return sum(task.size(split) for task in self.tasks)

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "tasks": [task.definition() for task in self.tasks]}


NUMBER_ONLY = "Answer with the number only."
TRUE_FALSE = "Answer with True or False only."
YES_NO = "Answer with Yes or No only."
SINGLE_DIGITS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def _candidate(spec: TaskSpec) -> TaskSpec:
    """`spec` with validation prompts only: measured, never trained on."""
    return TaskSpec(spec.source, spec.config, spec.kind, spec.instruction, 0, 32, 0)


# Every task and difficulty measured for SmolLM2 before the mix was chosen (docs/tasks.md
# has each one's figures and why it was kept or rejected).
SMOLLM2_CANDIDATES = (
    TaskSpec("number_format", {"min_num_candidates": 2, "max_num_candidates": 2,
                               "min_n": 10, "max_n": 1000, "max_delta": 50},
             "numeric", NUMBER_ONLY),
    TaskSpec("basic_arithmetic", {**SINGLE_DIGITS, "operators": ("+", "-")},
             "numeric", NUMBER_ONLY),
    TaskSpec("chain_sum", SINGLE_DIGITS, "numeric", NUMBER_ONLY),
    TaskSpec("products", SINGLE_DIGITS, "numeric", NUMBER_ONLY),
    TaskSpec("letter_counting", {"min_words": 1, "max_words": 3}, "numeric", NUMBER_ONLY),
    TaskSpec("gcd", {"max_value": 20}, "numeric", NUMBER_ONLY),
    TaskSpec("aiw", {}, "numeric", NUMBER_ONLY),
    TaskSpec("syllogism", {}, "exact", YES_NO),
    TaskSpec("ransom_note", {}, "exact", TRUE_FALSE),
    TaskSpec("isomorphic_strings", {}, "exact", TRUE_FALSE),
)  # fmt: skip

# Chosen on validation (docs/tasks.md): two True/False tasks SmolLM2 answers in format but
# near chance (every prompt sometimes right), single-digit arithmetic and small GCDs that
# it sometimes gets (a share never), and "Alice in Wonderland" sibling counts it mostly
# misses (half never). Arithmetic sizes are bounded by their spaces: 200 distinct
# chain_sum questions, 100 products, about 400 GCDs up to 20. The True/False tasks are
# the smaller share (39% of each split): a policy that always answers one way reaches their
# chance level, 0.5, from the 0.28-0.42 measured, so a mix led by them could gain points
# by learning an answer bias alone.
SMOLLM2_MIX = (
    TaskSpec("ransom_note", {"max_note_length": 10, "max_magazine_length": 30,
                             "p_solvable": 0.5}, "exact", TRUE_FALSE, 300, 60, 60),
    TaskSpec("isomorphic_strings", {"max_string_length": 10, "p_solvable": 0.5},
             "exact", TRUE_FALSE, 300, 60, 60),
    TaskSpec("aiw", {"max_entities": 6}, "numeric", NUMBER_ONLY, 400, 80, 80),
    TaskSpec("gcd", {"max_value": 20}, "numeric", NUMBER_ONLY, 260, 50, 50),
    TaskSpec("chain_sum", SINGLE_DIGITS, "numeric", NUMBER_ONLY, 120, 40, 40),
    TaskSpec("products", SINGLE_DIGITS, "numeric", NUMBER_ONLY, 60, 20, 20),
)  # fmt: skip

SETS: dict[str, TaskSet] = {
    s.name: s
    for s in (
        TaskSet(
            name="smollm2-candidates",
            description="Every task measured for SmolLM2-135M-Instruct while choosing "
            "smollm2-mix: validation prompts only, for `tasks calibrate`.",
            tasks=tuple(_candidate(spec) for spec in SMOLLM2_CANDIDATES),
        ),
        TaskSet(
            name="smollm2-mix",
            description="SmolLM2-135M-Instruct's mix: True/False string puzzles, single-digit "
            "sums and products, small GCDs and sibling counts, answered in 32 tokens.",
            tasks=SMOLLM2_MIX,
        ),
    )
}


def get_set(name: str) -> TaskSet:
    """The catalog's set `name`; `KeyError` with the known names otherwise."""
    try:
        return SETS[name]
    except KeyError:
        raise KeyError(f"no task set {name!r}; known: {', '.join(sorted(SETS))}") from None
