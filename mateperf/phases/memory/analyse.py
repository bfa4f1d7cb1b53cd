"""Phase 1, memory: reading a stored frame. The live heap, the leak fits, the checkpoints.

The live heap is heap in use after each reply less the reply garbage that a later collection
returned (`freed_by` places each reply's garbage with a collection, `pending_garbage` shares
each collection's returned heap among those replies); `leak_fit` fits its slope per message,
and `summarize` every series' slope with its robust CI. The verdict is in `verdict`.
Reads frames only: nothing here measures (no sampler, no model).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mateperf import stats
from mateperf.phases.memory.params import MemoryParams

SCENARIOS = ("baseline", "load_model", "chat_session", "memory_cleanup")
CHECKPOINTS = (
    "baseline",
    "after_load",
    "after_chat",
    "after_chat_gc",
    "after_close",
    "after_gc",
    "after_trim",
)
# The series fitted per message. heap_live_mb (computed, not stored) decides; the raw series
# tell flat from bounded. RSS cannot tell garbage from a leak while collections are pending
# (glibc keeps freed heap resident), so RSS and anonymous RSS vote "leak" only when every
# reading follows a collection (gc_every_message) or heap in use cannot be read. USS is fitted
# and shown but never votes: the mmap'd model's pages count as private only while no other
# process maps the same file (on the shared test host USS moved by -322 MiB mid-run).
LEAK_METRICS = ("heap_live_mb", "heap_used_mb", "rss_mb", "rss_anon_mb", "uss_mb")
RAW_GROWTH_METRICS = ("heap_used_mb", "rss_mb", "rss_anon_mb")
LIVE = "heap_live_mb"

# where one series' slope CI lies against the threshold; TOO_FEW: no CI (too few messages)
ABOVE = "above threshold"
BELOW = "below threshold"
SPANS = "CI spans threshold"
TOO_FEW = "too few messages"


def each_run(df: pd.DataFrame):
    """(run_id, its rows) for every run in `df`; ("", df) for a frame without run_id."""
    if "run_id" in df.columns:
        yield from df.groupby("run_id", sort=False)
    else:
        yield "", df


def stored_param(df: pd.DataFrame, name: str):
    """The run's value of parameter `name`: its column, else the default (older runs)."""
    if name in df.columns and df[name].notna().any():
        return df[name].dropna().iloc[0]
    return MemoryParams.defaults()[name]


def message_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["record"] == "message"].sort_values("message").reset_index(drop=True)


def collections(df: pd.DataFrame) -> pd.DataFrame:
    """The garbage collections of one run (every generation), in time order; empty for runs
    stored before gc events were recorded."""
    if "gc_generation" not in df.columns:
        return df.iloc[0:0]
    rows = df[df["record"] == "gc"]
    return rows.sort_values("t_s", kind="stable").reset_index(drop=True)


def reply_heap_added(df: pd.DataFrame) -> np.ndarray:
    """Heap each reply added (MiB): the rise from the previous reading plus whatever the
    collections in between returned; NaN where there is no previous reading."""
    msgs = message_rows(df)
    marks = df[df["record"] == "marker"]
    start = marks.loc[marks["label"] == "chat start", "heap_used_mb"]
    heap = msgs["heap_used_mb"].to_numpy(float)
    before = np.concatenate([[float(start.iloc[0]) if len(start) else np.nan], heap[:-1]])
    t_read = msgs["t_s"].to_numpy(float)
    t_prev = np.concatenate([[-np.inf], t_read[:-1]])
    gcs = collections(df)
    t_gc = gcs["t_s"].to_numpy(float)
    freed = np.nan_to_num(gcs["gc_freed_heap_mb"].to_numpy(float)) if len(gcs) else t_gc
    returned = [freed[(t_gc > a) & (t_gc < b)].sum() for a, b in zip(t_prev, t_read, strict=True)]
    return heap - before + np.asarray(returned, float)


