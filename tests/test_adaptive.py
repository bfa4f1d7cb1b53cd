"""Adaptive repetition: the stopping rule on known inputs, and a small A/A simulation.

The simulation is benchmarks/adaptive_simulation.py's, run on fewer pairs: stats.compare must
call two identical arms different at about alpha when each arm stops by the rule.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from mateperf.errors import ParameterError
from mateperf.runner.adaptive import (
    CAP,
    PRECISE,
    Precision,
    decision,
    half_width,
    next_round,
    still_going,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def simulation():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import adaptive_simulation
    finally:
        sys.path.pop(0)
    return adaptive_simulation


def test_identical_values_stop_at_min_reps_as_precise():
    p = Precision()
    assert not decision([10.0] * (p.min_reps - 1), p).done
    stop = decision([10.0] * p.min_reps, p)
    assert (stop.done, stop.reason, stop.n, stop.half_width) == (True, PRECISE, p.min_reps, 0.0)


def test_wildly_spread_values_stop_at_the_cap():
    p = Precision(max_reps=10)
    values = np.random.default_rng(1).lognormal(0.0, 1.0, p.max_reps)
    assert not decision(values[: p.max_reps - 1], p).done
    stop = decision(values, p)
    assert (stop.done, stop.reason, stop.n) == (True, CAP, p.max_reps)
    assert stop.half_width > p.target


def test_precise_wins_over_the_cap_when_both_hold():
    p = Precision(min_reps=4, max_reps=4)
    assert decision([100.0, 100.5, 99.5, 100.2], p).reason == PRECISE


def test_failed_trials_count_towards_the_cap():
    p = Precision(max_reps=5)
    stop = decision([1.0, math.nan, math.nan, math.nan, math.nan], p)
    assert (stop.done, stop.reason, stop.n, stop.half_width) == (True, CAP, 5, math.inf)


def test_half_width_is_relative_and_scale_free():
    x = np.random.default_rng(2).lognormal(0.0, 0.05, 9)
    w = half_width(x)
    assert 0 < w < 0.2
    # the simulation shares draws across true differences because of this
    assert half_width(x * 1.1) == pytest.approx(w, rel=1e-12)
    assert half_width(x * 1000) == pytest.approx(w, rel=1e-12)
    assert half_width([5.0]) == math.inf
    assert half_width([0.0, 0.0, 0.0]) == 0.0
    assert half_width([0.0, 0.0, 1.0, -1.0]) == math.inf


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"target": 0}, "target"),
        ({"target": 3}, "target"),
        ({"target": math.nan}, "target"),
        ({"target": "3%"}, "target"),
        ({"min_reps": 1}, "min_reps"),
        ({"min_reps": 4.5}, "min_reps"),
        ({"min_reps": True}, "min_reps"),
        ({"min_reps": 6, "max_reps": 5}, "max_reps"),
        ({"confidence": 95}, "confidence"),
    ],
)
def test_invalid_precision_is_refused_with_one_line_naming_it(kwargs, named):
    with pytest.raises(ParameterError) as err:
        Precision(**kwargs)
    message = str(err.value)
    assert named in message and repr(next(iter(kwargs.values())))[:3] in message
    assert "\n" not in message


def test_a_round_visits_every_point_still_going_once_in_a_shuffled_order():
    p = Precision()
    precise = [10.0] * 4
    going = {f"p{i}": [1.0, 2.0, 4.0] for i in range(12)}
    values = {"done": precise, **going}
    assert still_going(values, p) == list(going)
    rounds = [next_round(values, p, np.random.default_rng(seed)) for seed in range(3)]
    for order in rounds:
        assert sorted(order) == sorted(going)
    assert len({tuple(order) for order in rounds}) == 3  # shuffled, not in the mapping's order
    again = next_round(values, p, np.random.default_rng(0))
    assert again == rounds[0]  # seeded
    assert next_round({"done": precise}, p, np.random.default_rng(0)) == []


def test_aa_pairs_stopped_adaptively_are_called_different_at_about_alpha(simulation):
    """200 A/A pairs at CV 5%, where arms stop anywhere from 4 to 12 trials."""
    rng = np.random.default_rng(20261126)
    noise = simulation.Noise("lognormal CV 5%", 0.05)
    (aa,) = simulation.simulate(noise, 200, rng, differences=(0.0,))
    assert 4.5 < aa.mean_reps < 12  # the rule really varied the counts
    assert aa.adaptive / aa.pairs < 0.10
    # the check can fail: a rule that peeks at significance is caught on the same pairs
    assert aa.peeking > aa.adaptive and aa.peeking / aa.pairs >= 0.08


def test_the_simulation_counts_a_real_difference(simulation):
    rng = np.random.default_rng(7)
    noise = simulation.Noise("lognormal CV 2%", 0.02)
    (big,) = simulation.simulate(noise, 40, rng, differences=(0.10,), with_peeking=False)
    assert big.adaptive == big.fixed == big.pairs
