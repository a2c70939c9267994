"""Answer extraction, normalisation and the fast equivalence checks, free of I/O.

This is the pure core of the verifier: everything here is cheap and linear in the
length of its input, so the service can run it on every item of a batch in the
request handler. What it cannot decide (two different-looking LaTeX expressions that
may be equal) it hands back as `None`, and the service asks the symbolic checker
(`symbolic.py`, math-verify in worker processes) only for those.

Task kinds and where their answer comes from (first rule that applies wins):
- `math`: the last `\\boxed{}`/`\\fbox{}`, else "the answer is ...", else GSM8K `####`.
- `numeric`: the last box, else `####`, else the answer statement ("the answer is ...",
  "Answer: ..." with its statement value), else the last number in the response: a real
  model's `3 + 5 = 8.` answers 8. Numbers are read whole: a fraction is one number
  (`\\frac{1}{2}`, `3/4`), an exponent or index none (`25 cm^2` answers 25). Compared as
  numbers with a tolerance; never symbolic.
  An answer that is not a number gives the result of its chain of arithmetic (`3+5=8`)
  or, in prose, its last number (`18 bananas`); a formula (`2^{10}`, `2x=8`) is judged
  whole and is no number, never read by its last piece.
- `leading_number`: the number the completion starts with, and nothing else (what follows
  is ignored, markers included). Only for a model trained to answer that way, like the
  tiny arithmetic task (`12+345=` -> `357<junk>`). Compared as `numeric` compares.
- `exact`: the last box, else "the answer is ...", else the whole response; compared as
  strings after normalisation. The whole response is the answer only of a reply that is
  nothing else (`cat`, `Paris.`): a real model's `The word is cat.` is compared whole and
  does not match `cat`. Kept: it never calls a wrong answer right, and no rule reads a
  string out of every sentence (`The word is cat.`, `Cat is the word.`); prompt a chat
  model for a box or `Answer:`.
- `choice`: a multiple-choice letter A-J from the box, "the answer is (B)", a lone
  letter at the end of the response (`B`, `I pick D`), or `(C)` where it is the only
  letter the response names in brackets. The lone letter at the end is kept: it is how a
  bare reply (`B`, `**B**`) and a sentence ending on its choice (`I pick D`) are read, and
  a box or answer statement decides before it; but a response ending on a letter it does
  not choose (`... so rule out A`, `vitamin C`) is read as choosing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from services.verifier import evaluate

Task = Literal["math", "numeric", "leading_number", "exact", "choice"]
Reason = Literal[
    "match", "mismatch", "no_answer", "parse_error", "too_complex", "timeout", "worker_error"
]

# Numbers longer than this, or exponents past this, are not materialised as Fractions:
# `Fraction("1e999999999")` alone would take minutes.
_MAX_NUMBER_DIGITS = 400
_MAX_EXPONENT = 400


@dataclass(frozen=True)
class Extraction:
    """The answer found in a response and the rule that found it."""

    text: str | None
    source: Literal[
        "boxed", "hashes", "answer_is", "leading", "last_number", "whole", "letter", "none"
    ]

    @property
    def boxed(self) -> bool:
        return self.source == "boxed"


@dataclass(frozen=True)
class Verdict:
    """What the fast path decided about one (reference, answer) pair."""

    correct: bool
    reason: Reason


# ---------------------------------------------------------------- extraction


def sanitize(text: str) -> str:
    """Replace lone surrogates (valid in JSON strings, invalid in UTF-8) with '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _box_start(text: str) -> int:
    """Index just past the last `\\boxed`/`\\fbox` command, or -1."""
    best = -1
    for command in ("\\boxed", "\\fbox"):
        at = text.rfind(command)
        if at >= 0:
            best = max(best, at + len(command))
    return best


