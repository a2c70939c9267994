"""Unit tests of the pure core: extraction, normalisation, numbers, fast verdicts, reward."""

from __future__ import annotations

import time
from fractions import Fraction
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.verifier import answers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("a \\boxed{1} b \\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5$", "5"),
        ("\\boxed{{{x}}}", "{{x}}"),
        ("\\boxed{unclosed", None),
        ("no box", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert answers.last_boxed(text) == expected


def test_extraction_sources() -> None:
    assert answers.extract_answer("x\n#### 1,234", "numeric") == answers.Extraction(
        "1,234", "hashes"
    )
    assert answers.extract_answer("So the answer is 3.5. Done", "math").text == "3.5"
    assert answers.extract_answer("357 12+1=13", "leading_number") == answers.Extraction(
        "357", "leading"
    )
    assert answers.extract_answer("= 357", "leading_number").source == "none"
    assert answers.extract_answer("it is 12 then 13", "numeric").source == "last_number"
    assert answers.extract_answer("just words", "math").source == "none"
    assert answers.extract_answer("I choose (C) now", "choice").text == "C"


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("3 + 5 = 8.", "8"),
        ("I think 3 + 5 = 8, so 9.", "9"),
        ("1,000 + 234 = 1,234", "1,234"),
        ("2 - 6 = -4", "-4"),
        ("The area is 25 cm^2.", "25"),
        ("so 10^{-3} of it, x_2 = 5", "5"),
        ("The probability is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("It is $-\\tfrac34$", "-\\tfrac34"),
        ("The ratio is 3/4.", "3/4"),
        ("no digits", None),
    ],
)
def test_last_number_is_read_whole(text: str, number: str | None) -> None:
    assert answers.last_number(text) == number


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("18", Fraction(18)),
        ("3+5=8", Fraction(8)),
        ("x=3+5=8", Fraction(8)),
        ("x \\approx 8.33", Fraction("8.33")),
        ("18 bananas", Fraction(18)),
        ("each gets 3/4 of it", Fraction(3, 4)),
        ("2^{10}", None),  # a formula is judged whole
        ("3\\frac{1}{2}", None),
        ("8, 9", None),
        ("2x=8", None),  # the right side of an equation with a variable is not its value
    ],
)
def test_numeric_value(answer: str, value: Fraction | None) -> None:
    assert answers.numeric_value(answer) == value


def test_reference_extraction() -> None:
    assert answers.extract_reference("48/2=24\n#### 72", "numeric") == "72"
    assert answers.extract_reference("so $\\boxed{\\frac12}$", "math") == "\\frac12"
    assert answers.extract_reference(" 42 ", "math") == "42"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
        ("\\left( 1, 2 \\right)", "(1, 2)"),
        ("-102 ,102", "-102, 102"),  # a list: thousands separators have no spaces
        ("-102,102", "-102102"),
        ("5\\text{ cm}^2", "5"),
        ("18 dollars", "18"),
        ("1,000,000.", "1000000"),
        ("50\\%", "50%"),
        ("90^\\circ", "90"),
        ("x = \\frac12", "\\frac{1}{2}"),
        ("\\text{Monday}", "Monday"),
        ("\\pi x", "\\pi x"),
    ],
)
def test_normalize(raw: str, normal: str) -> None:
    assert answers.normalize(raw) == normal


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", Fraction(42)),
        ("-0.25", Fraction(-1, 4)),
        ("1.5e3", Fraction(1500)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\frac{3}{4}", Fraction(-3, 4)),
        ("7/8", Fraction(7, 8)),
        ("2.5\\times10^{-3}", Fraction(1, 400)),
        ("50%", Fraction(50)),
        ("\\frac{1}{0}", None),
        ("1e999999999", None),
        ("x", None),
    ],
)
def test_parse_number(text: str, value: Fraction | None) -> None:
    assert answers.parse_number(text) == value


