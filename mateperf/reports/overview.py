"""What FINAL_RESULTS.md shows before the phase sections: the summary table and the variants.

The summary table is the honest successor of the original study's "Résumé des gains": one row
per optimisation and the metric it was meant to improve, baseline and optimised medians, their
ratio with a 95% CI and the rank test's verdict, and what the original study claimed beside it.
A variants table puts the runs of one phase that differ in what they test (the IPC peer, the
memory self-check) side by side, one row each, instead of repeating whole sections.

Everything here reads stored frames through the phases' own functions; nothing is measured.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mateperf import metrics, recommend, stats
from mateperf.report import fmt, fmt_ci

# Claims of the original study (DESIGN.md, "Facts from the original study").
CLAIMS = {
    "memory": "“no leak”: RAM 411 MB after load → 299 MB after 100 messages (one run)",
    "warmup_ttft": "first generation 2.11 → 1.75 s (−17%)",
    "warmup_tg": "19.5 → 22.3 tok/s (+14%)",
    "warmup_load": "load 5.10 → 2.57 s (−50%)",
    "ipc_latency": "0.371 ms “latency” (sendall() only, no round trip)",
    "batching": "100 commands 1568 → 156 ms (+907% throughput)",
    "threads": "“cores − 2” instead of 6: +5–15% expected (not measured)",
    "gpu": "profiles with CPU fallback: “no speed gain, but no crashes”",
    "overall": "+30–40% overall (a sum of single-run percentages)",
}
# The parameters that make a run of a phase a different test (a variant), not a resize.
VARIANT_PARAMS = {
    "memory": ("gc_every_message", "leak_kb_per_message"),
    "llm": ("n_threads", "n_gpu_layers", "model"),
    "ipc": ("peer", "pin_cpu", "apply_delay_ms"),
    "cpu": ("peer", "frame_busy", "backgrounds", "n_batch"),
    "gpu": ("vram_budget_mb", "profile"),
    "final": ("peers", "frame_busy"),
}


def summary_row(phase, optimisation, metric, baseline, optimised, ratio, verdict, claim) -> dict:
    return {
        "phase": phase,
        "optimisation": optimisation,
        "metric": metric,
        "baseline": baseline,
        "optimised": optimised,
        "ratio [95% CI]": ratio,
        "verdict": verdict,
        "original claim": claim,
    }


def _ab_row(phase, optimisation, metric: metrics.Metric, a, b, claim, digits=1) -> dict:
    r = stats.compare(a, b, higher_is_better=metric.higher_is_better, words=metric.words)
    return summary_row(
        phase,
        optimisation,
        metric.title,
        fmt(r.median_a, digits),
        fmt(r.median_b, digits),
        fmt_ci(r.ratio, r.ci_low, r.ci_high, 2),
        r.verdict,
        claim,
    )


# --- summary rows, per phase --------------------------------------------------------------------


def _memory_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    from mateperf.phases import memory

    v = memory.verdict_table(df).iloc[0]
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


def _llm_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    from mateperf.phases import llm

    d = llm.kept(df)
    first = d[d["scenario"] == llm.SCENARIO_FIRST_REPLY]
    cold, warm = first[first["arm"] == llm.COLD], first[first["arm"] == llm.WARM]
    rows = []
    for name, claim in (("ttft_ms", "warmup_ttft"), ("tg_tps", "warmup_tg"), ("load_s", None)):
        m = metrics.get("llm", name)
        rows.append(
            _ab_row(
                "llm",
                "warm-up after load",
                m,
                cold[name],
                warm[name],
                CLAIMS["warmup_load" if name == "load_s" else claim],
                2 if name == "load_s" else 1,
            )
        )
    return rows


def _ipc_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    from mateperf.phases import ipc

    requests, trials = ipc.split_records(df)
    rows = []
    h = ipc.headline(df)
    if not math.isnan(h.get("bridge_p50_us", math.nan)):
        rows.append(
            summary_row(
                "ipc",
                f"— (round trip, {h.get('peer', '?')} peer, unpaced)",
                "send to applied p50 (ms)",
                "–",
                fmt(h["bridge_p50_us"] / 1e3, 3),
                "–",
                "–",
                CLAIMS["ipc_latency"],
            )
        )
    batching = trials[trials["scenario"] == "batching"] if "scenario" in trials else trials
    for fps in sorted(set(batching.get("fps", pd.Series(dtype=float)))):
        one = batching[(batching["fps"] == fps) & (batching["mode"] == "one_by_one")]
        batched = batching[(batching["fps"] == fps) & (batching["mode"] == "batched")]
        if one.empty or batched.empty:
            continue
        m = metrics.get("ipc", "total_ms")
        where = "unpaced" if fps == 0 else f"{fps:g} fps"
        rows.append(
            _ab_row(
                "ipc",
                f"batches instead of one by one ({where})",
                m,
                ipc.per_trial(one, "total_ms"),
                ipc.per_trial(batched, "total_ms"),
                CLAIMS["batching"],
            )
        )
    return rows


def _cpu_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    from mateperf.phases import cpu

    d = cpu.kept(df)
    rec = cpu.recommendation(df, info.get("fingerprint", {}), info.get("run_id", ""))
    usable = int(d["usable_cpus"].iloc[0]) if "usable_cpus" in d else 1
    original = min(6, usable)
    m = metrics.get("cpu", "tg_tps")
    rows = []
    for cond, sub in d[d["background"] == rec["for"]].groupby("condition", sort=True):
        a = sub.loc[sub["n_threads"] == original, "tg_tps"]
        b = sub.loc[sub["n_threads"] == rec["n_threads"], "tg_tps"]
        if a.empty or b.empty:
            continue
        rows.append(
            _ab_row(
                "cpu",
                f"recommended n_threads={rec['n_threads']} instead of 6 (runs as {original}), "
                f"{cond}",
                m,
                a,
                b,
                CLAIMS["threads"],
            )
        )
    return rows


def _gpu_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    from mateperf.reports import gpu as gpu_report

    return gpu_report.summary_rows(df, info)


def _final_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    from mateperf.reports import final

    return final.summary_rows(df, info)


SUMMARY = {
    "memory": _memory_rows,
    "llm": _llm_rows,
    "ipc": _ipc_rows,
    "cpu": _cpu_rows,
    "gpu": _gpu_rows,
    "final": _final_rows,
}


def summary_rows(phase: str, df: pd.DataFrame, info: dict) -> list[dict]:
    """The summary table's rows for one phase's representative run ([] if it has none)."""
    fn = SUMMARY.get(phase)
    if fn is None:
        return []
    try:
        return fn(df, info)
    except (KeyError, IndexError, ValueError) as exc:  # a run stored before a column existed
        return [summary_row(phase, "—", "—", "–", "–", "–", f"not summarised: {exc}", "")]


# --- variants -----------------------------------------------------------------------------------


def variant_label(phase: str, params: dict, defaults: dict) -> str:
    """`peer=csharp, pin_cpu=0`, or `default`: what makes this run a different test."""
    parts = []
    for name in VARIANT_PARAMS.get(phase, ()):
        if name in params and params[name] != defaults.get(name):
            parts.append(f"{name}={params[name]}")
    return ", ".join(parts) or "default"


def _memory_variant(df, info) -> dict:
    from mateperf.phases import memory

    v = memory.verdict_table(df).iloc[0]
    return {
        "verdict": v["verdict"],
        "live-heap growth KiB/msg [95% CI]": fmt_ci(
            v["slope_kb_per_msg"], v["ci_low_kb_per_msg"], v["ci_high_kb_per_msg"]
        ),
        "peak RSS MiB": fmt(v["rss_peak_mb"]),
        "collections": v["collections"],
    }


def _llm_variant(df, info) -> dict:
    from mateperf.phases import llm

    s = llm.summarize(df).set_index(["scenario", "arm", "metric"])["median"]

    def get(*key):
        return fmt(float(s.get(key, np.nan)))

    return {
        "TTFT cold ms": get(llm.SCENARIO_FIRST_REPLY, llm.COLD, "ttft_ms"),
        "TTFT warm ms": get(llm.SCENARIO_FIRST_REPLY, llm.WARM, "ttft_ms"),
        "pp tok/s": get(llm.SCENARIO_PP, "", "pp_tps"),
        "tg tok/s": get(llm.SCENARIO_TG, "", "tg_tps"),
    }


def _ipc_variant(df, info) -> dict:
    from mateperf.phases import ipc

    h = ipc.headline(df)
    out = {
        "bridge p50 µs": fmt(h.get("bridge_p50_us", np.nan)),
        "raw socket p50 µs": fmt(h.get("floor_p50_us", np.nan)),
        "bridge/raw": fmt(h.get("bridge_over_floor_p50", np.nan), 2),
        "one-by-one/batched, 60 fps": fmt(h.get("60fps_one_by_one_over_batched_total", np.nan)),
    }
    if "frame_cost_100_p99_us" in h:
        out["Tick p99 at 100 cmds µs"] = fmt(h["frame_cost_100_p99_us"])
    return out


def _cpu_variant(df, info) -> dict:
    from mateperf.phases import cpu

    rec = cpu.recommendation(df, info.get("fingerprint", {}), info.get("run_id", ""))
    return {
        "recommended": ", ".join(f"{k}={rec[k]}" for k in recommend.SETTINGS),
        "for": f"{rec['for']} {', '.join(f'{f:.0%}' for f in rec['frame_busy'])}",
        "tg gap to best": ", ".join(
            f"{e['condition']}: {fmt(e['gap_pct'])}%"
            for e in rec["evidence"]
            if e["metric"] == "tg_tps"
        ),
    }


def _final_variant(df, info) -> dict:
    from mateperf.phases import final

    ab = final.against_baseline(df)
    out = {}
    for metric in ("e2e_ms", "ttft_ms", "beat_ms"):
        r = ab[(ab["arm"] == final.OPTIMISED) & (ab["metric"] == metric)]
        if len(r):
            r = r.iloc[0]
            out[f"optimised/baseline {metric}"] = fmt_ci(r["ratio"], r["ci_low"], r["ci_high"], 2)
    return out


VARIANT = {
    "memory": _memory_variant,
    "llm": _llm_variant,
    "ipc": _ipc_variant,
    "cpu": _cpu_variant,
    "final": _final_variant,
}


def variant_row(phase: str, df: pd.DataFrame, info: dict) -> dict:
    fn = VARIANT.get(phase)
    if fn is None:
        return {}
    try:
        return fn(df, info)
    except (KeyError, IndexError, ValueError) as exc:
        return {"note": f"not summarised: {exc}"}
