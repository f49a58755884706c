"""Summaries of repeated draws: mean, standard deviation and Student-t confidence intervals,
of one method's scores and of paired differences between two methods over the same draws.

Plain NumPy (SciPy stays a test-only dependency). The t quantile is exact for the integer
degrees of freedom a sample of n draws has (n - 1): the two-sided probability P(|T| <= t)
of Student's t with an integer number of degrees of freedom is a finite sum of powers of
cos(theta), theta = atan(t / sqrt(df)) (Abramowitz and Stegun 26.7.3 and 26.7.4), which is
inverted by bisection over theta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

LEVEL = 0.95  # confidence level of every interval the report shows


def _two_sided(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df) tan(theta)) for Student's t with `df` (>= 1) degrees of freedom."""
    c2 = math.cos(theta) ** 2
    s = math.sin(theta)
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 c^2 + 2.4/(3.5) c^4 + ...)), the sum empty for df = 1
        term, total = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return (2.0 / math.pi) * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 c^2 + 1.3/(2.4) c^4 + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(level: float, df: int) -> float:
    """t such that P(|T| <= t) = `level` for Student's t with integer `df` >= 1 degrees of
    freedom: the half-width factor of a two-sided `level` interval (12.706 for 0.95, df 1)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer, got {df}")
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):  # theta to double precision (the interval halves each time)
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _two_sided(mid, int(df)) < level:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan(0.5 * (lo + hi))


def summary(values: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """n, mean, sample standard deviation (ddof 1) and the two-sided Student-t `level`
    interval of the mean, [mean -+ t(level, n - 1) sd / sqrt(n)], of `values` (n,). With one
    value, sd and the interval are None. JSON values."""
    x = np.asarray(values, np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("no values to summarise")
    n, mean = int(x.size), float(np.mean(x))
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci": None, "level": level}
    sd = float(np.std(x, ddof=1))
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci": [mean - half, mean + half], "level": level}


def paired(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """`summary` of the differences a - b of two methods' scores over the same draws (n,):
    the paired t-interval of the mean difference."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.size} vs {b.size}")
    return summary(a - b, level)
