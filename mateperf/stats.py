"""Statistics every phase uses: pure functions over samples, each choice documented once.

- Centre: the median, because latency and throughput samples are skewed and a single
  stall (GC, page fault, scheduler) moves the mean a lot.
- Uncertainty of the median: a percentile bootstrap (2000 resamples, fixed seed so the same
  samples always give the same interval and reports regenerate byte-identically).
- A/B: the ratio of medians B/A with a bootstrap CI (A and B resampled independently), and
  a two-sided Mann–Whitney U test for "is there a difference at all". The verdict needs both
  p < alpha and a CI that excludes 1, so a tiny p from thousands of samples with a ratio CI
  that straddles 1 is not called a win. The samples given must be independent replicates
  (one value per trial): callers reduce per-request rows to per-trial statistics first
  (mateperf.compare.trial_values), because requests of one trial share its conditions and
  pooling them makes p-values far too small (an A/A pair of ipc runs pooled per request was
  called different on 30% of its metrics).
- Too few replicates to test: the exact Mann–Whitney test on n_a + n_b values can do no better
  than complete separation, p = 2 / C(n_a + n_b, n_a) (ties only make it larger): 1/3 at 2+2,
  1/10 at 3+3, 2/70 at 4+4. Where that minimum is not below alpha no data could be called
  different, so the verdict says so and names the replicates a test needs, instead of reading
  "no detectable difference", which would claim a test was made.
- Ties: with no ties the p-value is scipy's (exact for small arms, the normal approximation
  otherwise); with ties (constant VRAM readings, integer counts) it is the exact permutation
  p of the rank sum over mid-ranks where the arms are small enough to count every split, since
  the normal approximation with its tie correction calls 3+3 constant, different values
  different (p = 0.047) although only 1 split in 10 is as extreme.
- Trends (memory per message): ordinary least squares with a t-based 95% CI of the slope.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261126
CONFIDENCE = 0.95
ALPHA = 0.05

SUMMARY_KEYS = ("n", "median", "mean", "std", "p5", "p95", "p99", "min", "max", "ci_low", "ci_high")

FASTER = "faster"
SLOWER = "slower"
NO_DIFFERENCE = "no detectable difference"
# Fewer than two independent replicates in an arm: no test is possible, and none is pretended.
NOT_TESTED = "not tested (one replicate)"
# The rank test cannot reach alpha at these counts whatever the data (`too_few_verdict` words it:
# "too few trials to test: 2+2, a rank test needs 4+4").
TOO_FEW = "too few trials to test"
# Arms up to this many values together get the exact permutation p when they have ties.
EXACT_TIES_MAX_N = 60


def _clean(samples: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, float)
    return arr[np.isfinite(arr)]


def bootstrap_ci(
    samples: Sequence[float],
    statistic=np.median,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of `statistic`; (nan, nan) below two samples."""
    arr = _clean(samples)
    if arr.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = statistic(_resample(arr, rng, resamples), axis=1)
    return _percentile_interval(values, confidence)


