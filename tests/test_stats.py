"""The statistics module against scipy and hand-computed values."""

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from mateperf import stats


def test_summarize_matches_numpy():
    x = [5.0, 1.0, 3.0, 2.0, 4.0, 100.0]
    s = stats.summarize(x)
    assert s["n"] == 6
    assert s["median"] == 3.5
    assert s["mean"] == np.mean(x)
    assert math.isclose(s["std"], np.std(x, ddof=1))
    assert s["p5"] == np.percentile(x, 5)
    assert s["p99"] == np.percentile(x, 99)
    assert (s["min"], s["max"]) == (1.0, 100.0)
    assert s["ci_low"] <= s["median"] <= s["ci_high"]


def test_summarize_ignores_nan_and_handles_empty():
    assert stats.summarize([1.0, float("nan"), 3.0])["n"] == 2
    empty = stats.summarize([])
    assert empty["n"] == 0 and math.isnan(empty["median"])
    one = stats.summarize([7.0])
    assert one["median"] == 7.0 and math.isnan(one["ci_low"])


def test_bootstrap_ci_is_deterministic_and_covers_median():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 1, 200)
    a, b = stats.bootstrap_ci(x), stats.bootstrap_ci(x)
    assert a == b
    assert a[0] < np.median(x) < a[1]
    # the CI of the median of N(10,1) with n=200 is about ±0.18 wide on each side
    assert 0.1 < a[1] - a[0] < 0.6


def test_compare_detects_a_real_difference():
    rng = np.random.default_rng(1)
    a = rng.normal(100, 5, 30)
    b = rng.normal(80, 5, 30)
    r = stats.compare(a, b)  # lower is better: latency
    assert r.verdict == stats.FASTER
    assert r.ratio == np.median(b) / np.median(a)
    assert r.ci_high < 1.0
    assert math.isclose(r.p_value, sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    # the same data read as throughput (higher is better) is a slowdown
    assert stats.compare(a, b, higher_is_better=True).verdict == stats.SLOWER


def test_compare_same_distribution_is_no_difference():
    rng = np.random.default_rng(2)
    a = rng.normal(50, 5, 25)
    b = rng.normal(50, 5, 25)
    assert stats.compare(a, b).verdict == stats.NO_DIFFERENCE


def test_compare_too_few_samples_is_no_difference():
    r = stats.compare([1.0, 2.0], [10.0, 11.0])
    # two against two can never reach p < 0.05 with a rank test (min p = 1/3)
    assert math.isclose(r.p_value, 1 / 3)
    assert r.verdict == stats.NO_DIFFERENCE


def test_slope_matches_hand_computed_values():
    x = [0, 1, 2, 3, 4]
    y = [1.0, 3.0, 5.0, 7.0, 9.5]
    fit = stats.slope(x, y)
    # hand: x̄=2, ȳ=5.1, Sxy=Σ(x-x̄)(y-ȳ)=21.0, Sxx=10 → slope 2.1, intercept 0.9
    assert math.isclose(fit.slope, 2.1)
    assert math.isclose(fit.intercept, 0.9)
    ref = sps.linregress(x, y)
    half = sps.t.ppf(0.975, 3) * ref.stderr
    assert math.isclose(fit.ci_low, ref.slope - half)
    assert math.isclose(fit.ci_high, ref.slope + half)


def test_slope_of_flat_noise_ci_contains_zero():
    rng = np.random.default_rng(3)
    x = np.arange(100)
    fit = stats.slope(x, 400 + rng.normal(0, 1, 100))
    assert fit.ci_low < 0 < fit.ci_high


def test_summary_table_groups_in_order():
    df = pd.DataFrame({"arm": ["b", "a", "b", "a"], "ms": [1.0, 2.0, 3.0, 4.0]})
    t = stats.summary_table(df, ["arm"], ["ms", "missing"])
    assert list(t["arm"]) == ["b", "a"]
    assert list(t["median"]) == [2.0, 3.0]
    assert set(t.columns) >= {"n", "p99", "ci_low", "ci_high", "metric"}


def test_slope_of_a_flat_series_is_zero_with_a_zero_width_ci():
    fit = stats.slope(range(16), [412.5] * 16)
    assert (fit.slope, fit.ci_low, fit.ci_high) == (0.0, 0.0, 0.0)
