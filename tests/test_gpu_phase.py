"""Phase 5 with the real model, in process and through the real CLI, papermill and sweep.

On a machine without an NVIDIA GPU (or with a CPU-only llama-cpp-python) the phase must still
predict both ways, select cpu_fallback, walk the chain for real and say that no GPU was
measured; the GPU side is in test_gpu_device.py (marker `gpu`).
"""

import json

import pandas as pd
import pytest

from mateperf import results
from mateperf.gpu import trial
from mateperf.phases import gpu
from mateperf.phases.gpu import predict
from mateperf.reports import gpu as gpu_report
from mateperf.trackers.gpu import GpuMonitor
from tests.conftest import PHASE_RUN_PARAMS

pytestmark = pytest.mark.slow

SMALL_GPU = PHASE_RUN_PARAMS["gpu"]


def small_gpu_args(**overrides) -> list[str]:
    args: list[str] = []
    for key, value in {**SMALL_GPU, **overrides}.items():
        args += ["-p", f"{key}={value}"]
    return args


def gpu_present() -> bool:
    import llama_cpp

    monitor = GpuMonitor()
    try:
        return monitor.available and bool(llama_cpp.llama_supports_gpu_offload())
    finally:
        monitor.close()


@pytest.fixture(scope="module")
def small_run(phase_runs) -> pd.DataFrame:
    """The frame of the session's `mateperf run gpu` with SMALL_GPU (tests/conftest.py)."""
    return phase_runs.frame("gpu")


def test_prediction_rows_for_every_layer_count(small_run):
    pred = gpu.prediction_table(small_run)
    assert list(pred["gpu_layers"]) == list(range(20))  # 18 layers + output, and 0
    assert (pred["meta_buffers_mb"] > 0).all()
    assert pred["meta_weights_mb"].iloc[-1] > pred["meta_weights_mb"].iloc[1] > 0
    assert (pred["proj_status"] == "ok").all()
    assert (pred["proj_host_mb"] > 0).all()
    check = small_run[small_run["scenario"] == gpu.SCENARIO_CPU_CHECK].iloc[0]
    assert check["meta_host_kv_mb"] == pytest.approx(check["proj_host_context_mb"], abs=1)


def test_without_a_gpu_the_selection_ends_at_cpu_fallback(small_run):
    if gpu_present():
        pytest.skip("this machine has a GPU and a CUDA build")
    first = small_run.iloc[0]
    status = first["gpu_status"]
    assert first["selected_profile"] == "cpu_fallback" and first["final_profile"] == "cpu_fallback"
    sel = small_run[small_run["scenario"] == gpu.SCENARIO_SELECTION].set_index("profile")
    assert list(sel.index) == ["performance", "layers_81pct", "low_memory", "cpu_fallback"]
    assert bool(sel.loc["cpu_fallback", "chosen"]) and not sel.loc["performance", "fits"]
    if not first["gpu_available"]:
        assert status.startswith("no NVIDIA GPU: ")
        assert (sel.loc[["performance", "layers_81pct", "low_memory"], "reason"] == status).all()
        assert first["overhead_source"] == f"not measured: {status}"
    attempts = small_run[small_run["scenario"] == gpu.SCENARIO_ATTEMPT]
    assert len(attempts) == 1 and bool(attempts["attempt_ok"].iloc[0])
    assert attempts["attempt_tg_tps"].iloc[0] > 0  # it really loaded and generated
    layers = gpu.measured(small_run)
    assert len(layers) == 2 and layers["ok"].all()
    assert (layers["gpu_layers_effective"] == 0).all()  # every layer ran on the CPU
    assert layers["vram_delta_mb"].isna().all()  # never an invented number
    assert (layers["tg_tps"] > 0).all() and (layers["ttft_ms"] > 0).all()
    assert gpu.measured_vs_predicted(small_run).empty
    assert "vram_delta_mb" not in [m for _, _, m in gpu.sweep_metrics(small_run)]


