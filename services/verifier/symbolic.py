"""Symbolic equivalence by math-verify (sympy), for the pairs the fast path cannot decide.

This runs only inside the worker processes of `pool.py`: sympy can loop or eat memory
on hostile LaTeX, and math-verify's own timeout uses `signal.alarm`, which fails off the
main thread. So the alarms are switched off here (`*_timeout=None`) and the pool enforces
the time limit from outside by killing the worker.

The reference is parsed once per worker (`_parse_reference` is cached): an RL batch asks
about the same reference with many different answers.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from services.verifier.answers import Reason


def _boxed(answer: str) -> str:
    # Boxing makes math-verify parse the whole normalised answer, not a piece of it.
    return "\\boxed{" + answer + "}"


def _parse_whole(answer: str) -> list[Any]:
    """math-verify's parse of the whole answer, or `[]` when its LaTeX parser rejects it.

    Only the LaTeX extraction: math-verify's default list adds an expression extractor
    that, when the LaTeX parse fails, takes a piece of the answer (`-[0,1)` parses as its
    last number, 1, and then matches `1`). An answer is judged whole or not at all.
    """
    from math_verify import LatexExtractionConfig, parse

    found = parse(_boxed(answer), [LatexExtractionConfig()], parsing_timeout=None)
    return found if any(not isinstance(x, str) for x in found) else []


@lru_cache(maxsize=4096)
def _parse_reference(reference: str) -> tuple[Any, ...]:
    return tuple(_parse_whole(reference))


def judge(reference: str, answer: str) -> Reason:
    """`match`, `mismatch`, or `parse_error` for two normalised answers.

    `parse_error` when math-verify's LaTeX parser reads either side only as a string (see
    `_parse_whole`).

    math-verify decides, except that a match between numbers must also hold relatively
    (`values_agree`): its rounding to 6 decimals and its absolute `chop` call 1/2^98 and
    1/2^99 equal.
    """
    from math_verify import verify

    gold = _parse_reference(reference)
    if not gold:
        return "parse_error"
    pred = _parse_whole(answer)
    if not pred:
        return "parse_error"
    same = verify(list(gold), pred, timeout_seconds=None)
    if same and "%" not in reference + answer:  # 50% = 50 is math-verify's percent rule
        same = values_agree(gold[0], pred[0])
    return "match" if same else "mismatch"


# Relative error allowed between matched numbers: none to speak of between exact values
# (60 digits are computed), 1e-5 when one side is a decimal (0.333333 for 1/3 passes, as
# math-verify's 6-decimal rule does, but 1.58e-30 for 3.16e-30 does not).
_EXACT_REL_TOL = 1e-40
_DECIMAL_REL_TOL = 1e-5
_DIGITS = 60


def values_agree(gold: Any, pred: Any) -> bool:
    """False when two parsed answers hold numbers that differ relatively, else True.

    Numbers, intervals, tuples, matrices and finite sets of numbers are compared element by
    element (sets in sorted order); anything else (expressions with variables, relations)
    is left to math-verify's verdict.
    """
    import sympy

    if isinstance(gold, sympy.Interval) and isinstance(pred, sympy.Interval):
        return values_agree(gold.start, pred.start) and values_agree(gold.end, pred.end)
    if isinstance(gold, sympy.FiniteSet) and isinstance(pred, sympy.FiniteSet):
        pairs = list(zip(_sorted(gold.args), _sorted(pred.args), strict=False))
        return len(gold) != len(pred) or all(values_agree(g, p) for g, p in pairs)
    if isinstance(gold, sympy.Tuple | sympy.MatrixBase) and isinstance(
        pred, sympy.Tuple | sympy.MatrixBase
    ):
        g_items, p_items = list(gold), list(pred)
        if len(g_items) != len(p_items):
            return True
        return all(values_agree(g, p) for g, p in zip(g_items, p_items, strict=True))
    if isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr):
        return _numbers_agree(gold, pred)
    return True


def _sorted(items: tuple[Any, ...]) -> list[Any]:
    try:
        return sorted(items, key=lambda x: complex(x.evalf(_DIGITS)).real)
    except (TypeError, ValueError, AttributeError):
        return list(items)


def _numbers_agree(gold: Any, pred: Any) -> bool:
    import sympy

    if not (gold.is_number and pred.is_number):
        return True
    try:
        g = gold.doit().evalf(_DIGITS)
        p = pred.doit().evalf(_DIGITS)
        if not (g.is_finite and p.is_finite):
            return True
        scale = sympy.Max(sympy.Abs(g), sympy.Abs(p))
        if scale == 0:
            return True
        exact = not (gold.atoms(sympy.Float) or pred.atoms(sympy.Float))
        tol = _EXACT_REL_TOL if exact else _DECIMAL_REL_TOL
        return bool(sympy.Abs(g - p) <= tol * scale)
    except (TypeError, ValueError, ArithmeticError, AttributeError):
        return True


# One pair per kind of answer: sympy imports its set, matrix, polynomial and relational
# machinery lazily, and a cold worker would pay for it (up to a second) on its first item.
_WARM_UP = [
    ("\\frac{1}{2}", "0.5"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("x^2-1", "(x-1)(x+1)"), ("[1,2)", "(1,2]"), ("\\{1,2\\}", "\\{2,1\\}"),
    ("(1,2)", "(2,1)"), ("y=2x+3", "y=3+2x"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)"),
    ("3+4i", "4i+3"), ("\\sin(\\frac{\\pi}{6})", "\\frac12"), ("\\text{odd}", "even"),
    ("(-\\infty,-2)\\cup(2,\\infty)", "x>2"), ("10!", "\\binom{5}{2}"), ("\\log_2 8", "e^2"),
]  # fmt: skip


_warm = False


def warm_up() -> None:
    """Import sympy and math-verify and judge one pair of each kind (see `_WARM_UP`).

    Once per process; a process forked from a warm one is warm.
    """
    global _warm
    if _warm:
        return
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for reference, answer in _WARM_UP:
        judge(reference, answer)
    _parse_reference.cache_clear()
    _warm = True
