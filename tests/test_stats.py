"""Seed-noise statistics: Welch's test and interval against scipy's own, the power figures against
statsmodels' ``TTestIndPower`` and Cohen's published sample sizes."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.power import TTestIndPower

from adamp_repro.results import stats

A, B = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.5]


def equal_spread(n: int, sd: float = 1.0) -> stats.WelchResult:
    """A result with ``n`` seeds per arm and sample sd ``sd`` on both arms (the second arm shifted by 1)."""
    spread = math.sqrt(sum((i - (n - 1) / 2) ** 2 for i in range(n)) / (n - 1))
    a = [(i - (n - 1) / 2) * sd / spread for i in range(n)]
    result = stats.welch_test(a, [v + 1.0 for v in a])
    assert math.sqrt(result.var_a) == pytest.approx(sd) and result.var_a == pytest.approx(result.var_b)
    return result


@pytest.mark.parametrize(
    ("t", "dof"), [(12.7062047, 1), (2.776445105, 4), (2.228138852, 10), (2.042272456, 30)]
)
def test_student_t_matches_printed_critical_values(t: float, dof: float) -> None:
    # Two-sided 5% critical values of Student's t (standard tables).
    assert stats.t_two_sided_p(t, dof) == pytest.approx(0.05, abs=1e-7)


def test_welch_test_and_interval_match_scipy() -> None:
    ours = stats.welch_test(A, B)
    ref = scipy_stats.ttest_ind(B, A, equal_var=False)
    interval = ref.confidence_interval(confidence_level=stats.CONFIDENCE)
    assert ours.t == pytest.approx(ref.statistic) and ours.p == pytest.approx(ref.pvalue)
    assert ours.dof == pytest.approx(ref.df)
    assert (ours.ci_low, ours.ci_high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    known = stats.welch_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0])
    assert known.p == pytest.approx(0.010077, abs=1e-6) and known.dof == pytest.approx(4.959184, abs=1e-6)


@pytest.mark.parametrize(("d", "n"), [(0.5, 10), (1.0, 3), (2.0, 2), (0.3, 40)])
def test_power_matches_statsmodels(d: float, n: int) -> None:
    # Equal arms with equal spread: Welch's dof is 2(n - 1), the pooled test's, so the two must agree.
    se, dof = math.sqrt(2.0 / n), 2.0 * (n - 1)
    expected = TTestIndPower().power(effect_size=d, nobs1=n, alpha=stats.ALPHA, ratio=1.0)
    assert stats.power_of(d, se, dof) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_detectable_gain_matches_statsmodels(n: int) -> None:
    result = equal_spread(n, sd=1.7)
    d = TTestIndPower().solve_power(nobs1=n, alpha=stats.ALPHA, power=stats.POWER, ratio=1.0)
    assert stats.detectable_gain(result) == pytest.approx(d * 1.7, rel=1e-6)


@pytest.mark.parametrize("d", [0.2, 0.5, 0.8, 1.2, 2.0])
def test_seeds_needed_matches_statsmodels(d: float) -> None:
    result = equal_spread(3, sd=0.9)
    n = TTestIndPower().solve_power(effect_size=d, alpha=stats.ALPHA, power=stats.POWER, ratio=1.0)
    assert stats.seeds_needed(result, d * 0.9) == math.ceil(n)
    assert stats.seeds_needed(result, -d * 0.9) == math.ceil(n)  # two-sided: the sign does not matter


def test_seeds_needed_matches_cohens_published_table() -> None:
    # Cohen (1992), "A power primer", Psychological Bulletin 112(1), Table 2: two-sample t test, two-sided
    # alpha 0.05, power 0.80: 393 / 64 / 26 per group for small / medium / large effects (d = 0.2 / 0.5 / 0.8).
    # Cohen's tables round an approximation; the exact noncentral t gives 393.4 -> 394 for the small effect.
    result = equal_spread(2, sd=1.0)
    assert stats.seeds_needed(result, 0.5) == 64
    assert stats.seeds_needed(result, 0.8) == 26
    assert abs(stats.seeds_needed(result, 0.2) - 393) <= 1


def test_seeds_needed_inverts_detectable_gain_with_unequal_spreads() -> None:
    result = stats.welch_test([70.1, 70.9, 69.8, 70.4], [70.6, 72.9, 69.0, 71.8])
    assert result.var_b > 4 * result.var_a  # Welch's case: the pooled test would not apply
    gain = stats.detectable_gain(result)
    assert stats.power_of(gain, result.se, result.dof) == pytest.approx(stats.POWER, abs=1e-9)
    assert stats.seeds_needed(result, gain * 1.001) == 4  # the seeds at hand detect their own detectable gain
    assert stats.seeds_needed(result, gain * 0.9) > 4


def test_one_seed_zero_spread_and_impossible_targets() -> None:
    one = stats.welch_test([1.0], [2.0, 3.0])
    assert one.test == stats.NOT_APPLICABLE_ONE_SEED == "n/a (one seed)" and one.gain == 1.5
    assert all(
        math.isnan(x) for x in (one.p, one.ci_low, stats.detectable_gain(one), stats.seeds_needed(one, 1))
    )
    assert stats.welch_test([], [2.0]).test == stats.NOT_APPLICABLE_NO_RUNS
    flat = stats.welch_test([1.0, 1.0], [1.0, 1.0])
    assert flat.p == 1.0 and stats.detectable_gain(flat) == 0.0 and stats.seeds_needed(flat, 0.5) == 2
    noisy = stats.welch_test([60.0, 70.0], [50.0, 80.0])
    assert math.isnan(stats.seeds_needed(noisy, math.nan))
    assert stats.seeds_needed(noisy, 0.0) == math.inf
    assert stats.seeds_needed(noisy, 1e-3) == math.inf  # beyond MAX_SEEDS: not a number to plan with
    with pytest.raises(ValueError, match="-1"):
        stats.t_two_sided_p(1.0, -1)


def test_paired_seeds_needed_agrees_with_the_detectable_gain():
    """The seeds a paired gain needs and the gain some seeds detect are one computation read two ways: at the
    detectable gain of n paired seeds, n seeds are needed (and fewer do not suffice)."""
    from adamp_repro.results.stats import detectable_gain, paired_seeds_needed, paired_test

    result = paired_test([0.7, -0.1, 1.5, -0.4, -0.8])
    gain = detectable_gain(result)
    assert paired_seeds_needed(result, gain * 1.001) == 5
    assert paired_seeds_needed(result, gain * 0.95) > 5
    assert paired_seeds_needed(result, 0.0) == math.inf and math.isnan(paired_seeds_needed(result, math.nan))