def garbage_unit_mb(df: pd.DataFrame) -> float:
    """The heap one reply leaves for the collector (MiB), from the recorded collections.

    Every reply leaves the same garbage here (one sampler chain, n_vocab × 12 bytes), so each
    collection returns a whole number of units: the unit is the size, within 20% of the median
    heap a reply added, that makes the collections' returned heap closest to whole multiples of
    it. The median alone would do if nothing else grew; a leak adds to it.
    """
    added = reply_heap_added(df)
    rough = float(np.nanmedian(added)) if np.isfinite(added).any() else np.nan
    freed = collections(df)["gc_freed_heap_mb"].to_numpy(float) if "gc_generation" in df else []
    freed = np.asarray(freed, float)
    freed = freed[np.isfinite(freed) & (freed > 0.5 * rough)] if np.isfinite(rough) else []
    if not np.isfinite(rough) or rough <= 0 or len(freed) == 0:
        return rough
    grid = rough * np.linspace(0.8, 1.25, 1801)
    ratio = freed[None, :] / grid[:, None]
    cost = ((ratio - np.round(ratio)) ** 2).sum(axis=1)
    return float(grid[int(np.argmin(cost))])


def freed_by(df: pd.DataFrame) -> np.ndarray:
    """For each message row, the index (in `collections(df)`) of the collection that freed the
    garbage its reply left; -1 where none did (or the frame lacks what it takes to tell).

    Replies leave garbage of one size (`garbage_unit_mb`), so each collection's returned heap
    says how many replies' garbage it freed. Which ones follows CPython's generational
    collector: a collection of generation g frees the oldest unfreed replies' garbage among
    those of generation ≤ g (older promoted ones if it returned more), and promotes to g + 1
    (at most 2) every reply's garbage it examined and left, including the reply in progress.
    That matters because llama-cpp-python 0.3.36 keeps a reply's sampler chain referenced until
    the next reply replaces it somewhere in its course, and the collector usually runs right
    then: in the default runs a young collection freed all older chains and promoted the last one
    or two, which then waited for an older collection (here the forced full one after the chat).
    """
    msgs = message_rows(df)
    out = np.full(len(msgs), -1)
    gcs = collections(df)
    if gcs.empty or "reply_start_s" not in msgs.columns or msgs.empty:
        return out
    unit = garbage_unit_mb(df)
    if not np.isfinite(unit) or unit <= 0:
        return out
    marks = df[df["record"] == "marker"]
    closed = marks.loc[marks["label"] == "model closed", "t_s"]
    t_closed = float(closed.iloc[0]) if len(closed) else np.inf
    starts = msgs["reply_start_s"].to_numpy(float)
    level = np.zeros(len(msgs))
    for c, g in enumerate(gcs.itertuples(index=False)):
        t, generation, freed = float(g.t_s), float(g.gc_generation), float(g.gc_freed_heap_mb)
        # replies whose garbage exists at t; the newest one is still referenced until the model
        # is closed, unless the collection ran after that
        current = int(np.searchsorted(starts, t)) - 1
        if current < 0:
            continue
        alive = current if t < t_closed else current + 1
        unfreed = np.flatnonzero(out[: current + 1] < 0)
        count = int(round(freed / unit)) if np.isfinite(freed) else 0
        young = [i for i in unfreed if i < alive and level[i] <= generation]
        old = [i for i in unfreed if i < alive and level[i] > generation]
        take = (young + old)[:count]
        out[take] = c
        for i in unfreed:
            if out[i] < 0 and level[i] <= generation:
                level[i] = min(generation + 1, 2.0)
    return out


