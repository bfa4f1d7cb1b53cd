"""The cpu phase for real: the model, the companion's busy peer, the notebook, --config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mateperf.companion_load import CompanionLoad
from mateperf.host import usable_cpus
from tests.conftest import PHASE_RUN_PARAMS
from tests.test_bad_input import assert_refused

# A trial of a few seconds on 2 cores: short tests, small context.
SMALL_CPU = PHASE_RUN_PARAMS["cpu"]


def small_cpu_args(**overrides) -> list[str]:
    args: list[str] = []
    for key, value in {**SMALL_CPU, **overrides}.items():
        args += ["-p", f"{key}={value}"]
    return args


def mateperf(cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The command as a user types it, from `cwd`, with a relative results folder."""
    env = {k: v for k, v in os.environ.items() if k != "MATEPERF_RESULTS"}
    return subprocess.run(
        [sys.executable, "-m", "mateperf", "--results", "results", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize(
    "args, needles",
    [
        (["-p", "n_threads=0"], ["n_threads", "0 must be at least 1"]),
        (["-p", "n_threads=-2"], ["n_threads", "-2 must be at least 1"]),
        (["-p", "n_threads=four"], ["n_threads", "'four' is not a thread count"]),
        (["-p", f"n_threads={usable_cpus() + 1}"], ["more than the", "CPUs"]),
        (["-p", f"n_threads_batch={usable_cpus() + 1}"], ["n_threads_batch", "more than the"]),
        (["-p", "n_batch=0"], ["n_batch", "at least 1"]),
        (["-p", "n_batch=64", "-p", "n_ubatch=128"], ["n_ubatch", "larger than every n_batch"]),
        (["-p", "frame_busy=1.5"], ["frame_busy", "share of a frame"]),
        (["-p", "backgrounds=gaming"], ["backgrounds", "'gaming'"]),
        (["-p", "peer=unreal"], ["peer", "python"]),
        (["-p", "tolerance=0"], ["tolerance"]),
        (["-p", "trials=0"], ["trials", "at least 1"]),
    ],
)
def test_impossible_values_are_refused(cli, results_root, args, needles):
    r = cli("run", "cpu", *args)
    assert_refused(r, *needles)
    assert not results_root.exists() or not any(results_root.glob("*/run.json"))


def test_companion_load_measures_the_peer_frames(built_csharp_or_python):
    """The busy peer keeps its pace and answers the emotion stream during a window."""
    with CompanionLoad(built_csharp_or_python, fps=60, frame_busy=0.5, command_hz=20) as load:
        with load.window() as avatar:
            time.sleep(1.0)
    figures = avatar.figures()
    assert figures["frames"] >= 20  # ~60 expected; a loaded 2-vCPU host may drop some
    assert figures["frame_p50_ms"] > 10  # paced at 60 fps, not free-running
    assert figures["cmd_count"] >= 5 and figures["cmd_errors"] == 0
    assert all(t >= 0 for t in avatar.tick_ms)


@pytest.fixture(params=["python", pytest.param("csharp", marks=pytest.mark.mono)])
def built_csharp_or_python(request, monkeypatch):
    if request.param == "csharp":
        exe = request.getfixturevalue("built_csharp")
        monkeypatch.setenv("MATEPERF_CSHARP_PEER", str(exe))
    return request.param


@pytest.mark.slow
def test_run_sweep_recommend_and_config_round_trip(phase_runs):
    """`mateperf run cpu` from another folder, then its recommended.json through --config."""
    shared = phase_runs.get("cpu")  # typed in its own folder (tests/conftest.py)
    r, tmp_path = shared.process, shared.folder
    # the console: the phase's progress and its result, not papermill's or the kernel's logs
    assert "[cpu] recommended for companion" in r.stderr
    for noise in ("Executing Cell", "IPKernelApp", "llama_", "Executing:"):
        assert noise not in r.stderr + r.stdout, noise
    run_dir = shared.run_dir
    df = pd.read_parquet(run_dir / "cpu.parquet")
    usable = usable_cpus()
    settings = df[~df["is_warmup"]].groupby(["background", "n_threads"]).size()
    assert len(settings) == 2 * usable  # idle and companion 50%, threads 1..usable
    assert (settings == SMALL_CPU["trials"]).all()
    assert df["is_warmup"].sum() == 1 and (df["error"] == "").all()
    companion = df[df["background"] == "companion"]
    assert companion["frame_p99_ms"].notna().all() and companion["cmd_count"].gt(0).all()
    assert df.loc[df["background"] == "idle", "frame_p99_ms"].isna().all()
    assert (df["tg_tps"] > 0).all() and (df["cpu_ms_per_token"] > 0).all()
    # the order is shuffled within rounds: not every round visits settings in the same order
    assert df["visit"].is_unique

    rec = json.loads((run_dir / "recommended.json").read_text(encoding="utf-8"))
    assert rec["for"] == "companion" and 1 <= rec["n_threads"] <= usable
    assert {e["metric"] for e in rec["evidence"]} == {"tg_tps", "pp_tps"}
    md = (run_dir / "cpu.md").read_text(encoding="utf-8")
    for needle in ("Detected CPU budget", "Recommendation", "Against the usual rules", "flips"):
        assert needle in md
    assert (run_dir / "plots" / "cpu_threads.png").is_file()
    assert (run_dir / "plots" / "cpu_frame_time.png").is_file()

    # the recommendation, loaded back: the run uses exactly its settings
    config = os.path.relpath(run_dir / "recommended.json", tmp_path)
    r = mateperf(
        tmp_path, "run", "cpu", "--config", config, *small_cpu_args(trials=1, backgrounds="idle")
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (again,) = set((tmp_path / "results").glob("*-cpu-*")) - {run_dir}
    df2 = pd.read_parquet(again / "cpu.parquet")
    for key in ("n_threads", "n_threads_batch", "n_batch", "n_ubatch"):
        assert set(df2[key]) == {rec[key]}, key
