"""Compare two runs of a phase: rows matched on their parameters, a verdict per metric.

Like llama.cpp's compare-llama-bench.py, rows are matched on what identifies a test
(scenario, arm, and any parameter that varies inside a run, such as a swept one); like
`asv compare`, each matched metric gets A, B, the ratio of medians with its CI and a rank-test
verdict, never a single-run percentage.
"""

from __future__ import annotations

import pandas as pd

from mateperf import host, results, stats
from mateperf.errors import BadInput

IDENTITY = ("scenario", "arm", "mode", "size_bytes", "peer")
NOT_METRICS = {"point", "trial"}


def _keys(a: pd.DataFrame, b: pd.DataFrame, params: set[str]) -> list[str]:
    keys = [c for c in IDENTITY if c in a.columns and c in b.columns]
    for p in sorted(params):
        if p in a.columns and p in b.columns and (a[p].nunique() > 1 or b[p].nunique() > 1):
            keys.append(p)
    return keys


def compare_runs(path_a, path_b) -> tuple[pd.DataFrame, list[str]]:
    """Per matched group and metric: A, B, ratio B/A with CI, p, verdict; plus warnings."""
    try:
        run_a, run_b = results.RunDir.open(path_a), results.RunDir.open(path_b)
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    if run_a.phase != run_b.phase:
        raise BadInput(f"cannot compare phase {run_a.phase} with phase {run_b.phase}")
    for run in (run_a, run_b):
        if not run.frame_path().is_file():
            raise BadInput(
                f"{run.path} has no {run.phase}.parquet (status {run.info.get('status')})"
            )
    warnings = []
    diffs = host.same_host(run_a.info.get("fingerprint", {}), run_b.info.get("fingerprint", {}))
    if diffs:
        warnings.append(
            f"warning: the runs come from different hosts or builds ({', '.join(diffs)}); "
            "timings are not comparable"
        )
    a, b = run_a.read_frame(), run_b.read_frame()
    if "discarded" in a:
        a = a[~a["discarded"].astype(bool)]
    if "discarded" in b:
        b = b[~b["discarded"].astype(bool)]
    params = set(run_a.info.get("params", {})) | set(run_b.info.get("params", {}))
    params |= set(run_a.info.get("grid", {})) | set(run_b.info.get("grid", {}))
    keys = _keys(a, b, params)
    metrics = [m for m in results.metric_columns(a, params | NOT_METRICS) if m in b.columns]
    rows = []
    groups_a = a.groupby(keys, sort=True, dropna=False) if keys else [((), a)]
    for key, ga in groups_a:
        key = key if isinstance(key, tuple) else (key,)
        gb = b
        for name, value in zip(keys, key, strict=True):
            gb = gb[gb[name].isna()] if pd.isna(value) else gb[gb[name] == value]
        if gb.empty:
            continue
        for metric in metrics:
            va, vb = ga[metric].dropna(), gb[metric].dropna()
            if va.empty or vb.empty:
                continue
            r = stats.compare(va, vb, higher_is_better=stats.higher_is_better(metric))
            rows.append(
                {
                    **{k: v for k, v in zip(keys, key, strict=True) if not pd.isna(v)},
                    "metric": metric,
                    "A": r.median_a,
                    "B": r.median_b,
                    "B/A": r.ratio,
                    "ci_low": r.ci_low,
                    "ci_high": r.ci_high,
                    "p": r.p_value,
                    "verdict": r.verdict,
                    "n": f"{r.n_a}/{r.n_b}",
                }
            )
    if not rows:
        warnings.append("warning: no rows of A matched rows of B")
    return pd.DataFrame(rows), warnings


def format_comparison(table: pd.DataFrame, run_a: str, run_b: str) -> str:
    from mateperf.report import fmt, fmt_ci, fmt_p

    if table.empty:
        return f"A = {run_a}, B = {run_b}: nothing to compare"
    shown = table.copy()
    for col in shown.columns[: list(shown.columns).index("metric")]:
        shown[col] = shown[col].fillna("")
    shown["A"] = [fmt(v, 2) for v in table["A"]]
    shown["B"] = [fmt(v, 2) for v in table["B"]]
    shown["B/A [95% CI]"] = [
        fmt_ci(r["B/A"], r["ci_low"], r["ci_high"], 3) for _, r in table.iterrows()
    ]
    shown["p"] = [fmt_p(p) for p in table["p"]]
    shown = shown.drop(columns=["B/A", "ci_low", "ci_high"])
    cols = [c for c in shown.columns if c not in ("verdict", "n")] + ["verdict", "n"]
    return f"A = `{run_a}`, B = `{run_b}`\n\n" + shown[cols].to_markdown(index=False)
