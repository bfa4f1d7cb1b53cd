"""The trial runner: visit order, the failed-trial record, and adaptive repetition.

The trials here are plain functions with known outputs: the runner's rules are the subject.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from mateperf import runner
from mateperf.errors import RunAborted
from mateperf.runner.adaptive import CAP, PRECISE, Precision


def test_interleaved_rounds_visit_every_item_once_after_a_warm_up():
    order = runner.interleaved(["a", "b", "c"], 3, np.random.default_rng(1))
    assert order[0] == runner.Visit(runner.WARMUP_ROUND, "a")
    for k in range(3):
        assert sorted(v.item for v in order if v.round == k) == ["a", "b", "c"]


def test_warm_every_warms_each_item_once_in_a_shuffled_round_of_its_own():
    order = runner.interleaved(["a", "b", "c"], 2, np.random.default_rng(1), warm_every=True)
    warm = [v for v in order if v.is_warmup]
    assert sorted(v.item for v in warm) == ["a", "b", "c"] and order[:3] == warm
    assert [v.position for v in warm] == [0, 1, 2]
    assert len(order) == 9
    # the same draws as one permutation per round, warm-up round first (stored runs' order)
    rng = np.random.default_rng(1)
    assert [v.item for v in order] == ["abc"[i] for _ in range(3) for i in rng.permutation(3)]


def test_a_trial_that_records_its_own_failure_keeps_its_figures_and_error():
    def trial(visit):
        return {"ok": False, "load_s": 0.5, "error": "load: out of memory"}

    rows = runner.run_trials("tiny", [runner.Visit(0, "x")], trial, lambda v, r: "")
    assert rows[0]["error"] == "load: out of memory" and rows[0]["load_s"] == 0.5


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


def test_a_run_aborted_ends_the_run_with_every_row_so_far(capsys):
    """An attached avatar that went away is not one failed trial: the run ends, and the rows
    of the trials before it (and the failed one's) leave with the exception."""

    def trial(visit):
        if visit.round == 1:
            raise RunAborted("the avatar at 127.0.0.1:5555 dropped the connection")
        return {"figure": float(visit.round)}

    visits = [runner.Visit(k, "x") for k in range(3)]
    with pytest.raises(RunAborted) as info:
        runner.run_trials("tiny", visits, trial, lambda v, r: "")
    rows = info.value.rows
    assert [r["trial"] for r in rows] == [0, 1]
    assert rows[0]["figure"] == 0.0 and rows[0]["error"] == ""
    assert rows[1]["error"].startswith("RunAborted: the avatar")
    assert "ABORTED" in capsys.readouterr().out

    streams = [runner.Stream("s", lambda k: [runner.Visit(k, "x")], lambda v, r: {}, 3)]
    with pytest.raises(RunAborted) as info:
        runner.run_rounds("tiny", streams, trial, lambda v, r: "")
    assert [r["trial"] for r in info.value.rows] == [-1, 0, 1]  # earlier rounds' rows first


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


def _two_streams(trials: int, reps: int, noisy_bench: bool):
    """The llm phase's shape: an ABBA pair and one throughput visit per round."""
    pairs = runner.abba("cold", "warm", trials)
    noise = itertools.cycle([0.7, 1.4, 0.9, 1.2, 1.0])  # ±40%: never within ±3%
    streams = [
        runner.Stream(
            "pairs",
            lambda k: [v for v in pairs if v.round == k],
            lambda v, row: {f"ttft {v.item}": row["ms"]},
            trials,
        ),
        runner.Stream(
            "bench",
            lambda k: [runner.Visit(k, "bench")],
            lambda v, rows: {"tg": rows[0]["tps"]},
            reps,
        ),
    ]

    def trial(visit):
        if visit.item == "bench":
            return [{"tps": 40.0 * (next(noise) if noisy_bench else 1.0)}]
        return {"ms": 300.0 if visit.item == "cold" else 80.0}

    return streams, trial


def test_rounds_without_precision_run_every_stream_to_its_cap_in_round_order():
    streams, trial = _two_streams(3, 5, noisy_bench=False)
    rows = runner.run_rounds("tiny", streams, trial, lambda v, r: "")
    df = pd.DataFrame(rows)
    items = [(r["trial"], r.get("ms", r.get("tps"))) for r in rows]
    assert len(df) == 2 * 4 + 6 and df["visit"].tolist() == list(range(14))
    # round k: its pair first, then the bench visit; pairs end after 3 rounds, bench after 5
    assert [t for t, _ in items] == [-1, -1, -1, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4]
    assert "stop_reason" not in df


def test_rounds_with_precision_stop_each_stream_on_its_own_figures():
    streams, trial = _two_streams(7, 7, noisy_bench=True)
    rows = runner.run_rounds(
        "tiny", streams, trial, lambda v, r: "", precision=Precision(0.03, 4, 7)
    )
    df = pd.DataFrame(rows)
    pairs = df[df["ms"].notna() & ~df["is_warmup"]]
    bench = df[df["tps"].notna() & ~df["is_warmup"]]
    assert len(pairs) == 2 * 4 and len(bench) == 7  # steady pairs stop at 4, noisy bench at 7
    assert pairs["stop_reason"].unique().tolist() == [PRECISE]
    assert bench["stop_reason"].unique().tolist() == [CAP]
    assert bench["stop_trials"].unique().tolist() == [7]


def test_the_report_line_says_how_repetition_stopped():
    from mateperf.reports.format import repetition_note

    df = pd.DataFrame(
        {
            "is_warmup": [True, False, False, False],
            "stop_reason": [CAP, CAP, PRECISE, CAP],
            "stop_trials": [5, 5, 4, 5],
            "stop_half_width": [0.09, 0.09, 0.021, 0.12],
        }
    )
    note = repetition_note(df, {"precision_pct": 3.0, "min_trials": 4}, "setting")
    assert "within ±3% (from 4 trials on)" in note
    assert "1 of 3 stopped as precise after 4 trials; 2 of 3 ran to the cap of 5 trials" in note
    assert "(CI half-widths 2.1–12.0%)" in note
    assert repetition_note(df.drop(columns="stop_reason"), {}, "setting") == ""
