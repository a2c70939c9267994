"""An external test suite run through the real service
(`pilot-commit bench verifier --agreement --suite PATH.jsonl`).

A suite is a JSONL file, one case a line:

    {"id": "numbers[3]", "response": "1,000.5", "reference": "1000.5", "expected": true,
     "task": "math", "options": {"match_types": ["latex", "expr"], "precision": 6}}

`response`, `reference` (strings) and `expected` (bool: the suite's verdict) are required;
`id` (default: the line number), `task` (default `math`) and `options` are optional.
`options` are the suite's math-verify settings, used only for the plain math-verify
column: `match_types` (`latex` and/or `expr`), `precision` (`float_rounding`, default 6),
`strict` (default true), `allow_set_relation_comp` (default false) and
`extraction: "parse-defaults"` (math-verify's `parse` defaults instead of `match_types`).
A response in which the service finds no answer by its own rules (no box, no answer
statement, no `####`: a bare answer such as `1,000.5` or `$x \\geq 5$`) is sent as
`\\boxed{response}`, as the suite's predictions are mostly bare answers and the service
needs a marker; any other response is sent as it is.

The service is started as a real process on loopback (as `bench.py` does), every case is
posted to `/v1/score`, and each verdict is compared with the suite's `expected` and with
plain math-verify under the suite's options (in worker processes: math-verify's alarms
need a process's main thread). Each disagreement with the suite is named by the rule of
docs/verifier.md that decides it (`SUITE_RULES`, first that applies), or `undecided`.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.verifier.agreement import UNDECIDED
from services.verifier.models import TASKS, ScoreItem, ScoreResult

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MATH = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)
_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{3,}(?![A-Za-z(])")
_DELIMITERS = re.compile(r"^\s*(?:\$\$|\$|\\\(|\\\[)(.*?)(?:\$\$|\$|\\\)|\\\])\s*$", re.DOTALL)


def is_prose(text: str) -> bool:
    """A word of three letters or more outside formulas and LaTeX commands (not glued to
    a digit before it or a bracket after it: `1orW(x)` is a formula's glue)."""
    return bool(_WORD.search(_COMMAND.sub(" ", _MATH.sub(" ", text))))


_CHUNK = 16  # cases per /v1/score request
_OPTION_KEYS = {"match_types", "precision", "strict", "allow_set_relation_comp", "extraction"}


@dataclass(frozen=True)
class SuiteCase:
    id: str
    response: str
    reference: str
    expected: bool
    task: str = "math"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def sent(self) -> str:
        """The response as posted: put in a box unless the service finds an answer in it."""
        from services.verifier.answers import extract_answer

        if extract_answer(self.response, self.task).text is not None:  # type: ignore[arg-type]
            return self.response
        return "\\boxed{" + self.response + "}"

    @property
    def boxed_prose(self) -> bool:
        """Prose that went into the box whole (the suite's answer is somewhere inside)."""
        return self.sent != self.response and is_prose(self.response)


@dataclass(frozen=True)
class SuiteOutcome:
    case: SuiteCase
    result: ScoreResult  # the service's verdict
    math_verify: bool  # plain math-verify under the suite's options
    math_verify_error: str = ""
    piece: bool = False  # math-verify parsed only a piece of a one-formula side

    @property
    def agrees(self) -> bool:
        return self.result.correct == self.case.expected


def load_suite(path: Path) -> list[SuiteCase]:
    """The cases of a suite file; ValueError naming the line for a malformed case."""
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: a case is a JSON object")
        for key, kind in (("response", str), ("reference", str), ("expected", bool)):
            if not isinstance(row.get(key), kind):
                raise ValueError(f"{path}:{number}: `{key}` must be a {kind.__name__}")
        task = row.get("task", "math")
        if task not in TASKS:
            raise ValueError(f"{path}:{number}: unknown task {task!r} (one of {TASKS})")
        options = row.get("options", {})
        if not isinstance(options, dict) or set(options) - _OPTION_KEYS:
            raise ValueError(f"{path}:{number}: `options` keys are {sorted(_OPTION_KEYS)}")
        cases.append(
            SuiteCase(
                str(row.get("id", number)), row["response"], row["reference"],
                row["expected"], task, options,
            )
        )  # fmt: skip
    return cases


# ------------------------------------------------------------------ worker side


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _piece(text: str, parsed: list[Any]) -> bool:
    """math-verify's parse of a one-formula text matched only a part of the formula."""
    if is_prose(text) or _BOX.search(text) or not parsed or not isinstance(parsed[-1], str):
        return False
    found = _DELIMITERS.match(text)
    formula, matched = _squash(found.group(1) if found else text), _squash(parsed[-1])
    return len(matched) < len(formula) and matched in formula


def suite_math_verify(case: SuiteCase) -> tuple[bool, str, bool]:
    """math-verify on the case as the suite runs it (its options), and whether it parsed
    only a piece of the reference or the response (`_piece`); runs in a worker."""
    import logging

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    opts = case.options
    try:
        if opts.get("extraction") == "parse-defaults":
            gold, answer = parse(case.reference), parse(case.response)
        else:
            configs: list[LatexExtractionConfig | ExprExtractionConfig] = []
            for kind in opts.get("match_types", ["latex", "expr"]):
                configs.append(
                    LatexExtractionConfig(boxed_match_priority=0)
                    if kind == "latex"
                    else ExprExtractionConfig()
                )
            gold, answer = parse(case.reference, configs), parse(case.response, configs)
        verdict = verify(
            gold,
            answer,
            float_rounding=int(opts.get("precision", 6)),
            strict=bool(opts.get("strict", True)),
            allow_set_relation_comp=bool(opts.get("allow_set_relation_comp", False)),
        )
        piece = _piece(case.reference, gold) or _piece(case.response, answer)
        return bool(verdict), "", piece
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:120], False


