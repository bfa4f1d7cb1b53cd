"""Racing on simulated trials: seeded lognormal noise around known true medians.

`measure` here is a simulation, not the model: the race's choices are statistical, and only a
known truth can tell whether it chose well.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mateperf.errors import ParameterError
from mateperf.tune.race import Candidate, RaceFailed, race


def simulated(truth: dict[str, dict[str, float]], cv: float, seed: int, fail: str = ""):
    """measure(): each metric lognormal around its true median; `fail` raises every time."""
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(math.log1p(cv**2))

    def measure(c: Candidate) -> dict[str, float]:
        if c.label == fail:
            raise RuntimeError("out of memory")
        return {k: float(v * rng.lognormal(0.0, sigma)) for k, v in truth[c.label].items()}

    return measure


def grid_truth(n: int = 12) -> dict[str, dict[str, float]]:
    """tokens/s from 20 to 40 in even steps: the best is 4.8% ahead of the next (n = 12)."""
    return {f"c{i:02d}": {"tps": 20 + 20 * i / (n - 1)} for i in range(n)}


def candidates(truth) -> list[Candidate]:
    return [Candidate(label, {"index": i}) for i, label in enumerate(truth)]


def test_finds_the_true_best_in_most_seeds_with_far_fewer_trials():
    truth = grid_truth()
    best = max(v["tps"] for v in truth.values())
    found, spent = 0, []
    for seed in range(12):
        result = race(candidates(truth), simulated(truth, 0.03, seed), "tps", seed=seed)
        found += truth[result.winner.label]["tps"] >= 0.99 * best
        spent.append(result.total_trials)
        assert result.met_constraint and result.runner_up is not None
    assert found >= 11
    assert max(spent) <= len(truth) * 12 / 2  # the full grid to the cap is 144 trials


def test_the_trials_table_tells_the_whole_race():
    truth = grid_truth()
    result = race(candidates(truth), simulated(truth, 0.03, 1), "tps", seed=1)
    t = result.trials
    assert len(t) == result.total_trials
    assert {"candidate", "index", "round", "position", "tps", "error", "in_race_after"} <= set(t)
    # the winner raced to the end; a dropped candidate's last row says it left that round
    assert t[t["candidate"] == result.winner.label]["in_race_after"].all()
    for d in result.dropped:
        rows = t[t["candidate"] == d.label]
        assert rows["round"].max() == d.round and not rows["in_race_after"].iloc[-1]
        assert rows["in_race_after"].iloc[:-1].all()
    # interleaved: round 1 visits every candidate once, not in the given order
    first = t[t["round"] == 1]
    assert sorted(first["candidate"]) == sorted(truth) and list(first["candidate"]) != list(truth)


def test_progress_is_one_line_per_round():
    truth = grid_truth(6)
    lines: list[str] = []
    result = race(
        candidates(truth), simulated(truth, 0.03, 2), "tps", seed=2, on_progress=lines.append
    )
    assert len(lines) == result.rounds
    assert lines[0].startswith("round 1/12: 6 left") and "best c05" in lines[-1]
    assert "dropped 3 by halving" in lines[1]  # counted, not listed: 6 -> 3 after round 2


def test_a_clearly_worse_candidate_is_dropped_by_the_rank_test_at_min_reps():
    truth = {"fast": {"tps": 40.0}, "same": {"tps": 40.2}, "slow": {"tps": 28.0}}
    result = race(candidates(truth), simulated(truth, 0.03, 3), "tps", halve_every=0, seed=3)
    (slow,) = [d for d in result.dropped if d.label == "slow"]
    assert slow.round == 4 and slow.reason.startswith("worse than")
    # without a difference, the pair races to the cap and the note says so
    assert result.rounds == 12 and "round cap" in result.note


def test_halving_drops_the_worse_half_early():
    truth = grid_truth(8)
    result = race(candidates(truth), simulated(truth, 0.03, 4), "tps", seed=4)
    round_of = {d.label: d.round for d in result.dropped}
    assert round_of["c00"] == 2 and round_of["c01"] == 2


def test_eta_3_keeps_a_third_each_round_and_never_fewer_than_two():
    truth = grid_truth(18)
    result = race(candidates(truth), simulated(truth, 0.03, 5), "tps", halve_every=1, eta=3, seed=5)
    left = result.trials.groupby("round")["candidate"].nunique()
    assert list(left.iloc[:3]) == [18, 6, 2]  # 18 -> ceil(18/3) = 6 -> 2, then the pair
    assert truth[result.winner.label]["tps"] >= truth["c15"]["tps"]
    assert result.total_trials <= 18 + 6 + 2 * (12 - 2)


def test_the_constraint_excludes_faster_settings_over_budget():
    # frame p99 grows with speed: the two fastest break a 16.7 ms budget
    truth = {
        f"c{i}": {"tps": 30 + 2 * i, "p99_ms": p99}
        for i, p99 in enumerate([12.0, 13.0, 14.0, 15.0, 19.0, 21.0])
    }
    for seed in range(5):
        result = race(
            candidates(truth),
            simulated(truth, 0.03, seed),
            "tps",
            constraint="p99_ms",
            budget=16.7,
            seed=seed,
        )
        assert result.winner.label == "c3" and result.met_constraint
        over = [d for d in result.dropped if d.reason.startswith("over budget")]
        assert {d.label for d in over} <= {"c4", "c5"}


def test_a_lucky_median_under_budget_does_not_knock_out_the_settings_that_meet_it():
    # "fast" is 2% over budget: with CV 5% its median of a few trials is often under it
    truth = {"fast": {"tps": 50.0, "p99_ms": 17.0}, "ok": {"tps": 40.0, "p99_ms": 14.0}}
    truth |= {f"slow{i}": {"tps": 30.0 - i, "p99_ms": 13.0} for i in range(2)}
    wins = 0
    for seed in range(20):
        result = race(
            candidates(truth),
            simulated(truth, 0.05, seed),
            "tps",
            constraint="p99_ms",
            budget=16.7,
            seed=seed,
        )
        wins += result.winner.label == "ok"
        assert "ok" not in {d.label for d in result.dropped if d.reason.startswith("worse")}
    assert wins >= 18


def test_when_none_meets_the_budget_the_least_overrun_wins_and_says_so():
    truth = {f"c{i}": {"tps": 40 - i, "p99_ms": 18.0 + 2 * i} for i in range(4)}
    truth["c2"]["p99_ms"] = 17.0  # least overrun, not the fastest
    result = race(
        candidates(truth),
        simulated(truth, 0.03, 5),
        "tps",
        constraint="p99_ms",
        budget=16.7,
        seed=5,
    )
    assert result.winner.label == "c2"
    assert not result.met_constraint
    assert "no candidate met p99_ms <= 16.7" in result.note
    assert "the least overrun won" in result.note


def test_lower_is_better_objective():
    truth = {f"c{i}": {"ms": 100.0 + 10 * i} for i in range(5)}
    result = race(candidates(truth), simulated(truth, 0.03, 6), "ms", higher_is_better=False)
    assert result.winner.label == "c0" and result.runner_up.label == "c1"


def test_a_candidate_that_raises_is_recorded_failed_and_the_race_goes_on():
    truth = grid_truth(6)
    result = race(
        candidates(truth), simulated(truth, 0.03, 7, fail="c05"), "tps", halve_every=0, seed=7
    )
    (failed,) = [d for d in result.dropped if d.label == "c05"]
    assert failed.round == 1 and failed.reason == "failed: RuntimeError: out of memory"
    row = result.trials[result.trials["candidate"] == "c05"]
    assert len(row) == 1 and row["error"].iloc[0] == "RuntimeError: out of memory"
    assert result.winner.label == "c04"


def test_every_candidate_failing_is_an_error_naming_the_failure():
    truth = {"only": {"tps": 1.0}}
    with pytest.raises(RaceFailed, match="only: RuntimeError: out of memory"):
        race(candidates(truth), simulated(truth, 0.03, 8, fail="only"), "tps")


def test_a_trial_without_the_objective_is_a_failed_trial():
    truth = {"a": {"tps": 10.0}, "b": {"other": 1.0}}
    result = race(candidates(truth), simulated(truth, 0.03, 9), "tps")
    assert result.winner.label == "a" and result.runner_up is None
    assert result.dropped[0].reason == "failed: ValueError: no finite tps in the trial's metrics"


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"candidates": []}, "no candidates"),
        ({"candidates": [Candidate("a"), Candidate("a")]}, "'a'"),
        ({"constraint": "p99_ms"}, "budget"),
        ({"min_reps": 1}, "min_reps"),
        ({"max_rounds": 3}, "max_rounds"),
        ({"halve_every": -1}, "halve_every"),
        ({"eta": 1}, "eta"),
        ({"eta": 2.5}, "eta"),
    ],
)
def test_bad_arguments_are_refused(kwargs, named):
    args = {"candidates": [Candidate("a"), Candidate("b")], **kwargs}
    with pytest.raises(ParameterError, match=named):
        race(measure=lambda c: {"tps": 1.0}, objective="tps", **args)
