"""`mateperf compare`'s table as markdown: what `mateperf.compare` computed, formatted."""

from __future__ import annotations

import pandas as pd

from mateperf import compare, stats
from mateperf.reports.format import fmt, fmt_ci, fmt_p


def _untested_note(table: pd.DataFrame) -> str:
    """Why the untested rows were not tested, and what would test them."""
    one = int((table["verdict"] == stats.NOT_TESTED).sum())
    few = int(table["verdict"].astype(str).str.startswith(stats.TOO_FEW).sum())
    parts = []
    if one:
        parts.append(f"{one} not tested: one replicate per run (replicate with a sweep).")
    if few:
        k = stats.rank_test_min_n()
        parts.append(
            f"{few} not tested: too few trials for a rank test to reach the 5% level "
            f"(it needs {k}+{k}; run more trials or rounds)."
        )
    return " ".join(parts)


def format_comparison(table: pd.DataFrame, run_a: str, run_b: str) -> str:
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
    different, tested, untested = compare.called_different(table)
    footer = (
        f"\n\n{different} of {tested} tested comparisons called different at the 5% level "
        "(Mann–Whitney across trials and a ratio CI excluding 1); n counts trials."
    )
    if untested:
        footer += " " + _untested_note(table)
    return f"A = `{run_a}`, B = `{run_b}`\n\n" + shown[cols].to_markdown(index=False) + footer
