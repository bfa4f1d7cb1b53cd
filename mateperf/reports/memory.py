"""Phase 1 section: checkpoints, the leak verdict, collections, cleanup, timeline and plots.

Formats what mateperf.phases.memory computed; states as causes only what the run measured.
Units: MiB (2^20 bytes) and KiB (2^10 bytes), as the `_mb` / `_kb` columns hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mateperf import metrics
from mateperf.phases.memory import analyse as memory
from mateperf.phases.memory import verdict
from mateperf.reports import memory_plots
from mateperf.reports.declaration import PhaseReport
from mateperf.reports.format import fmt, fmt_ci, table
from mateperf.reports.memory_plots import METRIC_LABELS
from mateperf.reports.overview import CLAIMS, summary_row

ROLES = {
    "heap_live_mb": "decides",
    "heap_used_mb": "flat or bounded",
    "rss_mb": "flat or bounded; leak with anonymous RSS when readings follow a collection",
    "rss_anon_mb": "flat or bounded; leak with RSS when readings follow a collection",
    "uss_mb": "shown only",
}


def _rss_source(run) -> str:
    """Where the anonymous memory was read (on Windows it is private bytes, which the reader
    must know); runs stored before it was recorded read Linux's /proc."""
    status = str(run.get("rss_status", "") or "")
    return f"{status}. " if status else ""


def _uss_schedule(interval_ms: float) -> str:
    if interval_ms > 0:
        return f"USS and heap in use every {interval_ms:.0f} ms and at every marker"
    return "USS and heap in use at every marker (after each message)"


def _checkpoint_table(cp: pd.DataFrame, vram: bool) -> pd.DataFrame:
    cols = ["rss_mb", "uss_mb", "rss_anon_mb", "rss_file_mb", "model_mapped_mb"]
    cols += ["heap_used_mb", "heap_free_mb"]
    if vram:
        cols += ["vram_device_used_mb", "vram_process_mb"]
    out = pd.DataFrame({"checkpoint": cp["checkpoint"], "scenario": cp["scenario"]})
    for c in cols:
        out[f"{METRIC_LABELS[c]} (MiB)"] = [fmt(float(v)) for v in cp[c]]
    return out.reset_index(drop=True)