def pending_garbage(df: pd.DataFrame) -> pd.Series:
    """Heap (MiB) at each message reading that a later collection returned: reply garbage.

    Each collection's returned heap is shared evenly among the replies whose garbage it freed
    (`freed_by`); a reading carries the shares of every reply up to it whose collection had not
    run yet. NaN where heap in use cannot be read or where a reply's garbage was never seen
    freed. Index: message_rows(df).
    """
    msgs = message_rows(df)
    gcs = collections(df)
    by = freed_by(df)
    pending = pd.Series(np.nan, index=msgs.index)
    if gcs.empty or not (by >= 0).any():
        return pending
    if msgs["message"].tolist() != list(range(1, len(msgs) + 1)):
        # Every reply's garbage counts in the shares, warm-up ones too: a frame whose warm-up
        # rows were left out (metrics.without_warmup) cannot be shared out, so say nothing.
        return pending
    freed = np.append(gcs["gc_freed_heap_mb"].to_numpy(float), np.nan)  # [-1]: never freed
    counts = np.append(np.bincount(by[by >= 0], minlength=len(gcs)), 1)
    share = freed[by] / counts[by]
    freed_at = np.append(gcs["t_s"].to_numpy(float), np.inf)[by]
    t_read = msgs["t_s"].to_numpy(float)
    order = np.arange(len(msgs))
    for i, t in enumerate(t_read):
        pending.iloc[i] = float(share[(order <= i) & (freed_at > t)].sum())
    return pending


def live_heap(df: pd.DataFrame) -> pd.Series:
    """Heap in use after each reply less the reply garbage pending collection (index:
    message_rows). Runs stored before gc events were recorded have it only if every reading
    followed a forced collection (gc_every_message): then nothing was pending.
    """
    msgs = message_rows(df)
    heap = msgs["heap_used_mb"].astype(float)
    if collections(df).empty and bool(stored_param(df, "gc_every_message")):
        return heap
    return heap - pending_garbage(df)


def series(df: pd.DataFrame, metric: str) -> pd.Series:
    """The per-message series of `metric` (MiB), the live heap included (index: message_rows)."""
    if metric == LIVE:
        return live_heap(df)
    msgs = message_rows(df)
    if metric not in msgs.columns:
        return pd.Series(np.nan, index=msgs.index)
    return msgs[metric].astype(float)


def leak_fit(
    df: pd.DataFrame, metric: str = LIVE, warmup: int | None = None, robust: bool = True
) -> stats.SlopeFit:
    """Slope of `metric` (MiB) per message after the warm-up; HAC CI (plain OLS if not robust)."""
    msgs = message_rows(df)
    warmup = int(stored_param(df, "warmup_messages")) if warmup is None else warmup
    keep = (msgs["message"] > warmup).to_numpy()
    x = msgs["message"].astype(float).to_numpy()[keep]
    y = series(df, metric).to_numpy(float)[keep]
    return stats.slope_hac(x, y) if robust else stats.slope(x, y)


