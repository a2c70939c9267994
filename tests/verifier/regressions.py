# ruff: noqa: E501  (a table: one row per line reads best)
"""Regression corpus: inputs people hit, each with the verdict and reason it must get.

Each row is one member of a kind of fault (issue 13), or a neighbour found while fixing
that kind; `kind` names it. Rows that held before the fix are kept beside the ones that
did not, so that a fix of one member cannot quietly break its neighbours.
"""

from __future__ import annotations

from typing import NamedTuple


class Regression(NamedTuple):
    kind: str
    response: str
    reference: str
    task: str
    correct: bool
    reason: str


def _r(
    kind: str, response: str, reference: str, correct: bool, reason: str = "", task: str = "math"
) -> Regression:
    return Regression(
        kind, response, reference, task, correct, reason or ("match" if correct else "mismatch")
    )


def _box(answer: str) -> str:
    return f"So the answer is $\\boxed{{{answer}}}$."


EXACT_VALUES = "exact values: no tolerance hides a difference"
EQUATIONS = "equations compare as equations"
LAST_ANSWER = "the last answer decides, a broken one is no answer"
CHOICE = "a choice letter only where a choice is stated"
GROUPED = "grouped numbers"
STATEMENT = "the value of an answer statement"
WHOLE = "an answer is judged whole, never by a piece of it"
REAL_SENTENCE = "numeric reads a real model's sentence, not the tiny model's form"
EXACT_WHOLE = "exact: the whole response is the answer only when it is nothing else"

