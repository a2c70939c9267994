"""The agreement report: verdicts of both sides, and a documented rule for each difference."""

from __future__ import annotations

import pytest

from services.verifier.agreement import UNDECIDED, Item, judge_all, report


def test_agreement_lists_disagreements_with_their_rules() -> None:
    items = [
        # both say match
        Item("cases", "So the answer is $\\boxed{\\frac{1}{2}}$.", "0.5", "math"),
        # math-verify's tolerance calls them equal; exact values compare exactly
        Item(
            "regressions:exact values: no tolerance hides a difference",
            "Hence the probability is $\\boxed{\\frac{1}{2^{98}}}$.",
            "\\frac{1}{2^{99}}",
            "math",
        ),
        # math-verify takes the first box; the last box decides
        Item("cases", "First \\boxed{3}, no wait, \\boxed{4}.", "4", "math"),
    ]
    outcomes = judge_all(items, workers=1)
    assert [(o.project, o.math_verify) for o in outcomes] == [
        (True, True),
        (False, True),
        (True, False),
    ]
    rate, found, text = report(outcomes)
    assert rate == pytest.approx(1 / 3)
    assert [(d.outcome.item, d.rule) for d in found] == [
        (items[1], "exact values compare exactly"),
        (items[2], "last box decides"),
    ]
    assert UNDECIDED not in text and "1/3 cases" in text
