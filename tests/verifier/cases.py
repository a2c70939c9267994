"""The verdict table: (response, reference, task, expected) in the formats models write.

References are written the way MATH (bare LaTeX answers) and GSM8K (`#### n` solutions)
ship them; responses the way chat models answer (boxed LaTeX, "The answer is", `####`).
Near misses (a sign, an endpoint, a digit, a factor of pi) must be judged wrong.
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    response: str
    reference: str
    task: str
    expected: bool


def boxed(answer: str) -> str:
    return f"Putting it together, the final answer is $\\boxed{{{answer}}}$."


def minerva(answer: str) -> str:
    return f"Final Answer: The final answer is ${answer}$. I hope it is correct."


def gsm(answer: str) -> str:
    return f"She has 3 boxes of 4 eggs each, so 3 * 4 = 12 eggs.\n#### {answer}"


GSM_SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = 72.\n#### 72"

# (answer as the model writes it, MATH reference, expected)
MATH_BOXED: list[tuple[str, str, bool]] = [
    # fractions
    ("\\frac{1}{2}", "\\frac{1}{2}", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\tfrac12", "\\frac{1}{2}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("0.5", "\\frac{1}{2}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("\\frac{1}{3}", "\\frac{1}{2}", False),
    ("\\frac{2}{1}", "\\frac{1}{2}", False),
    ("-\\frac{3}{4}", "-\\frac{3}{4}", True),
    ("\\frac{-3}{4}", "-\\frac{3}{4}", True),
    ("-0.75", "-\\frac{3}{4}", True),
    ("\\frac{3}{4}", "-\\frac{3}{4}", False),
    ("\\frac{7}{12}", "\\frac{7}{12}", True),
    ("\\frac{7}{13}", "\\frac{7}{12}", False),
    ("\\frac{1}{3}", "\\frac13", True),
    ("0.33", "\\frac{1}{3}", False),
    ("\\frac{14}{3}", "4\\frac{2}{3}", True),
    ("\\frac{a+b}{2}", "\\frac{b+a}{2}", True),
    ("\\frac{x}{2}", "\\frac{x}{3}", False),
    # radicals
    ("\\sqrt{2}", "\\sqrt{2}", True),
    ("\\sqrt2", "\\sqrt{2}", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt2}{2}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("3\\sqrt{2}", "2\\sqrt{3}", False),
    ("\\sqrt{3}", "1.732", False),
    ("5\\sqrt{5}", "5\\sqrt5", True),
    ("\\frac{5+\\sqrt{5}}{2}", "\\frac{5+\\sqrt{5}}{2}", True),
    ("\\frac{5-\\sqrt{5}}{2}", "\\frac{5+\\sqrt{5}}{2}", False),
    ("\\sqrt[3]{2}", "2^{1/3}", True),
    ("4\\sqrt{2}", "\\sqrt{32}", True),
    ("\\sqrt{32}", "\\sqrt{31}", False),
    # pi
    ("2\\pi", "2\\pi", True),
    ("2 \\pi", "2\\pi", True),
    ("\\pi", "2\\pi", False),
    ("3.14", "\\pi", False),
    ("\\frac{\\pi}{4}", "\\frac{\\pi}{4}", True),
    ("\\frac{\\pi}{2}", "\\frac{\\pi}{4}", False),
    ("\\frac{4\\pi}{3}", "\\frac43\\pi", True),
    ("36\\pi", "36 \\pi", True),
    ("18\\pi", "36\\pi", False),
    ("\\pi r^2", "\\pi r^2", True),
    # integers, signs, big numbers
    ("42", "42", True),
    ("420", "42", False),
    ("-5", "-5", True),
    ("5", "-5", False),
    ("0", "0", True),
    ("-0", "0", True),
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("10000", "1000", False),
    ("1\\,000\\,000", "1000000", True),
    ("2^{10}", "1024", True),
    ("2^{11}", "1024", False),
    ("10!", "3628800", True),
    ("9!", "3628800", False),
    ("\\binom{5}{2}", "10", True),
    ("\\binom{5}{3}", "11", False),
    ("12.0", "12", True),
    ("12.5", "12", False),
    # scientific notation
    ("1.5\\times10^{3}", "1500", True),
    ("1.5 \\times 10^3", "1500", True),
    ("1.5e3", "1500", True),
    ("1.5\\times10^{4}", "1500", False),
    ("6.02\\times 10^{23}", "6.02\\times10^{23}", True),
    ("6.03\\times 10^{23}", "6.02\\times10^{23}", False),
    ("2.5\\times10^{-3}", "0.0025", True),
    ("2.5\\times10^{-2}", "0.0025", False),
    # decimals
    ("0.25", "\\frac14", True),
    ("0.2", "\\frac14", False),
    ("3.75", "\\frac{15}{4}", True),
    ("3.57", "\\frac{15}{4}", False),
    ("-1.5", "-\\frac32", True),
    ("1.5", "-\\frac32", False),
    # percentages
    ("50\\%", "50", True),
    ("50", "50\\%", True),
    ("0.5", "50\\%", True),
    ("25\\%", "50\\%", False),
    ("12.5\\%", "12.5", True),
    ("15\\%", "12.5", False),
    # degrees
    ("90^\\circ", "90", True),
    ("90^{\\circ}", "90^\\circ", True),
    ("90", "90^\\circ", True),
    ("45^\\circ", "90", False),
    ("120°", "120", True),
    ("60^\\circ", "120^\\circ", False),
    # intervals
    ("[1,2)", "[1,2)", True),
    ("[1,2]", "[1,2)", False),
    ("(1,2)", "[1,2)", False),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(-\\infty,3)", "(-\\infty,3]", False),
    ("\\left(-\\infty, 3\\right]", "(-\\infty,3]", True),
    ("(2,\\infty)", "(2, \\infty)", True),
    ("[2,\\infty)", "(2,\\infty)", False),
    ("(-\\infty,-2)\\cup(2,\\infty)", "(-\\infty,-2)\\cup(2,\\infty)", True),
    ("(-\\infty,-2]\\cup[2,\\infty)", "(-\\infty,-2)\\cup(2,\\infty)", False),
    ("[-3,5]", "[-3, 5]", True),
    ("[-3,4]", "[-3,5]", False),
    # sets and lists of solutions
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\{1,3\\}", "\\{1,2\\}", False),
    ("1, 2", "2, 1", True),
    ("1,-2", "-2,1", True),
    ("1, 2", "1, 3", False),
    ("-2, 3", "3, -2", True),
    ("-102, 102", "\\{102,-102\\}", True),
    ("-102, 103", "\\{102,-102\\}", False),
    ("1,024", "1024", True),
    ("\\{-1, 0, 1\\}", "\\{-1,0,1\\}", True),
    ("\\{-1, 1\\}", "\\{-1,0,1\\}", False),
    # tuples and points
    ("(3,-1)", "(3,-1)", True),
    ("(3, -1)", "(3,-1)", True),
    ("(-1,3)", "(3,-1)", False),
    ("(3,1)", "(3,-1)", False),
    ("\\left( 2, \\frac{1}{2} \\right)", "(2,\\frac12)", True),
    ("(2,0.5)", "(2,\\frac{1}{2})", True),
    ("(2,0.4)", "(2,\\frac{1}{2})", False),
    ("(1,2,3)", "(1,2,3)", True),
    ("(1,3,2)", "(1,2,3)", False),
    # expressions and polynomials
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2-2x+1", "(x+1)^2", False),
    ("x+1", "1+x", True),
    ("2x+3", "3+2x", True),
    ("2x-3", "3+2x", False),
    ("(x-1)(x+1)", "x^2-1", True),
    ("x^2+1", "x^2-1", False),
    ("3x^2-5x+2", "(3x-2)(x-1)", True),
    ("3x^2+5x+2", "(3x-2)(x-1)", False),
    ("\\frac{x+1}{x-1}", "\\frac{x+1}{x-1}", True),
    ("\\frac{x-1}{x+1}", "\\frac{x+1}{x-1}", False),
    ("2^{x}", "2^x", True),
    ("e^{2}", "e^2", True),
    ("e^{3}", "e^2", False),
    ("\\log_2 8", "3", True),
    ("\\ln 1", "0", True),
    ("\\sin 30^\\circ", "\\frac{1}{2}", True),
    # equations and assignments
    ("x=5", "5", True),
    ("x = 5", "5", True),
    ("x=6", "5", False),
    ("y=2x+3", "y=2x+3", True),
    ("y = 3 + 2x", "y=2x+3", True),
    ("y=2x-3", "y=2x+3", False),
    ("k=-\\frac{1}{2}", "-\\frac12", True),
    # text answers
    ("\\text{Monday}", "\\text{Monday}", True),
    ("Monday", "\\text{Monday}", True),
    ("\\text{monday}", "\\text{Monday}", True),
    ("\\text{Tuesday}", "\\text{Monday}", False),
    ("\\text{(C)}", "\\text{(C)}", True),
    ("\\text{(D)}", "\\text{(C)}", False),
    ("\\textbf{odd}", "\\text{odd}", True),
    ("\\text{even}", "\\text{odd}", False),
    # units
    ("5\\text{ cm}", "5", True),
    ("6\\text{ cm}", "5", False),
    ("24\\text{ square units}", "24", True),
    ("12 \\mbox{ inches}", "12", True),
    ("\\$18", "18", True),
    ("\\$18.00", "18", True),
    ("\\$19", "18", False),
    ("18 \\text{ dollars}", "\\$18", True),
    # matrices and vectors
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    # complex numbers
    ("3+4i", "3+4i", True),
    ("4i+3", "3+4i", True),
    ("3-4i", "3+4i", False),
]

OTHER: list[Case] = [
    # GSM8K: responses ending in `#### n`, references as shipped (full solution) or bare
    Case(gsm("72"), GSM_SOLUTION, "math", True),
    Case(gsm("72"), GSM_SOLUTION, "numeric", True),
    Case(gsm("74"), GSM_SOLUTION, "numeric", False),
    Case(gsm("72.00"), "72", "numeric", True),
    Case(gsm("$72"), "72", "numeric", True),
    Case(gsm("1,200"), "1200", "numeric", True),
    Case(gsm("1,250"), "1200", "numeric", False),
    Case(gsm("18 dollars"), "18", "numeric", True),
    Case(gsm("-3"), "-3", "numeric", True),
    Case(gsm("3"), "-3", "numeric", False),
    Case("Janet makes 9 * 2 = 18 dollars every day.", "18", "numeric", True),
    Case("Janet makes 9 * 2 = 18 dollars every day, not 20.", "18", "numeric", False),
    Case("The answer is 18.", "18", "numeric", True),
    Case("The answer is 18.5.", "18.5", "numeric", True),
    Case("The answer is $\\boxed{18}$ dollars.", "18", "numeric", True),
    Case("First 5 + 6 = 11, so \\boxed{11}. Then I double check: 11.", "11", "numeric", True),
    Case("**Answer:** 1,024", "1024", "numeric", True),
    Case("Answer: 0.3333334", "0.3333333", "numeric", True),
    Case("Answer: 0.34", "0.3333333", "numeric", False),
    Case("The answer is 25%.", "25", "numeric", True),
    # a real model's sentence without a marker: the last number it writes
    Case("3 + 5 = 8.", "8", "numeric", True),
    Case("2 - 6 = -4", "-4", "numeric", True),
    Case("I think 3 + 5 = 8, so 9.", "8", "numeric", False),
    # the tiny arithmetic task: the completion starts with the digits, then junk
    Case("357", "357", "leading_number", True),
    Case("357 12+4=16", "357", "leading_number", True),
    Case("357\n\n12+345=357", "357", "leading_number", True),
    Case(" 357junk", "357", "leading_number", True),
    Case("357 #### 12", "357", "leading_number", True),  # markers after it are junk too
    Case("358 junk 357", "357", "leading_number", False),
    Case("=357", "357", "leading_number", False),  # does not start with the answer
    Case("35", "357", "leading_number", False),
    Case("-12", "-12", "leading_number", True),
    Case("", "357", "leading_number", False),
    # math with the other answer markers
    Case(minerva("\\frac{3}{5}"), "\\frac35", "math", True),
    Case(minerva("\\frac{5}{3}"), "\\frac35", "math", False),
    Case("The answer is $\\sqrt{5}$.", "\\sqrt5", "math", True),
    Case("Therefore the answer is 2\\pi.", "2\\pi", "math", True),
    Case("I think it is 7, but \\fbox{8} is right.", "8", "math", True),
    Case("First \\boxed{3}, no wait, \\boxed{4}.", "4", "math", True),
    Case("First \\boxed{4}, no wait, \\boxed{3}.", "4", "math", False),
    Case("The value is $\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt3}{2}", "math", True),
    Case("No final answer here, only 5.", "5", "math", False),
    Case("\\boxed{}", "5", "math", False),
    Case("\\boxed{5", "5", "math", False),
    Case("so $\\boxed{\\left[ -\\frac{1}{2}, 3 \\right)}$.", "[-\\frac12,3)", "math", True),
    Case("The solution is \\boxed{x \\in [2, 5]}", "[2,5]", "math", True),
    Case("\\boxed{\\frac{1}{2}}", "Solution... so $\\boxed{\\frac12}$.", "math", True),
    Case("\\boxed{\\frac{1}{3}}", "Solution... so $\\boxed{\\frac12}$.", "math", False),
    # exact
    Case("\\boxed{Paris}", "Paris", "exact", True),
    Case("The answer is Paris.", "Paris", "exact", True),
    Case("paris", "Paris", "exact", False),
    Case("  Paris  ", "Paris", "exact", True),
    Case("\\boxed{London}", "Paris", "exact", False),
    Case("\\boxed{\\text{yes}}", "yes", "exact", True),
    # multiple choice
    Case("The answer is (B).", "B", "choice", True),
    Case("The answer is (C).", "B", "choice", False),
    Case("\\boxed{B}", "(B)", "choice", True),
    Case("\\boxed{\\text{(B)}}", "B", "choice", True),
    Case("After eliminating options, I pick D", "D", "choice", True),
    Case("After eliminating options, I pick D", "A", "choice", False),
    Case("Answer: A", "A", "choice", True),
    Case("Answer: a bit of everything, probably E", "A", "choice", False),
    Case("I don't know.", "A", "choice", False),
]


def all_cases() -> list[Case]:
    templates = (boxed, minerva)
    math = [
        Case(templates[i % 2](answer), reference, "math", expected)
        for i, (answer, reference, expected) in enumerate(MATH_BOXED)
    ]
    return math + OTHER
