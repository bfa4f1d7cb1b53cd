"""The gpu section's plots: VRAM by n_gpu_layers (both predictions and NVML), and the run's
VRAM timeline with the alert thresholds."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from mateperf.phases.gpu import analyse
from mateperf.reports.format import save_figure
from mateperf.reports.gpu_tables import first, num


def plot_predictions(df: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str:
    pred = analyse.prediction_table(df)
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
    if bool(first(df, "gpu_offload", False)):
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
    measured = analyse.measured_at_base(df)
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


def plot_timeline(df: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str:
    s = df[df["scenario"] == analyse.SCENARIO_SAMPLE].sort_values("t_s")
    alerts = df[df["scenario"] == analyse.SCENARIO_ALERT]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(s["t_s"], s["vram_used_mb"], linewidth=1, label="device VRAM used (NVML)")
    basis = num(first(alerts, "basis_mb")) if len(alerts) else math.nan
    budget = num(first(df, "vram_budget_mb", 0))
    if math.isnan(basis):
        basis = budget if budget else num(first(s, "vram_total_mb"))
    for pct, color in (
        (num(first(df, "warn_pct", 80)), "tab:orange"),
        (num(first(df, "critical_pct", 90)), "tab:red"),
    ):
        ax.axhline(
            basis * pct / 100,
            color=color,
            linestyle="--",
            linewidth=1,
            label=f"{pct:.0f}% of {'budget' if budget else 'card'}",
        )
    trials = analyse.measured(df)
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
