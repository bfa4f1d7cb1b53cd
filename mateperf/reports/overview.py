"""What FINAL_RESULTS.md shows before the phase sections: the summary table and the variants.

The summary table is the honest successor of the original study's "Résumé des gains": one row
per optimisation and the metric it was meant to improve, baseline and optimised medians, their
ratio with a 95% CI and the rank test's verdict, and what the original study claimed beside it.
A variants table puts the runs of one phase that differ in what they test (the IPC peer, the
memory self-check) side by side, one row each, instead of repeating whole sections.

Everything here formats what the phases' own analyses computed; nothing is measured or tested.
A phase's rows and variant columns are declared by its report module (`REPORT`), which builds
them with `summary_row`, `ab_row` and `CLAIMS` from here.
"""

from __future__ import annotations

import pandas as pd

from mateperf import metrics, phases, stats
from mateperf.reports import declaration
from mateperf.reports.format import fmt, fmt_ci

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


def ab_row(phase, optimisation, metric: metrics.Metric, r: stats.ABResult, claim, digits=1) -> dict:
    """A summary row of a comparison the phase made (B against A): medians, their ratio with
    its CI, the verdict."""
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


def summary_rows(phase: str, df: pd.DataFrame, info: dict) -> list[dict]:
    """The summary table's rows for one phase's representative run ([] if it has none).

    Each phase's rows are its report's declared `summary_rows` (mateperf.reports.<phase>).
    """
    fn = declaration.declared(phase).summary_rows
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
    for name in phases.schema(phase).variant_names():
        if name in params and params[name] != defaults.get(name):
            parts.append(f"{name}={params[name]}")
    return ", ".join(parts) or "default"


def variant_row(phase: str, df: pd.DataFrame, info: dict) -> dict:
    """The phase's columns in its variants table: its report's declared `variant_row`."""
    fn = declaration.declared(phase).variant_row
    if fn is None:
        return {}
    try:
        return fn(df, info)
    except (KeyError, IndexError, ValueError) as exc:
        return {"note": f"not summarised: {exc}"}
