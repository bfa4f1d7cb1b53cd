"""The statistics module against scipy and hand-computed values."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
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


@pytest.mark.parametrize("n", [2, 3])
def test_compare_at_2_and_3_trials_says_it_cannot_test(n):
    # complete separation, a fivefold difference: still no rank test can call it at n+n
    r = stats.compare(np.arange(n) + 1.0, np.arange(n) + 10.0)
    assert r.verdict == f"too few trials to test: {n}+{n}, a rank test needs 4+4"
    assert not stats.is_tested(r.verdict)
    # the p-value is still given: the smallest possible, 2 of C(2n, n) splits
    assert math.isclose(r.p_value, 2 / math.comb(2 * n, n))
    assert math.isclose(r.p_value, sps.mannwhitneyu(range(n), range(10, 10 + n)).pvalue)


def test_compare_at_4_trials_with_complete_separation_can_call_it():
    r = stats.compare([1.0, 2.0, 3.0, 4.0], [10.0, 11.0, 12.0, 13.0])
    assert math.isclose(r.p_value, 2 / 70)
    assert r.verdict == stats.SLOWER and stats.is_tested(r.verdict)
    # overlapping arms at 4+4 are tested and not called
    overlap = stats.compare([1.0, 2.0, 3.0, 4.0], [2.5, 3.5, 4.5, 5.5])
    assert overlap.verdict == stats.NO_DIFFERENCE


def test_minimum_p_is_that_of_the_exact_distribution():
    for n_a, n_b in [(2, 2), (2, 5), (3, 3), (3, 4), (4, 4), (2, 8), (5, 5)]:
        splits = list(itertools.combinations(range(n_a + n_b), n_a))
        sums = [sum(c) for c in splits]
        mean = sum(sums) / len(sums)
        most = max(abs(v - mean) for v in sums)
        exact = sum(abs(v - mean) >= most for v in sums) / len(splits)
        assert math.isclose(stats.min_rank_test_p(n_a, n_b), exact), (n_a, n_b)
        assert stats.can_test(n_a, n_b) == (exact < 0.05)
    assert stats.rank_test_min_n() == 4
    assert stats.rank_test_min_n(0.01) == 5  # 2/252 = 0.0079; 4+4 gives 0.029
    assert stats.too_few_verdict(3, 4) == "too few trials to test: 3+4, a rank test needs 4+4"


def test_constant_arms_that_differ_are_not_no_difference():
    # VRAM read as the same whole MiB in every trial: 0.98 [0.98, 0.98]
    words = ("less memory", "more memory")
    three = stats.compare([1500.0] * 3, [1470.0] * 3, words=words)
    assert (three.ratio, three.ci_low, three.ci_high) == (0.98, 0.98, 0.98)
    assert three.verdict.startswith(stats.TOO_FEW)
    # the normal approximation with its tie correction would have called it (p = 0.047)
    assert sps.mannwhitneyu([1500.0] * 3, [1470.0] * 3).pvalue < 0.05
    assert math.isclose(three.p_value, 0.1)
    four = stats.compare([1500.0] * 4, [1470.0] * 4, words=words)
    assert four.verdict == "less memory" and math.isclose(four.p_value, 2 / 70)
    same = stats.compare([1500.0] * 5, [1500.0] * 5, words=words)
    assert same.verdict == stats.NO_DIFFERENCE and same.p_value == 1.0


def test_tied_p_is_the_exact_permutation_p():
    rng = np.random.default_rng(11)
    for _ in range(60):
        n_a, n_b = (int(v) for v in rng.integers(2, 6, 2))
        a, b = rng.integers(0, 4, n_a).astype(float), rng.integers(0, 4, n_b).astype(float)
        pooled = np.concatenate([a, b])
        if np.ptp(pooled) == 0:
            continue
        ranks = sps.rankdata(pooled)
        mean = n_a * (n_a + n_b + 1) / 2
        observed = abs(ranks[:n_a].sum() - mean)
        splits = list(itertools.combinations(range(n_a + n_b), n_a))
        extreme = sum(abs(ranks[list(c)].sum() - mean) >= observed - 1e-9 for c in splits)
        assert math.isclose(stats.rank_test_p(a, b), extreme / len(splits))


def test_untied_p_is_scipys_as_before():
    # A/A behaviour rests on these p-values: without ties they are scipy's, unchanged
    rng = np.random.default_rng(12)
    for n in (5, 9, 25):
        a, b = rng.normal(50, 5, n), rng.normal(50, 5, n)
        expected = sps.mannwhitneyu(a, b, alternative="two-sided").pvalue
        assert stats.compare(a, b).p_value == expected


def test_one_replicate_is_not_tested():
    r = stats.compare([1.0], [10.0, 11.0])
    assert r.verdict == stats.NOT_TESTED and math.isnan(r.p_value)
    assert not stats.is_tested(r.verdict)


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
