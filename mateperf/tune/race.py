"""Racing: the best of many settings with few trials (successive halving with a statistical drop).

Every round measures each candidate still in the race once more, in a seeded shuffled order
(interleaved, so a drift of the host hits every candidate alike). After the round:

1. From `min_reps` trials each (4: the rank test needs 4+4 to reach p < 0.05), a candidate is
   dropped when it is significantly worse than the current best: `stats.compare` on the
   trial values (rank test plus a ratio CI that excludes 1) says "worse". This is a test at
   alpha per pair and round, as in F-race; the per-round looks are tolerated because a drop
   only costs us when it hits the true best, which must then look significantly worse than a
   worse candidate (benchmarks/race_simulation.py measures how often the pick is near the best).
2. Every `halve_every` rounds, only the best 1/`eta` by median stays (successive halving;
   eta 2 keeps half, eta 3 a third, as in Jamieson & Talwalkar's successive halving and
   Hyperband), counted from the round's start so a round that already dropped many drops no
   more. Halving never leaves fewer than two: the final pair is settled by the rank test or
   the round cap, never by the medians of a few trials alone. Halving ignores CIs on purpose:
   it spends the trials where they can still change the answer; a candidate within noise of
   the best that it drops costs little, because the one it keeps is as good within that
   noise (benchmarks/race_simulation.py and benchmarks/tune_vs_grid.py measure that cost).

Constraint: with `constraint` (a metric, lower is better, e.g. frame p99 in ms) and `budget`,
a candidate meets it when its median is at most the budget. Candidates that meet it rank above
those that do not, by the objective; those that do not rank by their overrun (median - budget).
While the best meets the budget, a candidate whose constraint CI (stats.bootstrap_ci) lies
wholly above the budget is dropped as over budget, and "worse" in step 1 is judged against the
best candidate whose constraint CI lies wholly within it (none yet: no objective drops). While
none meets it, the race is on the constraint itself (least overrun), and a candidate
significantly worse on it is dropped.

A candidate whose `measure` raises (or returns no finite objective) is recorded as failed and
dropped; the race goes on. The winner is the best by rank among those left at the end; the
runner-up the next of those, else the one dropped last.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mateperf import stats
from mateperf.errors import ParameterError, RunAborted

BETTER, WORSE = "better", "worse"


@dataclass(frozen=True)
class Candidate:
    """One setting to try: a label for the reports and the settings `measure` applies."""

    label: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Drop:
    """A candidate that left the race: in which round (1-based) and why."""

    label: str
    round: int
    reason: str


@dataclass(frozen=True)
class RaceResult:
    winner: Candidate
    runner_up: Candidate | None
    trials: pd.DataFrame  # one row per trial: candidate, settings, round, position, metrics,
    # error, in_race_after (still in the race after that round's drops)
    dropped: tuple[Drop, ...]
    total_trials: int
    rounds: int
    met_constraint: bool  # True without a constraint
    note: str  # how the winner was settled, and that none met the budget where so


class RaceFailed(RuntimeError):
    """Every candidate still in the race failed: there is no winner."""

    def __init__(self, failures: Mapping[str, str]):
        self.failures = dict(failures)
        first = next(iter(self.failures.items()), ("", ""))
        super().__init__(f"every candidate failed; the first, {first[0]}: {first[1]}")


def race(
    candidates: Sequence[Candidate],
    measure: Callable[[Candidate], Mapping[str, float]],
    objective: str,
    higher_is_better: bool = True,
    constraint: str | None = None,
    budget: float | None = None,
    max_rounds: int = 12,
    min_reps: int = 4,
    halve_every: int = 2,
    eta: int = 2,
    alpha: float = stats.ALPHA,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> RaceResult:
    """Race `candidates`; `measure(candidate)` runs one trial and returns its metrics.

    Maximises (or, with higher_is_better False, minimises) the median of `objective` among
    candidates whose median `constraint` is at most `budget`. Rounds are 1-based: after round
    r every candidate still in the race has r trials. `halve_every` 0 turns halving off; each
    halving keeps the best ceil(n / eta), at least two.
    """
    _check(candidates, constraint, budget, max_rounds, min_reps, halve_every, eta)
    board = _Board(objective, higher_is_better, constraint, budget)
    rng = np.random.default_rng(seed)
    alive = [c.label for c in candidates]
    by_label = {c.label: c for c in candidates}
    rows: list[dict] = []
    drops: list[Drop] = []
    failures: dict[str, str] = {}
    r = 0
    for r in range(1, max_rounds + 1):
        round_rows = []
        for pos, i in enumerate(rng.permutation(len(alive))):
            cand = by_label[alive[i]]
            metrics, error = _trial(measure, cand, objective, constraint)
            round_rows.append(
                {"candidate": cand.label, **cand.settings, "round": r, "position": pos}
                | metrics
                | {"error": error}
            )
            if error:
                failures[cand.label] = error
            else:
                board.add(cand.label, metrics)
        out = [Drop(label, r, f"failed: {failures[label]}") for label in alive if label in failures]
        alive = [label for label in alive if label not in failures]
        if not alive:
            raise RaceFailed(failures)
        start = len(alive)
        if r >= min_reps:
            out += board.significantly_worse(alive, r, alpha)
            alive = [label for label in alive if label not in {d.label for d in out}]
        if halve_every and r % halve_every == 0:
            keep = max(2, math.ceil(start / eta))
            ranked = board.ranked(alive)
            out += [Drop(label, r, board.halving_reason(label)) for label in ranked[keep:]]
            alive = [label for label in alive if label in ranked[:keep]]
        drops += out
        for row in round_rows:
            row["in_race_after"] = row["candidate"] in alive
        rows += round_rows
        if on_progress:
            on_progress(board.progress(r, max_rounds, alive, len(rows), out))
        if len(alive) == 1:
            break
    ranked = board.ranked(alive)
    winner = by_label[ranked[0]]
    runner_up = _runner_up(ranked, drops, board)
    met = board.meets(winner.label)
    how = "alone" if len(ranked) == 1 else f"best median of {len(ranked)} at the round cap"
    note = f"{winner.label} won {how} after round {r}"
    if not met:
        note += (
            f"; no candidate met {constraint} <= {budget:g} (by median, of those left): "
            "the least overrun won"
        )
    return RaceResult(
        winner,
        by_label[runner_up] if runner_up else None,
        pd.DataFrame(rows),
        tuple(drops),
        len(rows),
        r,
        met,
        note,
    )


def _check(
    candidates: Sequence[Candidate],
    constraint: str | None,
    budget: float | None,
    max_rounds: int,
    min_reps: int,
    halve_every: int,
    eta: int,
) -> None:
    if not candidates:
        raise ParameterError("race: no candidates")
    labels = [c.label for c in candidates]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ParameterError(f"race: candidate labels must be unique, repeated: {twice}")
    if (constraint is None) != (budget is None):
        raise ParameterError(
            f"race: a constraint needs a budget (constraint {constraint!r}, budget {budget!r})"
        )
    if min_reps < 2:
        raise ParameterError(f"race: min_reps must be >= 2, got {min_reps}")
    if max_rounds < min_reps:
        raise ParameterError(f"race: max_rounds must be >= min_reps ({min_reps}), got {max_rounds}")
    if halve_every < 0:
        raise ParameterError(f"race: halve_every must be >= 0 (0: never), got {halve_every}")
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ParameterError(f"race: eta must be a whole number >= 2 (2 keeps half), got {eta!r}")


def _trial(
    measure: Callable[[Candidate], Mapping[str, float]],
    cand: Candidate,
    objective: str,
    constraint: str | None,
) -> tuple[dict, str]:
    """(metrics, "") or ({}, "Type: message"): one failed trial is recorded, the race goes on."""
    try:
        metrics = dict(measure(cand))
        for name in (objective, constraint):
            if name is not None and not math.isfinite(float(metrics.get(name, math.nan))):
                raise ValueError(f"no finite {name} in the trial's metrics")
    except RunAborted:
        raise  # the avatar went away: the whole tune ends, not this trial
    except Exception as exc:
        return {}, f"{type(exc).__name__}: {exc}"
    return metrics, ""


def _runner_up(ranked: list[str], drops: list[Drop], board: _Board) -> str | None:
    """The second of those left; else, of those dropped last (not failed), the best ranked."""
    if len(ranked) > 1:
        return ranked[1]
    raced = [d for d in drops if not d.reason.startswith("failed")]
    if not raced:
        return None
    last = max(d.round for d in raced)
    return board.ranked([d.label for d in raced if d.round == last])[0]


class _Board:
    """Each candidate's trial values, its rank, and the tests between candidates."""

    def __init__(
        self, objective: str, higher_is_better: bool, constraint: str | None, budget: float | None
    ):
        self.objective, self.higher_is_better = objective, higher_is_better
        self.constraint, self.budget = constraint, budget
        self.values: dict[str, dict[str, list[float]]] = {}

    def add(self, label: str, metrics: Mapping[str, float]) -> None:
        names = [self.objective] + ([self.constraint] if self.constraint else [])
        kept = self.values.setdefault(label, {name: [] for name in names})
        for name in names:
            kept[name].append(float(metrics[name]))

    def median(self, label: str, metric: str) -> float:
        return float(np.median(self.values[label][metric]))

    def overrun(self, label: str) -> float:
        """How far the median constraint is over budget (<= 0: met); 0 without a constraint."""
        if not self.constraint:
            return 0.0
        return self.median(label, self.constraint) - float(self.budget)

    def meets(self, label: str) -> bool:
        return self.overrun(label) <= 0

    def ranked(self, labels: Sequence[str]) -> list[str]:
        """Best first: those meeting the budget by objective, then the rest by overrun."""

        def key(label: str) -> tuple[int, float]:
            if not self.meets(label):
                return (1, self.overrun(label))
            m = self.median(label, self.objective)
            return (0, -m if self.higher_is_better else m)

        return sorted(labels, key=key)

    def surely_meets(self, label: str) -> bool:
        """The constraint's CI lies wholly within the budget (always true without one)."""
        if not self.constraint:
            return True
        return stats.bootstrap_ci(self.values[label][self.constraint])[1] <= float(self.budget)

    def significantly_worse(self, alive: list[str], r: int, alpha: float) -> list[Drop]:
        ranked = self.ranked(alive)
        best, c = ranked[0], self.constraint
        if c and not self.meets(best):
            # none meets the budget: the race is on the least overrun
            tests = [(label, self._worse(best, label, c, False, alpha)) for label in ranked[1:]]
            return [
                Drop(label, r, f"more overrun than {best}: {why}") for label, why in tests if why
            ]
        drops = []
        if c:
            for label in ranked[1:]:
                low = stats.bootstrap_ci(self.values[label][c])[0]
                if low > float(self.budget):
                    m = self.median(label, c)
                    why = f"over budget: {c} median {m:.4g} > {self.budget:g} (CI from {low:.4g})"
                    drops.append(Drop(label, r, why))
        # Worse on the objective counts only against a candidate that surely meets the budget:
        # one that met it by a lucky median would otherwise knock out the settings that truly
        # meet it, and then lose its own place when more trials push its median over.
        out = {d.label for d in drops}
        ref = next((label for label in ranked if label not in out and self.surely_meets(label)), "")
        for label in ranked:
            if ref and label != ref and label not in out:
                why = self._worse(ref, label, self.objective, self.higher_is_better, alpha)
                if why:
                    drops.append(Drop(label, r, f"worse than {ref}: {why}"))
        return drops

    def _worse(self, ref: str, label: str, metric: str, higher: bool, alpha: float) -> str:
        """Why `label` is significantly worse than `ref` on `metric` (stats.compare), or ""."""
        ab = stats.compare(
            self.values[ref][metric], self.values[label][metric], higher, alpha, (BETTER, WORSE)
        )
        if ab.verdict != WORSE:
            return ""
        return f"{metric} median {ab.median_b:.4g} vs {ab.median_a:.4g} (p = {ab.p_value:.3g})"

    def halving_reason(self, label: str) -> str:
        if self.meets(label):
            return f"halving: {self.objective} median {self.median(label, self.objective):.4g}"
        return f"halving: {self.constraint} median {self.median(label, self.constraint):.4g}"

    def progress(
        self, r: int, max_rounds: int, alive: list[str], trials: int, out: list[Drop]
    ) -> str:
        best = self.ranked(alive)[0]
        figure = f"{self.objective} {self.median(best, self.objective):.4g}"
        if self.constraint:
            met = "met" if self.meets(best) else "over budget"
            figure += f", {self.constraint} {self.median(best, self.constraint):.4g} ({met})"
        halved = sum(d.reason.startswith("halving") for d in out)
        named = [
            f"{d.label} ({d.reason.split(':')[0]})"
            for d in out
            if not d.reason.startswith("halving")
        ]
        gone = "; dropped " + ", ".join(([f"{halved} by halving"] if halved else []) + named)
        return (
            f"round {r}/{max_rounds}: {len(alive)} left after {trials} trials, best {best} "
            f"({figure}){gone if out else ''}"
        )


def raced_medians(trials: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Per candidate raced for `profile` (its label): median reply ms and frame p99 ms over its
    race trials that did not fail."""
    race = trials[(trials["stage"] == "race") & (trials["error"].fillna("") == "")]
    race = race[race["profile"] == profile]
    return race.groupby("candidate")[["reply_ms", "frame_p99_ms"]].median()
