"""The gpu phase's reading of a stored frame: summaries, measured against predicted, verdicts.

Pure functions of the tidy frame the phase stored (`measure.run`), for the report, the sweep
and the notebook; nothing here loads a model or reads a device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mateperf import metrics, stats
from mateperf.gpu import profiles

SCENARIO_PREDICTION = "prediction"
SCENARIO_CPU_CHECK = "cpu_check"
SCENARIO_KV_CHECK = "kv_check"
SCENARIO_FIT = "fit"
SCENARIO_TARGET = "target"
SCENARIO_COMPANION_MODEL = "companion_model"
SCENARIO_SELECTION = "selection"
SCENARIO_ATTEMPT = "attempt"
SCENARIO_LAYERS = "layers"
SCENARIO_PROFILE = "profile"
SCENARIO_SAMPLE = "sample"
SCENARIO_ALERT = "alert"
MEASURED_SCENARIOS = (SCENARIO_LAYERS, SCENARIO_PROFILE)
# The GPU monitor's status where there is no GPU reads "no NVIDIA GPU: <reason>"
# (mateperf.trackers.gpu); the level an alert event returns to when it clears.
NO_GPU_STATUS_PREFIX = "no NVIDIA GPU: "
ALERT_CLEARED = "ok"

TRIAL_METRICS = ["load_s", "ttft_ms", "e2e_ms", "pp_tps", "tg_tps", "vram_delta_mb"]
# Measured VRAM is within target of a prediction if off by at most this share or MiB.
TARGET_SHARE, TARGET_MB = 0.10, 64.0

# The configuration columns that make a measurement and a prediction the same configuration.
CONFIG_COLUMNS = (
    "gpu_layers",
    "cfg_n_ctx",
    "cfg_n_ubatch",
    "cfg_offload_kqv",
    "cfg_flash_attn",
    "cfg_type_k",
    "cfg_type_v",
    "cfg_hide_gpu",
)
# The target-card rows' columns under names no parameter has (`n_ctx` is one: the tidy frame
# carries every parameter as a column, which a row's own n_ctx would shadow).
FIT_COLUMNS = {
    "n_ctx": "fit_n_ctx",
    "type_k": "fit_type_k",
    "type_v": "fit_type_v",
    "flash_attn": "fit_flash_attn",
    "fits": "fits_card",
}


def fit_frames(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(grid, companion profiles) of a stored run, under target_card's column names."""
    back = {v: k for k, v in FIT_COLUMNS.items()}
    out = []
    for scenario in (SCENARIO_FIT, SCENARIO_TARGET):
        rows = df[df["scenario"] == scenario] if "scenario" in df else df.iloc[:0]
        # the parameters of the same names (n_ctx, flash_attn) and the selection's `fits` go
        rows = rows.drop(columns=[c for c in back.values() if c in rows.columns])
        rows = rows.rename(columns=back)
        if len(rows):
            rows = rows.assign(
                budget_mb=rows["target_budget_mb"],
                margin_mb=rows["target_margin_mb"],
                fits=rows["fits"].map(lambda v: None if pd.isna(v) else bool(v)),
            )
        out.append(rows.reset_index(drop=True))
    return out[0], out[1]


def companion_model(df: pd.DataFrame) -> pd.DataFrame:
    """The rows "for the companion's model" (its profiles on Zephyr-7B, or the file given)."""
    if "scenario" not in df:
        return df.iloc[:0]
    return df[df["scenario"] == SCENARIO_COMPANION_MODEL].reset_index(drop=True)


def intent_sentences(rows: pd.DataFrame, differs: str, sentence: str) -> list[str]:
    """The stored sentences of the companion's profiles whose layers are not what their
    comment says (`mateperf.gpu.companion_profiles`), in the rows' order."""
    if rows.empty or differs not in rows or sentence not in rows:
        return []
    flagged = rows[rows[differs].map(lambda v: False if pd.isna(v) else bool(v))]
    return [str(s) for s in flagged[sentence]]


def kept(df: pd.DataFrame) -> pd.DataFrame:
    return metrics.without_warmup(df)


