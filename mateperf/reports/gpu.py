"""Phase 5 section: VRAM predicted two ways, profile selection, fallback, measurements, alerts.

The tables are built in `gpu_tables`, the plots drawn in `gpu_plots`; this module puts the
section, the summary rows and the sweep's extra table together.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mateperf import metrics
from mateperf.phases.gpu import analyse
from mateperf.reports import gpu_plots, gpu_tables
from mateperf.reports.declaration import PhaseReport
from mateperf.reports.format import fmt, table
from mateperf.reports.gpu_tables import first, mb, mib
from mateperf.reports.overview import CLAIMS, ab_row, summary_row


def _cpu_check(df: pd.DataFrame) -> list[str]:
    c = df[df["scenario"] == analyse.SCENARIO_CPU_CHECK]
    if c.empty:
        return []
    r = c.iloc[0]
    if str(r.get("proj_status")) != "ok":
        return [f"llama.cpp's projection on this build: {r.get('proj_status')}."]
    return [
        "Check of the metadata method against llama.cpp on this build (everything on the host, "
        "n_gpu_layers 0), MiB, metadata vs llama.cpp: weights "
        f"{r['meta_host_weights_mb']:.1f} vs {r['proj_host_model_mb']:.0f}, KV cache "
        f"{r['meta_host_kv_mb']:.1f} vs {r['proj_host_context_mb']:.0f}, compute "
        f"{r['meta_host_compute_mb']:.1f} vs {r['proj_host_compute_mb']:.0f} (llama.cpp prints "
        "whole MiB, truncated; on the CPU it also leaves out the weights it repacks into "
        "CPU_REPACK buffers, which its host figure then lacks)."
    ]


def _status_lines(df: pd.DataFrame) -> list[str]:
    status = str(first(df, "gpu_status"))
    offload = bool(first(df, "gpu_offload", False))
    available = bool(first(df, "gpu_available", False))
    lines = []
    if not available or not offload:
        why = status if not available else "this llama-cpp-python build has no GPU offload"
        lines += [
            f"**No GPU was measured: {why}.** Every VRAM figure below is a prediction, the "
            "selection ends at cpu_fallback, and the tokens/s below are CPU figures: every "
            f"layer ran on the CPU, whatever n_gpu_layers ({first(df, 'n_gpu_layers')}) asked.",
            "",
        ]
    else:
        lines += [
            f"GPU: {first(df, 'gpu_name')} ({mib(first(df, 'gpu_total_mb'), 'size unknown')}), "
            "driver "
            f"{first(df, 'gpu_driver')}, CUDA {first(df, 'gpu_cuda')}; trials ran in a "
            f"{first(df, 'trial_isolation')}.",
            "",
        ]
    return [*lines, _overhead_line(df), ""]


def _overhead_line(df: pd.DataFrame) -> str:
    """The device overhead as measured, or only why it was not (its source says so)."""
    names = ["overhead_none_mb", "overhead_attention_mb"]
    names += [n for n in ("overhead_none_fa_mb", "overhead_attention_fa_mb") if n in df]
    figures = {n: first(df, n) for n in names}
    head = "Device overhead (CUDA context, cuBLAS, pools): "
    if not any(pd.notna(v) and v != "" for v in figures.values()):
        return f"{head}{first(df, 'overhead_source')}."
    fa = ""
    if "overhead_attention_fa_mb" in df:
        fa = (
            f" (flash attention on: {mib(figures['overhead_none_fa_mb'], 'not measured')} and "
            f"{mib(figures['overhead_attention_fa_mb'], 'not measured')})"
        )
    return (
        f"{head}{mib(figures['overhead_none_mb'], 'not measured')} without and "
        f"{mib(figures['overhead_attention_mb'], 'not measured')} with attention on the "
        f"device{fa}; {first(df, 'overhead_source')}."
    )


def _available_text(df: pd.DataFrame) -> str:
    """What the selection had to fit in: the figure, or why there was none (never a dash)."""
    basis = first(df, "selection_basis")
    available = first(df, "vram_available_mb")
    if pd.notna(available) and available != "":
        return f"Available: {mb(available)} MiB ({basis})"
    absent = analyse.no_gpu_reason(df)
    if absent:
        return f"Available: no NVIDIA GPU on this host ({absent}); the selection's basis: {basis}"
    return f"Available: not measured: NVML read no free VRAM ({basis})"


def _reading(df: pd.DataFrame) -> list[str]:
    lines = []
    if not analyse.measured_vs_predicted(df).empty:
        within = analyse.predictions_within_target(df)
        for label, key in (("metadata", "meta"), ("llama.cpp + overhead", "proj")):
            if key in within:
                lines.append(
                    f"- {label}: within 10% or 64 MiB of NVML at {within[key][0]} of "
                    f"{within[key][1]} measured configurations."
                )
    else:
        lines.append("- No VRAM was measured, so neither prediction is checked against NVML here.")
    chosen = first(df, "selected_profile")
    forced = bool(first(df, "selection_forced", False))
    lines.append(f"- Profile {'forced' if forced else 'selected'}: {chosen}; {_chain_text(df)}.")
    lines.append(f"- {_alerts_text(df)}.")
    return lines


def _chain_text(df: pd.DataFrame) -> str:
    """The fallback chain in words: loads attempted, steps skipped unloaded, where it ended."""
    counts = analyse.fallback_counts(df)
    if counts.not_measured:
        return f"fallback chain not measured: {counts.not_measured}"
    skipped = (
        f" ({counts.skipped} more step{'s' if counts.skipped != 1 else ''} skipped on "
        f"{'their' if counts.skipped != 1 else 'its'} prediction, not loaded)"
        if counts.skipped
        else ""
    )
    return (
        f"after {counts.attempted} load{'s' if counts.attempted != 1 else ''} attempted"
        f"{skipped} the companion would run {first(df, 'final_profile')}"
        + ("" if bool(first(df, "final_ok", False)) else " (the last attempt failed too)")
    )


def _alerts_text(df: pd.DataFrame) -> str:
    alerts = analyse.vram_alerts(df)
    if alerts.not_measured:
        return f"VRAM alerts: not measured: {alerts.not_measured}"
    if not alerts.raised:
        return "VRAM alerts: none fired"
    cleared = f", {alerts.cleared} cleared" if alerts.cleared else ""
    return f"VRAM alerts: {alerts.raised} raised{cleared} (table above)"


def _kv_lines(df: pd.DataFrame) -> list[str]:
    kv = gpu_tables.kv_check_table(df)
    if kv.empty:
        return []
    where = first(df[df["scenario"] == analyse.SCENARIO_KV_CHECK], "kv_where")
    return [
        "### KV cache types and flash attention",
        "",
        f"The metadata method against llama.cpp's projection of the same configuration ({where}"
        "), per KV cache type pair and flash attention setting, MiB (llama.cpp prints whole "
        "MiB, truncated). llama.cpp refuses a quantised V cache without flash attention.",
        "",
        table(kv),
        "",
    ]


def _target_lines(df: pd.DataFrame) -> list[str]:
    fit, comp = gpu_tables.target_tables(df)
    if fit.empty:
        return []
    card = mib(first(df, "target_budget_mb"), "size unknown")
    margin = mib(first(df, "target_margin_mb"), "unknown")
    return [
        "### The target card",
        "",
        f"Card: {card} ({first(df, 'target_card')}), margin {margin}. Per n_ctx and KV cache "
        "type (both K and V; FA: flash attention on), the most n_gpu_layers predicted to fit and "
        "the MiB it needs; n_ubatch as the run's. Device overhead: "
        f"{first(df, 'target_overhead_source')}.",
        "",
        table(fit),
        "",
        "The companion's own profiles (Desktop-Mate's GPU_PROFILES; flash attention off, f16 "
        "KV cache; n_gpu_layers above the model's layers means all). On a CUDA build its "
        "cpu_fallback (n_gpu_layers 0, GPU visible) still holds the CUDA context and "
        "op_offload's compute buffer on the card:",
        "",
        table(comp),
        "",
        *analyse.intent_sentences(
            df[df["scenario"] == analyse.SCENARIO_TARGET], "intent_differs", "intent_sentence"
        ),
        "",
    ]


def companion_model_lines(df: pd.DataFrame) -> list[str]:
    """ "For the companion's model": its three profiles on Zephyr-7B Q5_K_M (or the file given),
    flash attention off and on, against its 6 GB card less the avatar's reserve."""
    rows = analyse.companion_model(df)
    if rows.empty:
        return []
    r = rows.iloc[0]
    return [
        "### For the companion's model",
        "",
        f"Model: {first(df, 'cm_source')}. The companion's GPU_PROFILES as llama.cpp loads them, "
        f"predicted on its {mib(r['cm_card_mb'], 'unknown')} card less "
        f"{mib(r['cm_reserve_mb'], 'an unknown reserve')} "
        f"for the avatar (Unity and the VRM on the same card; an allowance, not measured: "
        f"`-p avatar_reserve_mb`) = {mib(r['cm_available_mb'], 'unknown')}. Device overhead: "
        f"{first(df, 'cm_overhead_source')}.",
        "",
        table(gpu_tables.companion_model_table(rows)),
        "",
        *analyse.intent_sentences(rows, "cm_layers_differ", "cm_sentence"),
        "",
    ]


