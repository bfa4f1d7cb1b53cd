"""What the gpu phase reports when a GPU was measured, and the target-card table.

No GPU here, so the measured frame is built from a stored run of the phase (its columns, its
prediction, selection and attempt rows, as results/ holds them) with its measured rows replaced
by what a GPU run stores: VRAM per trial, every profile that fits as its own arm, cpu_fallback
with the GPU hidden. The figures are the H200 run's (issue 17); the fault is the missing GPU.
"""

import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mateperf import report, results, stats
from mateperf.gpu import estimate, profiles
from mateperf.gpu.tinygguf import MISTRAL_7B_SHAPES, write_shape_gguf
from mateperf.phases import gpu
from mateperf.phases.gpu import analyse as gpu_analyse
from mateperf.phases.gpu import predict
from mateperf.reports import gpu as gpu_report
from mateperf.reports import gpu_tables, overview

RESULTS = Path(__file__).resolve().parent.parent / "results"
# arm: (profile, gpu_layers, n_ctx, offload_kqv, flash_attn, hide_gpu, VRAM MiB, tg tok/s,
# what the phase stored as the metadata prediction)
ARMS = {
    "": ("", 19, 2048, True, False, False, 1499.0, 836.0, 1495.0),
    "performance": ("performance", 19, 2048, True, True, False, 1442.0, 840.0, 1440.0),
    "low_memory": ("low_memory", 10, 1024, False, True, False, 1094.0, 430.0, 1100.0),
    # an older phase stored the GPU prediction here although the GPU is hidden
    "cpu_fallback": ("cpu_fallback", 0, 2048, False, False, True, 0.0, 52.0, 1395.0),
}


def stored_gpu_run() -> Path:
    runs = sorted(RESULTS.glob("*-gpu-*/gpu.parquet"))
    assert runs, "results/ holds a reference run of the gpu phase"
    return runs[-1].parent


def gpu_measured_frame(stored: pd.DataFrame) -> pd.DataFrame:
    keep = stored[~stored["scenario"].isin(gpu.MEASURED_SCENARIOS)].copy()
    template = stored[stored["scenario"] == gpu.SCENARIO_LAYERS].iloc[-1].to_dict()
    rows = []
    for name, (prof, k, n_ctx, kqv, fa, hide, vram, tg, pred) in ARMS.items():
        for trial in range(-1, 4):  # a warm-up round, then the default 4 trials
            jitter = (0, -1, 1, 0, 2)[trial]  # MiB: NVML readings of one configuration
            rows.append(
                {
                    **template,
                    "scenario": gpu.SCENARIO_PROFILE if name else gpu.SCENARIO_LAYERS,
                    "profile": prof,
                    "trial": trial,
                    "is_warmup": trial < 0,
                    "gpu_layers": k,
                    "gpu_layers_effective": k,
                    "cfg_n_ctx": n_ctx,
                    "cfg_offload_kqv": kqv,
                    "cfg_flash_attn": fa,
                    "cfg_hide_gpu": hide,
                    "ok": True,
                    "vram_delta_mb": vram + (jitter if vram else 0.0),
                    "tg_tps": tg + trial,
                    "pred_meta_total_mb": pred,
                    "pred_proj_total_mb": pred + 2,
                }
            )
    df = pd.concat([keep, pd.DataFrame(rows)], ignore_index=True)
    facts = {
        "gpu_available": True,
        "gpu_offload": True,
        "gpu_status": "GPU 0: NVIDIA H200",
        "gpu_name": "NVIDIA H200",
        "gpu_total_mb": 143771.0,
        "overhead_none_mb": 712.0,
        "overhead_attention_mb": 707.0,
        "overhead_source": "test figures",
        "selected_profile": "performance",
        "final_profile": "performance",
        "final_ok": True,
    }
    for key, value in facts.items():
        df[key] = value
    return df


@pytest.fixture(scope="module")
def stored_run() -> tuple[Path, pd.DataFrame, dict]:
    path = stored_gpu_run()
    info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    return path, gpu_measured_frame(pd.read_parquet(path / "gpu.parquet")), info