def _balanced(text: str, start: int) -> str | None:
    """Content of the `{...}` group opening at `start`; None if it never closes.

    Iterative on purpose: 10,000 nested braces must not reach a recursion limit.
    `\\{` and `\\}` are literal braces in LaTeX and do not count.
    """
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` (nested braces allowed)."""
    at = _box_start(text)
    if at < 0:
        return None
    rest = text[at : at + 2].lstrip()
    if rest.startswith("{"):
        return _balanced(text, text.index("{", at))
    # `\boxed 5`: the argument is the next token.
    token = re.match(r"\s+([^\s$]+)", text[at : at + 200])
    return token.group(1) if token else None


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    found = None
    for found in pattern.finditer(text):  # noqa: B007 (keeping the last one is the point)
        pass
    return found


_ANSWER_IS = re.compile(r"(?i)answer\s*(?:is|:)\s*\**:?\s*")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")


def after_answer_is(text: str) -> str | None:
    """What follows the last "answer is"/"Answer:", up to the end of that sentence."""
    last = _last_match(_ANSWER_IS, text)
    if last is None:
        return None
    rest = text[last.end() : last.end() + 500]
    end = _SENTENCE_END.search(rest)
    answer = (rest[: end.start()] if end else rest).strip().strip("*").strip()
    return answer or None


_MATH_SEGMENT = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_COPULA = re.compile(r"(?i)\b(?:is|are|was|were|equals|becomes)\b|=")


def statement_value(statement: str) -> str:
    """The value an answer statement gives: `The largest $n$ is 34` -> `34`.

    A statement without prose is the answer as it stands. In prose, the value follows the
    last copula ("is", "equals", "=") outside formulas; of what follows, the last formula
    (`$...$`, `\\(...\\)`) when there is one (`It is $\\sqrt{2}$ meters`).
    """
    masked = _MATH_SEGMENT.sub(lambda m: "$" + "#" * (len(m.group(0)) - 2) + "$", statement)
    if not _PROSE_WORD.search(masked.replace("$", " ")):
        return statement
    copula = _last_match(_COPULA, masked)
    rest = statement[copula.end() :] if copula else statement
    formula = _last_match(_MATH_SEGMENT, rest)
    if formula is not None:
        return (formula.group(1) or formula.group(2)).strip()
    return rest.strip() or statement


def after_hashes(text: str) -> str | None:
    """GSM8K's final line: what follows the last `####`."""
    at = text.rfind("####")
    if at < 0:
        return None
    answer = text[at + 4 :].strip().split("\n", 1)[0].strip()
    return answer or None


# Thousands separators as MATH (`10,\\!000`, also with a space after it), NuminaMath
# (`10{,}000`, `10\\,000`, `10\\ 000`) and GSM8K (`10,000`) write them. A first group
# of 1-3 digits, not starting with 0 (`0,111` is not a grouped number), then groups of
# exactly 3.
_GROUP_SEPARATOR = r"(?:,\\! ?|\{,\} ?|\\, ?|\\! ?|\\ |,)"
_FIRST_GROUP = r"[1-9]\d{0,2}"
_NUMBER_TOKEN = re.compile(
    rf"-?(?:{_FIRST_GROUP}(?:{_GROUP_SEPARATOR}\d{{3}})+(?!\d)|\d+)(?:\.\d+)?"
)
_LEADING_NUMBER = re.compile(rf"\s*({_NUMBER_TOKEN.pattern})")
# The same without the bare comma, which inside an expression may separate list items, and
# with a plain space, which TeX ignores in math (`$1 000$` is typeset as 1000); not after
# `^` or `_` (`x^2 100` is x squared times 100).
_LATEX_GROUPED = re.compile(
    rf"(?<![\d.^_]){_FIRST_GROUP}(?:(?:,\\! ?|\{{,\}} ?|\\, ?|\\! ?|\\ | )\d{{3}})+(?![\d])"
)


def ungroup(number: str) -> str:
    """`10,\\!000` -> `10000`: a grouped number without its separators."""
    return re.sub(r"[^\d.\-]", "", number)


def leading_number(text: str) -> str | None:
    """A number the response starts with (the tiny task: `357` then junk)."""
    found = _LEADING_NUMBER.match(text)
    return found.group(1) if found else None


# The numbers of a sentence, read whole: a fraction is one number (`\frac{1}{2}`, `3/4`),
# and an exponent or index is none (`25 cm^2`, `x_1`, `10^{-3}`).
_SCRIPT = re.compile(r"[\^_](?:\{[^{}]*\}|-?\d+(?:\.\d+)?|[A-Za-z])")
_FRACTION_ARGUMENT = r"(?:\{-?\d+\}|\d)"
_QUANTITY = re.compile(
    rf"-?\\[dt]?frac\s*{_FRACTION_ARGUMENT}\s*{_FRACTION_ARGUMENT}"
    rf"|-?\d+/\d+(?![\d/])|{_NUMBER_TOKEN.pattern}"
)


