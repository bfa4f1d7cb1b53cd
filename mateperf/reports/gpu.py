"""Phase 5 section: VRAM predicted two ways, profile selection, fallback, measurements, alerts."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mateperf import metrics, stats
from mateperf.gpu import estimate, profiles
from mateperf.phases import gpu
from mateperf.reports.declaration import PhaseReport
from mateperf.reports.format import fmt, fmt_ci, fmt_p, save_figure, table
from mateperf.reports.overview import CLAIMS, summary_row

METRIC_LABELS = {
    "load_s": "model load (s)",
    "ttft_ms": "time to first token (ms)",
    "e2e_ms": "whole reply (ms)",
    "pp_tps": "prompt tokens/s",
    "tg_tps": "generation tokens/s",
    "vram_delta_mb": "VRAM after the work (MiB)",
    "vram_peak_delta_mb": "peak VRAM (MiB)",
}


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mb(value, digits: int = 0) -> str:
    v = _num(value)
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def _first(df: pd.DataFrame, column: str, default=""):
    return df[column].iloc[0] if column in df and len(df) else default


def _on_gpu(row) -> str:
    k, n = int(row["gpu_layers"]), int(row["repeating_layers_on_gpu"])
    if k == 0:
        return "nothing"
    if bool(row["offloads_all"]):
        return "everything"
    return "output" + (f" + {n} layer{'s' if n != 1 else ''}" if n else "")


def _layers_label(k: int, all_layers: int) -> str:
    return f"{k} (all)" if k == all_layers else str(k)


def _measured_by_layers(df: pd.DataFrame) -> dict[int, float]:
    """Measurements of exactly the prediction rows' configuration, per layer count."""
    return gpu.measured_at_base(df)


def _config_text(row) -> str:
    """n_ctx, where the KV cache is and its types, flash attention: what makes a configuration."""
    if bool(row.get("cfg_hide_gpu", False)):
        return f"n_ctx {int(row['cfg_n_ctx'])}, GPU hidden"
    kv = "KV on GPU" if bool(row.get("cfg_offload_kqv", True)) else "KV in RAM"
    types = f"{row.get('cfg_type_k', 'f16')}/{row.get('cfg_type_v', 'f16')}"
    types = "f16" if types == "f16/f16" or types == "nan/nan" else types
    fa = "FA on" if bool(row.get("cfg_flash_attn", False)) else "FA off"
    return f"n_ctx {int(row['cfg_n_ctx'])}, {kv} {types}, {fa}"


def _prediction_table(df: pd.DataFrame) -> pd.DataFrame:
    pred = gpu.prediction_table(df)
    all_layers = int(_first(df, "all_layers", 0))
    measured = _measured_by_layers(df)
    offload = bool(_first(df, "gpu_offload", False))
    rows = []
    for _, r in pred.iterrows():
        k = int(r["gpu_layers"])
        row = {
            "n_gpu_layers": _layers_label(k, all_layers),
            "on the GPU": _on_gpu(r),
            "metadata: weights / KV / compute": (
                f"{r['meta_weights_mb']:.1f} / {r['meta_kv_mb']:.1f} / {r['meta_compute_mb']:.1f}"
            ),
            "metadata: buffers": _mb(r["meta_buffers_mb"], 1),
            "metadata: + overhead = total": _mb(r["meta_total_mb"]),
            "llama.cpp: device model / context / compute": (
                f"{_mb(r['proj_device_model_mb'])} / {_mb(r['proj_device_context_mb'])} / "
                f"{_mb(r['proj_device_compute_mb'])}" + ("" if offload else " (no device)")
            ),
            "llama.cpp: device + overhead": _mb(r.get("proj_total_mb")),
            "llama.cpp: host": _mb(r["proj_host_mb"]),
        }
        if measured:
            row["measured (NVML)"] = _mb(measured.get(k))
        rows.append(row)
    return pd.DataFrame(rows)


def _cpu_check(df: pd.DataFrame) -> list[str]:
    c = df[df["scenario"] == gpu.SCENARIO_CPU_CHECK]
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