def measured(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that count (warm-ups and failed trials out) of the measured scenarios."""
    d = metrics.completed(df)
    return d[d["scenario"].isin(MEASURED_SCENARIOS)]


def prediction_table(df: pd.DataFrame) -> pd.DataFrame:
    return (
        df[df["scenario"] == SCENARIO_PREDICTION].sort_values("gpu_layers").reset_index(drop=True)
    )


def gpu_measured(df: pd.DataFrame) -> bool:
    """Whether any trial measured VRAM on a GPU."""
    d = measured(df)
    return "vram_delta_mb" in d and bool(d["vram_delta_mb"].notna().any())


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per measured scenario and profile: summary of every trial metric (warm-ups out)."""
    d = measured(df)
    if d.empty:
        return pd.DataFrame()
    present = [m for m in TRIAL_METRICS + ["vram_peak_delta_mb"] if m in d and d[m].notna().any()]
    return stats.summary_table(d, ["scenario", "profile", "gpu_layers"], present)


def _config_keys(d: pd.DataFrame) -> list[str]:
    """The configuration columns a frame has (older runs lack the KV cache types)."""
    return [c for c in CONFIG_COLUMNS if c in d.columns]


def measured_vs_predicted(df: pd.DataFrame) -> pd.DataFrame:
    """Median measured VRAM per configuration against both predictions, with the error and
    whether it is within target (10% of the measurement or 64 MiB, whichever is larger).

    A row is one configuration (layers, context, batch, KV placement and types, flash
    attention, GPU hidden or not), so a profile is never set against another's prediction.
    With the GPU hidden (cpu_fallback) the prediction is 0 on the device, whatever an older
    run stored."""
    d = measured(df)
    if d.empty or not gpu_measured(df):
        return pd.DataFrame()
    keys = ["scenario", "profile", *_config_keys(d)]
    rows = []
    for key, g in d.groupby(keys, sort=True, dropna=False):
        vram = g["vram_delta_mb"].dropna()
        if vram.empty:
            continue
        config = dict(zip(keys, key, strict=True))
        hidden = bool(config.get("cfg_hide_gpu", False))
        m = float(np.median(vram))
        tolerance = max(TARGET_SHARE * m, TARGET_MB)
        row = {**config, "gpu_layers": int(config["gpu_layers"]), "n": len(vram)}
        row["measured_mb"] = m
        for label, col in (("meta", "pred_meta_total_mb"), ("proj", "pred_proj_total_mb")):
            pred = 0.0 if hidden else (float(g[col].iloc[0]) if col in g else math.nan)
            row[f"{label}_mb"] = pred
            row[f"{label}_error_mb"] = pred - m
            row[f"{label}_within_target"] = (
                bool(abs(pred - m) <= tolerance) if not math.isnan(pred) else None
            )
        row["tolerance_mb"] = tolerance
        rows.append(row)
    return pd.DataFrame(rows)


def base_config(df: pd.DataFrame) -> dict:
    """The run's own configuration, the one every prediction row is for: from the prediction
    rows' configuration columns, or (older runs) from the run's parameters."""
    pred = df[df["scenario"] == SCENARIO_PREDICTION]
    first = pred.iloc[0] if len(pred) else df.iloc[0]
    n_batch = int(first["n_batch"]) if "n_batch" in first else 512
    n_ubatch = int(first["n_ubatch"]) if "n_ubatch" in first and first["n_ubatch"] else n_batch

    def pick(column: str, param: str, default):
        if column in first and not pd.isna(first[column]):
            return first[column]
        return first[param] if param in first and not pd.isna(first[param]) else default

    return {
        "cfg_n_ctx": int(pick("cfg_n_ctx", "n_ctx", 2048)),
        "cfg_n_ubatch": int(pick("cfg_n_ubatch", "n_ubatch", n_ubatch) or n_ubatch),
        "cfg_offload_kqv": bool(pick("cfg_offload_kqv", "offload_kqv", True)),
        "cfg_flash_attn": bool(pick("cfg_flash_attn", "flash_attn", False)),
        "cfg_type_k": str(pick("cfg_type_k", "type_k", "f16")),
        "cfg_type_v": str(pick("cfg_type_v", "type_v", "f16")),
        "cfg_hide_gpu": False,
    }


def measured_at_base(df: pd.DataFrame) -> dict[int, float]:
    """Median measured VRAM per n_gpu_layers, of trials with exactly the configuration the
    prediction rows are for (a profile's other context, KV placement or flash attention is
    left out): what the per-layer table and plot put beside the predictions."""
    d = measured(df)
    if d.empty or "vram_delta_mb" not in d or not d["vram_delta_mb"].notna().any():
        return {}
    base = base_config(df)
    keep = pd.Series(True, index=d.index)
    for column, value in base.items():
        if column in d.columns:
            keep &= d[column].fillna(value if column.startswith("cfg_type") else False) == value
        elif column.startswith("cfg_type") and value != "f16":
            keep &= False  # an older run measured f16 only
    d = d[keep]
    if d.empty:
        return {}
    medians = d.groupby("gpu_layers")["vram_delta_mb"].median().dropna()
    return {int(k): float(v) for k, v in medians.items()}


def profile_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Every measured profile against the selected one (or, where that was not measured, the
    run's own configuration): ratio of medians with its CI and the verdict, per metric."""
    d = measured(df)
    profile_rows = d[d["scenario"] == SCENARIO_PROFILE]
    if profile_rows.empty:
        return pd.DataFrame()
    chosen = str(df["selected_profile"].iloc[0])
    ref = profile_rows[profile_rows["profile"] == chosen]
    against = chosen
    if ref.empty:
        ref = d[d["scenario"] == SCENARIO_LAYERS]
        against = f"n_gpu_layers={int(ref['cfg_n_gpu_layers'].iloc[0])}" if len(ref) else ""
    if ref.empty:
        return pd.DataFrame()
    rows = []
    names = [n for n in profiles.ORDER if n in set(profile_rows["profile"]) and n != against]
    for name in names:
        other = profile_rows[profile_rows["profile"] == name]
        for metric_name in ("tg_tps", "pp_tps", "ttft_ms", "vram_delta_mb"):
            decl = metrics.get("gpu", metric_name) or metrics.find(metric_name)
            r = stats.compare(
                ref[metric_name],
                other[metric_name],
                higher_is_better=decl.higher_is_better,
                words=decl.words,
            )
            rows.append({"profile": name, "against": against, "metric": metric_name, **r.as_dict()})
    return pd.DataFrame(rows)


def failures(df: pd.DataFrame) -> list[str]:
    """Why the run's own configuration could not be measured (empty if it could)."""
    d = kept(df)
    layers = d[d["scenario"] == SCENARIO_LAYERS]
    if layers.empty or layers["ok"].fillna(False).astype(bool).any():
        return []
    errors = layers["error"].dropna().unique()
    k = int(layers["cfg_n_gpu_layers"].iloc[0])
    return [f"every trial of n_gpu_layers={k} failed: {'; '.join(map(str, errors))}"]


def check(df: pd.DataFrame) -> None:
    """Raise if no trial of the run's configuration succeeded (call after saving the frame,
    so the run directory keeps the predictions and the recorded failures)."""
    problems = failures(df)
    if problems:
        raise RuntimeError(problems[0])


def sweep_metrics(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """What a sweep of this phase plots: the run's own configuration (`layers`) per point."""
    d = kept(df)
    layers = d[d["scenario"] == SCENARIO_LAYERS]
    specs = [
        ("generation tokens/s (tg)", layers, "tg_tps"),
        ("prompt tokens/s (pp)", layers, "pp_tps"),
        ("time to first token (ms)", layers, "ttft_ms"),
        ("model load (s)", layers, "load_s"),
    ]
    if "vram_delta_mb" in layers and layers["vram_delta_mb"].notna().any():
        specs.append(("VRAM in use, NVML (MiB)", layers, "vram_delta_mb"))
    return [s for s in specs if s[2] in s[1] and s[1][s[2]].notna().any()]


def selected_against_fallback(df: pd.DataFrame) -> dict[str, stats.ABResult]:
    """Metric -> the selected profile against cpu_fallback (tg tokens/s, VRAM added); empty
    where the selection was the fallback or either profile was not measured."""
    d = measured(df)
    chosen = str(d["selected_profile"].iloc[0]) if "selected_profile" in d and len(d) else ""
    prof = d[d["scenario"] == SCENARIO_PROFILE]
    base = prof[prof["profile"] == profiles.CPU_FALLBACK]
    best = prof[prof["profile"] == chosen]
    if chosen == profiles.CPU_FALLBACK or base.empty or best.empty:
        return {}
    out = {}
    for name in ("tg_tps", "vram_delta_mb"):
        m = metrics.get("gpu", name)
        out[name] = stats.compare(
            base[name], best[name], higher_is_better=m.higher_is_better, words=m.words
        )
    return out


def per_point(df: pd.DataFrame, grid: list[str]) -> pd.DataFrame:
    """A sweep's n_gpu_layers trials per point: effective layers on the GPU, median VRAM added
    against both predictions, median tg tokens/s, trials (empty without such trials)."""
    d = measured(df)
    d = d[d["scenario"] == SCENARIO_LAYERS]
    if d.empty or not grid:
        return pd.DataFrame()
    rows = []
    for key, g in d.groupby(grid, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        vram = g["vram_delta_mb"].dropna()
        rows.append(
            {
                **dict(zip(grid, key, strict=True)),
                "gpu_layers_effective": int(g["gpu_layers_effective"].iloc[0]),
                "vram_delta_mb": float(np.median(vram)) if len(vram) else math.nan,
                "pred_meta_total_mb": g["pred_meta_total_mb"].iloc[0],
                "pred_proj_total_mb": g["pred_proj_total_mb"].iloc[0],
                "tg_tps": float(g["tg_tps"].median()),
                "trials": len(g),
            }
        )
    return pd.DataFrame(rows)


def predictions_within_target(df: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Per prediction ("meta": the metadata method, "proj": llama.cpp's projection + overhead),
    (configurations within 10% or 64 MiB of NVML, configurations judged) over every measured
    configuration; a prediction none was judged for is left out, and all are where nothing was
    measured."""
    vs = measured_vs_predicted(df)
    counts = {}
    for key in ("meta", "proj"):
        known = [] if vs.empty else [v for v in vs[f"{key}_within_target"] if v is not None]
        if known:
            counts[key] = (int(sum(known)), len(known))
    return counts


def prediction_accuracy(df: pd.DataFrame) -> tuple[float, int, int] | None:
    """(worst |metadata prediction − NVML| in MiB, configurations within target, configurations
    judged) over the GPU configurations measured; None where none was."""
    vs = measured_vs_predicted(df)
    if vs.empty:
        return None
    gpu_rows = vs[~vs.get("cfg_hide_gpu", pd.Series(False, index=vs.index)).astype(bool)]
    known = [v for v in gpu_rows["meta_within_target"] if v is not None]
    worst = float(gpu_rows["meta_error_mb"].abs().max()) if len(gpu_rows) else math.nan
    return worst, int(sum(known)), len(known)


def _first(df: pd.DataFrame, column: str, default=None):
    return df[column].iloc[0] if column in df and len(df) else default


def _flag(value) -> bool:
    """A stored boolean that may be missing (None, NaN: an older run had no such column)."""
    return False if value is None or pd.isna(value) else bool(value)


def no_gpu_reason(df: pd.DataFrame) -> str:
    """Why the run had no NVIDIA GPU to read, from its stored status ("" where it had one)."""
    if _flag(_first(df, "gpu_available")):
        return ""
    status = str(_first(df, "gpu_status", "") or "")
    if status.startswith(NO_GPU_STATUS_PREFIX):
        status = status[len(NO_GPU_STATUS_PREFIX) :]
    return status or "the run recorded no GPU status"


@dataclass(frozen=True)
class FallbackCounts:
    """The fallback chain as it ran: `attempted` steps were loaded (each a real load and a
    few tokens), `skipped` steps were predicted not to fit and never loaded; `not_measured`
    says why no step was loaded ("" where one was)."""

    attempted: int
    skipped: int
    not_measured: str = ""


def fallback_counts(df: pd.DataFrame) -> FallbackCounts:
    """Loads attempted and steps skipped on their prediction, from the stored attempt rows."""
    rows = df[df["scenario"] == SCENARIO_ATTEMPT] if "scenario" in df else df.iloc[:0]
    if "attempt_skipped" in rows:
        skipped = int(rows["attempt_skipped"].map(_flag).sum())
    else:
        skipped = 0  # an older run skipped nothing: it had no prediction-first chain
    attempted = len(rows) - skipped
    why = ""
    if rows.empty:
        why = "the run recorded no fallback chain"
    elif not attempted:
        why = "every step was skipped on its prediction"
    return FallbackCounts(attempted, skipped, why)


@dataclass(frozen=True)
class VramAlerts:
    """The monitor's alert events on measured readings: `raised` went up to warn or critical,
    `cleared` came back to ok; `not_measured` says why VRAM was never read ("" where it was)."""

    raised: int
    cleared: int
    not_measured: str = ""


def vram_alerts(df: pd.DataFrame) -> VramAlerts:
    """Alerts raised and cleared, counted only where the monitor read VRAM: without a GPU (or
    without a single reading) there was nothing to alert on, and that is said, not 0."""
    absent = no_gpu_reason(df)
    if absent:
        return VramAlerts(0, 0, f"no NVIDIA GPU on this host ({absent})")
    if "scenario" not in df or not (df["scenario"] == SCENARIO_SAMPLE).any():
        return VramAlerts(0, 0, "the monitor recorded no VRAM reading")
    events = df[df["scenario"] == SCENARIO_ALERT]
    if "vram_used_mb" in events:
        events = events[events["vram_used_mb"].notna()]
    cleared = int((events["level"] == ALERT_CLEARED).sum()) if len(events) else 0
    return VramAlerts(len(events) - cleared, cleared)
