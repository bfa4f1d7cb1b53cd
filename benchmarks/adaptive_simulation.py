"""Known-answer simulation of adaptive repetition (mateperf.runner.adaptive).

Pairs of arms are drawn from noise models like the real ones (lognormal, CV 2%, 5%, 10%, and
CV 2% with 10% of trials 30% slower) with a known true difference (0: A/A; 3%, 5%, 10%), and
`mateperf.stats.compare` is asked whether they differ when each arm stops by the adaptive rule,
with today's fixed 5 trials, and (A/A only) with a rule that peeks (both arms go on until
compare says "different", up to the cap): A/A must stay at about the nominal 5% for the first
two; the peeking rule shows what stopping on significance would cost.

    .venv/bin/python benchmarks/adaptive_simulation.py [--pairs 400] [--seed 20261126]

Draws are shared across the true differences (B = the same noise times 1 + difference): the
adaptive rule's stopping time is unchanged by that scaling (tests/test_adaptive.py checks it),
so each arm's stop is computed once per pair.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import stats as sps

from mateperf import stats
from mateperf.runner.adaptive import CAP, Precision, decision

PRECISION = Precision()  # the rule's defaults, as a runner would use them
FIXED_REPS = 5  # DESIGN.md: the default number of trials today
DIFFERENCES = (0.0, 0.03, 0.05, 0.10)
OUTLIER_FACTOR = 1.3


@dataclass(frozen=True)
class Noise:
    """Multiplicative trial noise around a median of 1, as a latency sees it."""

    name: str
    cv: float
    outlier_share: float = 0.0  # share of trials OUTLIER_FACTOR slower (a stall, a GC)

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        sigma = math.sqrt(math.log1p(self.cv**2))
        values = rng.lognormal(0.0, sigma, size)
        if self.outlier_share:
            values[rng.random(size) < self.outlier_share] *= OUTLIER_FACTOR
        return values


NOISES = (
    Noise("lognormal CV 2%", 0.02),
    Noise("lognormal CV 5%", 0.05),
    Noise("lognormal CV 10%", 0.10),
    Noise("CV 2% + 10% outliers x1.3", 0.02, 0.10),
)


def stopping(values: np.ndarray, precision: Precision) -> tuple[int, str]:
    """(trials used, reason) when an arm whose trials come out as `values` stops adaptively."""
    for n in range(precision.min_reps, precision.max_reps + 1):
        stop = decision(values[:n], precision)
        if stop.done:
            return n, stop.reason
    raise AssertionError("decision() is done at max_reps")


@cache
def _p_from_u(n_a: int, n_b: int, u: int) -> float:
    """stats.rank_test_p of any tie-free arms with these counts and Mann–Whitney U."""
    # Without ties the rank test's p is a function of (n_a, n_b, U) alone, so it is asked
    # once per triple, on tie-free arms built to have that U: a_i sits above c_i of the b's.
    below = np.array([min(n_b, max(0, u - n_b * i)) for i in range(n_a)], float)
    a = below - 0.5 + 0.4 * np.arange(n_a) / n_a
    return stats.rank_test_p(a, np.arange(n_b, dtype=float))


def called_different(a: np.ndarray, b: np.ndarray, alpha: float = stats.ALPHA) -> bool:
    """Whether stats.compare(a, b) says FASTER or SLOWER: the same verdict, faster to get.

    compare can say "different" only where its rank test's p < alpha, so the p is found first
    (from U) and compare is called only then; ties fall back to compare itself.
    """
    if np.unique(np.concatenate([a, b])).size == a.size + b.size:
        u = int((a[:, None] > b[None, :]).sum())
        if not _p_from_u(a.size, b.size, u) < alpha:
            return False
    return stats.compare(a, b, alpha=alpha).verdict in (stats.FASTER, stats.SLOWER)


def peeking(a: np.ndarray, b: np.ndarray, precision: Precision) -> bool:
    """The rule not to use: both arms go on until compare says different, up to the cap."""
    return any(
        called_different(a[:n], b[:n]) for n in range(precision.min_reps, precision.max_reps + 1)
    )


@dataclass(frozen=True)
class Outcome:
    noise: str
    difference: float
    pairs: int
    fixed: int  # pairs called different with FIXED_REPS trials an arm
    adaptive: int  # ... with each arm stopped by the adaptive rule
    peeking: int  # ... by the peeking rule (A/A only)
    mean_reps: float  # adaptive trials per arm
    cap_share: float  # adaptive arms that stopped at the cap


def simulate(
    noise: Noise,
    pairs: int,
    rng: np.random.Generator,
    precision: Precision = PRECISION,
    differences: tuple[float, ...] = DIFFERENCES,
    with_peeking: bool = True,
) -> list[Outcome]:
    """One Outcome per true difference, from `pairs` simulated A/B pairs of `noise`."""
    draws = max(precision.max_reps, FIXED_REPS)
    counts = {d: [0, 0, 0] for d in differences}
    reps, caps = [], 0
    for _ in range(pairs):
        a, b = noise.draw(draws, rng), noise.draw(draws, rng)
        (n_a, why_a), (n_b, why_b) = stopping(a, precision), stopping(b, precision)
        reps += [n_a, n_b]
        caps += (why_a == CAP) + (why_b == CAP)
        for d in differences:
            b_d = b * (1 + d)
            counts[d][0] += called_different(a[:FIXED_REPS], b_d[:FIXED_REPS])
            counts[d][1] += called_different(a[:n_a], b_d[:n_b])
            # only A/A: its detections would be bought with those false positives
            counts[d][2] += with_peeking and d == 0 and peeking(a, b_d, precision)
    return [
        Outcome(noise.name, d, pairs, *counts[d], float(np.mean(reps)), caps / (2 * pairs))
        for d in differences
    ]


def rate(k: int, n: int) -> str:
    """k/n as a percentage with its exact (Clopper–Pearson) 95% CI."""
    ci = sps.binomtest(k, n).proportion_ci(0.95)
    return f"{100 * k / n:.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def table(outcomes: list[Outcome], precision: Precision) -> str:
    head = (
        "| noise | true difference | fixed 5: called different | "
        f"adaptive (+-{100 * precision.target:g}%, {precision.min_reps}-{precision.max_reps}): "
        "called different | adaptive trials/arm | adaptive at cap | "
        "peeking (A/A): called different |"
    )
    lines = [head, "|" + "---|" * 7]
    for o in outcomes:
        lines.append(
            f"| {o.noise} | {100 * o.difference:g}%{' (A/A)' if o.difference == 0 else ''} | "
            f"{rate(o.fixed, o.pairs)} | {rate(o.adaptive, o.pairs)} | {o.mean_reps:.1f} | "
            f"{100 * o.cap_share:.0f}% | {rate(o.peeking, o.pairs) if o.difference == 0 else '-'} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=400, help="simulated pairs per row (400)")
    ap.add_argument("--seed", type=int, default=20261126)
    args = ap.parse_args()
    precision = PRECISION
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    outcomes = [o for noise in NOISES for o in simulate(noise, args.pairs, rng, precision)]
    print(f"{args.pairs} pairs per row, seed {args.seed}, {precision}")
    print("'called different': stats.compare says faster or slower (alpha 0.05); in the A/A")
    print("rows that is a false positive, elsewhere a detection. [95% Clopper-Pearson CI]\n")
    print(table(outcomes, precision))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
