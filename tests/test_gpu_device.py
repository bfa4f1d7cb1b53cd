"""On an NVIDIA GPU with a CUDA build of llama-cpp-python: predictions against NVML for real.

Marked `gpu`; each test skips, saying why, where there is no GPU or no CUDA build. Run with
`pytest -m gpu` (benchmarks/gpu_device_check.sh does, on the lent machine). The model is
$MATEPERF_MODEL or the default one.
"""

import math

import pytest

from mateperf.gpu import calibration, estimate, projection, trial
from mateperf.phases import gpu
from mateperf.trackers.gpu import GpuMonitor

pytestmark = pytest.mark.gpu

SMALL = {
    "n_threads": 0,
    "trials": 2,
    "max_tokens": 8,
    "pp_tokens": 128,
    "tg_tokens": 16,
    "compare_profiles": False,
}


@pytest.fixture(scope="module")
def monitor():
    m = GpuMonitor(interval_ms=20)
    if not m.available:
        pytest.skip(f"needs an NVIDIA GPU: {m.status}")
    try:
        import llama_cpp
    except ImportError as exc:
        pytest.skip(f"needs llama-cpp-python: {exc}")
    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("needs a CUDA build of llama-cpp-python (this one has no GPU offload)")
    yield m
    m.close()


def test_projection_places_weights_and_kv_as_the_metadata_says(monitor, default_model):
    """llama.cpp's own dry run and the metadata method agree on what goes to the device for
    every layer count: weights (output layer first, the tied embedding copied) and KV cache.
    Compute buffers are compared too, more loosely: their model is the approximate part."""
    layout = estimate.read_layout(default_model)
    s = estimate.Settings(n_ctx=2048, n_ubatch=512)
    ks = list(range(layout.all_layers + 1))
    configs = [projection.dry_run_config(k, 2048, 512, 512) for k in ks]
    results, facts = projection.project(default_model, configs)
    if facts["status"] != projection.OK:
        pytest.skip(f"llama.cpp projection: {facts['status']} (see MATEPERF_LLAMA_COMMON)")
    assert facts["gpu_offload"]
    for k, r in zip(ks, results, strict=True):
        meta = estimate.predict(layout, k, s)
        assert r["status"] == projection.OK, (k, r)
        assert abs(meta["meta_weights_mb"] - r["proj_device_model_mb"] - 0.5) <= 1.5, (k, r)
        assert abs(meta["meta_kv_mb"] - r["proj_device_context_mb"] - 0.5) <= 1.5, (k, r)
        tolerance = max(64.0, 0.10 * r["proj_device_compute_mb"])
        assert abs(meta["meta_compute_mb"] - r["proj_device_compute_mb"]) <= tolerance, (k, r)


