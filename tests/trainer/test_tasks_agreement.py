"""The verifier and reasoning-gym agree on the catalog's tasks.

For a sample of each catalogued task's rows, responses are built from the reference (the
reference itself, with spaces, as a decimal, with a trailing period, in a sentence, in a
box) and from wrong values (the reference plus one, the other candidate of
`number_format`, the opposite of True/False and Yes/No, the right word in lower case). Each
is judged by the verifier's pure scoring (trainer.calibration.judge: the service's own
extraction and fast path, with its default tolerances) and by reasoning-gym's own
`score_answer`. Where reasoning-gym gives a clear 0 or 1 the two must agree, except for
the disagreements listed in DISAGREEMENTS, each with its reason; each listed one must
still occur, so the list stays true. Where reasoning-gym gives partial credit (it scores
`len(reference) / len(answer)` when the answer contains the reference) there is nothing
to agree with; the verifier's verdict on those is checked to be right.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import pytest

from trainer.calibration import judge
from trainer.tasks.catalog import SETS, TaskSpec
from trainer.tasks.generate import draw_distinct, make_row, reasoning_gym, task_seed

SAMPLE = 30
# (source, variant) -> why the verifier and reasoning-gym disagree there.
DISAGREEMENTS = {
    ("number_format", "sentence"): "reasoning-gym parses the whole answer as a float, so "
    "a sentence scores 0; the verifier reads the number the sentence states",
    ("number_format", "period"): "float('12.5.') fails in reasoning-gym; the verifier "
    "drops a trailing period",
    ("number_format", "boxed"): "reasoning-gym does not read a box; the verifier does",
}
# Variants whose answer is the reference (the verifier must say right) or a wrong value.
RIGHT = ("reference", "spaced", "decimal", "period", "sentence", "boxed")
FLIP = {"True": "False", "False": "True", "Yes": "No", "No": "Yes"}


def _specs() -> list[TaskSpec]:
    """Every task of every set, once per (source, config)."""
    seen: dict[str, TaskSpec] = {}
    for task_set in SETS.values():
        for spec in task_set.tasks:
            seen.setdefault(f"{spec.source}:{sorted(spec.config.items())}", spec)
    return list(seen.values())


def _variants(spec: TaskSpec, answer: str, entry: dict[str, Any]) -> dict[str, str]:
    out = {
        "reference": answer,
        "spaced": f" {answer} ",
        "period": f"{answer}.",
        "sentence": f"The answer is {answer}.",
        "boxed": f"\\boxed{{{answer}}}",
    }
    if spec.kind == "numeric":
        value = float(answer)
        out["decimal"] = f"{answer}0" if "." in answer else f"{answer}.0"
        out["plus_one"] = f"{value + 1:g}" if "." in answer else str(int(answer) + 1)
        out["wrong_sentence"] = f"The answer is {out['plus_one']}."
        if spec.source == "number_format":
            solution = entry["metadata"]["solution"]
            other = next(c for c in entry["metadata"]["candidates"] if c != solution)
            out["other_candidate"] = str(other)
    else:
        if answer in FLIP:
            out["opposite"] = FLIP[answer]
            out["wrong_sentence"] = f"The answer is {FLIP[answer]}."
        if answer.lower() != answer:
            out["lower"] = answer.lower()
    return out


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: s.source)
def test_verifier_agrees_with_reasoning_gym(spec: TaskSpec) -> None:
    gym = reasoning_gym()
    sample = dataclasses.replace(spec, train=SAMPLE, validation=0, test=0)
    drawn = draw_distinct(sample, seed=0)[:SAMPLE]
    dataset = gym.create_dataset(
        spec.source, seed=task_seed(0, spec.source), size=max(d.index for d in drawn) + 1,
        **spec.config,
    )  # fmt: skip
    seen: dict[str, int] = defaultdict(int)
    for d in drawn:
        row = make_row(spec, d)
        for name, response in _variants(spec, row["answer"], d.entry).items():
            ours = judge(response, row["answer"], row["task"]).correct
            theirs = dataset.score_answer(response, d.entry)
            what = f"{spec.source} {name} {response!r} (reference {row['answer']!r})"
            if theirs not in (0.0, 1.0):
                assert ours == (name in RIGHT), f"{what}: partial credit {theirs}, ours {ours}"
            elif (spec.source, name) in DISAGREEMENTS:
                assert ours != bool(theirs), f"{what}: listed as a disagreement, but agrees"
                seen[name] += 1
            else:
                assert ours == bool(theirs), f"{what}: reasoning-gym {theirs}, verifier {ours}"
    listed = {name for source, name in DISAGREEMENTS if source == spec.source}
    assert listed <= set(seen), f"listed disagreements that never occurred: {listed - set(seen)}"


def test_number_format_needs_numbers_the_relative_tolerance_tells_apart() -> None:
    """Why the catalog keeps number_format's numbers small: at reasoning-gym's default
    range (up to 1e9) two candidates differ by at most `max_delta` (10), which the
    verifier's relative tolerance (1e-6) cannot see, so it calls the wrong one right."""
    spec = TaskSpec("number_format", {"min_num_candidates": 2, "max_num_candidates": 2})
    dataset = reasoning_gym().create_dataset(spec.source, seed=1, size=50, **spec.config)
    fooled = 0
    for entry in dataset:
        solution = entry["metadata"]["solution"]
        other = next(c for c in entry["metadata"]["candidates"] if c != solution)
        assert dataset.score_answer(str(other), entry) == 0.0 or abs(other - solution) < 1e-2
        fooled += judge(str(other), entry["answer"], "numeric").correct
    assert fooled >= 45
