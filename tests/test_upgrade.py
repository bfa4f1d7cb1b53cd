"""Old stored runs are upgraded on load, in one place (mateperf.upgrade)."""

from __future__ import annotations

import pandas as pd

from mateperf import metrics, results
from mateperf.host import REPO_ROOT
from mateperf.upgrade import upgrade

# An llm run stored before the warm-up flag had one name (it was `discarded`).
OLD_LLM_RUN = REPO_ROOT / "results" / "20261126T191745Z-llm-6c40"


def test_an_old_warmup_flag_is_read_as_the_current_one():
    raw = pd.read_parquet(OLD_LLM_RUN / "llm.parquet")
    assert "discarded" in raw and "is_warmup" not in raw
    df = results.RunDir.open(OLD_LLM_RUN).read_frame("llm")
    assert "discarded" not in df
    assert df["is_warmup"].tolist() == raw["discarded"].fillna(False).astype(bool).tolist()
    assert len(metrics.without_warmup(df)) == int((~df["is_warmup"]).sum()) > 0


def test_both_flags_mean_warm_up_when_either_says_so():
    df = pd.DataFrame({"discarded": [True, False, None], "is_warmup": [False, True, False]})
    assert upgrade(df)["is_warmup"].tolist() == [True, True, False]


def test_a_current_frame_passes_through_untouched():
    df = pd.DataFrame({"is_warmup": [True, False], "x": [1.0, 2.0]})
    assert upgrade(df) is df


def test_an_old_ipc_run_gets_its_trial_rows_on_load():
    """ipc runs stored before trial rows: per-trial values copied onto every request row."""
    old = REPO_ROOT / "results" / "20261126T191834Z-ipc-90c8"
    raw = pd.read_parquet(old / "ipc.parquet")
    assert "record" not in raw
    df = results.RunDir.open(old).read_frame("ipc")
    assert set(df["record"]) == {"request", "trial"}
    trials = df[df["record"] == "trial"]
    assert len(trials) and not trials["is_warmup"].any()
    copied = [m.name for m in metrics.IPC_METRICS if m.level == metrics.TRIAL and m.name in raw]
    assert df.loc[df["record"] == "request", copied].isna().all().all()
    assert trials[copied].notna().any(axis=1).all()


def test_mateperfs_own_balanced_profile_reads_as_layers_81pct():
    """Our 81% profile was called `balanced`, as the companion's, whose 35 layers are all of a
    32-block model; the target-card rows name the companion's profile and keep its name."""
    old = pd.DataFrame(
        {
            "scenario": ["selection", "attempt", "profile", "target"],
            "profile": ["balanced"] * 4,
            "selected_profile": ["balanced"] * 4,
        }
    )
    new = upgrade(old, "gpu")
    assert list(new["profile"]) == ["layers_81pct"] * 3 + ["balanced"]
    assert (new["selected_profile"] == "layers_81pct").all()
    assert upgrade(old, "llm") is old


def test_an_old_final_run_names_its_recommended_json_relative_to_the_results_root():
    """final runs stored before 2026-12-07 held the absolute path of the machine that ran them."""
    old = REPO_ROOT / "results" / "20261130T215521Z-final-4ed5"
    raw = pd.read_parquet(old / "final.parquet")
    assert raw["threads_source"].str.startswith("/").all()
    df = results.RunDir.open(old).read_frame("final")
    assert set(df["threads_source"]) == {"20261130T215321Z-cpu-4ed1/recommended.json"}