def last_number(text: str) -> str | None:
    """The last number `text` states: `The area is 25 cm^2.` -> `25`, `is $\\frac{1}{2}$`
    -> `\\frac{1}{2}`, never a piece of a fraction or an exponent."""
    found = _last_match(_QUANTITY, _SCRIPT.sub(" ", text))
    return found.group(0) if found else None


# A stated choice: the letter opens the box or the answer statement, bracketed (`(C) 12`)
# or followed by nothing, punctuation, a number or a word (`D because ...`), never by an
# operator or a command (`E = mc^2`, `H \\ll \\Delta E`, `A + B` are formulas).
_STATED_CHOICE = re.compile(
    r"^\s*(?:[(\[]([A-J])[)\]]|([A-J])(?=\s*$|[.:,;)]|\s+(?:\d|[A-Za-z]{2,})))"
)
# A letter alone at the end, after a word or a colon, not after an operator (`I < B`).
_TRAILING_CHOICE = re.compile(r"(?:^|[A-Za-z:*]\s+|[:*(])\(?([A-J])\)?[\s.)*]*$")
# `(C)` anywhere, but not a function's argument or a sub/superscript: `f(B)`, `x_(A)`.
# It answers only when it is the one letter the response names so.
_PARENTHESISED_CHOICE = re.compile(r"(?<![\w\\^_])\(([A-J])\)")
_CHOICE_NOISE = re.compile(r"\$|\*\*|\\[,;:! ]|\\q?quad\b|~")


def stated_choice(text: str) -> str | None:
    """The letter `text` states as its choice (`B`, `(B)`, `\\text{(B)} 12`), else None."""
    match = _STATED_CHOICE.match(_CHOICE_NOISE.sub(" ", _strip_text_macros(text)))
    return (match.group(1) or match.group(2)) if match else None


def _choice(text: str) -> Extraction:
    for source, found in (("boxed", last_boxed(text)), ("answer_is", after_answer_is(text))):
        letter = stated_choice(found) if found is not None else None
        if letter:
            return Extraction(letter, source)  # type: ignore[arg-type]
    tail = _TRAILING_CHOICE.search(text[-200:])
    if tail:
        return Extraction(tail.group(1), "letter")
    # A response that weighs the options names several (`(B), since (A) and (C) fail`):
    # the last one named is no more its choice than the first.
    named = {found.group(1) for found in _PARENTHESISED_CHOICE.finditer(text)}
    return Extraction(named.pop(), "letter") if len(named) == 1 else Extraction(None, "none")


def _last_answer_broken(text: str) -> bool:
    """True when the last answer marker of `text` holds no answer: a `\\boxed{` that never
    closes or is empty, or an "answer is" / "Answer:" / `####` with nothing after it.

    The last answer a response gives is its answer; one it was abandoning mid-way is no
    answer, and an earlier one it had moved on from does not count instead.
    """
    box = _box_start(text)
    statement = _last_match(_ANSWER_IS, text)
    hashes = text.rfind("####")
    last = max(box, statement.start() if statement else -1, hashes)
    if last < 0:
        return False
    if last == box:
        found = last_boxed(text)
        return found is None or not found.strip()
    if last == hashes:
        return after_hashes(text) is None
    return after_answer_is(text) is None


def extract_answer(response: str, task: Task) -> Extraction:
    """The final answer in a model response, by the rules of `task` (see module doc)."""
    if task == "leading_number":
        # What follows the answer is the model's junk, markers included.
        found = leading_number(response)
        return Extraction(found, "leading") if found else Extraction(None, "none")
    if _last_answer_broken(response):
        return Extraction(None, "none")
    if task == "choice":
        return _choice(response)
    rules: list[tuple[str, str | None]]
    stated = after_answer_is(response)
    stated = statement_value(stated) if stated is not None else None
    if task == "numeric":
        rules = [("boxed", last_boxed(response)), ("hashes", after_hashes(response)),
                 ("answer_is", stated), ("last_number", last_number(response))]  # fmt: skip
    elif task == "exact":
        rules = [("boxed", last_boxed(response)), ("answer_is", stated),
                 ("whole", response.strip() or None)]  # fmt: skip
    else:
        rules = [("boxed", last_boxed(response)), ("answer_is", stated),
                 ("hashes", after_hashes(response))]  # fmt: skip
    for source, found in rules:
        if found is not None and found.strip():
            return Extraction(found.strip(), source)  # type: ignore[arg-type]
    return Extraction(None, "none")


