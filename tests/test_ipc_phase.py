"""Phase 3 end to end, small: the real peers in their own processes, the real report, the CLI.

Never asserts on timings; it checks shape, counts, that warm-ups stay out of the statistics,
that batching completes in fewer frames, and that the report is deterministic.
"""

import json

import pandas as pd
import pytest

from mateperf import phases
from mateperf.errors import ParameterError
from mateperf.phases import ipc
from mateperf.reports import ipc as ipc_report

SMALL = {
    "trials": 2,
    "requests": 30,
    "paced_requests": 6,
    "sizes": "64,4096",
    "size_requests": 8,
    "throughput_requests": 100,
    "window": 8,
    "batch_commands": 20,
    "batch_size": 10,
    "warmup": 3,
}


@pytest.fixture(scope="module", params=["python", pytest.param("csharp", marks=pytest.mark.mono)])
def small_run(request) -> pd.DataFrame:
    if request.param == "csharp":
        request.getfixturevalue("built_csharp")
    return ipc.run(peer=request.param, fps=60, **SMALL)


def test_rows_per_request_for_every_scenario_and_mode(small_run):
    df = small_run
    assert set(df["scenario"]) == set(ipc.SCENARIOS)
    counts = df.groupby(["scenario", "mode", "fps", "trial"]).size()
    assert counts[("simple_commands", "floor", 0.0, 0)] == 30 + 3
    assert counts[("simple_commands", "bridge_unpaced", 0.0, 1)] == 30 + 3
    assert counts[("batching", "batched", 60.0, 0)] == 20
    assert counts[("original_method", "sendall_sleep_1ms", 60.0, 1)] == 20
    assert set(df[df["scenario"] == "message_sizes"]["target_bytes"]) == {64, 4096}
    sizes = df[(df["scenario"] == "message_sizes") & (df["mode"] == "bridge_unpaced")]
    assert (sizes["size_bytes"] - sizes["target_bytes"]).abs().max() <= 8  # id digits vary
    assert df["is_warmup"].sum() > 0 and df["peer"].nunique() == 1
    for col in ipc.METRICS:
        assert col in df and df[col].dtype == float


def test_at_60_fps_batches_take_fewer_frames_than_one_by_one(small_run):
    b = small_run[(small_run["scenario"] == "batching") & (small_run["fps"] == 60)]
    for _, trial in b.groupby("trial"):
        span = trial.groupby("mode")["frame"].agg(lambda f: f.max() - f.min() + 1)
        assert span["one_by_one"] >= 20 and span["batched"] <= 3
        assert span["batched"] < span["one_by_one"]


def test_summary_leaves_warmups_out_and_headline_has_the_must_show_figures(small_run):
    summary = ipc.summarize(small_run)
    row = summary[
        (summary["scenario"] == "simple_commands")
        & (summary["mode"] == "bridge_unpaced")
        & (summary["metric"] == "rtt_us")
    ]
    assert int(row["n"].iloc[0]) == 2 * 30
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


def test_parameters_cell_is_the_schema_and_bad_values_are_refused():
    schema = phases.parameters("ipc")
    assert list(schema)[-1] == "run_dir"
    assert {"peer", "fps", "trials", "requests", "sizes", "warmup"} <= set(schema)
    assert phases.resolve_params("ipc", {"peer": "csharp", "fps": "30"})["fps"] == 30
    for bad in ({"peer": "rust"}, {"fps": "-1"}, {"sizes": "64,abc"}, {"scenarios": "nope"}):
        with pytest.raises(ParameterError):
            phases.resolve_params("ipc", bad)


def test_notebook_is_committed_without_outputs():
    nb = json.loads(phases.require_notebook("ipc").read_text())
    assert phases.require_notebook("ipc").name == "03_ipc_batching.ipynb"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.slow
def test_cli_runs_the_phase_through_papermill(cli, results_root):
    args = ["run", "ipc", "-p", "fps=60", "-p", "peer=python"]
    for key, value in {**SMALL, "trials": 1, "scenarios": "simple_commands,batching"}.items():
        args += ["-p", f"{key}={value}"]
    result = cli(*args, timeout=300)
    assert result.rc == 0, result.stderr[-2000:]
    (run_dir,) = [p for p in results_root.iterdir() if p.is_dir()]
    df = pd.read_parquet(run_dir / "ipc.parquet")
    assert set(df["scenario"]) == {"simple_commands", "batching"}
    assert {"run_id", "phase", "peer", "fps"} <= set(df.columns)
    assert (run_dir / "ipc.md").read_text().count("## Phase 3 — IPC") == 1


def test_cli_refuses_a_bad_peer(cli):
    result = cli("run", "ipc", "-p", "peer=unity")
    assert result.rc == 2 and "peer" in result.stderr and "Traceback" not in result.stderr
