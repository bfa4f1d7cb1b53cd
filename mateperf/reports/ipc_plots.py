"""Phase 3's plots: the latency CDF per mode, latency against message size, batching bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mateperf.reports.format import save_figure


def rows_of(summary: pd.DataFrame, scenario: str, metric: str) -> pd.DataFrame:
    """The summary's rows of one scenario and metric."""
    return summary[(summary["scenario"] == scenario) & (summary["metric"] == metric)]


def legend_beside(ax) -> None:
    """The legend right of the axes: inside, where the curves fall depends on the run's data,
    and a legend placed "best" can still cover some of them."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")


def latency_cdf(requests: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str | None:
    sel = requests[(requests["scenario"] == "simple_commands") & requests["rtt_us"].notna()]
    if sel.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, group in sel.groupby("mode", sort=True):
        values = np.sort(group["rtt_us"].to_numpy())
        ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("round trip, send to completion ack (µs, log)")
    ax.set_ylabel("fraction of requests (all trials)")
    ax.set_title("simple_commands: latency CDF per mode")
    ax.grid(True, which="both", alpha=0.3)
    legend_beside(ax)
    return save_figure(fig, plots_dir, "ipc_latency_cdf", md_dir, "latency CDF per mode")


def latency_vs_size(summary: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str | None:
    sel = rows_of(summary, "message_sizes", "rtt_us")
    if sel.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, group in sel.groupby("mode", sort=True):
        group = group.sort_values("target_bytes")
        med = group["median"].to_numpy()
        ax.errorbar(
            group["target_bytes"].to_numpy(),
            med,
            yerr=[med - group["p5"].to_numpy(), group["p95"].to_numpy() - med],
            marker="o",
            capsize=3,
            label=mode,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("request line size (bytes, log)")
    ax.set_ylabel("round trip p50, bars p5–p95 (µs, log)")
    ax.set_title("message_sizes: latency vs message size")
    ax.grid(True, which="both", alpha=0.3)
    legend_beside(ax)
    return save_figure(fig, plots_dir, "ipc_latency_vs_size", md_dir, "latency vs message size")


def batching(summary: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str | None:
    sel = rows_of(summary, "batching", "total_ms")
    if sel.empty:
        return None
    fpss = sorted(sel["fps"].unique())
    modes = ["one_by_one", "batched", "pipelined"]
    fig, axes = plt.subplots(
        1, len(fpss), figsize=(4.5 * len(fpss), 4), squeeze=False, layout="constrained"
    )
    for ax, fps in zip(axes[0], fpss, strict=True):
        at = sel[sel["fps"] == fps].set_index("mode").reindex(modes)
        meds = at["median"].to_numpy()
        ax.bar(
            modes,
            meds,
            yerr=[meds - at["min"].to_numpy(), at["max"].to_numpy() - meds],
            capsize=4,
            color=["#c44e52", "#4c72b0", "#55a868"],
        )
        ax.set_title("unpaced" if fps == 0 else f"{fps:g} fps")
        if ax is axes[0][0]:
            ax.set_ylabel("total time for all commands (ms), median of trials, bars min–max")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("batching: total time, one by one vs batched vs pipelined")
    return save_figure(fig, plots_dir, "ipc_batching", md_dir, "batching bars")