def extract_reference(reference: str, task: Task) -> str:
    """The gold answer: a bare answer, or the last box / `####` of a full solution."""
    if task == "choice":
        return _choice(reference).text or reference.strip()
    for found in (last_boxed(reference), after_hashes(reference)):
        if found is not None and found.strip():
            return found.strip()
    return reference.strip()


# ------------------------------------------------------------- normalisation

_UNIT_WORDS = (
    "cm|mm|km|m|meters?|metres?|inches|inch|in|feet|foot|ft|yards?|miles?|units?|"
    "dollars?|cents?|degrees?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|"
    "months?|years?|kg|g|grams?|pounds?|lbs?|ounces?|oz|liters?|litres?|ml|mph|sq|square|"
    "cubic|people|students|apples|points|pages|marbles|cookies|eggs"
)
_NUM = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_TRAILING_UNITS = re.compile(rf"^({_NUM})\s*(?:(?:{_UNIT_WORDS})\b\s*)+(?:\^?\{{?[23]\}}?)?$")
_TEXT_UNIT = re.compile(rf"^({_NUM})\s*\\(?:text|mbox|mathrm)\{{[^{{}}]*\}}(?:\^\{{?[23]\}}?)?$")
_TEXT_MACRO = re.compile(r"\\(?:text|textbf|mbox|mathrm|textnormal|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"(?<!\\)\\[,;:!> ]|\\q?quad\b|~")
# math-verify reads `\sin 30^\circ` as sin(30 radians); spell the degrees out first.
_TRIG_DEGREES = re.compile(
    r"(\\(?:sin|cos|tan|cot|sec|csc))\s*\(?\s*(-?\d+(?:\.\d+)?)\s*\^\s*\{?\\circ\}?\s*\)?"
)
_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?=\S)")
_THOUSANDS = re.compile(rf"^-?{_FIRST_GROUP}(?:,\d{{3}})+(?:\.\d+)?$")
_OPERATOR_SPACES = re.compile(r"\s*([=+\-*/^_(){}\[\]<>|])\s*")
# One spelling for list commas, with the space that tells "-102, 102" from a number.
_COMMA = re.compile(r"\s*,\s*")

