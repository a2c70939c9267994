"""The regression corpus (`regressions.py`) through the pure core and math-verify."""

from __future__ import annotations

import pytest

from services.verifier.symbolic import warm_up
from tests.verifier.cases import Case
from tests.verifier.regressions import REGRESSIONS, Regression
from tests.verifier.test_table import verdict


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    warm_up()


@pytest.mark.parametrize("row", REGRESSIONS, ids=lambda r: f"{r.task}:{r.response[-40:]}")
def test_regression(row: Regression) -> None:
    case = Case(row.response, row.reference, row.task, row.correct)
    assert verdict(case) == (row.correct, row.reason), row.kind
