"""Phase 3 end to end, small: the real peers in their own processes, the real report, the CLI.

Never asserts on timings, except the known answer of an injected apply delay; it checks shape,
counts, that per-trial values are stored once per trial, that warm-ups stay out of the
statistics, that batching completes in fewer frames, that frame_cost reads one row per peer
frame with the load it asked for, that a trial whose peer dies is recorded and the run goes on,
and that the report is deterministic.
"""

import json
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from mateperf import metrics, phases
from mateperf.errors import ParameterError
from mateperf.phases import ipc
from mateperf.phases.ipc.params import SCENARIOS
from mateperf.phases.ipc.rows import COLUMNS
from mateperf.reports import ipc as ipc_report
from mateperf.upgrade import upgrade
from tests.conftest import PHASE_RUN_PARAMS

# the session's shared CLI run has these sizes too (tests/conftest.py, PHASE_RUN_PARAMS)
SMALL = {k: v for k, v in PHASE_RUN_PARAMS["ipc"].items() if k not in ("peer", "fps")}


@pytest.fixture(scope="module", params=["python", pytest.param("csharp", marks=pytest.mark.mono)])
def small_run(request) -> pd.DataFrame:
    if request.param == "csharp":
        request.getfixturevalue("built_csharp")
    return ipc.run(peer=request.param, fps=60, **SMALL)


def test_rows_per_request_for_every_scenario_and_mode(small_run):
    df = small_run
    assert set(df["scenario"]) == set(ipc.SCENARIOS)
    assert set(df["record"]) == {"request", "frame", "trial"}
    assert set(df[df["record"] == "frame"]["scenario"]) == {"frame_cost"}
    requests = df[df["record"] == "request"]
    counts = requests.groupby(["scenario", "mode", "fps", "trial"]).size()
    assert counts[("simple_commands", "floor", 0.0, 0)] == 30 + 3
    assert counts[("simple_commands", "bridge_unpaced", 0.0, 1)] == 30 + 3
    assert counts[("batching", "batched", 60.0, 0)] == 20
    assert counts[("original_method", "sendall_sleep_1ms", 60.0, 1)] == 20
    sizes = requests[(requests["scenario"] == "message_sizes")]
    assert (sizes["size_bytes"] - sizes["target_bytes"]).abs().max() <= 8  # id digits vary
    assert df["is_warmup"].sum() > 0 and df["peer"].nunique() == 1
    for col in ipc.METRICS:
        assert col in df and df[col].dtype == float


def test_per_trial_values_are_stored_once_per_trial(small_run):
    df = small_run
    requests, trials = df[df["record"] == "request"], df[df["record"] == "trial"]
    assert requests[list(ipc.TRIAL_METRICS)].isna().all().all()
    assert trials[list(ipc.REQUEST_METRICS)].isna().all().all()
    assert not trials["is_warmup"].any()
    per_arm = trials.groupby(["scenario", "mode", "fps", "trial"]).size()
    assert (per_arm == 1).all()
    assert set(trials["scenario"]) == {"throughput", "batching", "original_method"}
    assert len(per_arm) == 2 * (3 + 3 * 2 + 2)  # trials x (throughput + batching + original)
    tp = trials[trials["scenario"] == "throughput"]
    assert tp["total_ms"].notna().all() and tp["throughput_cmd_per_s"].notna().all()
    orig = trials[trials["scenario"] == "original_method"]
    assert orig["applied_ms"].notna().all() and (orig["applied_ms"] >= orig["total_ms"]).all()
    # the floor's pipelined run has no per-request times: a trial row only
    assert requests[(requests["scenario"] == "throughput") & (requests["mode"] == "floor")].empty


def test_rows_are_matched_on_what_was_asked_not_on_incidental_columns(small_run):
    df = small_run
    declared = {m.name for m in metrics.IPC_METRICS}
    undeclared = {"completion_ms", "since_start_ms", "size_bytes", "frame", "seq", "apply_delay_ms"}
    assert not declared & undeclared
    assert (df["completion_ms"] * 1e3 - df["rtt_us"]).abs().max() < 1e-6  # one measurement
    assert set(ipc.METRICS) == declared
    assert metrics.IDENTITY["ipc"] == ipc.IDENTITY
    sizes = df[df["scenario"] == "message_sizes"]
    assert set(sizes["target_bytes"]) == {64, 4096}  # floor and bridge, request rows
    assert df[df["scenario"] != "message_sizes"]["target_bytes"].isna().all()
    batching = df[df["scenario"] == "batching"]
    assert set(batching["batch_size"]) == {10}  # every arm of the comparison, trial rows too
    assert df[df["scenario"] != "batching"]["batch_size"].isna().all()
    cost = df[df["scenario"] == "frame_cost"]
    assert set(cost["commands_per_frame"]) == {0, 10}  # the loads, and 10 for the silent client
    assert df[df["scenario"] != "frame_cost"]["commands_per_frame"].isna().all()
    assert "frame_interval_us" not in declared and "frame_commands" not in declared
    assert df["fps"].notna().all() and df["scenario"].notna().all() and df["mode"].notna().all()
    assert "is_warmup" in df and "discarded" not in df


