"""A tiny evaluator of LaTeX arithmetic, to settle most pairs without sympy.

Most symbolic work in an RL batch goes to wrong answers: math-verify tries every
strategy before it concludes "not equal", about 25 ms a pair. Evaluating both sides in
floating point (variables at a few fixed points) proves most of them different in
microseconds: a clear numeric difference is proof. Agreement is proof only for
constants agreeing to 12 significant digits (`3\\sqrt{2}` and `\\sqrt{18}`), tighter than
math-verify's own 6-digit rounding; expressions with variables that agree at the sample
points go to math-verify.

Rational constants (numbers, `+ - * /`, integer powers, `\\frac`) are also evaluated
exactly, as Fractions (`exact_constant`): `\\frac{1}{2^{98}}` and `\\frac{1}{2^{99}}`, or
`2^{100}` and `2^{100}+1`, agree to any float tolerance and are still different.

Supported: numbers, `+ - * / ^`, `\\cdot`, `\\times`, implicit products, `( )`, `{ }`,
`\\frac`, `\\sqrt`, `\\sqrt[n]`, `\\pi`, `\\infty` and single-letter variables. Anything
else (other commands, `!`, `=`, `%`, `e`, `i`) makes `evaluate` return None: not decided.
Limits on exponents, exact sizes and nesting keep hostile input cheap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction

_TOKEN = re.compile(r"\s*(\d+\.?\d*|\.\d+|\\[a-zA-Z]+|[a-zA-Z]|[-+*/^(){}\[\]])")
_MAX_EXPONENT = 1000.0
_MAX_TOKENS = 400
# Largest exact power worked out, in bits of numerator or denominator (2^{4096} is fine,
# a tower that would take seconds of bigint arithmetic is not).
_MAX_EXACT_BITS = 8192
# Fixed, "generic" points: a polynomial identity that fails fails at these.
POINTS = (0.7315, 1.9172, -1.2838)
_NOT_VARIABLES = frozenset("ei")  # Euler's number and the imaginary unit: left to sympy


class _Unsupported(Exception):
    pass


Number = float | Fraction


class _Parser:
    """Recursive descent over tokens; `env` maps variable names to values.

    With `exact`, literals are Fractions, so rational arithmetic stays exact; an irrational
    step (`\\sqrt`, `\\pi`, a fractional power) turns the value into a float.
    """

    def __init__(self, tokens: list[str], env: Callable[[str], float], exact: bool = False) -> None:
        self.tokens, self.pos, self.env = tokens, 0, env
        self.number: Callable[[str], Number] = _exact_literal if exact else float
        # A float sum that absorbed a much smaller term (`2^{100}\\sqrt{2}+1`) or cancelled
        # most of its digits no longer tells equal values from different ones.
        self.lossy = False

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _Unsupported
        self.pos += 1
        return token

    def expr(self) -> Number:
        value = self.term()
        while self.peek() in ("+", "-"):
            sign = 1 if self.take() == "+" else -1
            term = self.term()
            total = value + sign * term
            if isinstance(total, float) and _lossy(value, term, total):
                self.lossy = True
            value = total
        return value

    def term(self) -> Number:
        value = self.unary()
        while (token := self.peek()) is not None and token not in "+-)}]":
            if token in ("*", "\\cdot", "\\times"):
                self.take()
                value *= self.unary()
            elif token == "/":
                self.take()
                value /= self.unary()
            else:  # implicit product: 2x, 3\sqrt{2}, (x+1)(x-1)
                value *= self.power()
        return value

    def unary(self) -> Number:
        if self.peek() in ("-", "+"):
            sign = -1 if self.take() == "-" else 1
            return sign * self.unary()
        return self.power()

    def power(self) -> Number:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        exponent = self.group() if self.peek() == "{" else self.single()
        if _size(exponent) > _MAX_EXPONENT or (_size(base) > 1 and _size(exponent) > 300):
            raise _Unsupported
        if isinstance(base, Fraction) and isinstance(exponent, Fraction):
            bits = max(base.numerator.bit_length(), base.denominator.bit_length())
            if exponent.denominator == 1 and bits * abs(exponent) > _MAX_EXACT_BITS:
                raise _Unsupported
        result = base**exponent
        if isinstance(result, complex):
            raise _Unsupported
        return result

    def group(self) -> Number:
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def single(self) -> Number:
        # `x^23` is x^2 * 3 in LaTeX: an ungrouped exponent is one character.
        token = self.take()
        if token[0].isdigit():
            if len(token) > 1:
                self.tokens.insert(self.pos, token[1:])
            return self.number(token[0])
        self.pos -= 1
        return self.atom()

    def atom(self) -> Number:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            return self.number(token)
        if token in ("(", "{"):
            value = self.expr()
            self.take(")" if token == "(" else "}")
            return value
        if token == "\\frac":
            return self.group() / self.group()
        if token == "\\sqrt":
            return self.root()
        if token == "\\pi":
            return math.pi
        if token == "\\infty":
            return math.inf
        if len(token) == 1 and token.isalpha() and token not in _NOT_VARIABLES:
            return self.env(token)
        raise _Unsupported

    def root(self) -> Number:
        degree: Number = 2.0
        if self.peek() == "[":
            self.take()
            degree = self.expr()
            self.take("]")
        radicand = self.group() if self.peek() == "{" else self.atom()
        if radicand < 0 or degree == 0:
            raise _Unsupported
        return float(radicand ** (1.0 / degree))


def _exact_literal(token: str) -> Number:
    # A decimal is an approximation as written (0.333333 for 1/3): it stays a float, and
    # how close it must come is math-verify's rule, not exact equality.
    return float(token) if "." in token else Fraction(token)


def _lossy(a: Number, b: Number, total: Number) -> bool:
    big, small = max(_size(a), _size(b)), min(_size(a), _size(b))
    if big == 0 or math.isinf(big):
        return False
    return 0 < small < 1e-9 * big or _size(total) < 1e-6 * big


def tokenize(text: str) -> list[str] | None:
    tokens, pos = [], 0
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if found is None:
            if text[pos:].strip() == "":
                break
            return None
        tokens.append(found.group(1))
        pos = found.end()
        if len(tokens) > _MAX_TOKENS:
            return None
    return tokens


_MIXED_NUMBER = re.compile(r"\d\s*\\frac")


def _run(text: str, env: Callable[[str], float], exact: bool) -> Number | None:
    if _MIXED_NUMBER.search(text):
        return None  # `4\\frac{2}{3}` is 4 + 2/3 to graders, 4 * 2/3 to a parser
    tokens = tokenize(text)
    if not tokens:
        return None
    parser = _Parser(tokens, env, exact)
    try:
        value = parser.expr()
    except (_Unsupported, ArithmeticError, ValueError, RecursionError):
        return None
    if parser.pos != len(parser.tokens) or parser.lossy:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def evaluate(text: str, env: Callable[[str], float]) -> float | None:
    """The value of `text` with variables from `env`, or None if not supported."""
    value = _run(text, env, exact=False)
    return None if value is None else float(value)


def variables(text: str) -> set[str]:
    tokens = tokenize(text) or []
    return {t for t in tokens if len(t) == 1 and t.isalpha() and t not in _NOT_VARIABLES}


def _as_float(value: Number) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def _size(value: Number) -> float:
    return abs(_as_float(value))


def _differ(a: Number, b: Number) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a != b
    a, b = _as_float(a), _as_float(b)
    if math.isinf(a) or math.isinf(b):
        return a != b
    return not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9)


def provably_different(reference: str, answer: str) -> bool:
    """True when both evaluate and differ at some point: then they are not equal."""
    names = sorted(variables(reference) | variables(answer))
    if not names:  # constants: exact when both are rational
        ref_value, ans_value = _value(reference), _value(answer)
        return ref_value is not None and ans_value is not None and _differ(ref_value, ans_value)
    if len(names) > 3:
        return False
    for shift in range(len(POINTS)):
        values = {name: POINTS[(shift + i) % len(POINTS)] + i for i, name in enumerate(names)}
        ref = evaluate(reference, values.__getitem__)
        ans = evaluate(answer, values.__getitem__)
        if ref is None or ans is None:
            return False
        if _differ(ref, ans):
            return True
    return False


def _no_variables(name: str) -> float:
    raise _Unsupported


def constant(text: str) -> float | None:
    """The value of a variable-free expression, else None."""
    return evaluate(text, _no_variables)


def exact_constant(text: str) -> Fraction | None:
    """The exact value of a rational constant (`\\frac{1}{2^{98}}`, `10^{20}+1`), else None.

    None also for irrational constants (`\\sqrt{2}`, `\\pi`) and anything `constant`
    refuses.
    """
    value = _run(text, _no_variables, exact=True)
    return value if isinstance(value, Fraction) else None


def _split_top_level(inner: str) -> list[str] | None:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(inner):
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
            if depth < 0:
                return None  # "(1,2)\\cup(3,4)": not one container
        elif char == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return parts


def _value(text: str) -> Number | None:
    exact = exact_constant(text)
    return exact if exact is not None else constant(text)


def _container(text: str) -> tuple[str, list[Number], str] | None:
    """(opener, element values, closer) of `\\{a,b\\}`, `(a,b)`, `[a,b)`, bare `a,b`, or
    a lone constant (a one-element set to compare with a set)."""
    if text.startswith("\\{") and text.endswith("\\}"):
        opener, closer, inner = "{", "}", text[2:-2]
    elif text[:1] in "([" and text[-1:] in ")]":
        opener, closer, inner = text[0], text[-1], text[1:-1]
    else:
        opener, closer, inner = "", "", text
    parts = _split_top_level(inner)
    if parts is None or (len(parts) < 2 and opener != "{" and opener != ""):
        return None
    values = [_value(part) for part in parts]
    if any(value is None for value in values):
        return None
    return opener, [v for v in values if v is not None], closer


def _agree(a: Number, b: Number) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    return a == b or math.isclose(_as_float(a), _as_float(b), rel_tol=1e-12, abs_tol=0.0)


def equal_constants(reference: str, answer: str) -> bool:
    """True for two constants, or two same-shaped containers of constants, that agree:
    exactly for rational ones, to 12 significant digits otherwise."""
    a, b = _value(reference), _value(answer)
    if a is not None and b is not None:
        return _agree(a, b)
    ref, ans = _container(reference), _container(answer)
    if ref is None or ans is None:
        return False
    if ref[0] in ("{", "") and ans[0] in ("{", ""):  # a bare list is a set of solutions
        a_set, b_set = _distinct(ref[1]), _distinct(ans[1])
        return len(a_set) == len(b_set) and all(map(_agree, a_set, b_set))
    if (ref[0], ref[2]) != (ans[0], ans[2]):
        return False
    return len(ref[1]) == len(ans[1]) and all(map(_agree, ref[1], ans[1]))


def _distinct(values: list[Number]) -> list[Number]:
    ordered = sorted(values)
    return [v for i, v in enumerate(ordered) if i == 0 or _differ(ordered[i - 1], v)]


def _sets_differ(a: list[Number], b: list[Number]) -> bool:
    a, b = _distinct(a), _distinct(b)
    return len(a) != len(b) or any(_differ(x, y) for x, y in zip(a, b, strict=True))


def containers_differ(reference: str, answer: str) -> bool:
    """True for two sets, tuples or intervals of constants that are surely not equal."""
    ref, ans = _container(reference), _container(answer)
    if ref is None or ans is None:
        return False
    ref_set, ans_set = ref[0] in ("{", ""), ans[0] in ("{", "")
    if ref_set != ans_set:
        return False  # a set against a tuple: the grader's conventions decide
    if ref_set:
        # Two lone constants are for the number comparison, not for this one.
        return (len(ref[1]) > 1 or len(ans[1]) > 1) and _sets_differ(ref[1], ans[1])
    if len(ref[1]) != len(ans[1]):
        return False
    if any(_differ(a, b) for a, b in zip(ref[1], ans[1], strict=True)):
        return True
    # Same endpoints, other brackets: [1,2) is not (1,2) nor [1,2].
    return len(ref[1]) == 2 and (ref[0], ref[2]) != (ans[0], ans[2])
