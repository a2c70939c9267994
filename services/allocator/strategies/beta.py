"""The Beta maths of the posterior gate: a Beta(alpha, beta) posterior over a prompt's
pass rate and its CDF (the regularized incomplete beta function)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Posterior:
    """Beta(alpha, beta) over a pass rate p."""

    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def signal(self) -> float:
        """E[p(1-p)]: the expected reward variance of one rollout."""
        total = self.alpha + self.beta
        return self.alpha * self.beta / (total * (total + 1.0))

    def cdf(self, x: float) -> float:
        return beta_cdf(x, self.alpha, self.beta)

    def updated(self, successes: int, failures: int) -> Posterior:
        return Posterior(self.alpha + successes, self.beta + failures)


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
        + b * math.log1p(-x)
    )  # fmt: skip
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return h