def _leak_table(leak: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in leak.iterrows():
        rows.append(
            {
                "series": METRIC_LABELS.get(r["metric"], r["metric"]),
                "messages fitted": int(r["n"]),
                "slope KiB/message [95% CI, HAC]": (
                    f"{fmt(r['slope_kb_per_msg'], 1)} "
                    f"[{fmt(r['ci_low_kb_per_msg'], 1)}, {fmt(r['ci_high_kb_per_msg'], 1)}]"
                ),
                "OLS 95% CI (not used)": (
                    f"[{fmt(r['ols_ci_low_kb_per_msg'], 1)}, {fmt(r['ols_ci_high_kb_per_msg'], 1)}]"
                ),
                "HAC bandwidth": fmt(r.get("hac_bandwidth", np.nan), 1),
                "against the threshold": r["growth"],
                "role": ROLES.get(r["metric"], ""),
            }
        )
    return pd.DataFrame(rows)


def _gc_table(df: pd.DataFrame) -> pd.DataFrame:
    """The collections CPython ran on its own during the chat, and the two forced ones that
    open and close it (the per-reply ones of gc_every_message are summarised in the reading)."""
    rows = []
    for _, g in verdict.chat_collections(df).iterrows():
        rows.append(
            {
                "when": g["when"],
                "kind": "forced" if g["gc_forced"] else "automatic",
                "generation": int(g["gc_generation"]),
                "objects collected": int(g["gc_collected"]),
                "heap returned (MiB)": fmt(float(g["gc_freed_heap_mb"]), 1),
                "pause (ms)": fmt(float(g["gc_pause_ms"]), 1),
            }
        )
    return pd.DataFrame(rows)


def _cleanup_table(effects: pd.Series) -> pd.DataFrame:
    rows = []
    steps = [
        ("full gc.collect() after the chat", "chat_gc_freed"),
        ("close the model", "close_freed"),
        ("gc.collect()", "gc_freed"),
        ("malloc_trim(0)", "malloc_trim_freed"),
    ]
    if not np.isfinite(effects.get("chat_gc_freed_rss_mb", np.nan)):
        steps = steps[1:]  # stored before that step existed
    for step, key in steps:
        rows.append(
            {
                "step": step,
                "RSS returned (MiB)": fmt(effects[f"{key}_rss_mb"]),
                "USS returned (MiB)": fmt(effects[f"{key}_uss_mb"]),
                "heap in use returned (MiB)": fmt(effects[f"{key}_heap_used_mb"]),
            }
        )
    rows.append(
        {
            "step": "left above baseline after cleanup",
            "RSS returned (MiB)": fmt(effects["left_over_rss_mb"]),
            "USS returned (MiB)": fmt(effects["left_over_uss_mb"]),
            "heap in use returned (MiB)": fmt(effects["left_over_heap_used_mb"]),
        }
    )
    return pd.DataFrame(rows)


def _verdict_lines(v: pd.Series, run: pd.Series) -> list[str]:
    threshold = float(v["threshold_kb_per_msg"])
    basis = METRIC_LABELS.get(v["decided_by"], v["decided_by"])
    slope = (
        f"{basis} {fmt(v['slope_kb_per_msg'], 1)} KiB/message (95% CI "
        f"{fmt(v['ci_low_kb_per_msg'], 1)} to {fmt(v['ci_high_kb_per_msg'], 1)}, robust to "
        f"autocorrelation, messages {int(run.get('warmup_messages', 0)) + 1}–end)"
    )
    head = f"- Verdict: **{v['verdict']}**. "
    if v["verdict"] == verdict.LEAK:
        why = (
            f"The {slope} lies above the {threshold:.1f} KiB/message threshold: growth that "
            "no collection returned."
        )
    elif v["verdict"] == verdict.BOUNDED:
        why = (
            f"The {slope} lies below the {threshold:.1f} KiB/message threshold, but memory "
            "rose and fell: growth that collections returned or that stopped (below)."
        )
    elif v["verdict"] == verdict.FLAT:
        why = (
            f"The {slope} lies below the {threshold:.1f} KiB/message threshold, and no "
            "series grew above it."
        )
    elif v["verdict"] == verdict.INCONCLUSIVE and v["decided_by"] != memory.LIVE:
        why = (
            f"The live heap cannot be measured in this run, and RSS alone cannot tell garbage "
            f"awaiting collection from a leak: the {slope} grows, but either may be the cause."
        )
    elif v["verdict"] == verdict.INCONCLUSIVE:
        why = f"The {slope} does not lie wholly on either side of {threshold:.1f} KiB/message."
    else:
        why = f"Too few messages after the warm-up to fit a slope ({int(v['n'])})."
    return [head + why]


def _reading(
    df: pd.DataFrame,
    cp: pd.DataFrame,
    v: pd.Series,
    effects: pd.Series,
    run: pd.Series,
) -> list[str]:
    by = cp.set_index("checkpoint")
    lines = []
    injected = int(run.get("leak_kb_per_message", 0) or 0)
    if injected:
        lines.append(
            f"- This run injected a known leak of {injected} KiB/message; the detector's "
            "self-check expects 'leak'."
        )
    if not v["gc_events"]:
        lines.append(
            "- This run was stored before garbage collections were recorded, so the live heap "
            "is known only where every reading followed a forced collection."
        )
    if "unavailable" in str(v["heap_status"]):
        lines.append(
            f"- {v['heap_status']}: the heap each collection returned cannot be measured, and "
            "RSS alone cannot tell garbage awaiting collection from a leak."
        )
    returning = verdict.heap_returns(df, above_mb=1.0)
    if v["gc_events"] and int(v["collections"]) > 0:
        listed = ", ".join(f"{m} ({f:.1f} MiB)" for m, f in returning)
        lines.append(
            f"- CPython ran {int(v['collections'])} collection(s) on its own during the chat"
            + (
                f"; they returned heap during message {listed}, "
                f"about every {fmt(v['period_messages'], 0)} messages"
                if returning
                else ", none of which returned more than 1 MiB of heap"
            )
            + f". Heap in use peaked at {fmt(v['heap_peak_mb'])} MiB (message "
            f"{int(v['heap_peak_message'])}); RSS peaked at {fmt(v['rss_peak_mb'])} MiB "
            f"(reading after message {int(v['rss_peak_message'])})."
        )
    elif v["gc_events"] and not bool(run.get("gc_every_message", False)):
        lines.append("- CPython ran no collection of its own during the chat.")
    pending_end = float(v.get("pending_end_mb", np.nan))
    if np.isfinite(pending_end) and pending_end >= 0.05:
        lines.append(
            f"- The full collection forced after the last message returned "
            f"{pending_end:.1f} MiB of heap: garbage the chat had left for the collector."
        )
    elif np.isfinite(pending_end):
        lines.append("- The full collection forced after the last message returned no heap.")
    if np.isfinite(v.get("per_message_gc_mb", np.nan)):
        lines.append(
            f"- gc.collect() ran after every reply (gc_every_message) and returned a median "
            f"{v['per_message_gc_mb']:.2f} MiB of heap each time."
        )
    if "baseline" in by.index and "after_load" in by.index:
        lines.append(
            f"- Loading the model took RSS from {by.loc['baseline', 'rss_mb']:.1f} to "
            f"{by.loc['after_load', 'rss_mb']:.1f} MiB, of which "
            f"{effects['after_load_model_mapped_mb']:.1f} MiB "
            f"({effects['after_load_model_mapped_share'] * 100:.0f}% of RSS) are pages of the "
            f"mmap'd model file: clean, file-backed, reclaimable by the kernel, not a leak."
        )
    if np.isfinite(effects["gc_freed_rss_mb"]) and effects["gc_freed_rss_mb"] > 1:
        lines.append(
            f"- gc.collect() after closing returned {effects['gc_freed_rss_mb']:.1f} MiB of RSS."
        )
    if np.isfinite(effects["heap_free_before_trim_mb"]):
        lines.append(
            f"- Before malloc_trim, glibc held {effects['heap_free_before_trim_mb']:.1f} MiB of "
            f"free chunks; a leak that refills such chunks does not raise RSS until they run "
            f"out, which is why the verdict reads heap in use."
        )
    lines.append(
        f"- malloc_trim(0) returned {fmt(effects['malloc_trim_freed_rss_mb'])} MiB of RSS "
        f"(heap already freed but kept by glibc: allocator retention, not a leak); after "
        f"cleanup RSS is {fmt(effects['left_over_rss_mb'])} MiB above the baseline."
    )
    return lines


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    df = metrics.one_run(df)
    run = df.iloc[0]
    params = info.get("params", {}) or {}
    cp = memory.checkpoints(df)
    leak = memory.summarize(df)
    v = verdict.verdict_table(df).iloc[0]
    effects = memory.cleanup_effects(df).iloc[0]
    warmup = int(leak["warmup_messages"].iloc[0])
    msgs = memory.message_rows(df)
    gpu_status = str(run.get("gpu_status", ""))
    threads = run.get("n_threads_used", params.get("n_threads"))
    gc_table = _gc_table(df)
    parts = [
        "## Phase 1 — Memory",
        "",
        f"Model `{Path(str(run.get('model_path', '?'))).name}` "
        f"({fmt(float(run.get('model_file_mb', np.nan)))} MiB file), n_ctx {run.get('n_ctx')}, "
        f"{threads} threads, n_gpu_layers {run.get('n_gpu_layers')}. {len(msgs)} messages "
        f"(history trimmed to the last {run.get('history_messages')}, replies up to "
        f"{run.get('max_tokens')} tokens), warm-up {warmup} messages, "
        f"gc.collect() after each message: {bool(run.get('gc_every_message', False))}, "
        f"injected leak {int(run.get('leak_kb_per_message', 0) or 0)} KiB/message. "
        f"RSS sampled every {fmt(float(run.get('sample_interval_ms', np.nan)), 0)} ms, "
        f"{_uss_schedule(float(run.get('uss_interval_ms', 0) or 0))}. "
        f"GPU: {gpu_status or 'unknown'}. {v['heap_status']}. "
        f"{_rss_source(run)}"
        "MiB = 2^20 bytes, KiB = 2^10 bytes.",
        "",
        "### Checkpoints",
        "",
        table(_checkpoint_table(cp, verdict.has_vram(df))),
        "",
        memory_plots.timeline(df, plots_dir, md_dir),
        "",
        "### Leak test",
        "",
        *_verdict_lines(v, run),
        "",
        table(_leak_table(leak)),
        "",
        memory_plots.per_message(df, leak, warmup, plots_dir, md_dir),
        "",
        "### Garbage collections",
        "",
        table(gc_table) if len(gc_table) else "_(not recorded in this run)_",
        "",
        "### Cleanup: what each step returned",
        "",
        table(_cleanup_table(effects)),
        "",
        "### Reading",
        "",
        *_reading(df, cp, v, effects, run),
        "",
    ]
    return "\n".join(parts)


def summary_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    """FINAL_RESULTS.md's summary row: the leak check of a default chat."""
    v = verdict.verdict_table(df).iloc[0]
    slope = fmt_ci(v["slope_kb_per_msg"], v["ci_low_kb_per_msg"], v["ci_high_kb_per_msg"])
    return [
        summary_row(
            "memory",
            "— (leak check of a default chat)",
            "live-heap growth (KiB/message)",
            "–",
            slope,
            "–",
            f"{v['verdict']} (threshold {fmt(v['threshold_kb_per_msg'])} KiB/message)",
            CLAIMS["memory"],
        )
    ]


def variant_row(df: pd.DataFrame, info: dict) -> dict:
    """This run's columns in the table of the phase's variants."""
    v = verdict.verdict_table(df).iloc[0]
    return {
        "verdict": v["verdict"],
        "live-heap growth KiB/msg [95% CI]": fmt_ci(
            v["slope_kb_per_msg"], v["ci_low_kb_per_msg"], v["ci_high_kb_per_msg"]
        ),
        "peak RSS MiB": fmt(v["rss_peak_mb"]),
        "collections": v["collections"],
    }


REPORT = PhaseReport(
    section=section,
    summary_rows=summary_rows,
    variant_row=variant_row,
    sweep_extra=None,
)
