"""Seed-noise statistics of a gain between two optimizers: Welch's test, its interval, and its power.

Everything is two-sided at ``ALPHA``; the power figures use ``POWER``. The t and noncentral t distributions
come from ``scipy.stats`` (the tests check the power figures against ``statsmodels``' ``TTestIndPower`` and
Cohen's published sample sizes).

- ``welch_test``: the gain ``mean(b) - mean(a)``, Welch's t, its Welch-Satterthwaite degrees of freedom, the
  p value and the 95% confidence interval ``gain ± t_{1-alpha/2, dof} · se``.
- ``detectable_gain``: the smallest |gain| that the seeds at hand detect with probability ``POWER``, from the
  noncentral t with the observed spread (the spread is an estimate, so this is a planning figure, not a bound).
- ``seeds_needed``: seeds per arm (equal arms, the observed spreads) to detect a target gain with ``POWER``.

With fewer than two seeds on a side there is no spread: every figure is NaN and ``test`` says
``NOT_APPLICABLE_ONE_SEED``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import optimize
from scipy import stats as scipy_stats

ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 1.0 - ALPHA
# Beyond this many seeds per arm the answer is "more than MAX_SEEDS" (inf), not a number to plan with.
MAX_SEEDS = 100_000
TEST_DESCRIPTION = (
    f"Welch's t-test, two-sided, p < {ALPHA} (needs ≥ 2 seeds on each side; t distribution: scipy.stats.t)"
)
POWER_DESCRIPTION = (
    f"two-sided, alpha {ALPHA}, power {POWER}, from the noncentral t (scipy.stats.nct) with the observed "
    "spread of each arm and Welch's degrees of freedom"
)
NOT_APPLICABLE_ONE_SEED = "n/a (one seed)"
NOT_APPLICABLE_NO_RUNS = "n/a (no runs)"


@dataclass(frozen=True)
class WelchResult:
    """``gain = mean(b) - mean(a)``; the rest is NaN and ``test`` says why when a side has fewer than 2 seeds.

    ``var_a`` / ``var_b`` are the sample variances (ddof 1) of each side, ``se`` the standard error of the gain.
    """

    gain: float
    t: float
    dof: float
    p: float
    test: str
    n_a: int = 0
    n_b: int = 0
    var_a: float = math.nan
    var_b: float = math.nan
    se: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan

    @property
    def beyond_noise(self) -> bool | None:
        return None if math.isnan(self.p) else self.p < ALPHA


def t_two_sided_p(t: float, dof: float) -> float:
    """P(|T| >= |t|) for Student's t with ``dof`` (> 0, may be fractional) degrees of freedom."""
    if not dof > 0:
        raise ValueError(f"Invalid degrees of freedom: {dof!r} (must be > 0)")
    if math.isinf(t):
        return 0.0
    return float(2.0 * scipy_stats.t.sf(abs(t), dof))