# fmt: off
REGRESSIONS: list[Regression] = [
    # 1. exact values compare exactly or by relative error, at any magnitude
    _r(
        EXACT_VALUES,
        "Hence the probability is $\\boxed{\\frac{1}{2^{98}}}$.",
        "\\frac{1}{2^{99}}",
        False,
    ),
    _r(EXACT_VALUES, _box("2^{-98}"), "2^{-99}", False),
    _r(EXACT_VALUES, _box("\\frac{1}{2^{98}}"), "2^{-98}", True),
    _r(EXACT_VALUES, _box("10^{-20}"), "2\\cdot 10^{-20}", False),
    _r(EXACT_VALUES, _box("1.5\\times10^{-30}"), "3\\times10^{-30}", False),
    _r(EXACT_VALUES, _box("3\\times10^{-12}"), "3\\times10^{-12}", True),
    _r(EXACT_VALUES, _box("0.000000001"), "0.000000002", False),
    _r(EXACT_VALUES, _box("0"), "10^{-12}", False),
    _r(EXACT_VALUES, _box("1.58\\times10^{-30}"), "\\frac{1}{2^{98}}", False),
    _r(EXACT_VALUES, _box("3.155443620884047\\times10^{-30}"), "\\frac{1}{2^{98}}", True),
    _r(EXACT_VALUES, _box("(\\frac{1}{2^{98}}, 1)"), "(\\frac{1}{2^{99}}, 1)", False),
    _r(EXACT_VALUES, _box("2^{100}+1"), "2^{100}", False),
    _r(EXACT_VALUES, _box("10^{20}+1"), "100000000000000000000", False),
    _r(EXACT_VALUES, _box("100000000000000000001"), "10^{20}+1", True),
    _r(EXACT_VALUES, _box("\\sqrt{2}\\cdot 2^{100}+1"), "\\sqrt{2}\\cdot 2^{100}", False),
    _r(EXACT_VALUES, _box("\\frac{100!}{98!}"), "9900", True),
    _r(EXACT_VALUES, _box("20!+1"), "2432902008176640000", False),
    _r(EXACT_VALUES, _box("2432902008176640000"), "20!", True),
    _r(EXACT_VALUES, _box("0.333333"), "\\frac13", True),  # 6 decimals: math-verify's rule
    _r(EXACT_VALUES, "Answer: 0.000000002", "0.000000001", False, task="numeric"),
    _r(EXACT_VALUES, "Answer: 0.0000000001", "0", False, task="numeric"),
    _r(EXACT_VALUES, "Answer: 0.3333334", "0.3333333", True, task="numeric"),  # rel 1e-6
    # 2. equations keep their meaning: same solution set, both ways round
    _r(EQUATIONS, "\\boxed{2x - y + 3 = 0}", "y = 2x + 3", True),
    _r(EQUATIONS, "\\boxed{y = 2x + 3}", "2x - y + 3 = 0", True),
    _r(EQUATIONS, _box("4x - 2y + 6 = 0"), "y = 2x + 3", True),
    _r(EQUATIONS, _box("y - 2x = 3"), "y=2x+3", True),
    _r(EQUATIONS, _box("2y = 4x + 6"), "y=2x+3", True),
    _r(EQUATIONS, _box("x + y = 1"), "y = 1 - x", True),
    _r(EQUATIONS, _box("x - y = 0"), "y = x", True),
    _r(EQUATIONS, _box("2x - y - 3 = 0"), "y = 2x + 3", False),
    _r(EQUATIONS, _box("y = 2x - 3"), "2x - y + 3 = 0", False),
    _r(EQUATIONS, _box("y = 2x + 1"), "x = 2y + 1", False),
    _r(EQUATIONS, _box("x^2 - 2x + y^2 + 4y - 4 = 0"), "(x-1)^2 + (y+2)^2 = 9", True),
    _r(EQUATIONS, _box("x = 5"), "5", True),
    _r(EQUATIONS, _box("k = -\\frac{1}{2}"), "-\\frac12", True),
    # 3. the last answer the response gives decides; broken, it is no answer
    _r(
        LAST_ANSWER,
        "The answer is 42. Wait, let me recheck that: \\boxed{4",
        "42",
        False,
        "no_answer",
    ),
    _r(LAST_ANSWER, "The answer is 42. Let me box it: \\boxed{}", "42", False, "no_answer"),
    _r(LAST_ANSWER, "#### 42\nHmm, wait: \\boxed{\\frac{1}{2}", "42", False, "no_answer"),
    _r(
        LAST_ANSWER,
        "\\boxed{42}\n\nActually, let me reconsider. \\boxed{4",
        "42",
        False,
        "no_answer",
    ),
    _r(LAST_ANSWER, "\\boxed{42}. Therefore, the answer is", "42", False, "no_answer"),
    _r(LAST_ANSWER, "The answer is 42. Wait \\boxed{4", "42", False, "no_answer", task="numeric"),
    _r(
        LAST_ANSWER,
        "The answer is (B). Wait, no: \\boxed{C",
        "B",
        False,
        "no_answer",
        task="choice",
    ),
    _r(
        LAST_ANSWER,
        "The answer is Paris. Or rather \\boxed{Lon",
        "Paris",
        False,
        "no_answer",
        task="exact",
    ),
    _r(LAST_ANSWER, "\\boxed{4}... Wait, recheck: the answer is \\boxed{42}", "42", True),
    _r(LAST_ANSWER, "The answer is $\\boxed{42}$.", "42", True),
    _r(LAST_ANSWER, "\\boxed{41} no wait \\boxed{42}", "42", True),
    _r(LAST_ANSWER, "The final answer is $\\boxed{42}$. I hope the answer is right.", "42", True),
    # 4. a multiple-choice letter counts only where the response states a choice
    _r(
        CHOICE,
        "Comparing the scales we need $\\boxed{\\langle H\\rangle \\ll \\Delta E}$ for the approximation.\n\n**Answer: D**",
        "D",
        True,
        task="choice",
    ),
    _r(CHOICE, "$\\boxed{E = mc^2}$, so the answer is (B).", "B", True, task="choice"),
    _r(CHOICE, "We get $\\boxed{A + B}$.\nAnswer: C", "C", True, task="choice"),
    _r(CHOICE, "The answer is $x = A\\cos\\omega t$.", "A", False, "no_answer", task="choice"),
    _r(
        CHOICE,
        "Evaluating $f(B)$ gives the smallest value.",
        "B",
        False,
        "no_answer",
        task="choice",
    ),
    _r(CHOICE, "So the current must satisfy I < B", "B", False, "no_answer", task="choice"),
    _r(CHOICE, "\\boxed{\\text{C}}", "C", True, task="choice"),
    _r(CHOICE, "\\boxed{(C)\\ 12}", "C", True, task="choice"),
    _r(CHOICE, "\\boxed{\\textbf{(C) } 12}", "C", True, task="choice"),
    _r(CHOICE, "\\boxed{C: 12}", "C", True, task="choice"),
    _r(CHOICE, "The answer is D because the others fail.", "D", True, task="choice"),
    _r(CHOICE, "After eliminating options, I pick D", "D", True, task="choice"),
    _r(CHOICE, "**Answer: D**", "D", True, task="choice"),
    # 12. (issue 27, beside kind 10) the last `(X)` anywhere was the choice: a rule for a
    # reply that names one option, applied to responses that weigh them all
    _r(
        CHOICE,
        "The correct option is (B), since (A) and (C) fail.",
        "C",
        False,
        "no_answer",
        task="choice",
    ),
    _r(
        CHOICE,
        "(A) is too small. (B) fits. (C) is negative. (D) is too large.",
        "D",
        False,
        "no_answer",
        task="choice",
    ),
    _r(CHOICE, "Only (C) is even, and (C) is prime too.", "C", True, task="choice"),
    _r(CHOICE, "I choose (C) now", "C", True, task="choice"),
    _r(CHOICE, "(A) and (C) fail, so I pick B", "B", True, task="choice"),
    # 7. every spelling of a grouped number is one number; a bad group is not a group
    _r(GROUPED, "The total is $\\boxed{10000}$.", "10,\\!000", True),
    _r(GROUPED, _box("1000000"), "1,\\!000,\\!000", True),
    _r(GROUPED, _box("10,\\!000"), "10000", True),
    _r(GROUPED, _box("10,\\!001"), "10000", False),
    _r(GROUPED, _box("12,\\!345.5"), "12345.5", True),
    _r(GROUPED, _box("10{,}000"), "10000", True),
    _r(GROUPED, _box("10\\,000"), "10000", True),
    _r(GROUPED, _box("10\\ 000"), "10000", True),
    _r(GROUPED, _box("1,\\!00"), "100", False),
    _r(GROUPED, _box("1\\,0000"), "10000", False),
    _r(GROUPED, _box("2{,}5"), "25", False),
    _r(GROUPED, "The total is 10,\\!000 dollars.", "10000", True, task="numeric"),
    _r(GROUPED, "#### 10,\\!000", "10000", True, task="numeric"),
    _r(GROUPED, "#### 1,000", "1000", True, task="numeric"),
    # 7b. found with Math-Verify's suite: a space after the separator, and a plain space,
    # which TeX ignores in math; a comma is never a decimal point, and a group never
    # starts with 0
    _r(GROUPED, _box("45,\\! 210"), "45210", True),
    _r(GROUPED, _box("7,\\! 000,\\! 000,\\! 001"), "7000000001", True),
    _r(GROUPED, _box("45{,} 210"), "45210", True),
    _r(GROUPED, _box("3 500"), "3500", True),
    _r(GROUPED, _box("12 345 678"), "12345678", True),
    _r(GROUPED, _box("3 50"), "350", False),
    _r(GROUPED, _box("3 500"), "3501", False),
    _r(GROUPED, _box("x^2 100"), "100x^2", True),
    _r(GROUPED, _box("2,5"), "2.5", False),
    _r(GROUPED, _box("0,125"), "0.125", False),
    _r(GROUPED, _box("0,125"), "125", False),
    _r(GROUPED, _box("0, 125"), "\\{125, 0\\}", True),
    # 8. prose after an answer marker: the statement's final mathematical value
    _r(STATEMENT, "... Final Answer: The largest $n$ is 34.", "$34$", True),
    _r(STATEMENT, "Final Answer: The largest $n$ is 35.", "34", False),
    _r(STATEMENT, "Answer: The value of $x$ is $\\frac{1}{2}$.", "\\frac12", True),
    _r(STATEMENT, "Answer: The sum equals 12.", "12", True),
    _r(STATEMENT, "Answer: It is $\\sqrt{2}$ meters.", "\\sqrt2", True),
    _r(STATEMENT, "The answer is that $x = 5$.", "5", True),
    _r(
        STATEMENT,
        "Final Answer: The final answer is $\\frac{3}{5}$. I hope it is correct.",
        "\\frac35",
        True,
    ),
    _r(STATEMENT, "Answer: The largest n is 34.", "34", True, task="numeric"),
    # 9. found with Math-Verify's suite: math-verify's expression extractor, when its LaTeX
    # parser rejects an answer, takes a piece of it (`-[2,3)` read as 3)
    _r(WHOLE, _box("-[2,3)"), "3", False, "parse_error"),
    _r(WHOLE, _box("4[2,3)"), "3", False, "parse_error"),
    _r(WHOLE, _box("-\\{5, 6\\}"), "6", False, "parse_error"),
    _r(WHOLE, _box("3"), "-[2,3)", False, "parse_error"),
    _r(WHOLE, _box("[2,3)"), "\\left[2, 3\\right)", True),
    _r(WHOLE, _box("-(x+2)"), "-x-2", True),
    _r(WHOLE, _box("2 - \\frac{1}{\\mathrm{e}}"), "2 + \\frac{1}{\\mathrm{e}}", False),
    _r(WHOLE, _box("2 - \\frac{1}{\\mathrm{e}}"), "2 - e^{-1}", True),
    # 10. (issue 27) `numeric` read a number the response starts with (the tiny task's rule,
    # now the `leading_number` kind): a real model's `3 + 5 = 8` answered 3. Without a
    # marker, the answer is the last number the response writes.
    _r(REAL_SENTENCE, "3 + 5 = 8", "8", True, task="numeric"),
    _r(REAL_SENTENCE, "3 + 5 = 8.", "8", True, task="numeric"),
    _r(REAL_SENTENCE, "3 + 5 = 8", "3", False, task="numeric"),
    _r(REAL_SENTENCE, "The sum is 8.", "8", True, task="numeric"),
    _r(REAL_SENTENCE, "8", "8", True, task="numeric"),
    _r(REAL_SENTENCE, "The answer is 8", "8", True, task="numeric"),
    _r(REAL_SENTENCE, "I think 3 + 5 = 8, so 8.", "8", True, task="numeric"),
    _r(REAL_SENTENCE, "I think 3 + 5 = 8, so 9.", "8", False, task="numeric"),
    _r(REAL_SENTENCE, "1,000 + 234 = 1,234", "1234", True, task="numeric"),
    _r(REAL_SENTENCE, "The total is 1,234.", "1234", True, task="numeric"),
    _r(REAL_SENTENCE, "1,234", "1,234", True, task="numeric"),
    _r(REAL_SENTENCE, "2 - 6 = -4", "-4", True, task="numeric"),
    _r(REAL_SENTENCE, "6 - 2 = 4", "-4", False, task="numeric"),
    _r(REAL_SENTENCE, "-4", "-4", True, task="numeric"),
    _r(REAL_SENTENCE, "So the total is 569204311.663.", "569,204,311.663", True, task="numeric"),
    _r(REAL_SENTENCE, "The product is 569,204,311.663.", "569204311.663", True, task="numeric"),
    _r(REAL_SENTENCE, "569,204,311.663", "569", False, task="numeric"),
    _r(REAL_SENTENCE, "The larger number is 7.", "7", True, task="numeric"),
    _r(REAL_SENTENCE, "7 and 3: the larger number is 7.", "7", True, task="numeric"),
    # the tiny task's kind reads its own form, and misreads a real sentence by design
    _r(REAL_SENTENCE, "3 + 5 = 8", "8", False, task="leading_number"),
    _r(REAL_SENTENCE, "357 12+4=16", "357", True, task="leading_number"),
    _r(REAL_SENTENCE, "357 12+4=16", "16", True, task="numeric"),
    # 11. (issue 27, beside kind 10) `numeric` read an answer that is not a number by its
    # last number, a rule for prose (`18 bananas`) applied to formulas: `\boxed{10^{3}}`
    # answered 3. A formula is judged whole; the result of a chain of arithmetic counts.
    _r(WHOLE, _box("10^{3}"), "3", False, "parse_error", task="numeric"),
    _r(WHOLE, _box("2^{10}"), "1024", False, "parse_error", task="numeric"),
    _r(WHOLE, _box("\\sqrt{16}"), "16", False, "parse_error", task="numeric"),
    _r(WHOLE, _box("3\\frac{1}{2}"), "2", False, "parse_error", task="numeric"),
    _r(WHOLE, _box("12 \\div 3"), "3", False, "parse_error", task="numeric"),
    _r(WHOLE, _box("8, 9"), "9", False, "parse_error", task="numeric"),
    _r(WHOLE, _box("2x = 8"), "8", False, "parse_error", task="numeric"),
    _r(WHOLE, _box("3 + 5 = 8"), "8", True, task="numeric"),
    _r(WHOLE, _box("x = 3 + 5 = 8"), "8", True, task="numeric"),
    _r(WHOLE, _box("x \\approx 8.33"), "8.33", True, task="numeric"),
    _r(WHOLE, "#### 12 \\times 4 = 48", "48", True, task="numeric"),
    _r(WHOLE, "The answer is 3 + 5 = 8.", "8", True, task="numeric"),
    _r(WHOLE, "The answer is 18 bananas.", "18", True, task="numeric"),
    _r(WHOLE, "Answer: She has 18 apples left.", "18", True, task="numeric"),
    _r(WHOLE, _box("\\frac{3}{4}"), "0.75", True, task="numeric"),
    # 14. (issue 27, beside kind 10) the last number of a sentence was the last run of
    # digits: the square of `cm^2`, the denominator of `\frac{1}{2}`
    _r(WHOLE, "The area is 25 cm^2.", "25", True, task="numeric"),
    _r(WHOLE, "The area is $25\\text{ cm}^2$.", "25", True, task="numeric"),
    _r(WHOLE, "The area is 25 cm^2.", "2", False, task="numeric"),
    _r(WHOLE, "The probability is $\\frac{1}{2}$.", "0.5", True, task="numeric"),
    _r(WHOLE, "The probability is $\\frac{1}{2}$.", "2", False, task="numeric"),
    _r(WHOLE, "It is $-\\dfrac{3}{4}$.", "-0.75", True, task="numeric"),
    _r(WHOLE, "The ratio is 3/4.", "\\frac34", True, task="numeric"),
    _r(WHOLE, "48/2 = 24 clips in May.", "24", True, task="numeric"),
    _r(WHOLE, "So x_1 + x_2 = 7.", "7", True, task="numeric"),
    _r(WHOLE, "Answer: each child gets 3/4 of a pizza.", "0.75", True, task="numeric"),
    _r(WHOLE, _box("3 \\times 10^8"), "300000000", True, task="numeric"),
    _r(WHOLE, _box("3 \\times 10^8"), "8", False, task="numeric"),
    # 13. (issue 27, beside kind 10, kept) `exact` without a marker compares the whole
    # response: a bare reply matches, a sentence does not (and never matches wrongly)
    _r(EXACT_WHOLE, "cat", "cat", True, task="exact"),
    _r(EXACT_WHOLE, "cat.", "cat", True, task="exact"),
    _r(EXACT_WHOLE, "The word is cat.", "cat", False, task="exact"),
    _r(EXACT_WHOLE, "Answer: The word is cat.", "cat", True, task="exact"),
    _r(EXACT_WHOLE, "The word is $\\boxed{cat}$.", "cat", True, task="exact"),
    _r(EXACT_WHOLE, "The word is not cat.", "cat", False, task="exact"),
]
# fmt: on