def _selection_table(df: pd.DataFrame) -> pd.DataFrame:
    s = df[df["scenario"] == gpu.SCENARIO_SELECTION]
    rows = []
    all_layers = int(_first(df, "all_layers", 0))
    for _, r in s.iterrows():
        rows.append(
            {
                "profile": r["profile"] + (" (chosen)" if bool(r["chosen"]) else ""),
                "n_gpu_layers": _layers_label(int(r["gpu_layers"]), all_layers),
                "n_ctx": int(r["cfg_n_ctx"]),
                "n_batch/n_ubatch": f"{int(r['cfg_n_batch'])}/{int(r['cfg_n_ubatch'])}",
                "KV on GPU": "yes" if bool(r["cfg_offload_kqv"]) else "no",
                "flash attn": "yes" if bool(r["cfg_flash_attn"]) else "no",
                "metadata MiB": _mb(r["predicted_mb"]),
                "llama.cpp + overhead MiB": _mb(r["projected_mb"]),
                "fits": "yes" if bool(r["fits"]) else "no",
                "why": r["reason"],
            }
        )
    return pd.DataFrame(rows)


def _attempts_table(df: pd.DataFrame) -> pd.DataFrame:
    a = df[df["scenario"] == gpu.SCENARIO_ATTEMPT].sort_values("attempt")
    all_layers = int(_first(df, "all_layers", 0))
    rows = []
    for _, r in a.iterrows():
        rows.append(
            {
                "#": int(r["attempt"]),
                "step": r["attempt_step"],
                "profile": r["profile"],
                "n_gpu_layers": _layers_label(int(r["gpu_layers"]), all_layers),
                "n_ctx": int(r["cfg_n_ctx"]),
                "predicted MiB (metadata / llama.cpp)": (
                    f"{_mb(r['attempt_predicted_mb'])} / {_mb(r['attempt_projected_mb'])}"
                ),
                "buffers MiB": _mb(r.get("attempt_need_mb"))
                if str(r.get("attempt_need_basis", "")).startswith("buffers")
                else "",
                "measured MiB": _mb(r.get("attempt_vram_mb")),
                "tg tokens/s": fmt(_num(r.get("attempt_tg_tps"))),
                "outcome": _attempt_outcome(r),
            }
        )
    return pd.DataFrame(rows)


def _attempt_outcome(r) -> str:
    if _maybe_bool(r.get("attempt_skipped")):  # older runs have no such column
        return str(r["attempt_reason"])
    return ("ok: " if bool(r["attempt_ok"]) else "left: ") + str(r["attempt_reason"])


def _kv_check_table(df: pd.DataFrame) -> pd.DataFrame:
    """Metadata against llama.cpp per KV cache type pair and flash attention (MiB)."""
    c = df[df["scenario"] == gpu.SCENARIO_KV_CHECK] if "scenario" in df else df.iloc[:0]
    rows = []
    for _, r in c.iterrows():
        rows.append(
            {
                "type_k / type_v": f"{r['kv_type_k']} / {r['kv_type_v']}",
                "flash attn": "on" if bool(r["kv_flash_attn"]) else "off",
                "KV cache: metadata / llama.cpp": f"{r['kv_meta_kv_mb']:.1f} / "
                + _mb(r["kv_proj_kv_mb"]),
                "compute: metadata / llama.cpp": f"{r['kv_meta_compute_mb']:.1f} / "
                + _mb(r["kv_proj_compute_mb"]),
                "weights: metadata / llama.cpp": f"{r['kv_meta_weights_mb']:.1f} / "
                + _mb(r["kv_proj_weights_mb"]),
                "llama.cpp": "ok" if r["proj_status"] == "ok" else str(r["proj_status"]),
            }
        )
    return pd.DataFrame(rows)


