"""Known-answer simulation of racing (mateperf.tune.race) on a grid of 24 settings.

Each seed draws a grid n_threads {2..12} x n_batch {64..512} with known true median tokens/s
(rising to an optimum thread count, falling slowly past it; a few % per batch doubling away
from the best batch; 1% of setting-to-setting scatter) and a trial CV of 2-5% per setting. With
a constraint, the frame p99 (ms) grows with threads (CV 5%) against a 16.7 ms budget (60 fps).
Printed: how often the race's pick is within 3% of the true best (among settings that truly
meet the budget), and its trials as a share of the full grid measured 5 times (24 x 5, as
benchmarks/tune_vs_grid.py measures it); beside it, the full grid measured 5 and 12 times with
the best median picked. A race is named halve_every/eta/max_rounds: 2/2/12 is race()'s
default, 1/4/4 `mateperf tune`'s (a quarter kept after every round, at most 4 trials).

    .venv/bin/python benchmarks/race_simulation.py [--seeds 100] [--races 2/2/12 1/4/4]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from mateperf.tune.race import Candidate, race

THREADS = (2, 4, 6, 8, 10, 12)
BATCHES = (64, 128, 256, 512)
OBJECTIVE, CONSTRAINT = "tg_tps", "frame_p99_ms"
BUDGET_MS = 16.7
GRID_REPS = 5  # the grid the shares are of
NEAR = 0.03  # a pick within 3% of the true best counts as found


@dataclass(frozen=True)
class Truth:
    """One simulated grid: true medians and trial CVs, by candidate label."""

    candidates: list[Candidate]
    tps: dict[str, float]
    tps_cv: dict[str, float]
    p99_ms: dict[str, float]

    def feasible(self, label: str, constrained: bool) -> bool:
        return not constrained or self.p99_ms[label] <= BUDGET_MS

    def best_tps(self, constrained: bool) -> float:
        return max(v for k, v in self.tps.items() if self.feasible(k, constrained))


def grid(rng: np.random.Generator) -> Truth:
    t_opt = int(rng.choice([4, 6, 8, 10]))
    b_opt = float(rng.choice(BATCHES))
    candidates, tps, cv, p99 = [], {}, {}, {}
    for t in THREADS:
        for b in BATCHES:
            label = f"t{t}-b{b}"
            candidates.append(Candidate(label, {"n_threads": t, "n_batch": b}))
            threads = min(t, t_opt) / t_opt * (1 - 0.04 * max(0, t - t_opt) / 2)
            batch = 1 - 0.03 * abs(math.log2(b / b_opt))
            tps[label] = 40.0 * threads * batch * rng.normal(1, 0.01)
            cv[label] = rng.uniform(0.02, 0.05)
            p99[label] = 11.0 + 0.8 * t  # 60 fps is met up to 6 threads
    return Truth(candidates, tps, cv, p99)


def lognormal(median: float, cv: float, rng: np.random.Generator) -> float:
    return float(median * rng.lognormal(0.0, math.sqrt(math.log1p(cv**2))))


def measure_for(truth: Truth, rng: np.random.Generator):
    def measure(c: Candidate) -> dict[str, float]:
        return {
            OBJECTIVE: lognormal(truth.tps[c.label], truth.tps_cv[c.label], rng),
            CONSTRAINT: lognormal(truth.p99_ms[c.label], 0.05, rng),
        }

    return measure


def grid_pick(truth: Truth, reps: int, constrained: bool, rng: np.random.Generator) -> str:
    """The full grid measured `reps` times: best median among those meeting the budget."""
    measure = measure_for(truth, rng)
    trials = {c.label: [measure(c) for _ in range(reps)] for c in truth.candidates}
    med = {
        k: {m: np.median([t[m] for t in v]) for m in (OBJECTIVE, CONSTRAINT)}
        for k, v in trials.items()
    }
    ok = [k for k in med if not constrained or med[k][CONSTRAINT] <= BUDGET_MS]
    if not ok:
        return min(med, key=lambda k: med[k][CONSTRAINT])
    return max(ok, key=lambda k: med[k][OBJECTIVE])


@dataclass
class Tally:
    near: int = 0
    exact: int = 0
    feasible: int = 0
    shares: list[float] | None = None

    def add(self, truth: Truth, pick: str, constrained: bool, trials: int | None) -> None:
        best = truth.best_tps(constrained)
        ok = truth.feasible(pick, constrained)
        self.feasible += ok
        self.near += ok and truth.tps[pick] >= (1 - NEAR) * best
        self.exact += ok and truth.tps[pick] == best
        if trials is not None:
            self.shares = (self.shares or []) + [trials / (len(truth.candidates) * GRID_REPS)]


def parse_race(text: str) -> tuple[int, int, int]:
    """`halve_every/eta/max_rounds`, e.g. 1/3/5."""
    halve_every, eta, max_rounds = (int(x) for x in text.split("/"))
    return halve_every, eta, max_rounds


def simulate(seeds: int, constrained: bool, races: tuple[str, ...]) -> dict[str, Tally]:
    """Per method, how its picks did on `seeds` grids (each grid seeded by its index)."""
    methods = [f"race {r}" for r in races] + ["grid x 5", "grid x 12"]
    tallies = {m: Tally() for m in methods}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        truth = grid(rng)
        for text in races:
            halve_every, eta, max_rounds = parse_race(text)
            result = race(
                truth.candidates,
                measure_for(truth, rng),
                OBJECTIVE,
                higher_is_better=True,
                constraint=CONSTRAINT if constrained else None,
                budget=BUDGET_MS if constrained else None,
                max_rounds=max_rounds,
                halve_every=halve_every,
                eta=eta,
                seed=seed,
            )
            pick = result.winner.label
            tallies[f"race {text}"].add(truth, pick, constrained, result.total_trials)
        for reps in (5, 12):
            pick = grid_pick(truth, reps, constrained, rng)
            tallies[f"grid x {reps}"].add(truth, pick, constrained, reps * len(truth.candidates))
    return tallies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100, help="simulated grids per row (100)")
    ap.add_argument(
        "--races",
        nargs="+",
        default=["2/2/12", "1/4/4"],
        help="races as halve_every/eta/max_rounds (2/2/12 1/4/4)",
    )
    args = ap.parse_args()
    start = time.perf_counter()
    print(
        f"{args.seeds} grids of {len(THREADS) * len(BATCHES)} settings per row; races named "
        "halve_every/eta/max_rounds, min_reps 4"
    )
    n = len(THREADS) * len(BATCHES)
    print(f"trials are a share of the full grid measured {GRID_REPS} times ({n * GRID_REPS})\n")
    print(
        "| constraint | method | pick within 3% of true best | pick is the true best | "
        "pick meets budget | trials, mean share [min, max] |"
    )
    print("|---|---|---|---|---|---|")
    for constrained in (False, True):
        label = f"{CONSTRAINT} <= {BUDGET_MS}" if constrained else "none"
        for method, t in simulate(args.seeds, constrained, tuple(args.races)).items():
            s = np.array(t.shares)
            print(
                f"| {label} | {method} | {100 * t.near / args.seeds:.0f}% | "
                f"{100 * t.exact / args.seeds:.0f}% | {100 * t.feasible / args.seeds:.0f}% | "
                f"{100 * s.mean():.0f}% [{100 * s.min():.0f}, {100 * s.max():.0f}] |"
            )
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
