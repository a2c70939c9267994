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


@lru_cache(maxsize=4096)
def _parse_reference(reference: str) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(parse(_boxed(reference), parsing_timeout=None))


def judge(reference: str, answer: str) -> Reason:
    """`match`, `mismatch`, or `parse_error` for two normalised answers."""
    from math_verify import parse, verify

    gold = _parse_reference(reference)
    if not gold:
        return "parse_error"
    pred = parse(_boxed(answer), parsing_timeout=None)
    if not pred:
        return "parse_error"
    same = verify(list(gold), pred, timeout_seconds=None)
    return "match" if same else "mismatch"


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