def test_summary_has_gpu_rows_when_a_gpu_was_measured(stored_run):
    _, df, info = stored_run
    rows = overview.summary_rows("gpu", df, info)
    by_metric = {r["metric"]: r for r in rows}
    tg = by_metric["generation tokens/s (tokens/s)"]
    assert tg["optimisation"] == "profile performance instead of cpu_fallback"
    assert tg["verdict"] == "faster"  # 4 + 4 trials, completely separated: testable
    assert (tg["baseline"], tg["optimised"]) == ("53.5", "841.5")
    vram = by_metric["VRAM in use after the work (NVML) (MiB)"]
    assert vram["verdict"] == "more memory"
    pred = by_metric["metadata prediction − NVML (MiB)"]
    assert pred["verdict"] == "within 10% or 64 MiB at 3 of 3 configurations"
    chain = by_metric["loads attempted"]
    assert chain["verdict"].startswith("ended at ")
    assert not any("not measured" in str(r["verdict"]) for r in rows)


def test_final_results_renders_the_gpu_row(stored_run, tmp_path):
    path, df, _ = stored_run
    run_dir = tmp_path / path.name
    shutil.copytree(path, run_dir, ignore=shutil.ignore_patterns("*.ipynb", "plots"))
    df.to_parquet(run_dir / "gpu.parquet")
    final = report.write_final([run_dir], tmp_path).read_text(encoding="utf-8")
    summary = " ".join(final.split("## Summary", 1)[1].split("\n## ", 1)[0].split())
    assert "| gpu | profile performance instead of cpu_fallback |" in summary
    assert "| faster |" in summary and "| more memory |" in summary
    assert "| gpu | fallback chain, predict first | loads attempted |" in summary
    assert "not measured: no NVIDIA GPU" not in summary


def test_measured_against_predicted_is_one_configuration_a_row(stored_run):
    _, df, _ = stored_run
    vs = gpu.measured_vs_predicted(df).set_index("profile")
    assert len(vs) == 4 and vs["n"].eq(4).all()
    # the GPU is hidden: 0 on the device, whatever the stored prediction said
    assert vs.loc["cpu_fallback", "meta_mb"] == 0.0 and vs.loc["cpu_fallback", "proj_mb"] == 0.0
    assert vs.loc["cpu_fallback", "meta_within_target"]
    assert (vs.loc["low_memory", "cfg_n_ctx"], vs.loc["low_memory", "cfg_flash_attn"]) == (
        1024,
        True,
    )
    assert vs.loc["low_memory", "measured_mb"] == 1094.0
    table = gpu_tables.vs_table(df)
    assert "n_ctx 1024, KV in RAM f16, FA on" in set(table["configuration"])
    assert "n_ctx 2048, GPU hidden" in set(table["configuration"])


def test_per_layer_table_shows_only_the_predicted_configuration(stored_run):
    _, df, _ = stored_run
    # low_memory (10 layers, n_ctx 1024, KV in RAM) and performance (flash attention on) are
    # other configurations: only the run's own n_gpu_layers stands beside the predictions
    assert gpu.measured_at_base(df) == {19: 1499.0}
    table = gpu_tables.prediction_table(df)
    measured = dict(zip(table["n_gpu_layers"], table["measured (NVML)"], strict=True))
    assert measured["19 (all)"] == "1499" and measured["10"] == "–" and measured["0"] == "–"


def test_profile_comparison_at_the_default_trials_can_reach_a_verdict(stored_run):
    _, df, _ = stored_run
    comp = gpu.profile_comparison(df)
    assert comp["verdict"].map(stats.is_tested).all()
    tg = comp[(comp["profile"] == "cpu_fallback") & (comp["metric"] == "tg_tps")].iloc[0]
    assert tg["verdict"] == "slower" and (tg["n_a"], tg["n_b"]) == (4, 4)


@pytest.fixture(scope="module")
def layout_7b(tmp_path_factory):
    path = write_shape_gguf(tmp_path_factory.mktemp("7b") / "7b.gguf", MISTRAL_7B_SHAPES)
    return estimate.read_layout(path)