def summary_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    """FINAL_RESULTS.md's summary rows for a gpu run: where a GPU was measured, the selected
    profile against cpu_fallback (the original claim: "no speed gain, but no crashes"), the
    VRAM prediction against NVML, and where the fallback chain ended; else one row saying so."""
    if not analyse.gpu_measured(df):
        return [
            summary_row(
                "gpu",
                "GPU profiles with fallback",
                "–",
                "–",
                "–",
                "–",
                "not measured: no NVIDIA GPU on this host",
                CLAIMS["gpu"],
            )
        ]
    rows = []
    chosen = str(first(df, "selected_profile"))
    for name, r in analyse.selected_against_fallback(df).items():
        m = metrics.get("gpu", name)
        rows.append(
            ab_row(
                "gpu",
                f"profile {chosen} instead of cpu_fallback",
                m,
                r,
                CLAIMS["gpu"],
                0 if name.endswith("mb") else 1,
            )
        )
    accuracy = analyse.prediction_accuracy(df)
    if accuracy is not None:
        worst, within, judged = accuracy
        rows.append(
            summary_row(
                "gpu",
                "VRAM predicted from the GGUF before loading",
                "metadata prediction − NVML (MiB)",
                "–",
                f"worst error ±{fmt(worst, 0)}",
                "–",
                f"within 10% or 64 MiB at {within} of {judged} configurations",
                "—",
            )
        )
    counts = analyse.fallback_counts(df)
    if not counts.not_measured:
        final = str(first(df, "final_profile"))
        ok = bool(first(df, "final_ok", False))
        rows.append(
            summary_row(
                "gpu",
                "fallback chain, predict first",
                "loads attempted",
                "–",
                f"{counts.attempted} load{'s' if counts.attempted != 1 else ''}, "
                f"{counts.skipped} step{'s' if counts.skipped != 1 else ''} skipped by "
                "prediction (not loaded)",
                "–",
                f"ended at {final}" + (" (loaded)" if ok else " (the last step failed)"),
                CLAIMS["gpu"],
            )
        )
    return rows


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    params = info.get("params", {})
    budget = params.get("vram_budget_mb", 0)
    parts = [
        "## Phase 5 — GPU layers, VRAM and profiles",
        "",
        f"Model: {first(df, 'model_name')} (`{first(df, 'model_file')}`, "
        f"{first(df, 'n_layer')} layers + output), n_ctx {params.get('n_ctx')}, n_batch "
        f"{params.get('n_batch')}, n_ubatch {params.get('n_ubatch') or params.get('n_batch')}, "
        f"KV cache on the GPU {params.get('offload_kqv')}, flash attention "
        f"{params.get('flash_attn')}; VRAM available to the selection: "
        + (f"an emulated {budget} MiB card" if budget else "the free VRAM NVML reports")
        + f", margin {params.get('margin_mb')} MiB.",
        "",
        *_status_lines(df),
        "### VRAM predicted for every n_gpu_layers",
        "",
        "Two predictions, never mixed. *metadata*: from the GGUF header (weights placed as "
        "llama.cpp places them, the output layer first; KV cache; compute buffers for this "
        "layer count) plus the device overhead measured on this device. *llama.cpp*: its own "
        "projection from a no-allocation dry run (`common_fit_print`), plus the same overhead. "
        f"llama.cpp: {first(df, 'projection_status')}"
        + (f"; {first(df, 'projection_note')}" if first(df, "projection_note") else "")
        + ".",
        "",
        table(gpu_tables.prediction_table(df)),
        "",
        *_cpu_check(df),
        "",
        gpu_plots.plot_predictions(df, plots_dir, md_dir),
        "",
        *_kv_lines(df),
        *_target_lines(df),
        *companion_model_lines(df),
        "### Profile selection",
        "",
        f"{_available_text(df)}; a profile fits if the larger of its two predictions plus "
        "the margin does.",
        "",
        table(gpu_tables.selection_table(df)),
        "",
        "### Loading with fallback",
        "",
        "The chain from the chosen profile, fastest first: as selected, context halved, fewer "
        "layers (halving), the CPU. Each step is predicted first and skipped, unloaded, if its "
        "prediction plus the margin exceeds what is available (the buffers alone where the "
        "device overhead was never measured); a step predicted to fit loads and generates a few "
        "tokens, and is left if it fails"
        + (" or uses more VRAM than available." if budget else "."),
        "",
        table(gpu_tables.attempts_table(df)),
        "",
        "### Measured",
        "",
        "Each trial a fresh load of one configuration, a companion reply, then pp and tg "
        "tests; VRAM is NVML's device-used memory after the work minus the reading before "
        "the trial. Median [95% CI] over trials, warm-up round left out.",
        "",
        table(gpu_tables.summary_table(df)),
        "",
    ]
    vs = gpu_tables.vs_table(df)
    if not vs.empty:
        parts += [
            "Measured against both predictions (target: within 10% of the measurement or "
            "64 MiB, whichever is larger):",
            "",
            table(vs),
            "",
        ]
    comp = gpu_tables.comparison_table(df)
    if not comp.empty:
        parts += ["Profiles against the selected one:", "", table(comp), ""]
    if (df["scenario"] == analyse.SCENARIO_SAMPLE).any():
        parts += [gpu_plots.plot_timeline(df, plots_dir, md_dir), ""]
        alerts = gpu_tables.alerts_table(df)
        parts += (
            ["VRAM alerts:", "", table(alerts), ""] if len(alerts) else ["No VRAM alert fired.", ""]
        )
    else:
        parts += [f"{_alerts_text(df)}.", ""]
    parts += ["### Reading", "", *_reading(df), ""]
    return "\n".join(parts)