def test_fast_verdict_defers_only_what_it_cannot_decide() -> None:
    assert answers.fast_verdict("42", "42", "math") == answers.Verdict(True, "match")
    assert answers.fast_verdict("42", "41", "math") == answers.Verdict(False, "mismatch")
    assert answers.fast_verdict("\\frac{1}{3}", "0.333333", "math") is None  # close: symbolic
    assert answers.fast_verdict("\\sqrt{2}", "2^{1/2}", "math") == answers.Verdict(True, "match")
    assert answers.fast_verdict("x^2-1", "(x-1)(x+1)", "math") is None  # agreement at points
    assert answers.fast_verdict("x^2-1", "(x-1)^2", "math") == answers.Verdict(False, "mismatch")
    assert answers.fast_verdict("[1,2)", "(1,2)", "math") == answers.Verdict(False, "mismatch")
    assert answers.fast_verdict("\\{1,-1\\}", "\\{1\\}", "math") == answers.Verdict(
        False, "mismatch"
    )
    assert answers.fast_verdict("4\\frac{2}{3}", "\\frac{14}{3}", "math") is None  # mixed
    assert answers.fast_verdict("1", "1.0000001", "numeric").correct
    assert not answers.fast_verdict("1", "1.01", "numeric").correct  # type: ignore[union-attr]
    assert answers.fast_verdict("1", "x", "numeric") == answers.Verdict(False, "parse_error")


def test_too_complex() -> None:
    assert answers.too_complex("{" * 50 + "}" * 50, 1000, 40)
    assert answers.too_complex("1" * 1001, 1000, 40)
    assert not answers.too_complex("\\frac{\\sqrt{2}}{2}", 1000, 40)


@pytest.mark.parametrize("bonus", [0.0, 0.1, 0.5])
def test_reward_never_exceeds_one(bonus: float) -> None:
    rewards = [answers.reward(c, w, bonus) for c in (False, True) for w in (False, True)]
    assert max(rewards) == 1.0 and min(rewards) == 0.0
    assert answers.reward(True, True, bonus) >= answers.reward(True, False, bonus)


def test_hostile_text_is_linear() -> None:
    nested = "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}"
    huge = "word 1 " * 150_000 + "\\boxed{" * 1000
    start = time.perf_counter()
    assert answers.last_boxed(nested) is not None
    for task in get_args(answers.Task):
        answers.extract_answer(huge, task)
    assert time.perf_counter() - start < 2.0


def test_surrogates_are_replaced() -> None:
    assert answers.sanitize("a\ud800b") == "a?b"
    assert answers.normalize("\\boxed{\udcff}").encode()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.sampled_from(get_args(answers.Task)))
def test_extraction_never_raises(text: str, task: answers.Task) -> None:
    found = answers.extract_answer(text, task)
    if found.text is not None:
        normal = answers.normalize(found.text)
        answers.fast_verdict("1", normal, task)


@pytest.mark.parametrize(
    ("statement", "value"),
    [
        ("The largest $n$ is 34", "34"),
        ("The value of $x$ is $\\frac{1}{2}$", "\\frac{1}{2}"),
        ("It is $\\sqrt{2}$ meters", "\\sqrt{2}"),
        ("we get $x = 5$", "x = 5"),
        ("\\frac{1}{2}", "\\frac{1}{2}"),  # no prose: as it stands
        ("5 cm", "5 cm"),
        ("x \\in [2, 5]", "x \\in [2, 5]"),
    ],
)
def test_statement_value(statement: str, value: str) -> None:
    assert answers.statement_value(statement) == value


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("\\text{(B)}", "B"),
        ("\\textbf{(C) } 12", "C"),
        ("(C)\\ 12", "C"),
        ("C: 12", "C"),
        ("D because the rest fail", "D"),
        ("\\langle H\\rangle \\ll \\Delta E", None),
        ("E = mc^2", None),
        ("A + B", None),
        ("x = A\\cos\\omega t", None),
    ],
)
def test_stated_choice(text: str, letter: str | None) -> None:
    assert answers.stated_choice(text) == letter


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("10,\\!000", "10000"),
        ("1,\\!000,\\!000", "1000000"),
        ("10{,}000", "10000"),
        ("10\\ 000", "10000"),
        ("12,\\!345.5", "12345.5"),
        ("1,\\!00", "1, 00"),  # not a thousands group: left a list
        ("y = 2x + 3", "y=2x+3"),  # an equation keeps its left side
        ("x = 3+4i", "3+4i"),
    ],
)
def test_normalize_groups_and_equations(raw: str, normal: str) -> None:
    assert answers.normalize(raw) == normal


def test_broken_last_answer_is_no_answer() -> None:
    for text in ("The answer is 42. Wait: \\boxed{4", "The answer is 42. \\boxed{}",
                 "\\boxed{42}. So the answer is"):  # fmt: skip
        for task in ("math", "numeric", "exact", "choice"):
            assert answers.extract_answer(text, task).text is None  # type: ignore[arg-type]


def test_numbers_close_is_relative_and_exact() -> None:
    assert not answers.numbers_close(Fraction(1, 10**30), Fraction(2, 10**30), 1e-4)
    assert answers.numbers_close(Fraction(10**399), Fraction(10**399 + 1), 1e-6)