def _as_stored_before_trial_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The layout of runs stored before trial rows: per-trial values on every request row."""
    keys = ["scenario", "mode", "fps", "trial"]
    trials = df[df["record"] == "trial"][[*keys, *ipc.TRIAL_METRICS]]
    many = df[df["record"].isin(("request", "frame"))]
    requests = many.drop(columns=[*ipc.TRIAL_METRICS, "record"])
    legacy = requests.merge(trials, on=keys, how="left")
    floor_tp = trials[(trials["scenario"] == "throughput") & (trials["mode"] == "floor")]
    copies = floor_tp.loc[floor_tp.index.repeat(5)].assign(is_warmup=False)
    return pd.concat([legacy, copies], ignore_index=True)


def test_runs_stored_with_copied_per_trial_values_read_the_same(small_run, tmp_path):
    stored = _as_stored_before_trial_rows(small_run)
    assert "record" not in stored
    legacy = upgrade(stored, "ipc")  # what RunDir.read_frame gives for such a run
    new, old = ipc.headline(small_run), ipc.headline(legacy)
    for key, value in new.items():
        if isinstance(value, float) and not np.isnan(value):
            assert old[key] == pytest.approx(value), key
    summary_new = ipc.summarize(small_run)
    summary_old = ipc.summarize(legacy)
    by = ["scenario", "mode", "fps", "metric"]
    per_trial_new = summary_new[summary_new["level"] == "trial"].sort_values(by)
    per_trial_old = summary_old[summary_old["level"] == "trial"].sort_values(by)
    pd.testing.assert_frame_equal(
        per_trial_new.reset_index(drop=True), per_trial_old.reset_index(drop=True)
    )
    info = {"params": {"fps": 60, "trials": 2}, "run_id": "r", "fingerprint": {}}
    section = ipc_report.section(legacy, info, tmp_path / "plots", tmp_path)
    assert section.startswith("## Phase 3 — IPC")


def test_at_60_fps_batches_take_fewer_frames_than_one_by_one(small_run):
    b = small_run[(small_run["scenario"] == "batching") & (small_run["fps"] == 60)]
    for _, trial in b.groupby("trial"):
        span = trial.groupby("mode")["frame"].agg(lambda f: f.max() - f.min() + 1)
        assert span["one_by_one"] >= 20 and span["batched"] <= 3
        assert span["batched"] < span["one_by_one"]


def test_frame_cost_reads_the_peers_frame_log_per_arm(small_run):
    df = small_run
    frames = df[(df["scenario"] == "frame_cost") & (df["record"] == "frame")]
    assert set(frames["mode"]) == {ipc.FRAME_COST_LOAD, ipc.FRAME_COST_NON_READING}
    assert set(frames["fps"]) == {60.0}
    assert frames["tick_us"].notna().all() and (frames["tick_us"] >= 0).all()
    assert (frames["frame_interval_us"] > 0).all()
    assert frames[list(ipc.REQUEST_METRICS[:3])].isna().all().all()  # no request metric on a frame
    counted = frames[~frames["is_warmup"]]
    for (mode, load, trial), arm in counted.groupby(["mode", "commands_per_frame", "trial"]):
        assert len(arm) >= 10, (mode, load, trial)  # the peer kept producing frames
        if mode == ipc.FRAME_COST_LOAD:
            # one write per frame, acked before the next: the frames applied that load
            assert arm["frame_commands"].median() == load, (load, arm["frame_commands"].tolist())
        else:
            assert arm["frame_commands"].sum() > 0  # the silent client's commands kept applying
    table = ipc.frame_cost_table(df)
    assert list(table["commands_per_frame"]) == [0, 10, 10]
    assert list(table["mode"]) == ["commands", "commands", "non_reading_client"]
    share = table["tick_p99_us"] / table["frame_us"] * 100
    assert np.allclose(share, table["tick_p99_share_pct"]) and (table["trials"] == 2).all()
    h = ipc.headline(df)
    assert h["frame_cost_10_p50_us"] == table["tick_p50_us"].iloc[1]
    assert h["frame_cost_non_reading_max_us"] == table["tick_max_us"].iloc[2]


def test_summary_leaves_warmups_out_and_headline_has_the_must_show_figures(small_run):
    summary = ipc.summarize(small_run)
    row = summary[
        (summary["scenario"] == "simple_commands")
        & (summary["mode"] == "bridge_unpaced")
        & (summary["metric"] == "rtt_us")
    ]
    assert int(row["n"].iloc[0]) == 2 * 30 and int(row["trials"].iloc[0]) == 2
    medians = (
        small_run[
            (small_run["scenario"] == "simple_commands")
            & (small_run["mode"] == "bridge_unpaced")
            & ~small_run["is_warmup"]
        ]
        .groupby("trial")["rtt_us"]
        .median()
    )
    assert float(row["median"].iloc[0]) == pytest.approx(float(medians.median()))
    totals = summary[(summary["scenario"] == "batching") & (summary["metric"] == "total_ms")]
    assert set(totals["level"]) == {"trial"} and set(totals["n"]) == {2}
    h = ipc.headline(small_run)
    for key in (
        "bridge_over_floor_p50",
        "throughput_share_of_floor",
        "60fps_one_by_one_completion_p50_ms",
        "60fps_one_by_one_over_batched_total",
        "original_sendall_p50_us",
        "original_sendall_sleep_1ms_total_ms",
    ):
        assert key in h and h[key] == h[key]  # present and not NaN


def test_report_section_is_deterministic_with_relative_plot_links(small_run, tmp_path):
    info = {"params": {"fps": 60, "trials": 2}, "run_id": "r", "fingerprint": {}}
    md_dir = tmp_path / "run"
    first = ipc_report.section(small_run, info, md_dir / "plots", md_dir)
    second = ipc_report.section(small_run, info, md_dir / "plots", md_dir)
    assert first == second and first.startswith("## Phase 3 — IPC")
    for name in ("ipc_latency_cdf", "ipc_latency_vs_size", "ipc_batching"):
        assert f"](plots/{name}.png)" in first
        assert (md_dir / "plots" / f"{name}.png").stat().st_size > 0
    assert "### Headline" in first and "| figure" in first
    assert "### Frame cost: main-thread time in Tick per frame" in first
    assert "% of 16.7 ms" in first and "non_reading_client" in first


def test_the_paced_peers_timer_is_stored_beside_the_frames_and_reported(small_run, tmp_path):
    """Both peers ask for no timer resolution here (not Windows) and measure their overshoot;
    every row of a trial carries it, and the report says how late a sleep ended."""
    assert set(small_run["timer_resolution"]) == {"not needed on this OS (sleeps end within µs)"}
    overshoot = small_run["timer_overshoot_us"]
    assert overshoot.notna().all() and (overshoot >= 0).all()
    assert small_run.groupby("trial")["timer_overshoot_us"].nunique().eq(1).all()
    info = {"params": {"fps": 60, "trials": 2}, "run_id": "r", "fingerprint": {}}
    text = ipc_report.section(small_run, info, tmp_path / "plots", tmp_path)
    assert "Avatar stand-in's timer: a 1 ms sleep ended" in text or "Pacing cannot hold" in text


def test_parameters_cell_is_the_schema_and_bad_values_are_refused():
    schema = phases.parameters("ipc")
    assert list(schema)[-1] == "run_dir"
    assert {"peer", "fps", "trials", "requests", "sizes", "warmup"} <= set(schema)
    assert phases.resolve_params("ipc", {"peer": "csharp", "fps": "30"})["fps"] == 30
    assert phases.resolve_params("ipc", {"apply_delay_ms": "5"})["apply_delay_ms"] == 5.0
    defaults = ipc.IpcParams.defaults()
    assert phases.defaults("ipc")["apply_delay_ms"] == defaults["apply_delay_ms"] == 0.0
    assert {k: v for k, v in schema.items() if k != "run_dir"} == defaults
    for bad in (
        {"peer": "rust"},
        {"fps": "-1"},
        {"sizes": "64,abc"},
        {"scenarios": "nope"},
        {"apply_delay_ms": "-1"},
        {"apply_delay_ms": "slow"},
        {"frame_cost_loads": "1,x"},
        {"frame_cost_loads": "-1"},
        {"frame_cost_frames": "0"},
    ):
        with pytest.raises(ParameterError):
            phases.resolve_params("ipc", bad)
    with pytest.raises(ParameterError, match="apply_delay_ms"):
        ipc.run(apply_delay_ms=-0.5)


def test_an_injected_apply_delay_shows_in_the_phase_as_a_known_answer():
    # unpaced only (fps 0), simple commands: the bridge's completion must rise by the delay
    df = ipc.run(
        peer="python",
        fps=0,
        trials=1,
        requests=30,
        warmup=3,
        scenarios="simple_commands",
        apply_delay_ms=5.0,
    )
    assert set(df["apply_delay_ms"]) == {5.0}
    h = ipc.headline(df)
    rise = h["bridge_completion_p50_ms"] - h["floor_p50_us"] / 1e3
    assert 4.0 <= rise <= 9.0, h
    assert h["apply_delay_ms"] == 5.0


def _kill_the_first_connected_bridge_peer(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first bridge peer (not the legacy one) that holds a client's connection."""
    me = psutil.Process()
    while not stop.is_set() and not killed:
        for child in me.children(recursive=True):
            try:
                cmd = child.cmdline()
                if "mateperf.bridge.peer_main" not in cmd or "--legacy" in cmd:
                    continue
                if any(c.status == psutil.CONN_ESTABLISHED for c in child.net_connections("tcp")):
                    child.kill()
                    killed.append(child.pid)
                    break
            except psutil.Error:  # a child that ended meanwhile
                continue
        time.sleep(0.002)


