"""The trial runner: visit order, the failed-trial record, and adaptive repetition.

The trials here are plain functions with known outputs: the runner's rules are the subject.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from mateperf import runner
from mateperf.runner.adaptive import CAP, PRECISE, Precision


def test_interleaved_rounds_visit_every_item_once_after_a_warm_up():
    order = runner.interleaved(["a", "b", "c"], 3, np.random.default_rng(1))
    assert order[0] == runner.Visit(runner.WARMUP_ROUND, "a")
    for k in range(3):
        assert sorted(v.item for v in order if v.round == k) == ["a", "b", "c"]


def test_abba_puts_each_arm_first_in_half_the_pairs():
    order = runner.abba("cold", "warm", 4)
    firsts = [v.item for v in order if v.position == 0 and not v.is_warmup]
    assert firsts == ["warm", "cold", "warm", "cold"]
    assert [v.round for v in order[:2]] == [-1, -1]


def test_a_failed_trial_is_recorded_and_the_run_goes_on(capsys):
    def trial(visit):
        if visit.item == "bad":
            raise RuntimeError("load failed")
        return {"x": 1.0}

    rows = runner.run_trials(
        "tiny",
        runner.interleaved(["ok", "bad"], 2, np.random.default_rng(0)),
        trial,
        lambda v, r: f"x {r['x']}",
    )
    df = pd.DataFrame(rows)
    assert (df.loc[df["error"] != "", "error"] == "RuntimeError: load failed").all()
    assert (df.loc[df["error"] == "", "x"] == 1.0).all() and len(df) == 5
    assert "FAILED RuntimeError: load failed" in capsys.readouterr().out
    runner.require_some(df, "trial")
    with pytest.raises(RuntimeError, match="every trial failed"):
        runner.require_some(df[df["error"] != ""], "trial")


def test_adaptive_repetition_stops_each_item_by_its_own_precision():
    noise = itertools.cycle([0.7, 1.4, 0.9, 1.2, 1.0])  # ±40%: never within ±3%

    def trial(visit):
        if visit.item == "steady":
            return {"tps": 50.0}
        if visit.item == "broken":
            raise RuntimeError("no reply")
        return {"tps": 50.0 * next(noise)}

    rows = runner.run_until_precise(
        "tiny",
        ["steady", "noisy", "broken"],
        trial,
        lambda v, r: f"{r['tps']:.1f}",
        lambda r: r["tps"],
        Precision(target=0.03, min_reps=4, max_reps=7),
        np.random.default_rng(3),
        base=lambda v: {"setting": v.item},
    )
    df = pd.DataFrame(rows)
    measured = df[~df["is_warmup"]].groupby("setting")
    assert measured.size().to_dict() == {"broken": 7, "noisy": 7, "steady": 4}
    stops = df.groupby("setting")[["stop_reason", "stop_trials"]].first()
    assert stops.loc["steady"].tolist() == [PRECISE, 4]
    assert stops.loc["noisy"].tolist() == [CAP, 7] and stops.loc["broken", "stop_reason"] == CAP
    assert df["is_warmup"].sum() == 1 and df.loc[df["is_warmup"], "setting"].item() == "steady"
    # interleaved: every round visits every item still going, each once
    for _k, r in df[~df["is_warmup"]].groupby("trial"):
        assert r["setting"].is_unique
    assert df["visit"].is_unique