def _target_tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(largest fit per n_ctx and KV type, the companion's profiles) from the stored rows."""
    grid, comp = gpu.fit_frames(df)
    if grid.empty:
        return pd.DataFrame(), pd.DataFrame()
    best = estimate.largest_fit(grid)
    all_layers = int(_first(df, "all_layers", 0))
    wide = {}
    for _, r in best.iterrows():
        kv = f"{r['type_k']}" + (" FA" if r["flash_attn"] else "")
        k = int(r["max_gpu_layers"])
        if not r["known"]:
            cell = f"? ({_mb(r['all_layers_buffers_mb'])} MiB buffers at all)"
        elif k < 0:
            cell = f"none ({_mb(r['all_layers_mb'])} MiB at all)"
        else:
            cell = f"{_layers_label(k, all_layers)}: {_mb(r['max_fit_mb'])} MiB"
        wide.setdefault(int(r["n_ctx"]), {"n_ctx": int(r["n_ctx"])})[f"KV {kv}"] = cell
    fit = pd.DataFrame(list(wide.values()))
    rows = []
    for _, r in comp.iterrows():
        fits = _maybe_bool(r["fits"])
        rows.append(
            {
                "companion profile": r["profile"],
                "n_gpu_layers": f"{int(r['cfg_n_gpu_layers'])} → "
                + _layers_label(int(r["gpu_layers"]), all_layers),
                "n_ctx / n_batch": f"{int(r['cfg_n_ctx'])} / {int(r['cfg_n_batch'])}",
                "weights / KV / compute MiB": (
                    f"{r['meta_weights_mb']:.0f} / {r['meta_kv_mb']:.0f} / "
                    f"{r['meta_compute_mb']:.0f}"
                ),
                "+ overhead = device MiB": f"{_mb(r['meta_overhead_mb'])} → "
                + _mb(r["meta_total_mb"]),
                "host MiB": _mb(r["meta_host_mb"]),
                "fits": "?" if fits is None else ("yes" if fits else "NO"),
            }
        )
    return fit, pd.DataFrame(rows)


def _maybe_bool(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def _summary_table(df: pd.DataFrame) -> pd.DataFrame:
    summary = gpu.summarize(df)
    if summary.empty:
        return summary
    rows = []
    all_layers = int(_first(df, "all_layers", 0))
    for (scenario, name, k), g in summary.groupby(
        ["scenario", "profile", "gpu_layers"], sort=False
    ):
        rows_k = gpu.measured(df)
        rows_k = rows_k[(rows_k["scenario"] == scenario) & (rows_k["gpu_layers"] == k)]
        effective = int(rows_k["gpu_layers_effective"].iloc[0]) if len(rows_k) else int(k)
        row = {
            "what": "n_gpu_layers of the run" if scenario == gpu.SCENARIO_LAYERS else name,
            "n_gpu_layers": _layers_label(int(k), all_layers)
            + ("" if effective == int(k) else f" (ran with {effective} on the GPU)"),
            "n": int(g["n"].max()),
        }
        for _, m in g.iterrows():
            digits = 2 if m["metric"] == "load_s" else (0 if m["metric"].endswith("_mb") else 1)
            row[METRIC_LABELS.get(m["metric"], m["metric"])] = fmt_ci(
                m["median"], m["ci_low"], m["ci_high"], digits
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _vs_table(df: pd.DataFrame) -> pd.DataFrame:
    vs = gpu.measured_vs_predicted(df)
    if vs.empty:
        return vs
    all_layers = int(_first(df, "all_layers", 0))

    def verdict(v):
        return (
            "–" if v is None or (isinstance(v, float) and math.isnan(v)) else ("yes" if v else "NO")
        )

    configs = [_config_text(r) if "cfg_n_ctx" in vs else "" for _, r in vs.iterrows()]
    return pd.DataFrame(
        {
            "what": [p or "n_gpu_layers of the run" for p in vs["profile"]],
            "n_gpu_layers": [_layers_label(int(k), all_layers) for k in vs["gpu_layers"]],
            "configuration": configs,
            "measured MiB (median)": [_mb(v) for v in vs["measured_mb"]],
            "metadata MiB (error)": [
                f"{_mb(p)} ({_signed(e)})"
                for p, e in zip(vs["meta_mb"], vs["meta_error_mb"], strict=True)
            ],
            "within target": [verdict(v) for v in vs["meta_within_target"]],
            "llama.cpp + overhead MiB (error)": [
                f"{_mb(p)} ({_signed(e)})"
                for p, e in zip(vs["proj_mb"], vs["proj_error_mb"], strict=True)
            ],
            "within target ": [verdict(v) for v in vs["proj_within_target"]],
            "n": vs["n"],
        }
    )


def _signed(value) -> str:
    v = _num(value)
    return "–" if math.isnan(v) else f"{v:+.0f}"


def _comparison_table(df: pd.DataFrame) -> pd.DataFrame:
    comp = gpu.profile_comparison(df)
    if comp.empty:
        return comp
    return pd.DataFrame(
        {
            "profile": comp["profile"],
            "metric": [METRIC_LABELS.get(m, m) for m in comp["metric"]],
            f"against {comp['against'].iloc[0]}: ratio [95% CI]": [
                fmt_ci(r["ratio"], r["ci_low"], r["ci_high"], 2) for _, r in comp.iterrows()
            ],
            "p": [fmt_p(p) for p in comp["p_value"]],
            "verdict": comp["verdict"],
            "n": [f"{a}+{b}" for a, b in zip(comp["n_a"], comp["n_b"], strict=True)],
        }
    )


def _plot_predictions(df: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str:
    from matplotlib.ticker import MaxNLocator

    pred = gpu.prediction_table(df)
    k = pred["gpu_layers"].astype(int).to_numpy()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    bottom = np.zeros(len(pred))
    parts = [
        ("meta_weights_mb", "metadata: weights"),
        ("meta_kv_mb", "metadata: KV cache"),
        ("meta_compute_mb", "metadata: compute buffers"),
        ("meta_overhead_mb", "metadata: device overhead (measured)"),
    ]
    for column, label in parts:
        values = pred[column].fillna(0).to_numpy(dtype=float)
        if column == "meta_overhead_mb" and not pred[column].notna().any():
            continue
        ax.bar(k, values, bottom=bottom, width=0.8, label=label, alpha=0.8)
        bottom = bottom + values
    if bool(_first(df, "gpu_offload", False)):
        ax.plot(
            k,
            pred["proj_device_mb"],
            marker="x",
            color="black",
            linestyle="--",
            label="llama.cpp projection: device",
        )
        if pred["proj_total_mb"].notna().any():
            ax.plot(
                k,
                pred["proj_total_mb"],
                marker="x",
                color="black",
                label="llama.cpp projection + overhead",
            )
    measured = _measured_by_layers(df)
    if measured:
        ax.scatter(
            list(measured),
            list(measured.values()),
            color="red",
            marker="D",
            zorder=4,
            label="measured, NVML (median)",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"n_gpu_layers ({int(k.max())} = all: the output layer is offloaded first)")
    ax.set_ylabel("device memory (MiB)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="x-small", loc="lower right")
    title = "VRAM predicted for every layer count"
    if not measured:
        title += " (no GPU measured: predictions only)"
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, plots_dir, "gpu_vram_by_layers", md_dir, "VRAM by n_gpu_layers")


def _plot_timeline(df: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str:
    s = df[df["scenario"] == gpu.SCENARIO_SAMPLE].sort_values("t_s")
    alerts = df[df["scenario"] == gpu.SCENARIO_ALERT]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(s["t_s"], s["vram_used_mb"], linewidth=1, label="device VRAM used (NVML)")
    basis = _num(_first(alerts, "basis_mb")) if len(alerts) else math.nan
    budget = _num(_first(df, "vram_budget_mb", 0))
    if math.isnan(basis):
        basis = budget if budget else _num(_first(s, "vram_total_mb"))
    for pct, color in (
        (_num(_first(df, "warn_pct", 80)), "tab:orange"),
        (_num(_first(df, "critical_pct", 90)), "tab:red"),
    ):
        ax.axhline(
            basis * pct / 100,
            color=color,
            linestyle="--",
            linewidth=1,
            label=f"{pct:.0f}% of {'budget' if budget else 'card'}",
        )
    trials = gpu.measured(df)
    for _, r in trials.dropna(subset=["t_start_s", "t_end_s"]).iterrows():
        ax.axvspan(r["t_start_s"], r["t_end_s"], color="grey", alpha=0.12)
    for _, a in alerts.iterrows():
        color = {"warn": "tab:orange", "critical": "tab:red"}.get(a["level"], "tab:green")
        ax.axvline(a["t_s"], color=color, linewidth=1.5)
        ax.annotate(a["level"], (a["t_s"], a["vram_used_mb"]), fontsize="x-small", color=color)
    ax.set_xlabel("time since the monitor started (s); grey: trials")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="lower right")
    ax.set_title("GPU memory over the run, with VRAM alerts")
    fig.tight_layout()
    return save_figure(fig, plots_dir, "gpu_timeline", md_dir, "VRAM timeline with alerts")


def _alerts_table(df: pd.DataFrame) -> pd.DataFrame:
    a = df[df["scenario"] == gpu.SCENARIO_ALERT]
    if a.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "t (s)": [f"{t:.1f}" for t in a["t_s"]],
            "level": [f"{p} → {lv}" for p, lv in zip(a["previous_level"], a["level"], strict=True)],
            "VRAM used MiB": [_mb(v) for v in a["vram_used_mb"]],
            "share": [
                f"{v:.0f}% of the {b} ({_mb(m)} MiB)"
                for v, b, m in zip(a["used_pct"], a["basis"], a["basis_mb"], strict=True)
            ],
        }
    )


def _status_lines(df: pd.DataFrame) -> list[str]:
    status = str(_first(df, "gpu_status"))
    offload = bool(_first(df, "gpu_offload", False))
    available = bool(_first(df, "gpu_available", False))
    lines = []
    if not available or not offload:
        why = status if not available else "this llama-cpp-python build has no GPU offload"
        lines += [
            f"**No GPU was measured: {why}.** Every VRAM figure below is a prediction, the "
            "selection ends at cpu_fallback, and the tokens/s below are CPU figures: every "
            f"layer ran on the CPU, whatever n_gpu_layers ({_first(df, 'n_gpu_layers')}) asked.",
            "",
        ]
    else:
        lines += [
            f"GPU: {_first(df, 'gpu_name')} ({_mb(_first(df, 'gpu_total_mb'))} MiB), driver "
            f"{_first(df, 'gpu_driver')}, CUDA {_first(df, 'gpu_cuda')}; trials ran in a "
            f"{_first(df, 'trial_isolation')}.",
            "",
        ]
    fa = ""
    if "overhead_attention_fa_mb" in df:
        fa = (
            f" (flash attention on: {_mb(_first(df, 'overhead_none_fa_mb'))} and "
            f"{_mb(_first(df, 'overhead_attention_fa_mb'))} MiB)"
        )
    lines += [
        f"Device overhead (CUDA context, cuBLAS, pools): "
        f"{_mb(_first(df, 'overhead_none_mb'))} MiB without and "
        f"{_mb(_first(df, 'overhead_attention_mb'))} MiB with attention on the device{fa}; "
        f"{_first(df, 'overhead_source')}.",
        "",
    ]
    return lines


def _reading(df: pd.DataFrame) -> list[str]:
    lines = []
    vs = gpu.measured_vs_predicted(df)
    if not vs.empty:
        for label, col in (
            ("metadata", "meta_within_target"),
            ("llama.cpp + overhead", "proj_within_target"),
        ):
            known = [v for v in vs[col] if v is not None]
            if known:
                lines.append(
                    f"- {label}: within 10% or 64 MiB of NVML at {sum(known)} of {len(known)} "
                    "measured configurations."
                )
    else:
        lines.append("- No VRAM was measured, so neither prediction is checked against NVML here.")
    chosen = _first(df, "selected_profile")
    final = _first(df, "final_profile")
    forced = bool(_first(df, "selection_forced", False))
    attempts = df[df["scenario"] == gpu.SCENARIO_ATTEMPT]
    n_attempts = len(attempts)
    skipped = attempts.get("attempt_skipped", pd.Series(dtype=object)).map(_maybe_bool)
    n_skipped = int(skipped.fillna(False).astype(bool).sum())
    lines.append(
        f"- Profile {'forced' if forced else 'selected'}: {chosen}; after {n_attempts} "
        f"step{'s' if n_attempts != 1 else ''} ({n_skipped} skipped by prediction, "
        f"{n_attempts - n_skipped} loaded) the companion would run {final}"
        + ("" if bool(_first(df, "final_ok", False)) else " (the last attempt failed too)")
        + "."
    )
    n_alerts = int((df["scenario"] == gpu.SCENARIO_ALERT).sum())
    if n_alerts:
        lines.append(f"- {n_alerts} VRAM alert event{'s' if n_alerts != 1 else ''} (table above).")
    return lines


def _kv_lines(df: pd.DataFrame) -> list[str]:
    kv = _kv_check_table(df)
    if kv.empty:
        return []
    where = _first(df[df["scenario"] == gpu.SCENARIO_KV_CHECK], "kv_where")
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
    fit, comp = _target_tables(df)
    if fit.empty:
        return []
    return [
        "### The target card",
        "",
        f"Card: {_mb(_first(df, 'target_budget_mb'))} MiB ({_first(df, 'target_card')}), "
        f"margin {_mb(_first(df, 'target_margin_mb'))} MiB. Per n_ctx and KV cache type (both "
        "K and V; FA: flash attention on), the most n_gpu_layers predicted to fit and the MiB "
        "it needs; n_ubatch as the run's. Device overhead: "
        f"{_first(df, 'target_overhead_source')}.",
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
    ]


def summary_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    """FINAL_RESULTS.md's summary rows for a gpu run: where a GPU was measured, the selected
    profile against cpu_fallback (the original claim: "no speed gain, but no crashes"), the
    VRAM prediction against NVML, and where the fallback chain ended; else one row saying so."""
    if not gpu.gpu_measured(df):
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
    d = gpu.measured(df)
    chosen = str(_first(df, "selected_profile"))
    prof = d[d["scenario"] == gpu.SCENARIO_PROFILE]
    base = prof[prof["profile"] == profiles.CPU_FALLBACK]
    best = prof[prof["profile"] == chosen]
    if chosen != profiles.CPU_FALLBACK and len(base) and len(best):
        for name in ("tg_tps", "vram_delta_mb"):
            m = metrics.get("gpu", name)
            r = stats.compare(
                base[name], best[name], higher_is_better=m.higher_is_better, words=m.words
            )
            digits = 0 if name.endswith("_mb") else 1
            rows.append(
                summary_row(
                    "gpu",
                    f"profile {chosen} instead of cpu_fallback",
                    m.title,
                    fmt(r.median_a, digits),
                    fmt(r.median_b, digits),
                    fmt_ci(r.ratio, r.ci_low, r.ci_high, 2),
                    r.verdict,
                    CLAIMS["gpu"],
                )
            )
    vs = gpu.measured_vs_predicted(df)
    if not vs.empty:
        gpu_rows = vs[~vs.get("cfg_hide_gpu", pd.Series(False, index=vs.index)).astype(bool)]
        known = [v for v in gpu_rows["meta_within_target"] if v is not None]
        worst = gpu_rows["meta_error_mb"].abs().max() if len(gpu_rows) else math.nan
        rows.append(
            summary_row(
                "gpu",
                "VRAM predicted from the GGUF before loading",
                "metadata prediction − NVML (MiB)",
                "–",
                f"worst error ±{fmt(worst, 0)}",
                "–",
                f"within 10% or 64 MiB at {sum(known)} of {len(known)} configurations",
                "—",
            )
        )
    attempts = df[df["scenario"] == gpu.SCENARIO_ATTEMPT]
    if len(attempts):
        skipped = attempts.get("attempt_skipped", pd.Series(False, index=attempts.index))
        n_skipped = int(skipped.map(_maybe_bool).fillna(False).astype(bool).sum())
        final = str(_first(df, "final_profile"))
        ok = bool(_first(df, "final_ok", False))
        rows.append(
            summary_row(
                "gpu",
                "fallback chain, predict first",
                "steps",
                "–",
                f"{len(attempts)} step{'s' if len(attempts) != 1 else ''}, "
                f"{n_skipped} skipped by prediction",
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
        f"Model: {_first(df, 'model_name')} (`{_first(df, 'model_file')}`, "
        f"{_first(df, 'n_layer')} layers + output), n_ctx {params.get('n_ctx')}, n_batch "
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
        f"llama.cpp: {_first(df, 'projection_status')}"
        + (f"; {_first(df, 'projection_note')}" if _first(df, "projection_note") else "")
        + ".",
        "",
        table(_prediction_table(df)),
        "",
        *_cpu_check(df),
        "",
        _plot_predictions(df, plots_dir, md_dir),
        "",
        *_kv_lines(df),
        *_target_lines(df),
        "### Profile selection",
        "",
        f"Available: {_mb(_first(df, 'vram_available_mb'))} MiB "
        f"({_first(df, 'selection_basis')}); a profile fits if the larger of its two "
        f"predictions plus the margin does.",
        "",
        table(_selection_table(df)),
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
        table(_attempts_table(df)),
        "",
        "### Measured",
        "",
        "Each trial a fresh load of one configuration, a companion reply, then pp and tg "
        "tests; VRAM is NVML's device-used memory after the work minus the reading before "
        "the trial. Median [95% CI] over trials, warm-up round left out.",
        "",
        table(_summary_table(df)),
        "",
    ]
    vs = _vs_table(df)
    if not vs.empty:
        parts += [
            "Measured against both predictions (target: within 10% of the measurement or "
            "64 MiB, whichever is larger):",
            "",
            table(vs),
            "",
        ]
    comp = _comparison_table(df)
    if not comp.empty:
        parts += ["Profiles against the selected one:", "", table(comp), ""]
    if (df["scenario"] == gpu.SCENARIO_SAMPLE).any():
        parts += [_plot_timeline(df, plots_dir, md_dir), ""]
        alerts = _alerts_table(df)
        parts += (
            ["VRAM alerts:", "", table(alerts), ""] if len(alerts) else ["No VRAM alert fired.", ""]
        )
    parts += ["### Reading", "", *_reading(df), ""]
    return "\n".join(parts)


def sweep_extra(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    """For a sweep's section: per point, measured VRAM against both predictions and tokens/s."""
    grid = [p for p in info.get("grid", {}) if p in df.columns]
    d = gpu.measured(df)
    d = d[d["scenario"] == gpu.SCENARIO_LAYERS]
    if d.empty or not grid:
        return ""
    rows = []
    for key, g in d.groupby(grid, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        vram = g["vram_delta_mb"].dropna()
        m = float(np.median(vram)) if len(vram) else math.nan
        rows.append(
            {
                **dict(zip(grid, key, strict=True)),
                "layers on GPU (effective)": int(g["gpu_layers_effective"].iloc[0]),
                "measured MiB": _mb(m),
                "metadata MiB": _mb(g["pred_meta_total_mb"].iloc[0]),
                "llama.cpp + overhead MiB": _mb(g["pred_proj_total_mb"].iloc[0]),
                "tg tokens/s (median)": fmt(float(g["tg_tps"].median())),
                "trials": len(g),
            }
        )
    note = (
        ""
        if gpu.gpu_measured(df)
        else " No GPU was measured: the VRAM columns are predictions only."
    )
    return "\n".join(
        [
            "### Measured VRAM against both predictions per point",
            "",
            table(pd.DataFrame(rows)),
            "",
            f"Status: {_first(df, 'gpu_status')}.{note}",
            "",
        ]
    )


REPORT = PhaseReport(
    section=section,
    summary_rows=summary_rows,
    variant_row=None,
    sweep_extra=sweep_extra,
)