def _resample(arr: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """`resamples` bootstrap resamples of arr, one per row."""
    return arr[rng.integers(0, arr.size, size=(resamples, arr.size))]


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def summarize(samples: Iterable[float]) -> dict[str, float]:
    """n, median, mean, std (ddof=1), p5/p95/p99, min/max and the 95% CI of the median."""
    arr = _clean(samples)
    if arr.size == 0:
        return {k: (0 if k == "n" else math.nan) for k in SUMMARY_KEYS}
    p5, p95, p99 = np.percentile(arr, [5, 95, 99])
    ci_low, ci_high = bootstrap_ci(arr)
    return {
        "n": int(arr.size),
        "median": float(np.median(arr)),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
        "p5": float(p5),
        "p95": float(p95),
        "p99": float(p99),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "ci_low": ci_low,
        "ci_high": ci_high,
    }


def summary_table(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group and metric with every `summarize` key; groups keep their order."""
    rows = []
    groups = df.groupby(by, sort=False, dropna=False) if by else [((), df)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            if metric not in group:
                continue
            row = dict(zip(by, key, strict=True))
            row["metric"] = metric
            row.update(summarize(group[metric]))
            rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "metric", *SUMMARY_KEYS])


@dataclass(frozen=True)
class ABResult:
    """B relative to A. `ratio` = median(B) / median(A)."""

    median_a: float
    median_b: float
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str
    n_a: int
    n_b: int

    def as_dict(self) -> dict:
        return asdict(self)


def ratio_ci(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Bootstrap CI of median(b)/median(a), resampling each arm independently."""
    a, b = _clean(a), _clean(b)
    if a.size < 2 or b.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ma = np.median(_resample(a, rng, resamples), axis=1)
    mb = np.median(_resample(b, rng, resamples), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = mb / ma
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return (math.nan, math.nan)
    return _percentile_interval(ratios, confidence)


def min_rank_test_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p the exact Mann–Whitney test can give on n_a + n_b values.

    Complete separation is the most extreme of the C(n_a + n_b, n_a) equally likely splits of
    the ranks, on either side: p = 2 / C(n_a + n_b, n_a), at most 1. Ties only make it larger.
    """
    if n_a < 1 or n_b < 1:
        return 1.0
    return min(1.0, 2 / math.comb(n_a + n_b, n_a))


def rank_test_min_n(alpha: float = ALPHA) -> int:
    """The fewest replicates per arm (equal arms) with which the rank test can reach p < alpha:
    4 at alpha 0.05 (2/70 = 0.029; 3+3 gives at best 2/20 = 0.1)."""
    n = 1
    while min_rank_test_p(n, n) >= alpha:
        n += 1
    return n


def can_test(n_a: int, n_b: int, alpha: float = ALPHA) -> bool:
    """Whether some data on n_a + n_b replicates could be called different at alpha."""
    return n_a >= 2 and n_b >= 2 and min_rank_test_p(n_a, n_b) < alpha


def too_few_verdict(n_a: int, n_b: int, alpha: float = ALPHA) -> str:
    """The verdict where `can_test` is false: the counts and what a test needs."""
    k = rank_test_min_n(alpha)
    return f"{TOO_FEW}: {n_a}+{n_b}, a rank test needs {k}+{k}"


def is_tested(verdict: str) -> bool:
    """Whether a verdict rests on a test (not one replicate, not too few to test)."""
    return verdict != NOT_TESTED and not str(verdict).startswith(TOO_FEW)


def rank_test_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann–Whitney p of a against b (NaN below one value a side).

    No ties: scipy's (exact for small arms, else the normal approximation). Ties: the exact
    permutation p over mid-ranks where n_a + n_b <= EXACT_TIES_MAX_N, else scipy's normal
    approximation with its tie correction. Every value equal: 1 (nothing tells them apart).
    """
    a, b = _clean(a), _clean(b)
    if a.size < 1 or b.size < 1:
        return math.nan
    pooled = np.concatenate([a, b])
    if np.ptp(pooled) == 0:
        return 1.0
    has_ties = np.unique(pooled).size < pooled.size
    if has_ties and pooled.size <= EXACT_TIES_MAX_N:
        return _exact_permutation_p(a.size, pooled)
    return float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def _exact_permutation_p(n_a: int, pooled: np.ndarray) -> float:
    """P(|W - E W| >= |w - E W|) for the rank sum W of n_a values drawn from `pooled`'s
    mid-ranks without replacement, every split equally likely; w is the first n_a values'.

    Counted exactly: twice a mid-rank is an integer, and the number of splits with each sum
    comes from the usual subset-sum recursion, in floats (relative error about 1e-16).
    """
    n = pooled.size
    twice = np.rint(2 * sps.rankdata(pooled)).astype(int)
    top = int(twice.sum())
    counts = np.zeros((n_a + 1, top + 1))
    counts[0, 0] = 1.0
    for i, r in enumerate(twice):
        for j in range(min(i + 1, n_a), 0, -1):
            counts[j, r:] += counts[j - 1, : top + 1 - r]
    splits = counts[n_a]
    mean2 = n_a * (n + 1)  # twice the expected rank sum
    observed = abs(int(twice[:n_a].sum()) - mean2)
    sums = np.arange(top + 1)
    extreme = splits[np.abs(sums - mean2) >= observed].sum()
    return float(min(1.0, extreme / splits.sum()))


def compare(
    a: Sequence[float],
    b: Sequence[float],
    higher_is_better: bool = False,
    alpha: float = ALPHA,
    words: tuple[str, str] = (FASTER, SLOWER),
) -> ABResult:
    """Is B better, worse, or not detectably different from A? `words` = (better, worse).

    Fewer than two values in an arm: NOT_TESTED. Counts at which the rank test cannot reach
    alpha whatever the data: `too_few_verdict` (the p-value is still given).
    """
    a, b = _clean(a), _clean(b)
    med_a = float(np.median(a)) if a.size else math.nan
    med_b = float(np.median(b)) if b.size else math.nan
    ratio = med_b / med_a if a.size and b.size and med_a != 0 else math.nan
    ci_low, ci_high = ratio_ci(a, b)
    if a.size < 2 or b.size < 2:
        p_value, verdict = math.nan, NOT_TESTED
    else:
        p_value = rank_test_p(a, b)
        if not can_test(a.size, b.size, alpha):
            verdict = too_few_verdict(a.size, b.size, alpha)
        else:
            verdict = NO_DIFFERENCE
            if p_value < alpha and not (ci_low <= 1.0 <= ci_high):
                # the medians, not the ratio: a zero median in A (VRAM of a hidden GPU) leaves
                # the ratio undefined but the direction plain
                b_larger = med_b > med_a
                verdict = words[0] if b_larger == higher_is_better else words[1]
    return ABResult(
        med_a, med_b, ratio, ci_low, ci_high, p_value, verdict, int(a.size), int(b.size)
    )


@dataclass(frozen=True)
class SlopeFit:
    slope: float
    ci_low: float
    ci_high: float
    intercept: float
    n: int
    stderr: float

    def as_dict(self) -> dict:
        return asdict(self)


def slope(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE) -> SlopeFit:
    """Least-squares slope of y on x with a t-based CI (n-2 degrees of freedom)."""
    x_arr = np.asarray(x, float)
    y_arr = np.asarray(y, float)
    keep = np.isfinite(x_arr) & np.isfinite(y_arr)
    x_arr, y_arr = x_arr[keep], y_arr[keep]
    n = int(x_arr.size)
    if n < 3 or np.ptp(x_arr) == 0:
        return SlopeFit(math.nan, math.nan, math.nan, math.nan, n, math.nan)
    # Plain OLS rather than scipy.stats.linregress: linregress returns a NaN standard error
    # for a perfectly flat series (its correlation is 0/0), and a flat RSS is the common case
    # of a clean run read at page granularity.
    x_mean, y_mean = x_arr.mean(), y_arr.mean()
    sxx = float(((x_arr - x_mean) ** 2).sum())
    fitted_slope = float(((x_arr - x_mean) * (y_arr - y_mean)).sum() / sxx)
    intercept = float(y_mean - fitted_slope * x_mean)
    residuals = y_arr - (intercept + fitted_slope * x_arr)
    stderr = float(np.sqrt((residuals**2).sum() / (n - 2) / sxx))
    t = sps.t.ppf(1 - (1 - confidence) / 2, n - 2)
    half = t * stderr
    return SlopeFit(fitted_slope, fitted_slope - half, fitted_slope + half, intercept, n, stderr)


# Andrews' (1991) AR(1) plug-in stops growing the bandwidth near a unit root: a sawtooth or a
# staircase has residual autocorrelation close to 1, and the bandwidth is capped at n anyway.
_HAC_MAX_RHO = 0.97


def _slope_scores(x_arr: np.ndarray, y_arr: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """OLS slope, intercept, Sxx and the scores (x - x̄)·residual of y on x."""
    x_mean, y_mean = x_arr.mean(), y_arr.mean()
    xc = x_arr - x_mean
    sxx = float((xc**2).sum())
    fitted_slope = float((xc * (y_arr - y_mean)).sum() / sxx)
    intercept = float(y_mean - fitted_slope * x_mean)
    return fitted_slope, intercept, sxx, xc * (y_arr - (intercept + fitted_slope * x_arr))


def hac_bandwidth(x: Sequence[float], y: Sequence[float]) -> float:
    """Bartlett-kernel bandwidth S for the slope of y on x: Andrews' (1991) AR(1) plug-in.

    S = 1.1447·(α·n)^(1/3), α = 4ρ² / ((1-ρ)²(1+ρ)²), ρ the lag-1 autocorrelation of the
    scores (x - x̄)·residual, |ρ| capped at 0.97; S is at most n. Lags j < S get weight 1 - j/S.
    NaN below three points.
    """
    x_arr, y_arr = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x_arr) & np.isfinite(y_arr)
    x_arr, y_arr = x_arr[keep], y_arr[keep]
    n = int(x_arr.size)
    if n < 3 or np.ptp(x_arr) == 0:
        return math.nan
    scores = _slope_scores(x_arr, y_arr)[3]
    denominator = float((scores[:-1] ** 2).sum())
    rho = float((scores[1:] * scores[:-1]).sum() / denominator) if denominator > 0 else 0.0
    rho = float(np.clip(rho, -_HAC_MAX_RHO, _HAC_MAX_RHO))
    alpha = 4 * rho**2 / ((1 - rho) ** 2 * (1 + rho) ** 2)
    return float(min(1.1447 * (alpha * n) ** (1 / 3), n))


def slope_hac(
    x: Sequence[float],
    y: Sequence[float],
    confidence: float = CONFIDENCE,
    bandwidth: float | None = None,
) -> SlopeFit:
    """Least-squares slope of y on x with a CI robust to autocorrelated residuals.

    Newey–West (HAC) standard error: the scores' long-run variance with Bartlett weights
    1 - j/S for lags j < S, S from `hac_bandwidth` unless given, times n/(n-2) as in `slope`.
    A series read at consecutive steps of one process (memory after each message) moves in
    steps and sawtooth teeth, so neighbouring residuals are far from independent and the plain
    OLS CI of `slope` is too narrow. With a bandwidth that is a sizeable fraction b = S/n of the
    series, normal critical values are too small (the long-run variance is itself uncertain), so
    the t quantile is scaled by cv(b)/1.96, the fixed-b critical value (Kiefer and Vogelsang,
    2005) of a trend slope, from `_trend_fixed_b_critical` (other confidence levels scale the
    95% value). Coverage of the 95% CI in simulation (n = 80, AR(1) errors, 1000 series each):
    96% at ρ = 0, 91% at ρ = 0.5, 78% at ρ = 0.9, against 96%, 75% and 33% for `slope`: still
    short of nominal when the dependence is strong next to the series' length.
    A perfectly straight series has a zero-width CI, as in `slope`.
    """
    x_arr, y_arr = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x_arr) & np.isfinite(y_arr)
    x_arr, y_arr = x_arr[keep], y_arr[keep]
    n = int(x_arr.size)
    if n < 3 or np.ptp(x_arr) == 0:
        return SlopeFit(math.nan, math.nan, math.nan, math.nan, n, math.nan)
    fitted_slope, intercept, sxx, scores = _slope_scores(x_arr, y_arr)
    s = hac_bandwidth(x_arr, y_arr) if bandwidth is None else float(min(max(bandwidth, 0), n))
    long_run = float((scores**2).sum())
    for lag in range(1, int(math.ceil(s))):
        long_run += 2 * (1 - lag / s) * float((scores[lag:] * scores[:-lag]).sum())
    long_run = max(long_run, 0.0)
    stderr = float(np.sqrt(long_run * n / (n - 2)) / sxx)
    fixed_b = _trend_fixed_b_critical(s / n) / 1.96
    half = float(sps.t.ppf(1 - (1 - confidence) / 2, n - 2)) * fixed_b * stderr
    return SlopeFit(fitted_slope, fitted_slope - half, fitted_slope + half, intercept, n, stderr)


def _trend_fixed_b_critical(b: float) -> float:
    """95% two-sided critical value of the Bartlett-HAC t statistic of a linear-trend slope
    under fixed-b asymptotics (bandwidth = b·n), interpolated in b.

    Simulated once (seed 20261126): 40,000 series of 500 iid normal errors, the |t| of the
    trend slope with this module's HAC standard error at each b; the 95th percentile. At b = 0
    it is the normal 1.96; it grows with b because the long-run variance is then estimated
    from few effective blocks. A trend regressor needs its own values: the location-model
    polynomial of Kiefer and Vogelsang (2005) gives 90% coverage here.
    """
    bs = (0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    cv = (1.967, 2.064, 2.180, 2.297, 2.406, 2.515, 2.782, 3.054, 3.299, 3.535, 3.952, 4.296)
    cv += (4.630, 4.939, 5.229, 5.511, 5.796)
    return float(np.interp(b, bs, cv))