def plain_verdicts(cases: list[SuiteCase], workers: int = 2) -> list[tuple[bool, str, bool]]:
    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(suite_math_verify, cases, chunksize=8))


# ---------------------------------------------------------------- documented rules


def _option(name: str, default: object) -> Callable[[SuiteOutcome], bool]:
    return lambda o: o.case.options.get(name, default) != default


def _boxes(text: str) -> int:
    return len(_BOX.findall(text))


def _box_then_statement(o: SuiteOutcome) -> bool:
    at = o.case.sent.rfind("\\boxed")
    return (
        o.result.reason == "mismatch"
        and at >= 0
        and bool(re.search(r"(?i)answer\s*(?:is|:)", o.case.sent[at:]))
    )


_DECIMAL_COMMA = re.compile(r"(?<![\d.])\d+,\d+(?![\d.])")


def _broken_reference(o: SuiteOutcome) -> bool:
    from services.verifier.answers import last_boxed

    return bool(_BOX.search(o.case.reference)) and last_boxed(o.case.reference) is None


def _decimal_comma(o: SuiteOutcome) -> bool:
    sides = (o.case.response, o.case.reference)
    return not o.result.correct and any(_DECIMAL_COMMA.search(side) for side in sides)


def _coarser_rounding(o: SuiteOutcome) -> bool:
    return not o.result.correct and int(o.case.options.get("precision", 6)) < 6


# (rule as docs/verifier.md states it, test). First match decides: the suite's options
# first, then which answer decides, then how answers compare.
SUITE_RULES: list[tuple[str, Callable[[SuiteOutcome], bool]]] = [
    ("suite option the service does not have: strict=false", _option("strict", True)),
    (
        "suite option the service does not have: allow_set_relation_comp",
        _option("allow_set_relation_comp", False),
    ),
    (
        "an answer needs a marker (math-verify searches prose without one)",
        lambda o: o.result.reason == "no_answer" or o.case.boxed_prose,
    ),
    ("timeout: the per-item limit ran out (not a verdict)", lambda o: o.result.reason == "timeout"),
    ("a box beats an answer statement", _box_then_statement),
    (
        "last box decides (of the response and of the reference)",
        lambda o: _boxes(o.case.sent) >= 2 or _boxes(o.case.reference) >= 2,
    ),
    ("a reference with a broken box is taken as written", _broken_reference),
    (
        "answer statements give their final value",
        lambda o: _boxes(o.case.sent) == 0 and o.result.reason == "mismatch",
    ),
    ("a decimal against an exact value: 6 decimals and 1e-5 relative", _coarser_rounding),
    ("a comma is never a decimal point", _decimal_comma),
    ("an answer is judged whole (math-verify's verdict rests on a piece of it)", lambda o: o.piece),
]


