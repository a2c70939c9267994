"""Agreement of the verifier with plain math-verify, case by case, with the reason for each
difference (`pilot-commit bench verifier --agreement`).

For every case of the project's tables (`tests/verifier/cases.py`,
`tests/verifier/regressions.py`) two verdicts are computed:
- the project's: the pure core (extraction, normalisation, fast path) and `symbolic.judge`,
  as `tests/verifier/test_table.py` does;
- plain math-verify's: `parse` on the response as it is, `parse` on the reference (boxed
  unless it already holds a box), then `verify`, with math-verify's default settings.
Both run in worker processes: math-verify's timeouts use `signal.alarm`, which needs the
main thread of a process (see `pool.py`), and a worker keeps sympy off this process.

Each disagreement gets the documented rule of docs/verifier.md that decides it, found by
the checks in `RULES` (first that applies). A disagreement no rule explains is reported
as `UNDECIDED`: a finding, not a decision.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

UNDECIDED = "undecided"


@dataclass(frozen=True)
class Item:
    source: str  # "cases" or "regressions:<kind>"
    response: str
    reference: str
    task: str


@dataclass(frozen=True)
class Outcome:
    item: Item
    project: bool
    project_reason: str
    extracted: str | None  # the project's extracted answer
    math_verify: bool
    math_verify_error: str = ""

    @property
    def agrees(self) -> bool:
        return self.project == self.math_verify


@dataclass(frozen=True)
class Disagreement:
    outcome: Outcome
    rule: str  # a rule of docs/verifier.md, or UNDECIDED


def table_items() -> list[Item]:
    """Every case of the verdict table and of the regression corpus."""
    root = str(Path(__file__).resolve().parents[2])  # the tables live in the repo's tests/
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.verifier.cases import all_cases
    from tests.verifier.regressions import REGRESSIONS

    items = [Item("cases", c.response, c.reference, c.task) for c in all_cases()]
    items += [Item(f"regressions:{r.kind}", r.response, r.reference, r.task) for r in REGRESSIONS]
    return items


# ------------------------------------------------------------------ worker side


def _project(item: Item) -> tuple[bool, str, str | None]:
    from services.verifier import answers
    from services.verifier.symbolic import judge

    task = item.task
    found = answers.extract_answer(item.response, task)  # type: ignore[arg-type]
    if found.text is None:
        return False, "no_answer", None
    reference = answers.normalize(answers.extract_reference(item.reference, task))  # type: ignore[arg-type]
    answer = answers.normalize(found.text)
    fast = answers.fast_verdict(reference, answer, task)  # type: ignore[arg-type]
    if fast is not None:
        return fast.correct, fast.reason, found.text
    reason = judge(reference, answer)
    return reason == "match", reason, found.text


def plain_math_verify(response: str, reference: str) -> bool:
    """math-verify as its README uses it, default settings (alarms on: main thread only)."""
    from math_verify import parse, verify

    gold_text = reference if "\\boxed" in reference else "\\boxed{" + reference + "}"
    gold = parse(gold_text)
    answer = parse(response)
    return bool(gold) and bool(answer) and bool(verify(gold, answer))


def _judge_both(item: Item) -> Outcome:
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" notes
    try:
        project, reason, extracted = _project(item)
    except Exception as exc:  # reported as the project's verdict; the table tests catch it
        project, reason, extracted = False, f"error: {type(exc).__name__}", None
    error = ""
    try:
        plain = plain_math_verify(item.response, item.reference)
    except Exception as exc:
        plain, error = False, f"{type(exc).__name__}: {exc}"[:120]
    return Outcome(item, project, reason, extracted, plain, error)


# ---------------------------------------------------------------- documented rules

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _boxes(text: str) -> int:
    return len(_BOX.findall(text))


def _is_table(o: Outcome, kind: str) -> bool:
    return o.item.source == f"regressions:{kind}"


def _last_answer_broken(o: Outcome) -> bool:
    return o.project_reason == "no_answer" and _broken_marker(o.item.response)


def _broken_marker(response: str) -> bool:
    from services.verifier.answers import _last_answer_broken as broken

    return bool(broken(response))


def _needs_marker(o: Outcome) -> bool:
    return o.project_reason == "no_answer" and o.item.task in ("math", "choice")


def _last_box(o: Outcome) -> bool:
    return _boxes(o.item.response) >= 2


def _percent(o: Outcome) -> bool:
    return "%" in o.item.response + o.item.reference


def _e_notation(o: Outcome) -> bool:
    return bool(re.search(r"\d[eE][-+]?\d", (o.extracted or "") + o.item.reference))


def _grouped(o: Outcome) -> bool:
    sides = (o.extracted or "", o.item.reference)
    return any(re.search(r"\d(?:,\\! ?|\{,\} ?|\\, ?|\\ | |,)\d{3}", side) for side in sides)


def _decimal_comma(o: Outcome) -> bool:
    sides = (o.extracted or "", o.item.reference)
    return not o.project and any(re.search(r"(?<![\d.])\d+,\d+(?![\d.])", side) for side in sides)


def _exact_values(o: Outcome) -> bool:
    # The project says different where math-verify's tolerances call them equal.
    return (
        o.math_verify
        and not o.project
        and o.project_reason == "mismatch"
        and (_is_table(o, "exact values: no tolerance hides a difference"))
    )


def _equations(o: Outcome) -> bool:
    return "=" in (o.extracted or "") + o.item.reference and (
        _is_table(o, "equations compare as equations")
    )


def _statement(o: Outcome) -> bool:
    return _boxes(o.item.response) == 0 and bool(
        re.search(r"(?i)answer\s*(?:is|:)", o.item.response)
    )


def _task(name: str) -> Callable[[Outcome], bool]:
    return lambda o: o.item.task == name


# (rule as docs/verifier.md states it, test). First match decides; order: the answer's
# extraction first (which answer decides), then comparison rules, then the task's.
RULES: list[tuple[str, Callable[[Outcome], bool]]] = [
    ("last answer decides: a broken last answer is no answer", _last_answer_broken),
    ("last box decides", lambda o: _last_box(o) and o.item.task != "choice"),
    ("choice: a letter only where a choice is stated", _task("choice")),
    ("an answer needs a marker (box, answer statement, ####)", _needs_marker),
    ("exact task: normalised strings, case-sensitive", _task("exact")),
    ("percent: either reading is accepted", _percent),
    (
        "normalisation: degree signs",
        lambda o: "°" in o.item.response or "^\\circ" in o.item.response,
    ),
    ("a box is \\boxed{} or \\fbox{}", lambda o: "\\fbox" in o.item.response),
    ("exact values compare exactly", _exact_values),
    ("equations compare as equations", _equations),
    (
        "an answer is judged whole",
        lambda o: _is_table(o, "an answer is judged whole, never by a piece of it"),
    ),
    ("a comma is never a decimal point", _decimal_comma),
    ("thousands separators are one number", _grouped),
    ("plain numbers include e notation", _e_notation),
    ("numeric task: the stated or last number of the response", _task("numeric")),
    ("leading_number task: the number the completion starts with", _task("leading_number")),
    ("answer statements give their final value", _statement),
]


def rule_for(outcome: Outcome) -> str:
    for rule, applies in RULES:
        if applies(outcome):
            return rule
    return UNDECIDED


# ------------------------------------------------------------------------ driver


def judge_all(items: Iterable[Item], workers: int = 2) -> list[Outcome]:
    """Both verdicts for every item, in worker processes (forkserver: no inherited state)."""
    items = list(items)
    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(_judge_both, items, chunksize=8))


def disagreements(outcomes: Iterable[Outcome]) -> list[Disagreement]:
    return [Disagreement(o, rule_for(o)) for o in outcomes if not o.agrees]


def report(outcomes: list[Outcome]) -> tuple[float, list[Disagreement], str]:
    """Agreement rate, the disagreements with their rules, and a printable report."""
    found = disagreements(outcomes)
    rate = 1 - len(found) / len(outcomes) if outcomes else 1.0
    lines = [
        f"agreement with plain math-verify: {len(outcomes) - len(found)}/{len(outcomes)} "
        f"cases ({rate:.1%}); {len(found)} disagreements"
    ]
    for rule, count in Counter(d.rule for d in found).most_common():
        lines.append(f"  {count:3d}  {rule}")
    for d in found:
        o = d.outcome
        lines.append(
            f"- [{d.rule}] {o.item.source} task={o.item.task} "
            f"response={o.item.response[-70:]!r} reference={o.item.reference!r}: "
            f"project {o.project} ({o.project_reason}, extracted {o.extracted!r}), "
            f"math-verify {o.math_verify}{' ' + o.math_verify_error if o.math_verify_error else ''}"
        )
    return rate, found, "\n".join(lines)
