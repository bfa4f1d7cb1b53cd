"""The final phase end to end: real model, real peer, every arm compared with the baseline.

No timing thresholds: the test asserts that the pipeline works and that every comparison is
computed with its confidence interval; what the numbers say is the phase's report.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mateperf import metrics
from mateperf.phases import final
from tests.conftest import PHASE_RUN_PARAMS, cli_args
from tests.test_bad_input import assert_refused

SMALL_FINAL = cli_args(PHASE_RUN_PARAMS["final"])


def _run_dir(results_root):
    (run_dir,) = results_root.glob("*-final-*")
    return run_dir


@pytest.mark.slow
def test_every_arm_against_the_baseline(phase_runs):
    run_dir = phase_runs.get("final").run_dir  # `mateperf run final` with SMALL_FINAL
    df = pd.read_parquet(run_dir / "final.parquet")
    kept = metrics.completed(df)
    assert set(kept["arm"]) == set(final.ARMS)
    assert (kept.groupby("arm").size() == 2).all()
    assert df["is_warmup"].sum() == 1 and (df["error"] == "").all()
    # the avatar was driven during every reply and the peer kept reporting frames
    assert (kept["beats"] >= 2).all() and (kept["cmd_errors"] == 0).all()
    assert kept["frame_p99_ms"].notna().all() and kept["peak_rss_mb"].gt(0).all()
    # beside the frames: the stand-in's timer and what its main thread and process cost
    assert kept["timer_overshoot_us"].ge(0).all() and kept["timer_resolution"].ne("").all()
    assert kept["peer_awake_share"].between(0, 1.01).all() and kept["peer_busy_share"].gt(0).all()
    # arms differ where they should: warm-up only where it is on, batching changes commands
    assert (kept.loc[kept["cfg_warmup"], "warmup_ms"] > 0).all()
    assert (kept.loc[~kept["cfg_warmup"], "warmup_ms"] == 0).all()

    ab = final.against_baseline(df)
    assert set(ab["arm"]) == set(final.ARMS) - {final.BASELINE}
    for metric in ("ttft_ms", "e2e_ms", "tg_tps", "beat_ms", "frame_p99_ms", "startup_ms"):
        rows = ab[ab["metric"] == metric]
        assert len(rows) == len(final.ARMS) - 1, metric
        assert np.isfinite(rows[["ratio", "ci_low", "ci_high"]]).all().all(), metric
        assert (rows["ci_low"] <= rows["ratio"]).all() and (rows["ratio"] <= rows["ci_high"]).all()
    assert len(final.add_up(ab)) == len(final.ADD_UP_METRICS)

    md = (run_dir / "final.md").read_text(encoding="utf-8")
    assert "Avatar stand-in's timer: a 1 ms sleep ended" in md or "Pacing cannot hold" in md
    for needle in ("Against the baseline", "Do they add up", "no GPU was measured"):
        assert needle in md or (needle == "no GPU was measured" and df["gpu_offload"].all())
    assert (run_dir / "plots" / "final_vs_baseline.png").is_file()
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["status"] == "ok"


@pytest.mark.slow
@pytest.mark.mono
def test_the_csharp_core_as_the_avatar(cli, results_root, built_csharp):
    r = cli(
        "run",
        "final",
        *SMALL_FINAL,
        "-p",
        "peers=csharp",
        "-p",
        "arms=baseline,batching",
        env={"MATEPERF_CSHARP_PEER": str(built_csharp)},
    )
    assert r.rc == 0, r.stderr[-3000:]
    df = pd.read_parquet(_run_dir(results_root) / "final.parquet")
    kept = metrics.completed(df)
    assert set(kept["peer"]) == {"csharp"} and (kept["beats"] >= 2).all()
    ab = final.against_baseline(df)
    assert np.isfinite(ab.loc[ab["metric"] == "beat_ms", "ratio"]).all()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["-p", "arms=batching,warmup"], ["arms", "baseline"]),
        (["-p", "arms=turbo"], ["arms", "chosen from"]),
        (["-p", "peers=unreal"], ["peers"]),
        (["-p", "frame_busy=1"], ["frame_busy"]),
        (["-p", "trials=0"], ["trials"]),
        (["--config", "missing.json"], ["missing.json", "no such file"]),
    ],
)
def test_bad_final_parameters(cli, args, needles):
    assert_refused(cli("run", "final", *args), *needles)
