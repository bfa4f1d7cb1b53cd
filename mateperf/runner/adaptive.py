"""Adaptive repetition: repeat a point until its median is precise enough, or a cap.

A measured point (one setting of a sweep, one arm of an A/B) repeats until the confidence
interval of its metric's median is within ±`target` of the median (relative half-width), with
`min_reps` trials first (4: the rank test needs 4+4 to reach p < 0.05 at all) and at most
`max_reps`. A runner asks `next_round` which points still need a trial and visits only those,
each round in a seeded shuffled order, so interleaving (a drift hits every point alike) stays.

Why stop on precision and not on significance: a rule that stops as soon as a test says
"different" peeks at the answer; looking after every trial from 4 to 12, it calls an A/A pair
different about twice as often as alpha (8-12% at alpha 0.05 in benchmarks/adaptive_simulation.py).
Here each point's stopping time depends only on its own trials' spread relative to its own
median. With multiplicative noise (lognormal: a slower setting is slower by a factor) that
ratio is unchanged when a whole distribution is scaled, so the stopping time does not depend on
the difference between the arms, and the test at the end keeps its error rates: in the same
simulation A/A stays at about the nominal 5% (3-6%, as with fixed 5 trials).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from mateperf import stats
from mateperf.errors import ParameterError

K = TypeVar("K")

PRECISE = "precise"
CAP = "cap"


@dataclass(frozen=True)
class Precision:
    """When a point has been measured enough: CI half-width of the median within ±target."""

    target: float = 0.03  # relative: 0.03 is ±3% of the median
    min_reps: int = 4
    max_reps: int = 12
    confidence: float = stats.CONFIDENCE

    def __post_init__(self) -> None:
        if not _is_number(self.target) or not 0 < self.target < 1:
            raise ParameterError(
                f"precision target must be a fraction above 0 and below 1 (0.03 is ±3%), "
                f"got {self.target!r}"
            )
        if not _is_int(self.min_reps) or self.min_reps < 2:
            # a CI of the median needs two values
            raise ParameterError(
                f"precision min_reps must be an integer >= 2, got {self.min_reps!r}"
            )
        if not _is_int(self.max_reps) or self.max_reps < self.min_reps:
            raise ParameterError(
                f"precision max_reps must be an integer >= min_reps ({self.min_reps}), "
                f"got {self.max_reps!r}"
            )
        if not _is_number(self.confidence) or not 0 < self.confidence < 1:
            raise ParameterError(
                f"precision confidence must be above 0 and below 1, got {self.confidence!r}"
            )


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Stop:
    """A point's state: `done` with `reason` PRECISE or CAP, or going on (reason "")."""

    done: bool
    reason: str
    n: int
    half_width: float


def half_width(values: Sequence[float], confidence: float = stats.CONFIDENCE) -> float:
    """Half the width of the median's CI, relative to |median|; inf below two finite values.

    A zero median gives 0 when the interval is a point, else inf (no relative width exists).
    """
    # The interval is stats.bootstrap_ci (fixed seed, so deterministic), the one every report
    # prints, so "precise" means the printed CI is within the target. The exact binomial
    # order-statistic interval was the alternative, but at 95% it does not exist below 6 values
    # (min..max of 5 covers 94%), so no point could stop at the 4 trials a rank test needs.
    arr = np.asarray(values, float)
    arr = arr[np.isfinite(arr)]
    if arr.size < 2:
        return math.inf
    low, high = stats.bootstrap_ci(arr, confidence=confidence)
    width = (high - low) / 2
    median = abs(float(np.median(arr)))
    if median == 0:
        return 0.0 if width == 0 else math.inf
    return float(width / median)


def decision(values: Sequence[float], precision: Precision) -> Stop:
    """Whether a point with these trial values is done, and why.

    `n` counts every trial, failed ones (NaN) included, so a point that keeps failing still
    meets the cap; the half-width uses the finite values. Precise wins over the cap when both hold.
    """
    n = len(values)
    width = half_width(values, precision.confidence)
    if n < precision.min_reps:
        return Stop(False, "", n, width)
    if width <= precision.target:
        return Stop(True, PRECISE, n, width)
    if n >= precision.max_reps:
        return Stop(True, CAP, n, width)
    return Stop(False, "", n, width)


def still_going(values_by_point: Mapping[K, Sequence[float]], precision: Precision) -> list[K]:
    """The points that need another trial, in the mapping's order."""
    return [k for k, v in values_by_point.items() if not decision(v, precision).done]


def next_round(
    values_by_point: Mapping[K, Sequence[float]],
    precision: Precision,
    rng: np.random.Generator,
) -> list[K]:
    """The next interleaved round: every point still going, once each, in a shuffled order.

    Empty when every point is done.
    """
    going = still_going(values_by_point, precision)
    return [going[i] for i in rng.permutation(len(going))]
