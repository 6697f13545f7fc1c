"""Seed-noise test for a gain between two optimizers: Welch's two-sample t-test, two-sided.

scipy is not a dependency of the suite, so the t distribution is evaluated here from the regularized
incomplete beta function (continued fraction, modified Lentz); when scipy is importable it is used instead
and the tests check the two agree. ``TEST_DESCRIPTION`` names the backend so every table says which ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

try:  # optional: identical results to ~1e-12, see tests
    from scipy import stats as _scipy_stats
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_stats = None

ALPHA = 0.05
BACKEND = "scipy.stats.t" if _scipy_stats is not None else "own regularized incomplete beta"
TEST_DESCRIPTION = (
    f"Welch's t-test, two-sided, p < {ALPHA} (needs ≥ 2 seeds on each side; t distribution: {BACKEND})"
)
NOT_APPLICABLE_ONE_SEED = "n/a (1 seed)"
NOT_APPLICABLE_NO_RUNS = "n/a (no runs)"


@dataclass(frozen=True)
class WelchResult:
    """``gain = mean(b) - mean(a)``; ``p`` is NaN and ``test`` says why when a side has fewer than 2 seeds."""

    gain: float
    t: float
    dof: float
    p: float
    test: str

    @property
    def beyond_noise(self) -> bool | None:
        return None if math.isnan(self.p) else self.p < ALPHA


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1 (Numerical Recipes 6.4, continued fraction)."""
    if a <= 0 or b <= 0:
        raise ValueError(f"Invalid beta parameters: a={a!r}, b={b!r} (both must be > 0)")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"Invalid x for the incomplete beta: {x!r} (expected 0 <= x <= 1)")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast only for x < (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float, max_iter: int = 500, eps: float = 1e-15) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"Incomplete beta did not converge for a={a}, b={b}, x={x}")


def t_two_sided_p(t: float, dof: float) -> float:
    """P(|T| >= |t|) for Student's t with ``dof`` (> 0, may be fractional) degrees of freedom."""
    if not dof > 0:
        raise ValueError(f"Invalid degrees of freedom: {dof!r} (must be > 0)")
    if math.isinf(t):
        return 0.0
    if _scipy_stats is not None:
        return float(2.0 * _scipy_stats.t.sf(abs(t), dof))
    return regularized_incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Test whether ``mean(b) - mean(a)`` is beyond seed noise; ``a`` is the baseline's per-seed values."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        return WelchResult(math.nan, math.nan, math.nan, math.nan, NOT_APPLICABLE_NO_RUNS)
    gain = _mean(b) - _mean(a)
    if len(a) < 2 or len(b) < 2:
        return WelchResult(gain, math.nan, math.nan, math.nan, NOT_APPLICABLE_ONE_SEED)
    va, vb = _variance(a) / len(a), _variance(b) / len(b)
    se2 = va + vb
    if se2 == 0.0:
        # Identical values within each side (e.g. fully deterministic runs): any nonzero gap is exact.
        return WelchResult(
            gain, math.copysign(math.inf, gain) if gain else 0.0, math.nan, 0.0 if gain else 1.0, "welch_t"
        )
    dof = se2 * se2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    t = gain / math.sqrt(se2)
    return WelchResult(gain, t, dof, t_two_sided_p(t, dof), "welch_t")


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _variance(values: Sequence[float]) -> float:
    """Sample variance (ddof = 1)."""
    mean = _mean(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
