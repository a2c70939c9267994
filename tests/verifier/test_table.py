"""The verdict table through the pure core and math-verify, in this process.

Symbolic checks run here without the worker pool: the table holds no hostile input,
and math-verify's alarms are off (`symbolic.py`), so the main thread is not required.
"""

from __future__ import annotations

import pytest

from services.verifier import answers
from services.verifier.symbolic import judge, warm_up
from tests.verifier.cases import Case, all_cases

CASES = all_cases()


def verdict(case: Case) -> tuple[bool, str]:
    task = case.task  # type: ignore[assignment]
    found = answers.extract_answer(case.response, task)  # type: ignore[arg-type]
    if found.text is None:
        return False, "no_answer"
    reference = answers.normalize(answers.extract_reference(case.reference, task))  # type: ignore[arg-type]
    answer = answers.normalize(found.text)
    fast = answers.fast_verdict(reference, answer, task)  # type: ignore[arg-type]
    if fast is not None:
        return fast.correct, fast.reason
    reason = judge(reference, answer)
    return reason == "match", reason


def test_table_is_large_and_balanced() -> None:
    assert len(CASES) >= 200
    wrong = sum(not case.expected for case in CASES)
    assert wrong >= 70, "near misses must be a large part of the table"


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    warm_up()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.task}:{c.reference[:24]}")
def test_verdict(case: Case) -> None:
    correct, reason = verdict(case)
    assert correct is case.expected, (reason, case)