def test_target_card_for_a_7b_on_6_gb(layout_7b):
    """The companion's card: on 6144 MiB with a 512 MiB margin and the H200's overhead, a
    Q5_K_M 7B fits only part of its layers; a smaller KV cache type or context fits more."""
    o = estimate.REFERENCE_OVERHEAD
    grid, companion = predict.target_card(layout_7b, 6144, 512, o)
    assert set(grid["n_ctx"]) == set(predict.FIT_N_CTX)  # the 7B was trained on 32768
    assert len(grid) == len(predict.FIT_N_CTX) * len(predict.FIT_KV) * 34
    best = estimate.largest_fit(grid).set_index(["type_k", "flash_attn", "n_ctx"]).sort_index()
    f16 = best.loc[("f16", False)]["max_gpu_layers"]
    assert f16.is_monotonic_decreasing and f16.loc[512] < 33  # not every layer fits
    q4 = best.loc[("q4_0", True)]["max_gpu_layers"]
    assert (q4 >= best.loc[("f16", True)]["max_gpu_layers"]).all()
    assert q4.loc[32768] > f16.loc[32768]
    # a cell by hand: the largest k whose prediction plus the margin fits
    s = estimate.Settings(n_ctx=4096, n_ubatch=512)
    totals = [estimate.predict(layout_7b, k, s, o)["meta_total_mb"] for k in range(34)]
    assert f16.loc[4096] == max(k for k, t in enumerate(totals) if t + 512 <= 6144)
    c = companion.set_index("profile")
    assert list(c.index) == list(profiles.COMPANION_PROFILES)
    assert not c.loc["performance", "fits"]  # -1 at n_ctx 4096: ~6.4 GiB with the overhead
    assert c.loc["performance", "gpu_layers"] == 33 and c.loc["balanced", "gpu_layers"] == 33
    # the companion's cpu_fallback keeps the GPU visible: op_offload's buffer and the context
    zero = c.loc["cpu_fallback"]
    assert zero["meta_weights_mb"] == 0 and zero["meta_compute_mb"] > 0
    assert zero["meta_total_mb"] == pytest.approx(zero["meta_compute_mb"] + o.none_mb)


def test_target_card_without_an_overhead_says_it_cannot_tell(layout_7b):
    grid, companion = predict.target_card(layout_7b, 6144, 512, estimate.Overhead())
    assert grid["fits"].isna().all() and companion["fits"].isna().all()
    best = estimate.largest_fit(grid)
    assert not best["known"].any() and (best["max_gpu_layers"] == -1).all()
    assert math.isnan(best["all_layers_mb"].iloc[0]) and best["all_layers_buffers_mb"].gt(0).all()


def test_target_rows_survive_the_tidy_frame_and_render(layout_7b, tmp_path):
    """Stored as the phase stores them (renamed, beside the parameters of the same names), read
    back as target_card gave them, and rendered as the target-card tables."""
    grid, companion = predict.target_card(layout_7b, 6144, 512, estimate.REFERENCE_OVERHEAD)
    rows = [{"scenario": gpu.SCENARIO_FIT, **predict.fit_row(r)} for r in grid.to_dict("records")]
    rows += [
        {"scenario": gpu.SCENARIO_TARGET, **predict.fit_row(r)}
        for r in companion.to_dict("records")
    ]
    df = pd.DataFrame(rows).assign(
        target_budget_mb=6144.0,
        target_margin_mb=512.0,
        target_card="budget",
        target_overhead_source=estimate.REFERENCE_OVERHEAD.source,
        all_layers=layout_7b.all_layers,
    )
    df = results.tidy(df, "run", "gpu", {"n_ctx": 2048, "flash_attn": False, "margin_mb": 512})
    assert (df["n_ctx"] == 2048).all()  # the parameter, not shadowed by the grid's n_ctx
    stored = tmp_path / "gpu.parquet"
    df.to_parquet(stored)
    g, c = gpu.fit_frames(pd.read_parquet(stored))
    cols = ["n_ctx", "type_k", "type_v", "flash_attn", "gpu_layers", "meta_total_mb", "fits"]
    pd.testing.assert_frame_equal(g[cols], grid[cols], check_dtype=False)
    assert list(c["profile"]) == list(companion["profile"])
    fit, comp = gpu_tables.target_tables(df)
    assert list(fit["n_ctx"]) == list(predict.FIT_N_CTX)
    assert set(fit.columns) == {"n_ctx", "KV f16", "KV f16 FA", "KV q8_0 FA", "KV q4_0 FA"}
    assert list(comp["fits"]) == ["NO", "NO", "yes"]


def test_the_reading_counts_predictions_within_target_from_the_analysis(stored_run):
    _, df, _ = stored_run
    vs = gpu.measured_vs_predicted(df)
    within = gpu_analyse.predictions_within_target(df)
    assert within["meta"] == (int(vs["meta_within_target"].sum()), 4)
    assert "- metadata: within 10% or 64 MiB of NVML at " + (
        f"{within['meta'][0]} of 4 measured configurations."
    ) in gpu_report._reading(df)
    assert gpu_analyse.predictions_within_target(df[df["scenario"] == "none"]) == {}


# A dash standing for a figure, followed by a unit: what a report must never show.
DASH_BEFORE_UNIT = re.compile(r"–\s*(MiB|GiB|MB|ms|s\b|%)")


