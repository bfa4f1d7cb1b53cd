"""The gpu section's tables: each stored scenario as the rows a reader sees (formatting only;
the figures are the phase's, from `mateperf.phases.gpu.analyse`)."""

from __future__ import annotations

import math

import pandas as pd

from mateperf.gpu import estimate
from mateperf.phases.gpu import analyse
from mateperf.reports.format import fmt, fmt_ci, fmt_p

METRIC_LABELS = {
    "load_s": "model load (s)",
    "ttft_ms": "time to first token (ms)",
    "e2e_ms": "whole reply (ms)",
    "pp_tps": "prompt tokens/s",
    "tg_tps": "generation tokens/s",
    "vram_delta_mb": "VRAM after the work (MiB)",
    "vram_peak_delta_mb": "peak VRAM (MiB)",
}


def num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def mb(value, digits: int = 0) -> str:
    v = num(value)
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def mib(value, missing: str, digits: int = 0) -> str:
    """A figure with its unit, or the words that stand in for it: never a dash before a unit."""
    v = num(value)
    return missing if math.isnan(v) else f"{v:.{digits}f} MiB"


def first(df: pd.DataFrame, column: str, default=""):
    return df[column].iloc[0] if column in df and len(df) else default


def on_gpu(row) -> str:
    k, n = int(row["gpu_layers"]), int(row["repeating_layers_on_gpu"])
    if k == 0:
        return "nothing"
    if bool(row["offloads_all"]):
        return "everything"
    return "output" + (f" + {n} layer{'s' if n != 1 else ''}" if n else "")


def layers_label(k: int, all_layers: int) -> str:
    return f"{k} (all)" if k == all_layers else str(k)


def config_text(row) -> str:
    """n_ctx, where the KV cache is and its types, flash attention: what makes a configuration."""
    if bool(row.get("cfg_hide_gpu", False)):
        return f"n_ctx {int(row['cfg_n_ctx'])}, GPU hidden"
    kv = "KV on GPU" if bool(row.get("cfg_offload_kqv", True)) else "KV in RAM"
    types = f"{row.get('cfg_type_k', 'f16')}/{row.get('cfg_type_v', 'f16')}"
    types = "f16" if types == "f16/f16" or types == "nan/nan" else types
    fa = "FA on" if bool(row.get("cfg_flash_attn", False)) else "FA off"
    return f"n_ctx {int(row['cfg_n_ctx'])}, {kv} {types}, {fa}"


def prediction_table(df: pd.DataFrame) -> pd.DataFrame:
    pred = analyse.prediction_table(df)
    all_layers = int(first(df, "all_layers", 0))
    measured = analyse.measured_at_base(df)
    offload = bool(first(df, "gpu_offload", False))
    rows = []
    for _, r in pred.iterrows():
        k = int(r["gpu_layers"])
        row = {
            "n_gpu_layers": layers_label(k, all_layers),
            "on the GPU": on_gpu(r),
            "metadata: weights / KV / compute": (
                f"{r['meta_weights_mb']:.1f} / {r['meta_kv_mb']:.1f} / {r['meta_compute_mb']:.1f}"
            ),
            "metadata: buffers": mb(r["meta_buffers_mb"], 1),
            "metadata: + overhead = total": mb(r["meta_total_mb"]),
            "llama.cpp: device model / context / compute": (
                f"{mb(r['proj_device_model_mb'])} / {mb(r['proj_device_context_mb'])} / "
                f"{mb(r['proj_device_compute_mb'])}" + ("" if offload else " (no device)")
            ),
            "llama.cpp: device + overhead": mb(r.get("proj_total_mb")),
            "llama.cpp: host": mb(r["proj_host_mb"]),
        }
        if measured:
            row["measured (NVML)"] = mb(measured.get(k))
        rows.append(row)
    return pd.DataFrame(rows)


def selection_table(df: pd.DataFrame) -> pd.DataFrame:
    s = df[df["scenario"] == analyse.SCENARIO_SELECTION]
    rows = []
    all_layers = int(first(df, "all_layers", 0))
    for _, r in s.iterrows():
        rows.append(
            {
                "profile": r["profile"] + (" (chosen)" if bool(r["chosen"]) else ""),
                "n_gpu_layers": layers_label(int(r["gpu_layers"]), all_layers),
                "n_ctx": int(r["cfg_n_ctx"]),
                "n_batch/n_ubatch": f"{int(r['cfg_n_batch'])}/{int(r['cfg_n_ubatch'])}",
                "KV on GPU": "yes" if bool(r["cfg_offload_kqv"]) else "no",
                "flash attn": "yes" if bool(r["cfg_flash_attn"]) else "no",
                "metadata MiB": mb(r["predicted_mb"]),
                "llama.cpp + overhead MiB": mb(r["projected_mb"]),
                "fits": "yes" if bool(r["fits"]) else "no",
                "why": r["reason"],
            }
        )
    return pd.DataFrame(rows)


