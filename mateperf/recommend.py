"""From a thread/batch sweep to the configuration the companion should load: recommended.json.

The rule, per metric and load condition: among the measured settings, take the smallest (fewest
threads, then smallest batches: what leaves most of the machine to the avatar) whose median is
within `tolerance` (3%) of the best median and that the shared rank test does not call
significantly worse than the best. The best is itself a candidate, so there is always an answer.
Where the trials are too few for the rank test to call anything (stats.can_test), the rule rests
on the gap alone, and recommended.json says so in its notes.

Each metric is decided by the settings that act on it: generation by n_threads, prompt
processing by n_threads_batch, n_batch and n_ubatch (llama.cpp uses n_threads_batch for batches
of more than one token). Trials that differ only in other settings are replicates of the same
setting for that metric.

The combined recommendation must hold under the companion's load: a setting is accepted when it
passes the rule at every measured companion load (frame_busy level); measured idle only, it is
chosen from idle and says so.

The avatar's frame comes first: only settings that keep it (mateperf.frame_budget, the rule
`mateperf tune` races with: frame p99 within 1000/fps + slack at every measured load) are
candidates, and a faster setting that breaks it is named in the notes as not picked. Where no
setting keeps it, the least overrun is chosen and the notes say so in tune's words.

recommended.json itself (its formats, writing, loading, the host check): mateperf.recommended_file.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mateperf import frame_budget, metrics, stats
from mateperf.frame_budget import FrameBudget
from mateperf.recommended_file import FORMAT, SETTINGS, host_key

# Which settings act on which metric (the others are replicates for it).
DECIDED_BY = {
    "tg_tps": ("n_threads",),
    "cpu_ms_per_token": ("n_threads",),
    "pp_tps": ("n_threads_batch", "n_batch", "n_ubatch"),
    "ttft_ms": SETTINGS,
    "e2e_ms": SETTINGS,
    "frame_p99_ms": SETTINGS,
}
# The metrics the combined recommendation is built from, and what each decides.
COMBINED = (("tg_tps", ("n_threads",)), ("pp_tps", ("n_threads_batch", "n_batch", "n_ubatch")))
DEFAULT_TOLERANCE = 0.03


def condition_label(background: str, frame_busy: float) -> str:
    if background == "idle":
        return "idle"
    return f"{background} {frame_busy:.0%}"


def worse_gap(value: float, best: float, higher_is_better: bool) -> float:
    """How much worse `value` is than `best`, as a fraction (negative if better)."""
    if not best or math.isnan(best) or math.isnan(value):
        return math.nan
    return 1 - value / best if higher_is_better else value / best - 1


def _groups(rows: pd.DataFrame, metric: str, by: tuple[str, ...]) -> dict[tuple, np.ndarray]:
    out = {}
    for key, sub in rows.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = sub[metric].dropna().to_numpy(float)
        if values.size:
            out[tuple(int(k) for k in key)] = values
    return out


def evaluate(
    rows: pd.DataFrame,
    metric: str,
    by: tuple[str, ...],
    tolerance: float = DEFAULT_TOLERANCE,
    alpha: float = stats.ALPHA,
) -> pd.DataFrame:
    """Every setting of `by` against the best for `metric` in `rows` (one load condition).

    One row per setting, smallest first: its median, the gap to the best, the ratio to the best
    with its CI, the rank test's p and verdict, and whether it passes the rule.
    """
    declared = metrics.find(metric)
    hib = declared.higher_is_better if declared else False
    words = declared.words if declared else metrics.SPEED
    groups = _groups(rows, metric, by)
    if not groups:
        return pd.DataFrame()
    medians = {k: float(np.median(v)) for k, v in groups.items()}
    best = max(medians, key=medians.get) if hib else min(medians, key=medians.get)
    out = []
    for key in sorted(groups):
        r = stats.compare(groups[best], groups[key], higher_is_better=hib, alpha=alpha, words=words)
        gap = worse_gap(medians[key], medians[best], hib)
        significantly_worse = r.verdict == words[1]
        out.append(
            {
                **dict(zip(by, key, strict=True)),
                "metric": metric,
                "n": len(groups[key]),
                "median": medians[key],
                "best": key == best,
                "gap_pct": 100 * gap,
                "ratio_to_best": r.ratio,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "p_value": r.p_value,
                "verdict_vs_best": r.verdict,
                "passes": bool(gap <= tolerance and not significantly_worse),
            }
        )
    return pd.DataFrame(out)


def conditions(df: pd.DataFrame) -> list[tuple[str, float]]:
    keys = df[["background", "frame_busy"]].drop_duplicates()
    return sorted((str(b), float(f)) for b, f in keys.itertuples(index=False))


def _rows(df: pd.DataFrame, background: str, frame_busy: float) -> pd.DataFrame:
    return df[(df["background"] == background) & np.isclose(df["frame_busy"], frame_busy)]


def per_condition(df: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """The rule per metric and load condition: chosen setting, best setting, gap and test."""
    out = []
    for background, busy in conditions(df):
        rows = _rows(df, background, busy)
        for metric, by in DECIDED_BY.items():
            if metric not in rows.columns or rows[metric].notna().sum() == 0:
                continue
            table = evaluate(rows, metric, by, tolerance)
            chosen = table[table["passes"]].iloc[0]
            best = table[table["best"]].iloc[0]
            out.append(
                {
                    "condition": condition_label(background, busy),
                    "background": background,
                    "frame_busy": busy,
                    "metric": metric,
                    "decided_by": ", ".join(by),
                    "chosen": _setting_text(chosen, by),
                    "best": _setting_text(best, by),
                    "chosen_median": chosen["median"],
                    "best_median": best["median"],
                    "gap_pct": chosen["gap_pct"],
                    "ratio_to_best": chosen["ratio_to_best"],
                    "ci_low": chosen["ci_low"],
                    "ci_high": chosen["ci_high"],
                    "p_value": chosen["p_value"],
                    "verdict_vs_best": chosen["verdict_vs_best"],
                    "n": int(chosen["n"]),
                }
            )
    return pd.DataFrame(out)


def _setting_text(row, by) -> str:
    return ", ".join(f"{k}={int(row[k])}" for k in by)


def _pick(
    df: pd.DataFrame,
    metric: str,
    by: tuple[str, ...],
    target: str,
    tolerance: float,
    allowed: set | None = None,
):
    """The smallest setting that passes the rule in every condition of `target` background,
    among the `allowed` ones (those that keep the avatar's frame; None: all). The best is
    judged among every setting measured, so a setting kept for the frame says how far it is
    from the fastest."""
    levels = [c for c in conditions(df) if c[0] == target]
    tables = [evaluate(_rows(df, *c), metric, by, tolerance) for c in levels]
    tables = [t for t in tables if len(t)]
    if not tables:
        return None, []
    indexed = [{tuple(int(r[k]) for k in by): r for r in t.to_dict("records")} for t in tables]
    keys = sorted(set.intersection(*[set(t) for t in indexed]))
    if allowed is not None:
        keys = [k for k in keys if k in allowed] or keys
    worst = {k: max(float(t[k]["gap_pct"]) for t in indexed) for k in keys}
    passing = [k for k in keys if all(bool(t[k]["passes"]) for t in indexed)]
    if passing:
        chosen = passing[0]
    elif allowed is not None and len(keys) == 1:
        chosen = keys[0]
    else:  # the smallest setting whose worst gap is within the tolerance of the least worst
        least = min(worst.values())
        chosen = next(k for k in keys if worst[k] <= least + 100 * tolerance)
    evidence = []
    for (background, busy), t, ti in zip(levels, tables, indexed, strict=False):
        row = ti[chosen]
        best = t[t["best"]].iloc[0]
        evidence.append(
            {
                "metric": metric,
                "condition": condition_label(background, busy),
                "chosen": dict(zip(by, map(int, chosen), strict=True)),
                "best": {k: int(best[k]) for k in by},
                "chosen_median": _num(row["median"]),
                "best_median": _num(best["median"]),
                "gap_pct": _num(row["gap_pct"]),
                "ratio_to_best": _num(row["ratio_to_best"]),
                "ratio_ci": [_num(row["ci_low"]), _num(row["ci_high"])],
                "p_value": _num(row["p_value"]),
                "verdict_vs_best": row["verdict_vs_best"],
                "n": int(row["n"]),
                "passes": bool(row["passes"]),
            }
        )
    note = (
        ""
        if passing or len(keys) == 1
        else (
            f"no setting passes for {metric} at every {target} load: the smallest whose "
            f"worst-case gap ({worst[chosen]:.1f}%) is within the tolerance of the least"
        )
    )
    return (dict(zip(by, map(int, chosen), strict=True)), note), evidence


def _frame_choice(d: pd.DataFrame, target: str) -> tuple[FrameBudget, dict, set | None, str]:
    """The budget, every setting's frame p99, the settings that keep it (None: no frame was
    measured, no constraint) and what the recommendation must say."""
    budget = frame_budget.from_frame(d)
    p99 = frame_budget.worst_by_setting(d[d["background"] == target], SETTINGS)
    if not p99:
        return budget, p99, None, ""
    kept = {k for k, v in p99.items() if budget.keeps(v)}
    if kept:
        return budget, p99, kept, ""
    least = min(p99, key=lambda k: (budget.overrun_ms(p99[k]), k))
    return budget, p99, {least}, budget.none_kept()


def _fastest(d: pd.DataFrame, target: str, tolerance: float) -> tuple:
    """The speed rule alone, without the frame: what a recommender blind to the avatar picks."""
    out: dict = {}
    for metric, by in COMBINED:
        picked, _ = _pick(d, metric, by, target, tolerance)
        if picked is not None:
            out.update(picked[0])
    return tuple(int(out[k]) for k in SETTINGS)


def _text(key: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(SETTINGS, key, strict=True))


def _num(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value, 4)


def recommend(
    df: pd.DataFrame, fingerprint: dict, tolerance: float = DEFAULT_TOLERANCE, **source
) -> dict:
    """The combined recommendation (the content of recommended.json) from a cpu frame."""
    d = metrics.without_warmup(df)
    if "error" in d.columns:
        d = d[d["error"].isna() | (d["error"] == "")]
    target = "companion" if (d["background"] == "companion").any() else "idle"
    budget, frame_p99, kept, frame_note = _frame_choice(d, target)
    chosen: dict = {}
    evidence, notes = [], [frame_note] if frame_note else []
    if budget.idle_over:
        notes.append(budget.idle_warning())
    for metric, by in COMBINED:
        allowed = None
        if kept is not None:  # the frame rule first: only settings that keep the frame
            allowed = {
                tuple(k[SETTINGS.index(b)] for b in by)
                for k in kept
                if all(k[SETTINGS.index(c)] == v for c, v in chosen.items())
            }
        picked, ev = _pick(d, metric, by, target, tolerance, allowed)
        if picked is None:
            raise ValueError(f"no {metric} measurements to recommend from")
        setting, note = picked
        chosen.update(setting)
        evidence += ev
        if note:
            notes.append(note)
    pick_key = tuple(int(chosen[k]) for k in SETTINGS)
    fastest = _fastest(d, target, tolerance) if kept is not None else pick_key
    if fastest != pick_key and fastest in frame_p99 and not budget.keeps(frame_p99[fastest]):
        notes.append(
            f"{_text(fastest)} is faster but its frame p99 ({frame_p99[fastest]:.2f} ms) is "
            f"over the {budget.budget_ms:.2f} ms budget: not picked"
        )
    if target == "idle":
        notes.append(
            "measured idle only: the companion's load may change the answer "
            "(run with backgrounds=idle,companion)"
        )
    untested = sorted(
        {e["verdict_vs_best"] for e in evidence if not stats.is_tested(e["verdict_vs_best"])}
    )
    if untested:
        notes.append("not significance-tested, decided on the gap alone: " + "; ".join(untested))
    loads = sorted({float(f) for f in d.loc[d["background"] == target, "frame_busy"]})
    return {
        "format": FORMAT,
        **{k: int(chosen[k]) for k in SETTINGS},
        "for": target,
        "frame_busy": loads,
        "tolerance_pct": 100 * tolerance,
        "rule": (
            "the settings that keep the avatar's frame (frame p99 within 1000/fps + slack at "
            "every measured load: mateperf.frame_budget, the rule tune uses); among them, per "
            "metric, the smallest setting within the tolerance of the best median and not "
            "significantly worse (Mann–Whitney), at every measured load of the target background"
        ),
        "notes": notes,
        "evidence": evidence,
        **budget.record(),
        "frame_p99_ms": _num(frame_p99.get(pick_key, math.nan)),
        "meets_frame_budget": budget.keeps(frame_p99.get(pick_key)) if frame_p99 else None,
        "frame_p99_by_setting": [
            {
                **dict(zip(SETTINGS, k, strict=True)),
                "frame_p99_ms": _num(v),
                "kept": budget.keeps(v),
            }
            for k, v in sorted(frame_p99.items())
        ],
        "host": host_key(fingerprint),
        "hostname": fingerprint.get("hostname"),
        **source,
    }