def stored_no_gpu_runs() -> list[Path]:
    runs = [p.parent for p in sorted(RESULTS.glob("*-gpu-*/gpu.parquet"))]
    assert runs, "results/ holds runs of the gpu phase"
    return runs


def chain_frame(gpu_available: bool) -> pd.DataFrame:
    """Three fallback steps by hand: the first skipped on its prediction (never loaded), the
    second loaded and failed, the CPU loaded; the monitor's timeline with one alert raised
    and cleared where a GPU was read."""
    attempts = [
        {"attempt": 0, "profile": "performance", "attempt_skipped": True, "attempt_ok": False},
        {"attempt": 1, "profile": "performance", "attempt_skipped": False, "attempt_ok": False},
        {"attempt": 2, "profile": "cpu_fallback", "attempt_skipped": False, "attempt_ok": True},
    ]
    rows = [{"scenario": gpu.SCENARIO_ATTEMPT, **a} for a in attempts]
    if gpu_available:
        rows += [{"scenario": gpu.SCENARIO_SAMPLE, "t_s": t, "vram_used_mb": 900.0} for t in (0, 1)]
        rows += [
            {"scenario": gpu.SCENARIO_ALERT, "level": level, "vram_used_mb": used}
            for level, used in (("warn", 5000.0), ("ok", 3000.0))
        ]
    return pd.DataFrame(rows).assign(
        gpu_available=gpu_available,
        gpu_status="GPU 0: NVIDIA H200"
        if gpu_available
        else "no NVIDIA GPU: NVML unavailable: NVML Shared Library Not Found",
        selected_profile="performance",
        final_profile="cpu_fallback",
        final_ok=True,
    )


def test_fallback_counts_only_the_steps_that_were_loaded():
    counts = gpu_analyse.fallback_counts(chain_frame(gpu_available=True))
    assert (counts.attempted, counts.skipped, counts.not_measured) == (2, 1, "")
    none = gpu_analyse.fallback_counts(chain_frame(True).query("scenario != 'attempt'"))
    assert none.attempted == 0 and none.not_measured == "the run recorded no fallback chain"
    reading = gpu_report._reading(chain_frame(gpu_available=True))
    assert (
        "- Profile selected: performance; after 2 loads attempted (1 more step skipped on its "
        "prediction, not loaded) the companion would run cpu_fallback." in reading
    )


def test_vram_alerts_are_counted_where_vram_was_read_and_said_not_measured_elsewhere():
    alerts = gpu_analyse.vram_alerts(chain_frame(gpu_available=True))
    assert (alerts.raised, alerts.cleared, alerts.not_measured) == (1, 1, "")
    assert "- VRAM alerts: 1 raised, 1 cleared (table above)." in gpu_report._reading(
        chain_frame(gpu_available=True)
    )
    absent = gpu_analyse.vram_alerts(chain_frame(gpu_available=False))
    assert (absent.raised, absent.cleared) == (0, 0)
    assert absent.not_measured == (
        "no NVIDIA GPU on this host (NVML unavailable: NVML Shared Library Not Found)"
    )
    # a GPU that the monitor never read: nothing to alert on either, and said so
    unread = chain_frame(gpu_available=True).query("scenario == 'attempt'")
    assert gpu_analyse.vram_alerts(unread).not_measured == "the monitor recorded no VRAM reading"


@pytest.mark.parametrize("path", stored_no_gpu_runs(), ids=lambda p: p.name)
def test_a_stored_no_gpu_run_counts_what_ran_and_shows_no_dash_for_a_figure(path, tmp_path):
    run = results.RunDir.open(path)
    df = run.read_frame("gpu")
    assert not bool(df["gpu_available"].iloc[0])
    # the chain of a run without a GPU: cpu_fallback selected, loaded once
    assert gpu_analyse.fallback_counts(df) == gpu_analyse.FallbackCounts(1, 0, "")
    alerts = gpu_analyse.vram_alerts(df)
    reason = "NVML unavailable: NVML Shared Library Not Found"
    assert alerts.not_measured == f"no NVIDIA GPU on this host ({reason})"
    text = report.phase_section("gpu", run, tmp_path, tmp_path)
    assert not DASH_BEFORE_UNIT.findall(text), DASH_BEFORE_UNIT.findall(text)
    assert f"Available: no NVIDIA GPU on this host ({reason})" in text
    assert f"- VRAM alerts: not measured: no NVIDIA GPU on this host ({reason})." in text
    assert "after 1 load attempted the companion would run cpu_fallback." in text
    assert "Device overhead (CUDA context, cuBLAS, pools): not measured: " in text