def sweep_extra(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    """For a sweep's section: per point, measured VRAM against both predictions and tokens/s."""
    grid = [p for p in info.get("grid", {}) if p in df.columns]
    points = analyse.per_point(df, grid)
    if points.empty:
        return ""
    rows = [
        {
            **{p: r[p] for p in grid},
            "layers on GPU (effective)": int(r["gpu_layers_effective"]),
            "measured MiB": mb(r["vram_delta_mb"]),
            "metadata MiB": mb(r["pred_meta_total_mb"]),
            "llama.cpp + overhead MiB": mb(r["pred_proj_total_mb"]),
            "tg tokens/s (median)": fmt(r["tg_tps"]),
            "trials": int(r["trials"]),
        }
        for _, r in points.iterrows()
    ]
    note = (
        ""
        if analyse.gpu_measured(df)
        else " No GPU was measured: the VRAM columns are predictions only."
    )
    return "\n".join(
        [
            "### Measured VRAM against both predictions per point",
            "",
            table(pd.DataFrame(rows)),
            "",
            f"Status: {first(df, 'gpu_status')}.{note}",
            "",
        ]
    )


REPORT = PhaseReport(
    section=section,
    summary_rows=summary_rows,
    variant_row=None,
    sweep_extra=sweep_extra,
)
