"""Phase 1, memory: the run's verdict (leak, bounded, flat, inconclusive) and its run-level row.

`gc_summary` states what the recorded collections show, `verdict_table` decides from each
series' growth class and those facts, `trial_table` gives the metrics a comparison of runs
reads. Reads frames only, as `analyse` does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mateperf.phases.memory.analyse import (
    ABOVE,
    BELOW,
    LIVE,
    RAW_GROWTH_METRICS,
    SPANS,
    TOO_FEW,
    checkpoints,
    cleanup_effects,
    collections,
    each_run,
    leak_fit,
    message_rows,
    stored_param,
    summarize,
)
from mateperf.phases.memory.params import MemoryParams

# run verdicts
LEAK = "leak"
BOUNDED = "bounded"
FLAT = "flat"
INCONCLUSIVE = "inconclusive"
# heap_status as mateperf.trackers.heap states it (HEAP_READ, HEAP_UNAVAILABLE), for runs
# stored before the column was: repeated, not imported, so that reading a frame needs no
# instrument; tests/test_memory_phase.py holds the two equal.
HEAP_READ = "heap in use from glibc mallinfo2"
HEAP_UNAVAILABLE = "heap in use unavailable on this OS (no glibc mallinfo2)"


def gc_summary(df: pd.DataFrame) -> dict:
    """What the recorded collections of one run show (NaN/0 where none were recorded).

    automatic: collections CPython ran on its own during the chat (any generation);
    freed_mb / freed_at: the heap each returned and the message during which it ran;
    period_messages: the median number of replies between consecutive ones (counting from the
    forced collection before the first message); returned_mb_per_msg: their total over the
    number of messages; pending_end_mb: what the forced full collection after the last message
    returned (garbage the chat left); per_message_mb: the median heap returned by the forced
    collection after each reply (gc_every_message).
    """
    out = {
        "gc_events": False,
        "automatic": 0,
        "generations": [],
        "freed_mb": [],
        "freed_at": [],
        "period_messages": np.nan,
        "returned_mb_per_msg": np.nan,
        "pending_end_mb": np.nan,
        "per_message_mb": np.nan,
    }
    gcs = collections(df)
    if gcs.empty:
        return out
    out["gc_events"] = True
    marks = df[df["record"] == "marker"]
    t_start = marks.loc[marks["label"] == "chat start", "t_s"]
    t_end = marks.loc[marks["label"] == "chat end", "t_s"]
    t0 = float(t_start.iloc[0]) if len(t_start) else -np.inf
    t1 = float(t_end.iloc[0]) if len(t_end) else np.inf
    chat = gcs[(gcs["t_s"] > t0) & (gcs["t_s"] < t1)]
    forced = chat["gc_forced"].fillna(False).astype(bool)
    auto = chat[~forced]
    n_msgs = len(message_rows(df))
    out["automatic"] = len(auto)
    out["generations"] = [int(g) for g in auto["gc_generation"]]
    out["freed_mb"] = [float(v) for v in auto["gc_freed_heap_mb"]]
    out["freed_at"] = [int(v) + 1 for v in auto["gc_replies_done"]]  # during message k
    if n_msgs:
        out["returned_mb_per_msg"] = float(auto["gc_freed_heap_mb"].sum()) / n_msgs
    if len(auto):
        starts = [0.0] if len(t_start) else []
        gaps = np.diff(np.asarray(starts + [float(v) for v in auto["gc_replies_done"]]))
        out["period_messages"] = float(np.median(gaps)) if gaps.size else np.nan
    per_message = chat[forced]["gc_freed_heap_mb"]
    if bool(stored_param(df, "gc_every_message")) and per_message.notna().any():
        out["per_message_mb"] = float(per_message.median())
    after = gcs[(gcs["t_s"] >= t1) & gcs["gc_forced"].fillna(False).astype(bool)]
    if len(after) and np.isfinite(t1):
        out["pending_end_mb"] = float(after["gc_freed_heap_mb"].iloc[0])
    return out


def _decide(
    growths: dict[str, str], facts: dict, gc_every_message: bool, threshold: float
) -> tuple[str, str]:
    """(verdict, the series it rests on) from each series' growth class and the gc facts."""
    live = growths.get(LIVE, TOO_FEW)
    rss_leak = growths.get("rss_mb") == ABOVE and growths.get("rss_anon_mb") == ABOVE
    if live != TOO_FEW:
        if live == ABOVE:
            return LEAK, LIVE
        if gc_every_message and rss_leak:
            return LEAK, "rss_mb"
        if live == SPANS:
            return INCONCLUSIVE, LIVE
        returned = facts.get("returned_mb_per_msg", np.nan)
        raw_grew = any(growths.get(m) == ABOVE for m in RAW_GROWTH_METRICS)
        if raw_grew or (np.isfinite(returned) and returned >= threshold):
            return BOUNDED, LIVE
        return FLAT, LIVE
    # No live heap: no mallinfo2 on this OS, or a run stored before gc events were recorded.
    rss = [growths.get(m, TOO_FEW) for m in ("rss_mb", "rss_anon_mb")]
    if TOO_FEW in rss:
        return TOO_FEW, "rss_mb"
    if all(g == BELOW for g in rss):
        return FLAT, "rss_mb"
    if gc_every_message and rss_leak:
        return LEAK, "rss_mb"
    # RSS keeps the high-water mark of garbage awaiting collection: it cannot say which it is.
    return INCONCLUSIVE, "rss_mb"


