"""The live phase's reading of a recorded session: per-call figures summarised, and what the
counters say about where each call's time went. Pure functions of the stored frame."""

from __future__ import annotations

import pandas as pd

from mateperf import metrics, stats

# Columns of a call row that the recorder writes (mateperf.live), in the order a reader wants.
CALL_COLUMNS = (
    "trial",
    "method",
    "wall_ms",
    "prompt_tokens",
    "completion_tokens",
    "prompt_eval_tokens",
    "eval_tokens",
    "prompt_eval_ms",
    "eval_ms",
    "tg_tps",
    "rss_mb",
    "vram_used_mb",
    "frame_p99_ms",
    "overhead_us",
)


def calls(df: pd.DataFrame) -> pd.DataFrame:
    """The recorded calls, in order (a call that raised keeps its row, with its error)."""
    if df.empty or "trial" not in df:
        return df
    return df.sort_values("trial").reset_index(drop=True)


def completed(df: pd.DataFrame) -> pd.DataFrame:
    return metrics.completed(calls(df))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per declared metric over the session's completed calls: n, median, CI and the rest."""
    d = completed(df)
    rows = []
    for m in metrics.present("live", d):
        s = stats.summarize(d[m.name].dropna())
        if s["n"]:
            rows.append({"metric": m.name, "unit": m.unit, **s})
    return pd.DataFrame(rows)


def outside_llama_ms(df: pd.DataFrame) -> pd.Series:
    """Per call, the wall time llama.cpp's counters do not account for (tokenising, sampling,
    detokenising, Python): wall less prompt-eval and eval."""
    d = calls(df)
    return d["wall_ms"] - d["prompt_eval_ms"].fillna(0) - d["eval_ms"].fillna(0)


def overhead_share(df: pd.DataFrame) -> float:
    """The recorder's own time on the caller's thread as a share of the calls' wall time
    (median over calls)."""
    d = completed(df)
    if d.empty or "overhead_us" not in d:
        return float("nan")
    return float((d["overhead_us"] / 1e3 / d["wall_ms"]).median())