def test_a_trial_whose_peer_is_killed_is_recorded_and_the_run_goes_on(tmp_path):
    # A real failure, not a fake: trial 0's bridge peer is killed (SIGKILL) as soon as the
    # client has connected to it. Trial 0 then lasts at least as long as its 200 requests at
    # 2 ms each, so the watcher, polling every 2 ms, always finds that peer within trial 0.
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_the_first_connected_bridge_peer, args=(killed, stop))
    watcher.start()
    try:
        df = ipc.run(
            peer="python",
            fps=0,
            trials=2,
            requests=200,
            warmup=3,
            scenarios="simple_commands",
            apply_delay_ms=2.0,
            timeout_s=2.0,
        )
    finally:
        stop.set()
        watcher.join()
    assert len(killed) == 1
    failed = ipc.failed_trials(df)
    assert list(failed["trial"]) == [0], failed
    assert failed["error"].iloc[0].split(":")[0].isidentifier()  # "Type: message"
    failed_rows = df[df["error"] != ""]
    assert len(failed_rows) == 1 and failed_rows["record"].isna().all()  # nothing measured
    measured = df[df["error"] == ""]
    assert set(measured["trial"]) == {1} and set(measured["scenario"]) == {"simple_commands"}
    assert list(df.columns) == list(COLUMNS)
    assert ipc.headline(df)["simple_trials"] == 1
    summary = ipc.summarize(df)
    assert set(summary["trials"]) == {1} and summary["scenario"].notna().all()
    info = {"params": {"fps": 0, "trials": 2}, "run_id": "r", "fingerprint": {}}
    section = ipc_report.section(df, info, tmp_path / "plots", tmp_path)
    assert "1 trial(s) failed and are left out:" in section
    assert f"- trial 0: {failed['error'].iloc[0]}" in section