def verdict_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the verdict, the slope it rests on (KiB/message, robust 95% CI), and
    the measured facts the report states: collections, heap they returned, period and peaks."""
    rows = []
    leak = summarize(df)
    for run_id, run in each_run(df):
        table = leak[leak["run_id"] == run_id].set_index("metric")
        threshold = float(stored_param(run, "leak_threshold_mb_per_msg"))
        gc_every = bool(stored_param(run, "gc_every_message"))
        facts = gc_summary(run)
        verdict, basis = _decide(table["growth"].to_dict(), facts, gc_every, threshold)
        r = table.loc[basis]
        msgs = message_rows(run)
        chat = run[run["scenario"] == "chat_session"] if "scenario" in run.columns else run
        heap = msgs["heap_used_mb"].astype(float)
        rss = msgs["rss_mb"].astype(float)
        status = run["heap_status"].dropna() if "heap_status" in run.columns else pd.Series()
        if status.empty:  # stored before the status was: the data say whether heap was read
            status = pd.Series([HEAP_READ if heap.notna().any() else HEAP_UNAVAILABLE])
        rows.append(
            {
                "run_id": run_id,
                "verdict": verdict,
                "decided_by": basis,
                "n": int(r["n"]),
                "slope_kb_per_msg": float(r["slope_kb_per_msg"]),
                "ci_low_kb_per_msg": float(r["ci_low_kb_per_msg"]),
                "ci_high_kb_per_msg": float(r["ci_high_kb_per_msg"]),
                "threshold_kb_per_msg": threshold * 1024,
                "gc_every_message": gc_every,
                "gc_events": facts["gc_events"],
                "heap_status": str(status.iloc[0]),
                "collections": facts["automatic"],
                "freed_per_collection_mb": (
                    float(np.median(facts["freed_mb"])) if facts["freed_mb"] else np.nan
                ),
                "period_messages": facts["period_messages"],
                "returned_mb_per_msg": facts["returned_mb_per_msg"],
                "pending_end_mb": facts["pending_end_mb"],
                "per_message_gc_mb": facts["per_message_mb"],
                "heap_peak_mb": float(heap.max()) if heap.notna().any() else np.nan,
                "heap_peak_message": (
                    int(msgs.loc[heap.idxmax(), "message"]) if heap.notna().any() else -1
                ),
                "rss_peak_mb": float(chat["rss_mb"].max()),
                "rss_peak_message": (
                    int(msgs.loc[rss.idxmax(), "message"]) if rss.notna().any() else -1
                ),
            }
        )
    return pd.DataFrame(rows)


def overall_verdict(df: pd.DataFrame) -> str:
    """The verdict of the (first) run in `df`."""
    return str(verdict_table(df)["verdict"].iloc[0])


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per replicate (a sweep's round, else the run) with the run-level metrics that
    mateperf.metrics.MEMORY_METRICS declares, plus `trial` (0), `round` where the frame has one,
    and the verdict (not a metric).

    Pass the whole frame, warm-up rows included: the leak slope leaves the warm-up out of its
    fit, but the garbage of warm-up replies is part of what later collections returned. Without
    them the live heap cannot be placed and the slope is NaN.

    A memory session is one replicate: its samples and per-message readings are not independent
    repetitions, so a comparison of memory runs compares these rows across replicates.
    """
    keys = [c for c in ("run_id", "round") if c in df.columns]
    groups = df.groupby(keys, sort=True, dropna=False) if keys else [((), df)]
    rows = []
    for key, rep in groups:
        key = key if isinstance(key, tuple) else (key,)
        rep = rep.drop(columns="run_id") if "run_id" in rep.columns else rep
        cp = checkpoints(rep).set_index("checkpoint")
        effects = cleanup_effects(rep).iloc[0]
        verdict = verdict_table(rep).iloc[0]
        live = leak_fit(rep, LIVE)
        chat = rep[rep["scenario"] == "chat_session"]

        def at(name: str, cp=cp) -> float:
            return float(cp.loc[name, "rss_mb"]) if name in cp.index else np.nan

        row = dict(zip(keys, key, strict=True))
        row.update(
            {
                "trial": 0,
                "leak_slope_kb_per_msg": live.slope * 1024,
                "rss_after_load_mb": at("after_load"),
                "rss_after_chat_mb": at("after_chat"),
                "rss_peak_mb": float(chat["rss_mb"].max()) if len(chat) else np.nan,
                "left_over_rss_mb": float(effects["left_over_rss_mb"]),
                "verdict": verdict["verdict"],
            }
        )
        for name in MemoryParams.defaults():  # the replicate's parameters, for matching across runs
            if name in rep.columns and rep[name].nunique(dropna=False) == 1:
                row[name] = rep[name].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def chat_collections(df: pd.DataFrame) -> pd.DataFrame:
    """The collections CPython ran on its own during the chat, and the two forced ones that
    open and close it (the per-reply ones of gc_every_message are summarised by gc_summary),
    in time order, each with `when` it ran (empty where collections were not recorded)."""
    gcs = collections(df)
    msgs = message_rows(df)
    marks = df[df["record"] == "marker"]
    loaded = marks.loc[marks["label"] == "model loaded", "t_s"]
    closed = marks.loc[marks["label"] == "chat garbage collected", "t_s"]
    if gcs.empty or msgs.empty or loaded.empty or closed.empty:
        return gcs.iloc[0:0].assign(when=pd.Series(dtype=str))
    forced = gcs["gc_forced"].fillna(False).astype(bool)
    chat = (gcs["t_s"] > float(loaded.iloc[0])) & (gcs["t_s"] < float(closed.iloc[0]))
    first, last = float(msgs["reply_start_s"].min()), float(msgs["t_s"].max())
    around = forced & ((gcs["t_s"] < first) | (gcs["t_s"] > last))
    out = gcs[chat & (~forced | around)].copy()
    out["when"] = [
        ("before message 1" if g["t_s"] < first else "after the last message")
        if g["gc_forced"]
        else f"during message {int(g['gc_replies_done']) + 1}"
        for _, g in out.iterrows()
    ]
    return out.reset_index(drop=True)


def automatic_collections(df: pd.DataFrame) -> pd.DataFrame:
    """The collections CPython ran on its own (not forced), with `at_message`: k − 0.5 for one
    that ran during message k."""
    gcs = collections(df)
    if gcs.empty:
        return gcs.assign(at_message=pd.Series(dtype=float))
    auto = gcs[~gcs["gc_forced"].fillna(False).astype(bool)].copy()
    auto["at_message"] = auto["gc_replies_done"].astype(float) + 0.5
    return auto


def heap_returns(df: pd.DataFrame, above_mb: float = 1.0) -> list[tuple[str, float]]:
    """(message, heap returned in MiB) of each automatic collection that returned more than
    `above_mb` during the chat."""
    summary = gc_summary(df)
    return [
        (m, float(f))
        for m, f in zip(summary["freed_at"], summary["freed_mb"], strict=True)
        if np.isfinite(float(f)) and float(f) > above_mb
    ]


def has_vram(df: pd.DataFrame) -> bool:
    """Whether the run read VRAM (an NVIDIA GPU was there to read)."""
    return "vram_device_used_mb" in df.columns and df["vram_device_used_mb"].notna().any()
