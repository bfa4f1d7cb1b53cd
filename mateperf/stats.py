"""Statistics every phase uses: pure functions over samples, each choice documented once.

- Centre: the median, because latency and throughput samples are skewed and a single
  stall (GC, page fault, scheduler) moves the mean a lot.
- Uncertainty of the median: a percentile bootstrap (2000 resamples, fixed seed so the same
  samples always give the same interval and reports regenerate byte-identically).
- A/B: the ratio of medians B/A with a bootstrap CI (A and B resampled independently), and
  a two-sided Mann–Whitney U test for "is there a difference at all". The verdict needs both
  p < alpha and a CI that excludes 1, so a tiny p from thousands of samples with a ratio CI
  that straddles 1 is not called a win.
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


def compare(
    a: Sequence[float], b: Sequence[float], higher_is_better: bool = False, alpha: float = ALPHA
) -> ABResult:
    """Is B faster, slower, or not detectably different from A?"""
    a, b = _clean(a), _clean(b)
    med_a = float(np.median(a)) if a.size else math.nan
    med_b = float(np.median(b)) if b.size else math.nan
    ratio = med_b / med_a if a.size and b.size and med_a != 0 else math.nan
    ci_low, ci_high = ratio_ci(a, b)
    if a.size >= 2 and b.size >= 2 and not (np.ptp(np.concatenate([a, b])) == 0):
        p_value = float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    else:
        p_value = math.nan
    verdict = NO_DIFFERENCE
    if p_value < alpha and not (ci_low <= 1.0 <= ci_high):
        b_larger = ratio > 1.0
        verdict = FASTER if b_larger == higher_is_better else SLOWER
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


# Units that name a rate: more is better. Everything else with a unit (ms, s, MB) is a cost.
RATE_SUFFIXES = ("_tps", "_per_s", "_gbps", "_mbps")


def higher_is_better(metric: str) -> bool:
    return metric.endswith(RATE_SUFFIXES)