def attempts_table(df: pd.DataFrame) -> pd.DataFrame:
    a = df[df["scenario"] == analyse.SCENARIO_ATTEMPT].sort_values("attempt")
    all_layers = int(first(df, "all_layers", 0))
    rows = []
    for _, r in a.iterrows():
        rows.append(
            {
                "#": int(r["attempt"]),
                "step": r["attempt_step"],
                "profile": r["profile"],
                "n_gpu_layers": layers_label(int(r["gpu_layers"]), all_layers),
                "n_ctx": int(r["cfg_n_ctx"]),
                "predicted MiB (metadata / llama.cpp)": (
                    f"{mb(r['attempt_predicted_mb'])} / {mb(r['attempt_projected_mb'])}"
                ),
                "buffers MiB": mb(r.get("attempt_need_mb"))
                if str(r.get("attempt_need_basis", "")).startswith("buffers")
                else "",
                "measured MiB": mb(r.get("attempt_vram_mb")),
                "tg tokens/s": fmt(num(r.get("attempt_tg_tps"))),
                "outcome": attempt_outcome(r),
            }
        )
    return pd.DataFrame(rows)


def attempt_outcome(r) -> str:
    if maybe_bool(r.get("attempt_skipped")):  # older runs have no such column
        return str(r["attempt_reason"])
    return ("ok: " if bool(r["attempt_ok"]) else "left: ") + str(r["attempt_reason"])


def kv_check_table(df: pd.DataFrame) -> pd.DataFrame:
    """Metadata against llama.cpp per KV cache type pair and flash attention (MiB)."""
    c = df[df["scenario"] == analyse.SCENARIO_KV_CHECK] if "scenario" in df else df.iloc[:0]
    rows = []
    for _, r in c.iterrows():
        rows.append(
            {
                "type_k / type_v": f"{r['kv_type_k']} / {r['kv_type_v']}",
                "flash attn": "on" if bool(r["kv_flash_attn"]) else "off",
                "KV cache: metadata / llama.cpp": f"{r['kv_meta_kv_mb']:.1f} / "
                + mb(r["kv_proj_kv_mb"]),
                "compute: metadata / llama.cpp": f"{r['kv_meta_compute_mb']:.1f} / "
                + mb(r["kv_proj_compute_mb"]),
                "weights: metadata / llama.cpp": f"{r['kv_meta_weights_mb']:.1f} / "
                + mb(r["kv_proj_weights_mb"]),
                "llama.cpp": "ok" if r["proj_status"] == "ok" else str(r["proj_status"]),
            }
        )
    return pd.DataFrame(rows)


