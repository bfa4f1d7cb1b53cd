"""Reading a final frame: every arm against the baseline, and whether the optimisations add up.

Turns that count are `metrics.completed` (the warm-up turn and failed turns left out).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mateperf import avatar_pacing, metrics, stats
from mateperf.phases.final.params import ARMS, BASELINE, OPTIMISED, SINGLE

ADD_UP_METRICS = ("ttft_ms", "e2e_ms", "tg_tps", "beat_ms", "frame_p99_ms")


def against_baseline(df: pd.DataFrame) -> pd.DataFrame:
    """Every arm against the baseline, per peer and metric: ratio of medians, CI, verdict."""
    rows = []
    for peer, sub in metrics.completed(df).groupby("peer", sort=True):
        base = sub[sub["arm"] == BASELINE]
        for arm in [a for a in ARMS if a != BASELINE and a in set(sub["arm"])]:
            other = sub[sub["arm"] == arm]
            for m in metrics.present("final", sub):
                if base[m.name].notna().sum() == 0 or other[m.name].notna().sum() == 0:
                    continue
                r = stats.compare(
                    base[m.name],
                    other[m.name],
                    higher_is_better=m.higher_is_better,
                    words=m.words,
                )
                rows.append(
                    {
                        "peer": peer,
                        "arm": arm,
                        "metric": m.name,
                        "baseline": r.median_a,
                        "arm_median": r.median_b,
                        "ratio": r.ratio,
                        "ci_low": r.ci_low,
                        "ci_high": r.ci_high,
                        "p_value": r.p_value,
                        "verdict": r.verdict,
                        "n": f"{r.n_a}+{r.n_b}",
                    }
                )
    return pd.DataFrame(rows)


def add_up(ab: pd.DataFrame) -> pd.DataFrame:
    """Do the single optimisations add up? Product of their ratios against the combination's.

    Independent effects multiply; a single optimisation with no effect contributes a ratio near
    1 (and its noise), so the product is read against the combination's CI.
    """
    rows = []
    for (peer, metric), sub in ab.groupby(["peer", "metric"], sort=False):
        if metric not in ADD_UP_METRICS:
            continue
        singles = sub[sub["arm"].isin(SINGLE)]
        combined = sub[sub["arm"] == OPTIMISED]
        if combined.empty or len(singles) < 2:
            continue
        rows.append(
            {
                "peer": peer,
                "metric": metric,
                "product of single ratios": float(np.prod(singles["ratio"])),
                "measured combination": float(combined["ratio"].iloc[0]),
                "combination CI": (
                    float(combined["ci_low"].iloc[0]),
                    float(combined["ci_high"].iloc[0]),
                ),
            }
        )
    return pd.DataFrame(rows)


def arm_medians(d: pd.DataFrame) -> pd.DataFrame:
    """Per peer, arm and declared metric: n, median and its 95% CI (arms in ARMS order)."""
    rows = []
    for (peer, arm), sub in d.groupby(["peer", "arm"], sort=False):
        for m in metrics.present("final", sub):
            values = sub[m.name].dropna()
            if values.empty:
                continue
            s = stats.summarize(values)
            rows.append(
                {
                    "peer": peer,
                    "arm": arm,
                    "n": len(sub),
                    "metric": m.name,
                    **{k: s[k] for k in ("median", "ci_low", "ci_high")},
                }
            )
    out = pd.DataFrame(rows, columns=["peer", "arm", "n", "metric", "median", "ci_low", "ci_high"])
    order = {a: i for i, a in enumerate(ARMS)}
    return out.sort_values(
        ["peer", "arm"], key=lambda c: c.map(order) if c.name == "arm" else c, kind="stable"
    )


def pacing(d: pd.DataFrame, params: dict) -> dict:
    """The avatar stand-in's timer, CPU and whether its pacing held (avatar_pacing.summary)."""
    return avatar_pacing.summary(
        d, float(params.get("fps") or 0), float(params.get("frame_busy", float("nan")))
    )