_LITERAL_REPLACEMENTS = (
    ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
    ("\\displaystyle", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("°", ""),
    ("\\$", ""), ("$", ""), ("\\%", "%"), ("\\le ", "\\leq "), ("\\ge ", "\\geq "),
)  # fmt: skip


def _strip_text_macros(text: str) -> str:
    previous = None
    while previous != text:  # nested \text{\textbf{...}}
        previous, text = text, _TEXT_MACRO.sub(r"\1", text)
    return text


# Letters that are constants, not variables: Euler's number and the imaginary unit.
_VARIABLE = re.compile(r"[a-df-hj-zA-Z]")
_COMMAND = re.compile(r"\\[a-zA-Z]+")


def _strip_assignment(text: str) -> str:
    """`x = 5` -> `5`, but `y = 2x + 3` stays: an equation with a variable on the right is
    a relation (a line), and the bare `2x + 3` would be another answer."""
    found = _ASSIGNMENT.match(text)
    if found is None or text.count("=") != 1:
        return text
    value = text[found.end() :]
    return text if _VARIABLE.search(_COMMAND.sub("", value)) else value


def _short_frac(text: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac{a}2` -> `\\frac{a}{2}`, `\\sqrt2` -> `\\sqrt{2}`."""
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", text)
    text = re.sub(r"\\frac\s*(\d)\s*(\{)", r"\\frac{\1}\2", text)
    return re.sub(r"\\sqrt\s*(\d+)", r"\\sqrt{\1}", text)


def normalize(answer: str) -> str:
    """A canonical spelling of an answer: same value, same string, most of the time.

    Only rewrites that never change the value: macros for spacing and size, `$`,
    units after a number, `\\text{}` wrappers, thousands separators, degree signs, a
    trailing period, `x = ` in front of a single value (not of an expression in other
    variables: `y = 2x + 3` is an equation and stays one). A percent sign is kept (as `%`)
    because 50% may mean 50 or 0.5; the comparison decides.
    """
    text = _LATEX_GROUPED.sub(lambda m: ungroup(m.group(0)), sanitize(answer).strip())
    text = _TRIG_DEGREES.sub(r"\1(\\frac{\2\\pi}{180})", text)
    for old, new in _LITERAL_REPLACEMENTS:
        text = text.replace(old, new)
    text = _SPACING.sub(" ", text)
    unit = _TEXT_UNIT.match(text.strip())
    text = unit.group(1) if unit else _strip_text_macros(text)
    text = " ".join(text.split()).strip().rstrip(".").strip()
    unit = _TRAILING_UNITS.match(text)
    text = unit.group(1) if unit else text
    text = _strip_assignment(text)
    # Before spaces go: "1,000" is a thousand, "-102, 102" is a list of two numbers.
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    return _COMMA.sub(", ", _OPERATOR_SPACES.sub(r"\1", _short_frac(text)))


# ------------------------------------------------------------------ numbers

_PLAIN = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?$", re.IGNORECASE)
_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_SLASH = re.compile(r"^(-?\d+)/(\d+)$")
_SCIENTIFIC = re.compile(rf"^({_NUM})\s*(?:\\times|\\cdot|\*)\s*10\^(?:\{{(-?\d+)\}}|(-?\d))$")


def _plain_number(text: str) -> Fraction | None:
    if not _PLAIN.match(text) or len(text) > _MAX_NUMBER_DIGITS:
        return None
    exponent = re.search(r"[eE]([+-]?\d+)$", text)
    if exponent and abs(int(exponent.group(1))) > _MAX_EXPONENT:
        return None
    return Fraction(text)


def parse_number(text: str) -> Fraction | None:
    """The exact value of a normalised answer that is a plain number, else None.

    Accepts integers, decimals, `1.5e3`, `1.5\\times10^{3}`, `\\frac{a}{b}`, `a/b`, and a
    trailing `%` (returned as written: 50% -> 50; see `numbers_equal`).
    """
    text = text.removesuffix("%")
    if len(text) > _MAX_NUMBER_DIGITS:
        return None
    if (plain := _plain_number(text)) is not None:
        return plain
    if found := _FRAC.match(text):
        sign, num, den = found.groups()
        value = Fraction(int(num), int(den)) if int(den) else None
        return -value if value is not None and sign else value
    if (found := _SLASH.match(text)) and int(found.group(2)):
        return Fraction(int(found.group(1)), int(found.group(2)))
    if (found := _SCIENTIFIC.match(text)) and abs(int(found.group(2) or found.group(3))) <= 400:
        return Fraction(found.group(1)) * Fraction(10) ** int(found.group(2) or found.group(3))
    return None


def _candidates(text: str, value: Fraction) -> list[Fraction]:
    # "50%" is 50 in MATH-style answers and 0.5 as a quantity; accept either reading.
    return [value, value / 100] if text.endswith("%") else [value]


def numbers_close(a: Fraction, b: Fraction, rel_tol: float, abs_tol: float = 0.0) -> bool:
    """`|a - b| <= max(rel_tol * max(|a|, |b|), abs_tol)`, in exact arithmetic.

    As `math.isclose`, without the float conversion: `1e-30` and `2e-30` are far apart
    relatively, and `1e399` has no float. The verifier's own comparisons pass
    `abs_tol = 0`: an absolute tolerance calls every pair of small values equal.
    """
    if a == b:
        return True
    return abs(a - b) <= max(Fraction(rel_tol) * max(abs(a), abs(b)), Fraction(abs_tol))


# -------------------------------------------------------------- equivalence


def too_complex(answer: str, max_chars: int, max_depth: int) -> bool:
    """Answers no grader should try: very long, or nested deeper than `max_depth`."""
    if len(answer) > max_chars:
        return True
    depth = deepest = 0
    for char in answer:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]":
            depth -= 1
    return deepest > max_depth


def _math_numbers(reference: str, answer: str) -> Verdict | bool | None:
    """Fast numeric verdict for `math`; None when either side is not a plain number."""
    ref_value, ans_value = parse_number(reference), parse_number(answer)
    if ref_value is None or ans_value is None:
        return None
    pairs = [(r, a) for r in _candidates(reference, ref_value)
             for a in _candidates(answer, ans_value)]  # fmt: skip
    if any(r == a for r, a in pairs):
        return Verdict(True, "match")
    # Far apart for every reading: wrong. Close but not equal (1/3 vs 0.333333) is for
    # the symbolic checker, whose rounding rules are the reference behaviour.
    if all(not numbers_close(r, a, 1e-4) for r, a in pairs):
        return Verdict(False, "mismatch")
    return None


def fast_verdict(
    reference: str, answer: str, task: Task, *, rel_tol: float = 1e-6, abs_tol: float = 0.0
) -> Verdict | None:
    """Decide from normalised strings alone; None means "ask the symbolic checker"."""
    if task == "choice":
        same = answer.strip("()").upper() == reference.strip("()").upper()
        return Verdict(same, "match" if same else "mismatch")
    if answer == reference:
        return Verdict(True, "match")
    if task == "exact":
        return Verdict(False, "mismatch")
    if task in ("numeric", "leading_number"):
        return _numeric(reference, answer, rel_tol, abs_tol)
    numeric = _math_numbers(reference, answer)
    if isinstance(numeric, Verdict):
        return numeric
    if answer.casefold() == reference.casefold() and answer.isalpha():
        return Verdict(True, "match")  # text answers: "Monday" vs "monday"
    if evaluate.containers_differ(reference, answer):
        return Verdict(False, "mismatch")
    if evaluate.provably_different(reference, answer):
        return Verdict(False, "mismatch")
    if evaluate.equal_constants(reference, answer):
        return Verdict(True, "match")
    return None


_RELATION = re.compile(r"=|\\approx\b|≈")
_LONE_VARIABLE = re.compile(r"\s*[a-zA-Z](?:_\{?\w+\}?)?\s*")


def _result_of(formula: str) -> str | None:
    """What a chain of arithmetic comes to: `3+5=8` -> `8`, `x\\approx 8.33` -> `8.33`.

    Only where nothing before the last relation has a variable (a lone `x =` in front
    aside): the right side of `2x=8` is not the value of anything asked.
    """
    *left, right = _RELATION.split(formula)
    if not left:
        return None
    if _LONE_VARIABLE.fullmatch(left[0]):
        left = left[1:]  # `x = 3+5 = 8`: the variable whose value the result is
    if any(_VARIABLE.search(_COMMAND.sub("", part)) for part in left):
        return None
    return right.strip()


def numeric_value(answer: str) -> Fraction | None:
    """The number a normalised `numeric` answer gives, else None.

    A number as it stands (`18`, `\\frac{3}{4}`, `25%`); the result of a chain of
    arithmetic (`3+5=8`); in prose (`18 bananas`, `She has 18 apples left`), the last
    number, as a response without a marker is read. A formula is judged whole: `2^{10}`,
    `3\\frac{1}{2}`, `8, 9` or `2x=8` is not a number, and none of its pieces is its value.
    """
    if (value := parse_number(answer)) is not None:
        return value
    if _PROSE_WORD.search(answer):
        token = last_number(answer)
        return parse_number(normalize(token)) if token else None
    result = _result_of(answer)
    return parse_number(result) if result else None


def _numeric(reference: str, answer: str, rel_tol: float, abs_tol: float) -> Verdict:
    ref_value, ans_value = parse_number(reference), numeric_value(answer)
    if ref_value is None or ans_value is None:
        return Verdict(False, "parse_error")
    ok = any(numbers_close(r, a, rel_tol, abs_tol) for r in _candidates(reference, ref_value)
             for a in _candidates(answer, ans_value))  # fmt: skip
    return Verdict(ok, "match" if ok else "mismatch")


def reward(correct: bool, well_formed: bool, format_bonus: float) -> float:
    """Reward in [0, 1]: `(1 - b) * correct + b * well_formed` with bonus weight `b`.

    With b = 0 (the default) this is 1 for a correct answer and 0 otherwise; with b > 0 a
    correct, well-formed answer still earns exactly 1, never more.
    """
    return (1.0 - format_bonus) * float(correct) + format_bonus * float(well_formed)