def suite_rule(outcome: SuiteOutcome) -> str:
    for rule, applies in SUITE_RULES:
        if applies(outcome):
            return rule
    return UNDECIDED


# ------------------------------------------------------------------------ driver


async def _score(url: str, cases: list[SuiteCase]) -> list[ScoreResult]:
    from services.verifier.client import VerifierClient

    items = [ScoreItem(response=c.sent, reference=c.reference, task=c.task) for c in cases]
    results: list[ScoreResult] = []
    async with VerifierClient(url, timeout=660.0) as client:  # past any request_timeout_s
        # One small request after another: a suite is mostly symbolic work, and a request
        # holding all of it would run into request_timeout_s, not into the per-item limit.
        for start in range(0, len(items), _CHUNK):
            results += await client.score(items[start : start + _CHUNK])
    return results


def score_through_service(cases: list[SuiteCase]) -> list[ScoreResult]:
    """Start `verifier serve` on loopback (default settings), post every case, stop it."""
    from services.common.procs import free_port, start_service

    with tempfile.TemporaryDirectory(prefix="verifier-suite-") as logs:
        port = free_port()
        proc = start_service("verifier", ["verifier", "serve"], port=port, log_dir=Path(logs))
        try:
            return asyncio.run(_score(f"http://127.0.0.1:{port}", cases))
        finally:
            proc.stop()


def judge_suite(cases: list[SuiteCase], workers: int = 2) -> list[SuiteOutcome]:
    results = score_through_service(cases)
    plain = plain_verdicts(cases, workers)
    return [
        SuiteOutcome(case, result, verdict, error, piece)
        for case, result, (verdict, error, piece) in zip(cases, results, plain, strict=True)
    ]


def suite_report(outcomes: list[SuiteOutcome]) -> tuple[dict[str, Any], str]:
    """Figures (cases, agreements, disagreements with their rules) and a printable report."""
    found = [(o, suite_rule(o)) for o in outcomes if not o.agrees]
    plain_agrees = sum(o.math_verify == o.case.expected for o in outcomes)
    lines = [
        f"suite: {len(outcomes)} cases; the service agrees with the suite on "
        f"{len(outcomes) - len(found)}, plain math-verify (the suite's options) on "
        f"{plain_agrees}; {len(found)} disagreements of the service"
    ]
    for rule, count in Counter(rule for _, rule in found).most_common():
        lines.append(f"  {count:3d}  {rule}")
    rows = []
    for o, rule in found:
        r = o.result
        lines.append(
            f"- [{rule}] {o.case.id}: response={o.case.sent[-80:]!r} "
            f"reference={o.case.reference[-60:]!r}: suite {o.case.expected}, service "
            f"{r.correct} ({r.reason}, extracted {r.extracted!r}), math-verify {o.math_verify}"
        )
        rows.append(
            {"id": o.case.id, "rule": rule, "response": o.case.sent, "reference": o.case.reference,
             "expected": o.case.expected, "service": r.correct, "reason": r.reason,
             "extracted": r.extracted, "math_verify": o.math_verify}
        )  # fmt: skip
    figures = {
        "cases": len(outcomes),
        "agreements": len(outcomes) - len(found),
        "math_verify_agreements": plain_agrees,
        "rules": dict(Counter(rule for _, rule in found).most_common()),
        "disagreements": rows,
    }
    return figures, "\n".join(lines)


def run_suite(path: Path, json_path: Path | None = None) -> int:
    """The CLI entry: prints the report (and writes the figures to `json_path`); 0."""
    cases = load_suite(path)
    print(f"scoring {len(cases)} cases of {path} through the service ...", file=sys.stderr)
    figures, text = suite_report(judge_suite(cases))
    print(text)
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
    return 0