def test_kv_types_and_the_target_card_are_in_every_run(small_run):
    kv = small_run[small_run["scenario"] == gpu.SCENARIO_KV_CHECK]
    assert len(kv) == 6 and (kv["proj_status"] == "ok").all()
    # the KV cache of each type pair as llama.cpp projects it (whole MiB, truncated)
    gap = kv["kv_meta_kv_mb"] - kv["kv_proj_kv_mb"]
    assert ((gap >= 0) & (gap < 1.01)).all(), kv[["kv_type_k", "kv_meta_kv_mb", "kv_proj_kv_mb"]]
    grid, companion = gpu.fit_frames(small_run)
    assert set(grid["n_ctx"]) == set(predict.FIT_N_CTX) and len(companion) == 3
    if not gpu_present():  # no budget and no GPU: the companion's 6 GB card, H200 overhead
        assert small_run["target_budget_mb"].iloc[0] == 6144
        assert "reference figures" in small_run["target_overhead_source"].iloc[0]


def test_forced_onto_1000_mib_the_chain_skips_by_prediction(default_model):
    """performance forced onto an emulated 1000 MiB card on this machine: no GPU profile step
    is loaded (even its buffers alone, ~690-790 MiB, leave no room for the 512 MiB margin); the
    CPU step is, and runs."""
    if gpu_present():
        pytest.skip("test_gpu_device.py checks this with the device overhead on a GPU")
    df = gpu.run(
        model=str(default_model),
        profile="performance",
        vram_budget_mb=1000,
        **{**SMALL_GPU, "trials": 1},
    )
    attempts = df[df["scenario"] == gpu.SCENARIO_ATTEMPT].sort_values("attempt")
    steps = attempts[attempts["profile"] == "performance"]
    # n_ctx 512 cannot be halved (the chain's floor): all layers, then 9, 4, 2, 1
    assert list(steps["attempt_step"]) == ["as selected"] + ["fewer layers"] * 4
    assert steps["attempt_skipped"].astype(bool).all()
    assert (
        steps["attempt_reason"]
        .str.match(
            r"skipped: buffers alone \(overhead never measured\) \d+ \+ 512 margin > 1000 MiB"
        )
        .all()
    )
    assert steps["attempt_tg_tps"].isna().all()  # nothing loaded
    cpu = attempts.iloc[-1]
    assert cpu["profile"] == "cpu_fallback" and bool(cpu["attempt_ok"])
    assert cpu["attempt_predicted_mb"] == 0.0 and cpu["attempt_tg_tps"] > 0
    assert df["final_profile"].iloc[0] == "cpu_fallback"


def test_report_says_plainly_that_no_gpu_was_measured(small_run, tmp_path):
    if gpu_present():
        pytest.skip("this machine has a GPU and a CUDA build")
    info = {
        "params": {
            **SMALL_GPU,
            "n_batch": 512,
            "n_ubatch": 0,
            "offload_kqv": True,
            "flash_attn": False,
            "margin_mb": 512,
            "vram_budget_mb": 0,
        }
    }
    md = gpu_report.section(small_run, info, tmp_path / "plots", tmp_path)
    status = small_run["gpu_status"].iloc[0]
    assert "**No GPU was measured:" in md
    if not small_run["gpu_available"].iloc[0]:
        assert status in md
    assert "19 (all)" in md and "cpu_fallback (chosen)" in md
    assert "No VRAM was measured" in md
    assert (tmp_path / "plots" / "gpu_vram_by_layers.png").stat().st_size > 1000


def test_trial_in_a_child_process_and_its_failure(default_model):
    config = {"model_path": str(default_model), "n_ctx": 512, "n_threads": 1}
    ok = trial.run_trial(config, trial.work_spec(4, 16, 4), isolate=True)
    assert ok["ok"] and ok["stage"] == "done" and ok["tg_tps"] > 0 and ok["load_s"] > 0
    assert ok["cuda_visible_devices"] is None or ok["cuda_visible_devices"] != ""
    hidden = trial.run_trial(config, trial.work_spec(0, 0, 4), isolate=True, hide_gpu=True)
    assert hidden["ok"] and hidden["cuda_visible_devices"] == ""  # cpu_fallback's child
    # 64 tokens of context cannot hold the companion's prompt: a failure, recorded, not raised
    bad = trial.run_trial({**config, "n_ctx": 64}, trial.work_spec(4, 0, 0), isolate=True)
    assert not bad["ok"] and bad["stage"] == "work" and "context window" in bad["error"]