def growth(fit: stats.SlopeFit, threshold_mb: float) -> str:
    """Where the slope's 95% CI lies against the threshold."""
    if not np.isfinite(fit.ci_low) or not np.isfinite(fit.ci_high):
        return TOO_FEW
    if fit.ci_low > threshold_mb:
        return ABOVE
    if fit.ci_high < threshold_mb:
        return BELOW
    return SPANS


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run and fitted series: slope (MiB and KiB per message) with its robust CI,
    the plain OLS CI beside it, the HAC bandwidth and where the CI lies against the threshold."""
    out = []
    for run_id, run in each_run(df):
        warmup = int(stored_param(run, "warmup_messages"))
        threshold = float(stored_param(run, "leak_threshold_mb_per_msg"))
        injected = int(stored_param(run, "leak_kb_per_message"))
        msgs = message_rows(run)
        for metric in LEAK_METRICS:
            fit = leak_fit(run, metric, warmup)
            ols = leak_fit(run, metric, warmup, robust=False)
            keep = (msgs["message"] > warmup).to_numpy()
            y = series(run, metric).to_numpy(float)[keep]
            x = msgs["message"].astype(float).to_numpy()[keep]
            out.append(
                {
                    "run_id": run_id,
                    "metric": metric,
                    "warmup_messages": warmup,
                    "n": fit.n,
                    "slope_mb_per_msg": fit.slope,
                    "ci_low": fit.ci_low,
                    "ci_high": fit.ci_high,
                    "intercept": fit.intercept,
                    "slope_kb_per_msg": fit.slope * 1024,
                    "ci_low_kb_per_msg": fit.ci_low * 1024,
                    "ci_high_kb_per_msg": fit.ci_high * 1024,
                    "ols_ci_low_kb_per_msg": ols.ci_low * 1024,
                    "ols_ci_high_kb_per_msg": ols.ci_high * 1024,
                    "hac_bandwidth": stats.hac_bandwidth(x, y),
                    "threshold_mb_per_msg": threshold,
                    "leak_kb_per_message": injected,
                    "growth": growth(fit, threshold),
                }
            )
    return pd.DataFrame(out)


def checkpoints(df: pd.DataFrame) -> pd.DataFrame:
    """RSS/USS/anonymous/file-backed/model-mapped MiB at each checkpoint, in scenario order."""
    cols = ["rss_mb", "uss_mb", "rss_anon_mb", "rss_file_mb", "model_mapped_mb"]
    cols += ["heap_used_mb", "heap_free_mb"]
    cols += [c for c in ("vram_device_used_mb", "vram_process_mb") if c in df.columns]
    rows = []
    for run_id, run in each_run(df):
        marks = run[run["record"] == "marker"].dropna(subset=["checkpoint"])
        for name in CHECKPOINTS:
            hit = marks[marks["checkpoint"] == name]
            if hit.empty:
                continue
            rec = hit.iloc[-1]
            row = {"run_id": run_id, "checkpoint": name, "scenario": rec["scenario"]}
            row.update({c: float(rec[c]) for c in cols})
            rows.append(row)
        msgs = message_rows(run)
        if not msgs.empty:  # "after N messages": the reading right after the last message
            rec = msgs.iloc[-1]
            row = {
                "run_id": run_id,
                "checkpoint": f"after message {int(rec['message'])}",
                "scenario": "chat_session",
            }
            row.update({c: float(rec[c]) if c in rec else np.nan for c in cols})
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {name: i for i, name in enumerate(CHECKPOINTS)}
    table["_order"] = table["checkpoint"].map(lambda c: order.get(c, order["after_chat"] - 0.5))
    return table.sort_values(["run_id", "_order"], kind="stable").drop(columns="_order")


def cleanup_effects(df: pd.DataFrame) -> pd.DataFrame:
    """MiB returned by each step after the chat, and the mmap'd model's share of RSS.

    chat_gc: the full collection right after the chat (its pending garbage; absent in runs
    stored before it existed). malloc_trim is allocator retention: heap the program had freed
    but glibc still held.
    """
    rows = []
    for run_id, _run in each_run(df):
        cp = checkpoints(_run).set_index("checkpoint")

        def get(name: str, col: str, cp=cp) -> float:
            return float(cp.loc[name, col]) if name in cp.index else np.nan

        before_close = "after_chat_gc" if "after_chat_gc" in cp.index else "after_chat"
        row = {"run_id": run_id}
        for metric in ("rss_mb", "uss_mb", "heap_used_mb"):
            unit = metric.removesuffix("_mb")
            row[f"chat_gc_freed_{unit}_mb"] = get("after_chat", metric) - get(
                "after_chat_gc", metric
            )
            row[f"close_freed_{unit}_mb"] = get(before_close, metric) - get("after_close", metric)
            row[f"gc_freed_{unit}_mb"] = get("after_close", metric) - get("after_gc", metric)
            row[f"malloc_trim_freed_{unit}_mb"] = get("after_gc", metric) - get(
                "after_trim", metric
            )
            row[f"left_over_{unit}_mb"] = get("after_trim", metric) - get("baseline", metric)
        # free chunks glibc kept just before malloc_trim: the retention malloc_trim can return
        row["heap_free_before_trim_mb"] = get("after_gc", "heap_free_mb")
        for name in ("after_load", "after_chat"):
            rss = get(name, "rss_mb")
            row[f"{name}_model_mapped_mb"] = get(name, "model_mapped_mb")
            row[f"{name}_model_mapped_share"] = get(name, "model_mapped_mb") / rss
            row[f"{name}_file_backed_mb"] = get(name, "rss_file_mb")
            row[f"{name}_anon_mb"] = get(name, "rss_anon_mb")
        rows.append(row)
    return pd.DataFrame(rows)


def representative(info: dict) -> bool:
    """Runs that describe the companion itself: not the detector's injected-leak self-check."""
    return not info.get("params", {}).get("leak_kb_per_message")
