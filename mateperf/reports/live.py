"""Phase 7 section: a real companion session, call by call (formatting only; the figures are
the recorder's and `mateperf.phases.live.analyse`'s)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mateperf import metrics, results
from mateperf.phases import live
from mateperf.phases.live.analyse import CALL_COLUMNS, completed, outside_llama_ms
from mateperf.reports.declaration import PhaseReport
from mateperf.reports.format import fmt, fmt_ci, table

HEADINGS = {
    "trial": "call",
    "wall_ms": "wall ms",
    "prompt_tokens": "prompt tok",
    "completion_tokens": "completion tok",
    "prompt_eval_tokens": "prompt eval tok (llama.cpp)",
    "eval_tokens": "eval tok (llama.cpp)",
    "prompt_eval_ms": "prompt eval ms (llama.cpp)",
    "eval_ms": "eval ms (llama.cpp)",
    "tg_tps": "gen tok/s",
    "rss_mb": "RSS MiB",
    "vram_used_mb": "VRAM MiB",
    "frame_p99_ms": "frame p99 ms",
    "overhead_us": "recorder µs",
}
DIGITS = {"wall_ms": 1, "prompt_eval_ms": 2, "eval_ms": 2, "tg_tps": 1, "rss_mb": 0}


def _calls_table(df: pd.DataFrame) -> pd.DataFrame:
    d = live.calls(df)
    shown = [c for c in CALL_COLUMNS if c in d]
    out = pd.DataFrame(
        {
            HEADINGS.get(c, c): [
                fmt(v, DIGITS.get(c, 1)) if isinstance(v, float) else v for v in d[c]
            ]
            for c in shown
        }
    )
    if "error" in d and (d["error"].fillna("") != "").any():
        out["error"] = d["error"].fillna("")
    return out


def _summary_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in live.summarize(df).iterrows():
        m = metrics.get("live", r["metric"])
        digits = 0 if m.unit in ("MiB", "tokens") else 1
        rows.append(
            {
                "metric": m.title,
                "n": int(r["n"]),
                "median [95% CI]": fmt_ci(r["median"], r["ci_low"], r["ci_high"], digits),
                "p95": fmt(r["p95"], digits),
                "min – max": f"{fmt(r['min'], digits)} – {fmt(r['max'], digits)}",
            }
        )
    return pd.DataFrame(rows)


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    s = info.get("session", {})
    params = info.get("params", {})
    d = live.calls(df)
    n_done = len(completed(df))
    status = info.get("status")  # as it stands now (report.shown_info)
    interrupted = status == results.STATUS_INTERRUPTED
    if status == results.STATUS_OK:
        state = f"closed: {len(d)} calls"
    elif interrupted:
        state = (
            "interrupted (the companion's process is gone: killed or crashed before it closed "
            f"the session): the {len(d)} calls its journal holds"
        )
    else:
        state = f"not closed ({status}): the {len(d)} calls its journal holds so far"
    share = live.overhead_share(df)
    outside = outside_llama_ms(df)
    lines = [
        "## Phase 7 — live: a real companion session" + (" (interrupted)" if interrupted else ""),
        "",
        (f"Session: {params['label']}. " if params.get("label") else "")
        + f"Model `{s.get('model_file', '?')}`, n_ctx {s.get('n_ctx')}, n_batch "
        f"{s.get('n_batch')}, n_threads {s.get('n_threads')}, n_gpu_layers "
        f"{s.get('n_gpu_layers')}, use_mlock {s.get('use_mlock')}; llama-cpp-python "
        f"{s.get('llama_cpp_python', '?')}. Recorded by `mateperf.live` in the companion's own "
        f"process; {state} ({n_done} completed).",
        "",
        f"llama.cpp's counters: {s.get('counters', '?')}. GPU: {s.get('gpu', '?')}. Avatar: "
        f"{s.get('avatar', '?')}.",
        "",
        "- llama.cpp's prompt-eval and eval time account for all but "
        f"{fmt(float(outside.median()), 1)} ms of a call's wall time (median; the rest is "
        "tokenising, sampling, detokenising and Python).",
        f"- The recorder's own time on the companion's thread: median "
        f"{fmt(float(d['overhead_us'].median()), 0)} µs per call, {share * 100:.2g}% of a "
        "call's wall time (its journal append aside: `benchmarks/live_overhead.py` measures "
        "the whole).",
        "",
        "### Summary",
        "",
        "Per declared metric over the completed calls: median with its 95% CI.",
        "",
        table(_summary_table(df)),
        "",
        "### Calls",
        "",
        "Each call as recorded, beside llama.cpp's own counters over it.",
        "",
        table(_calls_table(df)),
        "",
    ]
    return "\n".join(lines)


REPORT = PhaseReport(section=section, summary_rows=None, variant_row=None, sweep_extra=None)