def test_device_overhead_is_measured_and_stored(monitor, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    overhead = calibration.overhead_for(monitor, gpu_offload=True)
    assert "measured" in overhead.source and not overhead.source.startswith("not")
    assert 50 < overhead.none_mb < 4096 and 50 < overhead.attention_mb < 4096
    assert 50 < overhead.none_fa_mb < 4096 and 50 < overhead.attention_fa_mb < 4096
    stored = calibration.load_stored(calibration.device_key(monitor.device()))
    assert stored == overhead


def test_alerts_fire_under_a_budget(monitor, default_model):
    """A budget just above what the device uses now: loading the model crosses 90%."""
    used = monitor.read()["vram_used_mb"]
    events = []
    m = GpuMonitor(interval_ms=10, budget_mb=used + 400, callbacks=[events.append])
    config = {"model_path": str(default_model), "n_ctx": 1024, "n_gpu_layers": -1}
    with m:
        result = trial.run_trial(config, trial.work_spec(0, 64, 8), isolate=True)
    assert result["ok"], result
    levels = [e["level"] for e in events]
    # the load crosses 90%: warn then critical, or critical straight away (a 10 ms sampler can
    # miss warn); what follows (ok once the child has exited) is the alert working too
    assert "critical" in levels, levels
    assert levels[: levels.index("critical") + 1] in (["warn", "critical"], ["critical"]), levels
    assert (m.alerts()["basis"] == "budget").all()
    m.close()


def test_cpu_fallback_hides_the_gpu(monitor, default_model):
    """n_gpu_layers 0 still uses VRAM on a CUDA build (context, op_offload's compute buffer);
    the cpu_fallback child, with no CUDA device visible, uses none."""
    config = {"model_path": str(default_model), "n_ctx": 1024, "n_gpu_layers": 0}
    work = trial.work_spec(0, 64, 8)
    used = {}
    for hide in (False, True):
        before = monitor.read()["vram_used_mb"]
        r = trial.run_trial(config, work, isolate=True, hide_gpu=hide)
        assert r["ok"], r
        used[hide] = r["vram_after_mb"] - before
    assert used[False] > 300 and abs(used[True]) < 32, used


@pytest.fixture(scope="module")
def gpu_runs(monitor, default_model):
    return {k: gpu.run(model=str(default_model), n_gpu_layers=k, **SMALL) for k in (0, 9, -1)}


@pytest.mark.parametrize("k", [0, 9, -1])
def test_measured_vram_against_both_predictions(gpu_runs, k):
    """The issue's target: within 10% or 64 MiB of NVML, whichever is larger."""
    df = gpu_runs[k]
    layers = gpu.measured(df)
    layers = layers[layers["scenario"] == gpu.SCENARIO_LAYERS]
    assert layers["ok"].all() and (layers["gpu_layers_effective"] > 0).any() == (k != 0)
    vs = gpu.measured_vs_predicted(df)
    row = vs[(vs["scenario"] == gpu.SCENARIO_LAYERS)].iloc[0]
    assert row["measured_mb"] > 300
    assert row["meta_within_target"], row.to_dict()
    if not math.isnan(row["proj_mb"]):
        assert row["proj_within_target"], row.to_dict()


def test_gpu_is_faster_with_layers_offloaded(gpu_runs):
    tg = {k: gpu.measured(df)["tg_tps"].median() for k, df in gpu_runs.items()}
    assert tg[-1] > tg[0]


def test_forced_fallback_skips_by_prediction(monitor, default_model):
    """performance forced onto an emulated 1000 MiB card: every GPU step is predicted above it
    with the margin (the device overhead alone is ~700 MiB), so none is loaded; each is
    recorded with its prediction, and the chain ends on the CPU, loaded."""
    df = gpu.run(
        model=str(default_model),
        profile="performance",
        vram_budget_mb=1000,
        **{**SMALL, "trials": 1},
    )
    attempts = df[df["scenario"] == gpu.SCENARIO_ATTEMPT].sort_values("attempt")
    gpu_steps = attempts[attempts["profile"] != "cpu_fallback"]
    assert len(gpu_steps) >= 3 and gpu_steps["attempt_skipped"].all()
    assert gpu_steps["attempt_reason"].str.contains("margin > 1000 MiB available").all()
    assert (gpu_steps["attempt_need_mb"] > 1000 - 512).all()
    assert gpu_steps["attempt_vram_mb"].isna().all()  # nothing was loaded
    assert attempts["profile"].iloc[-1] == "cpu_fallback" and attempts["attempt_ok"].iloc[-1]
    assert df["final_profile"].iloc[0] == "cpu_fallback"


@pytest.mark.parametrize("flash_attn", [False, True])
def test_profiles_within_64_mib_with_flash_attention(monitor, default_model, flash_attn):
    """Every profile measured against the prediction that uses the overhead of its own flash
    attention setting: within 64 MiB (the H200 run had flash attention 83-94 MiB high)."""
    df = gpu.run(
        model=str(default_model),
        flash_attn=flash_attn,
        **{**SMALL, "compare_profiles": True},
    )
    vs = gpu.measured_vs_predicted(df)
    assert len(vs) >= 2
    for _, row in vs.iterrows():
        assert abs(row["meta_error_mb"]) <= 64, row.to_dict()