@pytest.fixture(scope="module")
def cli_gpu_run(phase_runs):
    """The session's one real `mateperf run gpu` (tests/conftest.py, PHASE_RUN_PARAMS)."""
    run = phase_runs.get("gpu")
    return run.root, run.run_dir, run.process


def test_cli_run_writes_a_complete_run_directory(cli_gpu_run):
    _, run_dir, r = cli_gpu_run
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["status"] == results.STATUS_OK
    df = pd.read_parquet(run_dir / "gpu.parquet")
    assert {
        "run_id",
        "scenario",
        "trial",
        "n_gpu_layers",
        "meta_total_mb",
        "proj_device_mb",
    } <= set(df.columns)
    assert set(df["scenario"]) >= {"prediction", "selection", "attempt", "layers"}
    assert (run_dir / "05_gpu_profiles.ipynb").is_file()
    md = (run_dir / "gpu.md").read_text(encoding="utf-8")
    assert "Phase 5" in md and "plots/gpu_vram_by_layers.png" in md
    assert "[gpu] selected profile:" in r.stderr


def test_report_is_regenerated_identically(cli_gpu_run, cli):
    root, run_dir, _ = cli_gpu_run
    assert cli("--results", str(root), "report", str(run_dir)).rc == 0
    first = (root / "FINAL_RESULTS.md").read_text(encoding="utf-8")
    png = (root / "plots" / run_dir.name / "gpu_vram_by_layers.png").read_bytes()
    assert cli("--results", str(root), "report", str(run_dir)).rc == 0
    assert (root / "FINAL_RESULTS.md").read_text(encoding="utf-8") == first
    assert (root / "plots" / run_dir.name / "gpu_vram_by_layers.png").read_bytes() == png


def test_sweep_over_gpu_layers(cli, results_root):
    r = cli(
        "sweep", "gpu", "--grid", "n_gpu_layers=0,-1", "--rounds", "1", *small_gpu_args(trials=1)
    )
    assert r.rc == 0, r.stderr[-3000:]
    (sweep,) = [p.parent for p in results_root.glob("*-sweep-*/run.json")]
    df = pd.read_parquet(sweep / "gpu.parquet")
    layers = df[(df["scenario"] == "layers") & ~df["is_warmup"].astype(bool)]
    assert sorted(layers["n_gpu_layers"].unique()) == [-1, 0]
    assert (layers["tg_tps"] > 0).all()
    md = (sweep / "gpu.md").read_text(encoding="utf-8")
    assert "generation tokens/s" in md


def test_a_configuration_that_never_runs_fails_the_run_on_record(cli, results_root):
    # 64 tokens of context cannot hold the companion's prompt: every trial fails for real
    r = cli("run", "gpu", *small_gpu_args(n_ctx=64, trials=1))
    assert r.rc == 1
    (run_dir,) = [p.parent for p in results_root.glob("*/run.json")]
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["status"] == results.STATUS_FAILED
    assert "every trial of n_gpu_layers=-1 failed" in info["error"]["evalue"]
    df = pd.read_parquet(run_dir / "gpu.parquet")  # saved before the check failed the run
    assert (df["scenario"] == "prediction").sum() == 20


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-p", "vram_budget_mb=-1"], "vram_budget_mb=-1"),
        (["-p", "profile=turbo"], "profile='turbo'"),
        (["-p", "n_gpu_layers=-2"], "n_gpu_layers=-2"),
        (["-p", "warn_pct=95", "-p", "critical_pct=90"], "warn_pct=95.0"),
        (["-p", "trials=0"], "trials=0"),
        (["-p", "monitor_interval_ms=0"], "monitor_interval_ms=0"),
        (["-p", "margin_mb=-5"], "margin_mb=-5"),
    ],
)
def test_bad_input_is_refused(cli, results_root, args, needle):
    r = cli("run", "gpu", *args)
    assert r.rc == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr
    assert not results_root.exists() or not any(results_root.glob("*/run.json"))