def target_tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(largest fit per n_ctx and KV type, the companion's profiles) from the stored rows."""
    grid, comp = analyse.fit_frames(df)
    if grid.empty:
        return pd.DataFrame(), pd.DataFrame()
    best = estimate.largest_fit(grid)
    all_layers = int(first(df, "all_layers", 0))
    wide = {}
    for _, r in best.iterrows():
        kv = f"{r['type_k']}" + (" FA" if r["flash_attn"] else "")
        k = int(r["max_gpu_layers"])
        if not r["known"]:
            buffers = mib(r["all_layers_buffers_mb"], "buffers unknown")
            cell = f"? ({buffers} buffers at all)"
        elif k < 0:
            cell = f"none ({mib(r['all_layers_mb'], 'unknown')} at all)"
        else:
            cell = f"{layers_label(k, all_layers)}: {mib(r['max_fit_mb'], 'VRAM unknown')}"
        wide.setdefault(int(r["n_ctx"]), {"n_ctx": int(r["n_ctx"])})[f"KV {kv}"] = cell
    fit = pd.DataFrame(list(wide.values()))
    rows = []
    for _, r in comp.iterrows():
        fits = maybe_bool(r["fits"])
        rows.append(
            {
                "companion profile": r["profile"],
                "n_gpu_layers": f"{int(r['cfg_n_gpu_layers'])} → "
                + layers_label(int(r["gpu_layers"]), all_layers),
                "n_ctx / n_batch": f"{int(r['cfg_n_ctx'])} / {int(r['cfg_n_batch'])}",
                "weights / KV / compute MiB": (
                    f"{r['meta_weights_mb']:.0f} / {r['meta_kv_mb']:.0f} / "
                    f"{r['meta_compute_mb']:.0f}"
                ),
                "+ overhead = device MiB": f"{mb(r['meta_overhead_mb'])} → "
                + mb(r["meta_total_mb"]),
                "host MiB": mb(r["meta_host_mb"]),
                "fits": "?" if fits is None else ("yes" if fits else "NO"),
            }
        )
    return fit, pd.DataFrame(rows)


def maybe_bool(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    summary = analyse.summarize(df)
    if summary.empty:
        return summary
    rows = []
    all_layers = int(first(df, "all_layers", 0))
    for (scenario, name, k), g in summary.groupby(
        ["scenario", "profile", "gpu_layers"], sort=False
    ):
        rows_k = analyse.measured(df)
        rows_k = rows_k[(rows_k["scenario"] == scenario) & (rows_k["gpu_layers"] == k)]
        effective = int(rows_k["gpu_layers_effective"].iloc[0]) if len(rows_k) else int(k)
        row = {
            "what": "n_gpu_layers of the run" if scenario == analyse.SCENARIO_LAYERS else name,
            "n_gpu_layers": layers_label(int(k), all_layers)
            + ("" if effective == int(k) else f" (ran with {effective} on the GPU)"),
            "n": int(g["n"].max()),
        }
        for _, m in g.iterrows():
            digits = 2 if m["metric"] == "load_s" else (0 if m["metric"].endswith("mb") else 1)
            row[METRIC_LABELS.get(m["metric"], m["metric"])] = fmt_ci(
                m["median"], m["ci_low"], m["ci_high"], digits
            )
        rows.append(row)
    return pd.DataFrame(rows)


def vs_table(df: pd.DataFrame) -> pd.DataFrame:
    vs = analyse.measured_vs_predicted(df)
    if vs.empty:
        return vs
    all_layers = int(first(df, "all_layers", 0))

    def verdict(v):
        return (
            "–" if v is None or (isinstance(v, float) and math.isnan(v)) else ("yes" if v else "NO")
        )

    configs = [config_text(r) if "cfg_n_ctx" in vs else "" for _, r in vs.iterrows()]
    return pd.DataFrame(
        {
            "what": [p or "n_gpu_layers of the run" for p in vs["profile"]],
            "n_gpu_layers": [layers_label(int(k), all_layers) for k in vs["gpu_layers"]],
            "configuration": configs,
            "measured MiB (median)": [mb(v) for v in vs["measured_mb"]],
            "metadata MiB (error)": [
                f"{mb(p)} ({signed(e)})"
                for p, e in zip(vs["meta_mb"], vs["meta_error_mb"], strict=True)
            ],
            "within target": [verdict(v) for v in vs["meta_within_target"]],
            "llama.cpp + overhead MiB (error)": [
                f"{mb(p)} ({signed(e)})"
                for p, e in zip(vs["proj_mb"], vs["proj_error_mb"], strict=True)
            ],
            "within target ": [verdict(v) for v in vs["proj_within_target"]],
            "n": vs["n"],
        }
    )


def signed(value) -> str:
    v = num(value)
    return "–" if math.isnan(v) else f"{v:+.0f}"


def comparison_table(df: pd.DataFrame) -> pd.DataFrame:
    comp = analyse.profile_comparison(df)
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


def alerts_table(df: pd.DataFrame) -> pd.DataFrame:
    a = df[df["scenario"] == analyse.SCENARIO_ALERT]
    if a.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "t (s)": [f"{t:.1f}" for t in a["t_s"]],
            "level": [f"{p} → {lv}" for p, lv in zip(a["previous_level"], a["level"], strict=True)],
            "VRAM used MiB": [mb(v) for v in a["vram_used_mb"]],
            "share": [
                f"{v:.0f}% of the {b} ({mib(m, 'size unknown')})"
                for v, b, m in zip(a["used_pct"], a["basis"], a["basis_mb"], strict=True)
            ],
        }
    )


def companion_model_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The companion's profiles on its model: loaded layers, VRAM with flash attention off and
    on against the card less the avatar's reserve, and the most layers that fit instead."""

    def fits(value) -> str:
        v = maybe_bool(value)
        return "?" if v is None else ("yes" if v else "NO")

    def most(k, need) -> str:
        k = int(k)
        return "none" if k < 0 else f"{k}: {mib(need, 'VRAM unknown')}"

    out = []
    for _, r in rows.iterrows():
        out.append(
            {
                "profile": r["cm_profile"],
                "n_gpu_layers → loaded": f"{int(r['cm_n_gpu_layers'])} → "
                + layers_label(int(r["cm_gpu_layers"]), int(r["cm_all_layers"])),
                "n_ctx / n_batch": f"{int(r['cm_n_ctx'])} / {int(r['cm_n_batch'])}",
                "FA off MiB": f"{mb(r['cm_fa_off_mb'])} ({fits(r['cm_fa_off_fits'])})",
                "FA on MiB": f"{mb(r['cm_fa_on_mb'])} ({fits(r['cm_fa_on_fits'])})",
                "most layers that fit, FA off / on": (
                    f"{most(r['cm_fa_off_max_layers'], r['cm_fa_off_max_mb'])} / "
                    f"{most(r['cm_fa_on_max_layers'], r['cm_fa_on_max_mb'])}"
                ),
            }
        )
    return pd.DataFrame(out)