def test_a_run_whose_every_trial_failed_raises(monkeypatch):
    # A real failure in every trial: the C# peer's build named by MATEPERF_CSHARP_PEER does
    # not exist, so the peer exits at start (each trial records it; then the run raises).
    monkeypatch.setenv("MATEPERF_CSHARP_PEER", "/nonexistent/MatePeer.exe")
    with pytest.raises(RuntimeError, match="every ipc trial failed; the first: PeerStartError"):
        ipc.run(peer="csharp", trials=2, requests=5, scenarios="simple_commands")


def test_notebook_is_committed_without_outputs():
    nb = json.loads(phases.require_notebook("ipc").read_text(encoding="utf-8"))
    assert phases.require_notebook("ipc").name == "03_ipc_batching.ipynb"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.slow
def test_cli_runs_the_phase_through_papermill(phase_runs):
    run_dir = phase_runs.get("ipc").run_dir  # the session's `mateperf run ipc` (conftest)
    df = pd.read_parquet(run_dir / "ipc.parquet")
    assert set(df["scenario"]) == set(SCENARIOS)
    assert {"run_id", "phase", "peer", "fps"} <= set(df.columns)
    assert (run_dir / "ipc.md").read_text(encoding="utf-8").count("## Phase 3 — IPC") == 1


def test_cli_refuses_a_bad_peer(cli):
    result = cli("run", "ipc", "-p", "peer=unity")
    assert result.rc == 2 and "peer" in result.stderr and "Traceback" not in result.stderr
