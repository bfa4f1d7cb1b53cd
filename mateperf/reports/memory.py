"""Phase 1 section: checkpoints, the leak test, cleanup effects, timeline and per-message plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from mateperf.phases import memory  # noqa: E402
from mateperf.report import fmt, save_figure, table  # noqa: E402

METRIC_LABELS = {
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


def _uss_schedule(interval_ms: float) -> str:
    if interval_ms > 0:
        return f"USS and heap in use every {interval_ms:.0f} ms and at every marker"
    return "USS and heap in use at every marker (after each message)"


def _one_run(df: pd.DataFrame) -> pd.DataFrame:
    if "run_id" in df.columns and df["run_id"].nunique() > 1:
        return df[df["run_id"] == df["run_id"].iloc[0]]
    return df


def _has_vram(df: pd.DataFrame) -> bool:
    return "vram_device_used_mb" in df.columns and df["vram_device_used_mb"].notna().any()


def _checkpoint_table(cp: pd.DataFrame, vram: bool) -> pd.DataFrame:
    cols = ["rss_mb", "uss_mb", "rss_anon_mb", "rss_file_mb", "model_mapped_mb"]
    cols += ["heap_used_mb", "heap_free_mb"]
    if vram:
        cols += ["vram_device_used_mb", "vram_process_mb"]
    out = pd.DataFrame({"checkpoint": cp["checkpoint"], "scenario": cp["scenario"]})
    for c in cols:
        out[f"{METRIC_LABELS[c]} (MB)"] = [fmt(float(v)) for v in cp[c]]
    return out.reset_index(drop=True)


def _leak_table(leak: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in leak.iterrows():
        rows.append(
            {
                "metric": METRIC_LABELS.get(r["metric"], r["metric"]),
                "messages fitted": int(r["n"]),
                "slope MB/message [95% CI]": (
                    f"{fmt(r['slope_mb_per_msg'], 4)} "
                    f"[{fmt(r['ci_low'], 4)}, {fmt(r['ci_high'], 4)}]"
                ),
                "slope KB/message": fmt(r["slope_kb_per_msg"], 1),
                "threshold MB/message": fmt(r["threshold_mb_per_msg"], 3),
                "verdict": r["verdict"],
                "votes": "yes" if r["votes"] else "no (shown only)",
            }
        )
    return pd.DataFrame(rows)


def _cleanup_table(effects: pd.Series) -> pd.DataFrame:
    rows = []
    for step, key in (
        ("close the model", "close_freed"),
        ("gc.collect()", "gc_freed"),
        ("malloc_trim(0)", "malloc_trim_freed"),
    ):
        rows.append(
            {
                "step": step,
                "RSS returned (MB)": fmt(effects[f"{key}_rss_mb"]),
                "USS returned (MB)": fmt(effects[f"{key}_uss_mb"]),
                "heap in use returned (MB)": fmt(effects[f"{key}_heap_used_mb"]),
            }
        )
    rows.append(
        {
            "step": "left above baseline after cleanup",
            "RSS returned (MB)": fmt(effects["left_over_rss_mb"]),
            "USS returned (MB)": fmt(effects["left_over_uss_mb"]),
            "heap in use returned (MB)": fmt(effects["left_over_heap_used_mb"]),
        }
    )
    return pd.DataFrame(rows)


def _plot_timeline(df: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str:
    samples = df[df["record"] == "sample"]
    marks = df[df["record"] == "marker"]
    vram = _has_vram(df)
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
    uss = samples.dropna(subset=["uss_mb"])
    ax.plot(uss["t_s"], uss["uss_mb"], ".", ms=2.5, label=METRIC_LABELS["uss_mb"])
    for _, m in marks.dropna(subset=["checkpoint"]).iterrows():
        for a in axes:
            a.axvline(m["t_s"], color="black", lw=0.6, alpha=0.6)
        ax.annotate(
            m["checkpoint"],
            (m["t_s"], m["rss_mb"]),
            fontsize=7,
            rotation=90,
            xytext=(2, 4),
            textcoords="offset points",
            va="bottom",
        )
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    handles, _labels = ax.get_legend_handles_labels()
    ax.legend(handles=handles + scenario_keys, loc="upper left", fontsize=7, ncol=4)
    ax.grid(alpha=0.3)
    if vram:
        axes[1].plot(samples["t_s"], samples["vram_device_used_mb"], label="device used")
        axes[1].plot(samples["t_s"], samples["vram_process_mb"], "--", label="this process")
        axes[1].set_ylabel("VRAM MB")
        axes[1].legend(loc="upper left", fontsize=8)
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("time since the sampler started (s)")
    return save_figure(fig, plots_dir, "memory_timeline", md_dir, "memory timeline")


def _plot_per_message(
    df: pd.DataFrame, leak: pd.DataFrame, warmup: int, plots_dir: Path, md_dir: Path
) -> str:
    msgs = memory.message_rows(df)
    metrics = list(leak["metric"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.6))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        r = leak[leak["metric"] == metric].iloc[0]
        x = msgs["message"].astype(float).to_numpy()
        y = msgs[metric].astype(float).to_numpy()
        ax.axvspan(0.5, warmup + 0.5, color="#eeeeee", lw=0, label="warm-up (not fitted)")
        ax.plot(x, y, ".", ms=4, color="tab:blue")
        fitted = x > warmup
        if fitted.sum() >= 3 and np.isfinite(r["slope_mb_per_msg"]):
            # The band pivots on the centroid: lines through (x̄, ȳ) with the CI's two slopes.
            xf = x[fitted]
            xbar = xf.mean()
            ybar = r["intercept"] + r["slope_mb_per_msg"] * xbar
            ax.plot(
                xf,
                ybar + r["slope_mb_per_msg"] * (xf - xbar),
                color="tab:red",
                label=f"slope {r['slope_kb_per_msg']:.1f} KB/msg",
            )
            ax.fill_between(
                xf,
                ybar + r["ci_low"] * (xf - xbar),
                ybar + r["ci_high"] * (xf - xbar),
                color="tab:red",
                alpha=0.2,
                lw=0,
                label="95% CI of the slope",
            )
        ax.set_title(f"{METRIC_LABELS[metric]}: {r['verdict']}", fontsize=9)
        ax.set_xlabel("message")
        ax.set_ylabel("MB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Memory after each message, least-squares slope after the warm-up")
    fig.tight_layout()
    return save_figure(fig, plots_dir, "memory_per_message", md_dir, "memory per message")


def _heap_drops(df: pd.DataFrame, min_mb: float = 10.0) -> pd.Series:
    """Messages after which heap in use fell by more than min_mb (MB fallen, by message)."""
    msgs = memory.message_rows(df)
    if "heap_used_mb" not in msgs or msgs["heap_used_mb"].isna().all():
        return pd.Series(dtype=float)
    fall = -msgs["heap_used_mb"].diff()
    hits = fall > min_mb
    return pd.Series(fall[hits].to_numpy(), index=msgs.loc[hits, "message"].to_numpy())


def _reading(
    df: pd.DataFrame,
    cp: pd.DataFrame,
    leak: pd.DataFrame,
    verdict: str,
    effects: pd.Series,
    run: pd.Series,
) -> list[str]:
    by = cp.set_index("checkpoint")
    lines = []
    rss = leak[leak["metric"] == "rss_mb"].iloc[0]
    injected = int(run.get("leak_kb_per_message", 0) or 0)
    threshold = float(rss["threshold_mb_per_msg"])
    lines.append(
        f"- Overall verdict: **{verdict}**. A leak is called when the 95% CI of the slope of "
        f"heap in use, or of both RSS and anonymous RSS, lies above "
        f"{threshold * 1024:.1f} KB/message."
    )
    for _, r in leak.iterrows():
        lines.append(
            f"  - {METRIC_LABELS[r['metric']]}: {r['slope_kb_per_msg']:.1f} KB/message "
            f"(95% CI {r['ci_low'] * 1024:.1f} to {r['ci_high'] * 1024:.1f}) → {r['verdict']}"
        )
    if injected:
        lines.append(
            f"- This run injected a known leak of {injected} KB/message "
            f"({injected / 1024:.4f} MB); the detector's self-check expects 'leak'."
        )
    if bool(run.get("gc_every_message", False)):
        lines.append(
            "- gc.collect() ran after every message before the reading, so the leak test sees "
            "live memory, not garbage waiting for CPython's cyclic collector."
        )
        freed = memory.message_rows(df).get("gc_freed_heap_mb")
        if freed is not None and freed.notna().any():
            lines.append(
                f"  Each collection freed a median {freed.median():.1f} MB of heap "
                f"(max {freed.max():.1f} MB): cyclic garbage per reply. Without the "
                "collection it piles up until CPython's next full collection "
                "(gc_every_message=False shows that sawtooth)."
            )
    if "baseline" in by.index and "after_load" in by.index:
        lines.append(
            f"- Loading the model took RSS from {by.loc['baseline', 'rss_mb']:.1f} to "
            f"{by.loc['after_load', 'rss_mb']:.1f} MB, of which "
            f"{effects['after_load_model_mapped_mb']:.1f} MB "
            f"({effects['after_load_model_mapped_share'] * 100:.0f}% of RSS) are pages of the "
            f"mmap'd model file: clean, file-backed, reclaimable by the kernel, not a leak."
        )
    drops = _heap_drops(df)
    if len(drops):
        at = ", ".join(f"{int(m)} (−{d:.0f} MB)" for m, d in drops.items())
        lines.append(
            f"- Heap in use fell sharply after message {at}: CPython's full collections of "
            f"reference cycles. Between them it climbs steadily, so this growth is garbage "
            f"waiting for the cyclic GC, bounded by how often a full collection runs; RSS keeps "
            f"the high-water mark because glibc retains the freed heap."
        )
    if np.isfinite(effects["gc_freed_rss_mb"]) and effects["gc_freed_rss_mb"] > 1:
        lines.append(
            f"- gc.collect() after closing returned {effects['gc_freed_rss_mb']:.1f} MB: objects "
            f"in reference cycles that CPython had not yet collected."
        )
    if np.isfinite(effects["heap_free_before_trim_mb"]):
        lines.append(
            f"- Before malloc_trim, glibc held {effects['heap_free_before_trim_mb']:.1f} MB of "
            f"free chunks; a leak that refills such chunks does not raise RSS until they run "
            f"out, which is why heap in use votes."
        )
    lines.append(
        f"- malloc_trim(0) returned {fmt(effects['malloc_trim_freed_rss_mb'])} MB of heap that "
        f"was already freed but kept by glibc (allocator retention, not a leak); after cleanup "
        f"RSS is {fmt(effects['left_over_rss_mb'])} MB above the baseline."
    )
    return lines


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    df = _one_run(df)
    run = df.iloc[0]
    params = info.get("params", {}) or {}
    cp = memory.checkpoints(df)
    leak = memory.summarize(df)
    fits = {m: memory.leak_fit(df, m) for m in leak["metric"]}
    leak["intercept"] = [fits[m].intercept for m in leak["metric"]]
    verdict = memory.overall_verdict(leak)
    effects = memory.cleanup_effects(df).iloc[0]
    warmup = int(leak["warmup_messages"].iloc[0])
    msgs = memory.message_rows(df)
    gpu_status = str(run.get("gpu_status", ""))
    threads = run.get("n_threads_used", params.get("n_threads"))
    parts = [
        "## Phase 1 — Memory",
        "",
        f"Model `{Path(str(run.get('model_path', '?'))).name}` "
        f"({fmt(float(run.get('model_file_mb', np.nan)))} MB file), n_ctx {run.get('n_ctx')}, "
        f"{threads} threads, n_gpu_layers {run.get('n_gpu_layers')}. {len(msgs)} messages "
        f"(history trimmed to the last {run.get('history_messages')}, replies up to "
        f"{run.get('max_tokens')} tokens), warm-up {warmup} messages, "
        f"gc.collect() after each message: {bool(run.get('gc_every_message', False))}, "
        f"injected leak {int(run.get('leak_kb_per_message', 0) or 0)} KB/message. "
        f"RSS sampled every {fmt(float(run.get('sample_interval_ms', np.nan)), 0)} ms, "
        f"{_uss_schedule(float(run.get('uss_interval_ms', 0) or 0))}. "
        f"GPU: {gpu_status or 'unknown'}. MB = 2^20 bytes.",
        "",
        "### Checkpoints",
        "",
        table(_checkpoint_table(cp, _has_vram(df))),
        "",
        _plot_timeline(df, plots_dir, md_dir),
        "",
        "### Leak test",
        "",
        table(_leak_table(leak)),
        "",
        _plot_per_message(df, leak, warmup, plots_dir, md_dir),
        "",
        "### Cleanup: what each step returned",
        "",
        table(_cleanup_table(effects)),
        "",
        "### Reading",
        "",
        *_reading(df, cp, leak, verdict, effects, run),
        "",
    ]
    return "\n".join(parts)
