"""Phase 1's plots: the memory timeline with its checkpoints, and memory after each message
with the fitted slope and its robust 95% CI band."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from mateperf.phases.memory import analyse as memory
from mateperf.phases.memory import verdict
from mateperf.reports.axes import stagger_labels
from mateperf.reports.format import save_figure

METRIC_LABELS = {
    "heap_live_mb": "live heap",
    "rss_mb": "RSS",
    "rss_anon_mb": "anonymous RSS",
    "rss_file_mb": "file-backed RSS",
    "uss_mb": "USS",
    "heap_used_mb": "heap in use",
    "heap_free_mb": "heap free (retained)",
    "model_mapped_mb": "model file resident",
    "vram_device_used_mb": "VRAM used (device)",
    "vram_process_mb": "VRAM (this process)",
}
SCENARIO_COLORS = {
    "baseline": "#dddddd",
    "load_model": "#fde2b8",
    "chat_session": "#d4e8f7",
    "memory_cleanup": "#d9f0d3",
}


def timeline(df: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str:
    samples = df[df["record"] == "sample"]
    marks = df[df["record"] == "marker"]
    vram = verdict.has_vram(df)
    fig, axes = plt.subplots(2 if vram else 1, 1, figsize=(10, 5.5 if vram else 4), sharex=True)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    t_end = float(df["t_s"].max())
    starts = marks.drop_duplicates("scenario")[["scenario", "t_s"]].to_numpy().tolist()
    for i, (scenario, t0) in enumerate(starts):
        t1 = starts[i + 1][1] if i + 1 < len(starts) else t_end
        for a in axes:
            a.axvspan(t0, t1, color=SCENARIO_COLORS.get(scenario, "#eeeeee"), alpha=0.6, lw=0)
    scenario_keys = [
        Patch(color=SCENARIO_COLORS.get(s, "#eeeeee"), alpha=0.6, label=s) for s, _t in starts
    ]
    for metric, style in (("rss_mb", "-"), ("rss_anon_mb", "--"), ("rss_file_mb", ":")):
        ax.plot(samples["t_s"], samples[metric], style, lw=1.2, label=METRIC_LABELS[metric])
    uss = df[df["record"].isin(["sample", "marker", "message"])].dropna(subset=["uss_mb"])
    ax.plot(uss["t_s"], uss["uss_mb"], ".", ms=2.5, label=METRIC_LABELS["uss_mb"])
    auto = verdict.automatic_collections(df)["t_s"].to_numpy(float)
    if auto.size:
        ax.plot(auto, np.zeros_like(auto), "v", color="tab:purple", ms=6, clip_on=False)
        ax.plot([], [], "v", color="tab:purple", label="automatic gc")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    handles, _labels = ax.get_legend_handles_labels()
    # beside the axes: inside, any corner covers the RSS curve or a checkpoint
    ax.legend(
        handles=handles + scenario_keys, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7
    )
    ax.grid(alpha=0.3)
    if vram:
        axes[1].plot(samples["t_s"], samples["vram_device_used_mb"], label="device used")
        axes[1].plot(samples["t_s"], samples["vram_process_mb"], "--", label="this process")
        axes[1].set_ylabel("VRAM MiB")
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
        axes[1].grid(alpha=0.3)
    checkpoints = marks.dropna(subset=["checkpoint"])
    for t in checkpoints["t_s"]:
        for a in axes:
            a.axvline(t, color="black", lw=0.6, alpha=0.6)
    # the checkpoints at the end of a run come seconds apart: their names in staggered rows
    stagger_labels(ax, list(zip(checkpoints["t_s"], checkpoints["checkpoint"], strict=True)))
    axes[-1].set_xlabel("time since the sampler started (s)")
    return save_figure(fig, plots_dir, "memory_timeline", md_dir, "memory timeline")


def per_message(
    df: pd.DataFrame, leak: pd.DataFrame, warmup: int, plots_dir: Path, md_dir: Path
) -> str:
    msgs = memory.message_rows(df)
    metrics = list(leak["metric"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.6))
    axes = np.atleast_1d(axes)
    at = verdict.automatic_collections(df)["at_message"].to_numpy(float)
    for ax, metric in zip(axes, metrics, strict=True):
        r = leak[leak["metric"] == metric].iloc[0]
        x = msgs["message"].astype(float).to_numpy()
        y = memory.series(df, metric).to_numpy(float)
        ax.axvspan(0.5, warmup + 0.5, color="#eeeeee", lw=0, label="warm-up (not fitted)")
        for i, m in enumerate(at):
            ax.axvline(
                m, color="tab:purple", lw=0.8, alpha=0.6, label="automatic gc" if not i else None
            )
        ax.plot(x, y, ".", ms=4, color="tab:blue")
        fitted = (x > warmup) & np.isfinite(y)
        if fitted.sum() >= 3 and np.isfinite(r["slope_mb_per_msg"]):
            # The band pivots on the centroid: lines through (x̄, ȳ) with the CI's two slopes.
            xf = x[fitted]
            xbar = xf.mean()
            ybar = r["intercept"] + r["slope_mb_per_msg"] * xbar
            ax.plot(
                xf,
                ybar + r["slope_mb_per_msg"] * (xf - xbar),
                color="tab:red",
                label="slope after the warm-up",
            )
            ax.fill_between(
                xf,
                ybar + r["ci_low"] * (xf - xbar),
                ybar + r["ci_high"] * (xf - xbar),
                color="tab:red",
                alpha=0.2,
                lw=0,
                label="95% CI (HAC)",
            )
        ax.ticklabel_format(axis="y", useOffset=False)
        slope = f"{r['slope_kb_per_msg']:.1f} KiB/msg" if np.isfinite(r["slope_kb_per_msg"]) else ""
        ax.set_title(f"{METRIC_LABELS[metric]}: {r['growth']}\n{slope}", fontsize=9)
        ax.set_xlabel("message")
        ax.set_ylabel("MiB")
        ax.grid(alpha=0.3)
    # one key for every panel, below them: inside a panel it hides points (an outlier, say)
    keys = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        keys.update(zip(labels, handles, strict=True))
    fig.legend(keys.values(), keys.keys(), loc="lower center", ncol=len(keys), fontsize=7)
    fig.suptitle("Memory after each message; slope after the warm-up with its robust 95% CI")
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
    return save_figure(fig, plots_dir, "memory_per_message", md_dir, "memory per message")