def welch_dof(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom of ``mean(b) - mean(a)``; NaN when both spreads are zero."""
    va, vb = var_a / n_a, var_b / n_b
    se2 = va + vb
    if se2 == 0.0:
        return math.nan
    return se2 * se2 / (va * va / (n_a - 1) + vb * vb / (n_b - 1))


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Test whether ``mean(b) - mean(a)`` is beyond seed noise; ``a`` is the baseline's per-seed values."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        return WelchResult(math.nan, math.nan, math.nan, math.nan, NOT_APPLICABLE_NO_RUNS, len(a), len(b))
    gain = _mean(b) - _mean(a)
    if len(a) < 2 or len(b) < 2:
        return WelchResult(gain, math.nan, math.nan, math.nan, NOT_APPLICABLE_ONE_SEED, len(a), len(b))
    var_a, var_b = _variance(a), _variance(b)
    se2 = var_a / len(a) + var_b / len(b)
    sizes = {"n_a": len(a), "n_b": len(b), "var_a": var_a, "var_b": var_b}
    if se2 == 0.0:
        # Identical values within each side (e.g. fully deterministic runs): any nonzero gap is exact.
        t = math.copysign(math.inf, gain) if gain else 0.0
        return WelchResult(
            gain, t, math.nan, 0.0 if gain else 1.0, "welch_t", **sizes, se=0.0, ci_low=gain, ci_high=gain
        )
    dof = welch_dof(var_a, len(a), var_b, len(b))
    se = math.sqrt(se2)
    half = float(scipy_stats.t.ppf(1.0 - ALPHA / 2.0, dof)) * se
    return WelchResult(
        gain,
        gain / se,
        dof,
        t_two_sided_p(gain / se, dof),
        "welch_t",
        **sizes,
        se=se,
        ci_low=gain - half,
        ci_high=gain + half,
    )


def paired_test(diffs: Sequence[float]) -> WelchResult:
    """Test whether the mean of per-seed differences (proposed minus baseline, the same seeds on both sides) is
    beyond seed noise: a one-sample t test on the differences, ``gain`` their mean, ``dof`` n - 1, the interval
    at ``CONFIDENCE``. The rest is NaN with fewer than 2 differences (``gain`` too with none)."""
    diffs = [float(d) for d in diffs]
    n = len(diffs)
    if not diffs:
        return WelchResult(math.nan, math.nan, math.nan, math.nan, NOT_APPLICABLE_NO_RUNS)
    gain = _mean(diffs)
    if n < 2:
        return WelchResult(gain, math.nan, math.nan, math.nan, NOT_APPLICABLE_ONE_SEED, n, n)
    se = math.sqrt(_variance(diffs) / n)
    if se == 0.0:
        t = math.copysign(math.inf, gain) if gain else 0.0
        return WelchResult(
            gain, t, n - 1, 0.0 if gain else 1.0, "paired_t", n, n, se=0.0, ci_low=gain, ci_high=gain
        )
    half = float(scipy_stats.t.ppf(1.0 - ALPHA / 2.0, n - 1)) * se
    t = gain / se
    return WelchResult(
        gain,
        t,
        n - 1,
        t_two_sided_p(t, n - 1),
        "paired_t",
        n,
        n,
        se=se,
        ci_low=gain - half,
        ci_high=gain + half,
    )


def power_of(gain: float, se: float, dof: float, alpha: float = ALPHA) -> float:
    """Probability that a two-sided t-test at ``alpha`` rejects when the true gain is ``gain``.

    The statistic is noncentral t with ``dof`` degrees of freedom and noncentrality ``gain / se``; both tails
    count, as in ``statsmodels.stats.power.TTestIndPower``.
    """
    crit = float(scipy_stats.t.ppf(1.0 - alpha / 2.0, dof))
    nc = gain / se
    # The lower tail P(T < -crit) as P(T > crit) at -nc: scipy's nct.cdf returns NaN there for large nc.
    power = float(scipy_stats.nct.sf(crit, dof, nc) + scipy_stats.nct.sf(crit, dof, -nc))
    if not math.isfinite(power):
        raise ArithmeticError(f"Power is not finite for gain={gain!r}, se={se!r}, dof={dof!r}")
    return min(power, 1.0)


def detectable_gain(result: WelchResult, power: float = POWER, alpha: float = ALPHA) -> float:
    """Smallest |gain| that ``result``'s seeds detect with probability ``power`` (their observed spreads).

    NaN without a spread estimate (fewer than 2 seeds on a side); 0 when both spreads are exactly zero.
    """
    if math.isnan(result.se):
        return math.nan
    if result.se == 0.0:
        return 0.0
    high = 1.0
    while power_of(high, 1.0, result.dof, alpha) < power:
        high *= 2.0
    nc = optimize.brentq(lambda x: power_of(x, 1.0, result.dof, alpha) - power, 0.0, high, xtol=1e-12)
    return float(nc) * result.se


def seeds_needed(
    result: WelchResult, target_gain: float, power: float = POWER, alpha: float = ALPHA
) -> float:
    """Seeds per arm (both arms equal, each with its observed spread) to detect ``target_gain`` with ``power``.

    NaN without a spread estimate or without a target; ``inf`` for a zero target or beyond ``MAX_SEEDS``;
    2 (the fewest a Welch test takes) when both spreads are exactly zero and the target is not.
    """
    total_var = result.var_a + result.var_b

    def power_at(n: int) -> float:
        dof = welch_dof(result.var_a, n, result.var_b, n)
        return power_of(abs(target_gain), math.sqrt(total_var / n), dof, alpha)

    return _fewest_seeds(result, target_gain, power_at, power)


def paired_seeds_needed(
    result: WelchResult, target_gain: float, power: float = POWER, alpha: float = ALPHA
) -> float:
    """Paired seeds (``paired_test``'s result: the spread of the per-seed differences) to detect ``target_gain``
    with ``power``; NaN without a spread or a target, ``inf`` for a zero target or beyond ``MAX_SEEDS``."""
    sd = result.se * math.sqrt(result.n_a) if result.n_a else math.nan

    def power_at(n: int) -> float:
        return power_of(abs(target_gain), sd / math.sqrt(n), n - 1, alpha)

    return _fewest_seeds(result, target_gain, power_at, power)


def _fewest_seeds(result: WelchResult, target_gain: float, power_at, power: float) -> float:
    """The smallest n in [2, MAX_SEEDS] with ``power_at(n) >= power``, by bisection (power grows with n); NaN
    without a spread or a target, ``inf`` for a zero target or beyond ``MAX_SEEDS``, 2 for a zero spread."""
    if math.isnan(result.se) or math.isnan(target_gain):
        return math.nan
    if target_gain == 0.0:
        return math.inf
    if result.se == 0.0:
        return 2.0
    if power_at(MAX_SEEDS) < power:
        return math.inf
    low, high = 2, MAX_SEEDS
    if power_at(low) >= power:
        return float(low)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power_at(mid) >= power else (mid, high)
    return float(high)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _variance(values: Sequence[float]) -> float:
    """Sample variance (ddof = 1)."""
    mean = _mean(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
