"""An external suite through the real service (`bench verifier --agreement --suite`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pilot_commit.bench.verifier_suite import SuiteCase, judge_suite, load_suite, suite_report
from services.verifier.agreement import UNDECIDED


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_load_suite_reads_cases_and_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "suite.jsonl",
        [
            {"response": "7", "reference": "7", "expected": True},
            {"id": "b", "response": "x", "reference": "y", "expected": False, "task": "exact",
             "options": {"precision": 3, "strict": False}},
        ],
    )  # fmt: skip
    cases = load_suite(path)
    assert cases == [
        SuiteCase("1", "7", "7", True),
        SuiteCase("b", "x", "y", False, "exact", {"precision": 3, "strict": False}),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "suite.jsonl:2: not JSON"),
        ("[1, 2]", "suite.jsonl:2: a case is a JSON object"),
        ('{"response": "1", "reference": "1"}', "suite.jsonl:2: `expected` must be a bool"),
        ('{"response": 1, "reference": "1", "expected": true}', "`response` must be a str"),
        ('{"response": "1", "reference": "1", "expected": true, "task": "poem"}', "unknown task"),
        ('{"response": "1", "reference": "1", "expected": true, "options": {"x": 1}}', "`options`"),
    ],
)
def test_load_suite_names_the_bad_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "suite.jsonl"
    path.write_text('{"response": "1", "reference": "1", "expected": true}\n' + line + "\n")
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_suite(path)


def test_bare_answers_go_in_a_box_and_answers_are_sent_as_they_are() -> None:
    assert SuiteCase("a", "1,000.5", "1000.5", True).sent == "\\boxed{1,000.5}"
    assert SuiteCase("b", "$x \\geq 5$", "x>=5", True).sent == "\\boxed{$x \\geq 5$}"
    statement = "Final Answer: The largest $n$ is 34."
    assert SuiteCase("c", statement, "34", True).sent == statement
    assert SuiteCase("d", "so \\boxed{3}", "3", True).sent == "so \\boxed{3}"
    assert SuiteCase("e", "so it is 3 apples", "3", True).boxed_prose
    assert not SuiteCase("f", "3", "3", True).boxed_prose


def test_suite_through_the_service_names_each_difference(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "suite.jsonl",
        [
            {"id": "grouped", "response": "4 500", "reference": "4500", "expected": True},
            {"id": "wrong", "response": "$\\frac{2}{3}$", "reference": "0.6", "expected": False},
            {"id": "boxes", "response": "\\boxed{3} and \\boxed{4}", "reference": "$${3,4}$$",
             "expected": True},
            {"id": "comma", "response": "2,5", "reference": "2.5", "expected": True},
            {"id": "strict", "response": "$h(t)$", "reference": "$h(s)$", "expected": True,
             "options": {"strict": False}},
            {"id": "nothing", "response": "five", "reference": "4", "expected": True},
        ],
    )  # fmt: skip
    outcomes = judge_suite(load_suite(path), workers=1)
    assert [o.result.correct for o in outcomes] == [True, False, False, False, False, False]
    # math-verify as the suite runs it: its verdicts are the suite's, but for the last case
    assert [o.math_verify for o in outcomes] == [True, False, True, True, True, False]
    figures, text = suite_report(outcomes)
    assert figures["cases"] == 6 and figures["agreements"] == 2
    assert figures["math_verify_agreements"] == 5
    assert {row["id"]: row["rule"] for row in figures["disagreements"]} == {
        "boxes": "last box decides (of the response and of the reference)",
        "comma": "a comma is never a decimal point",
        "strict": "suite option the service does not have: strict=false",
        "nothing": "an answer needs a marker (math-verify searches prose without one)",
    }
    assert UNDECIDED not in text and "agrees with the suite on 2" in text
