"""Compare two runs of a phase, or a sweep's points with its best: a verdict per metric.

Like llama.cpp's compare-llama-bench.py, rows are matched on what identifies a test (the
phase's declared identity columns, and any parameter that varies inside a run, such as a
swept one); like `asv compare`, only declared metrics are compared (mateperf.metrics), each
with A, B, the ratio of medians with its CI and a rank-test verdict.

The unit of replication is the trial. A request-level metric is reduced to one statistic per
trial (median, p95, p99) and those are compared across trials; a trial-level metric has one
value per trial; a run-level metric has one value per run, so two single runs get no test
("not tested") and replicated runs (a sweep's rounds) do. Warm-up rows never count. Counts at
which the rank test cannot reach the 5% level whatever the data (2+2, 3+3) are not tested either,
and the verdict says what a test needs (stats.too_few_verdict).

This module computes; `mateperf.reports.compare` formats its tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mateperf import host, metrics, phases, results, stats
from mateperf.errors import BadInput
from mateperf.metrics import Metric

STAT_LABELS = {"median": "trial median", "p95": "trial p95", "p99": "trial p99", None: "per trial"}
_PERCENTILES = {"median": 50, "p95": 95, "p99": 99}


def trial_values(rows: pd.DataFrame, metric: Metric, stat: str | None = None) -> np.ndarray:
    """One value of `metric` per replicate (round, trial) of `rows`.

    `stat` reduces a request-level metric's rows of one trial (median, p95, p99); a
    trial-level metric has one row per trial (its median is taken should a trial have more).
    """
    if metric.level != metrics.REQUEST and not metrics.replicate_keys(rows):
        # no trial column: each row of a trial-level metric is a replicate of its own
        if metric.name not in rows.columns:
            return np.array([], float)
        return rows[metric.name].dropna().astype(float).to_numpy()
    q = _PERCENTILES[stat or "median"] if metric.level == metrics.REQUEST else 50
    return metrics.per_replicate(rows, metric.name, q)


def statistics_for(metric: Metric) -> tuple[str | None, ...]:
    return metrics.TRIAL_STATS if metric.level == metrics.REQUEST else (None,)


def compare_metric(
    ga: pd.DataFrame, gb: pd.DataFrame, metric: Metric, stat: str | None = None
) -> stats.ABResult:
    """B against A for one metric, at the level that repeats independently."""
    return stats.compare(
        trial_values(ga, metric, stat),
        trial_values(gb, metric, stat),
        higher_is_better=metric.higher_is_better,
        words=metric.words,
    )


def run_level_table(phase: str, df: pd.DataFrame) -> pd.DataFrame:
    """The phase's run-level metrics, one row per replicate (empty if it declares none)."""
    derive = phases.declared(phase).trial_table
    if derive is None or not any(m.level == metrics.RUN for m in metrics.for_phase(phase)):
        return pd.DataFrame()
    return derive(df)


def _keys(phase: str, a: pd.DataFrame, b: pd.DataFrame, params: set[str]) -> list[str]:
    keys = [c for c in metrics.IDENTITY.get(phase, ()) if c in a.columns and c in b.columns]
    for p in sorted(params):
        if p in keys or p not in a.columns or p not in b.columns:
            continue
        if a[p].nunique(dropna=False) > 1 or b[p].nunique(dropna=False) > 1:
            keys.append(p)
    return keys


def _matched(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]):
    """(key values, rows of A, rows of B) for every group of A that B has too."""
    groups = a.groupby(keys, sort=True, dropna=False) if keys else [((), a)]
    for key, ga in groups:
        key = key if isinstance(key, tuple) else (key,)
        gb = b
        for name, value in zip(keys, key, strict=True):
            gb = gb[gb[name].isna()] if pd.isna(value) else gb[gb[name] == value]
        if not gb.empty:
            yield dict(zip(keys, key, strict=True)), ga, gb


def _row(key: dict, metric: Metric, stat: str | None, r: stats.ABResult, level: str) -> dict:
    return {
        **{k: v for k, v in key.items() if not pd.isna(v)},
        "metric": metric.name,
        "statistic": "per run" if level == metrics.RUN else STAT_LABELS[stat],
        "A": r.median_a,
        "B": r.median_b,
        "B/A": r.ratio,
        "ci_low": r.ci_low,
        "ci_high": r.ci_high,
        "p": r.p_value,
        "verdict": r.verdict,
        "n": f"{r.n_a}/{r.n_b}",
    }


def compare_frames(phase: str, a: pd.DataFrame, b: pd.DataFrame, params: set[str]) -> pd.DataFrame:
    """Per matched group, declared metric and per-trial statistic: A, B, B/A [CI], p, verdict."""
    # run-level metrics are derived from the whole frame: the phase leaves out its own warm-up
    # (the memory phase needs the warm-up replies' garbage to reconstruct the live heap)
    run_a, run_b = run_level_table(phase, a), run_level_table(phase, b)
    a, b = metrics.without_warmup(a), metrics.without_warmup(b)
    declared = [m for m in metrics.present(phase, a) if m.name in b.columns]
    keys = _keys(phase, a, b, params)
    rows = []
    for key, ga, gb in _matched(a, b, keys):
        for metric in declared:
            if metric.level == metrics.RUN:
                continue
            if ga[metric.name].isna().all() or gb[metric.name].isna().all():
                continue
            for stat in statistics_for(metric):
                r = compare_metric(ga, gb, metric, stat)
                rows.append(_row(key, metric, stat, r, metric.level))
    if not run_a.empty and not run_b.empty:
        run_keys = [k for k in keys if k in run_a.columns and k in run_b.columns]
        for key, ga, gb in _matched(run_a, run_b, run_keys):
            for metric in metrics.for_phase(phase):
                if metric.level != metrics.RUN or metric.name not in ga or metric.name not in gb:
                    continue
                r = compare_metric(ga, gb, metric)
                rows.append(_row(key, metric, None, r, metrics.RUN))
    return pd.DataFrame(rows)


def compare_runs(path_a, path_b) -> tuple[pd.DataFrame, list[str]]:
    """Per matched group and metric: A, B, ratio B/A with CI, p, verdict; plus warnings."""
    try:
        run_a, run_b = results.RunDir.open(path_a), results.RunDir.open(path_b)
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    if run_a.phase != run_b.phase:
        raise BadInput(f"cannot compare phase {run_a.phase} with phase {run_b.phase}")
    for run in (run_a, run_b):
        if not run.has_frame():
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
    params = set(run_a.info.get("params", {})) | set(run_b.info.get("params", {}))
    params |= set(run_a.info.get("grid", {})) | set(run_b.info.get("grid", {}))
    table = compare_frames(run_a.phase, run_a.read_frame(), run_b.read_frame(), params)
    if table.empty:
        warnings.append("warning: no rows of A matched rows of B")
    return table, warnings


def called_different(table: pd.DataFrame) -> tuple[int, int, int]:
    """(metrics called different, metrics tested, metrics that could not be tested)."""
    if table.empty:
        return 0, 0, 0
    tested_rows = table["verdict"].map(stats.is_tested)
    untested = int((~tested_rows).sum())
    tested = len(table) - untested
    different = int((tested_rows & (table["verdict"] != stats.NO_DIFFERENCE)).sum())
    return different, tested, untested


# --- a sweep's points -----------------------------------------------------------------------


def _points(rows: pd.DataFrame, swept: list[str]):
    for key, group in rows.groupby(swept, sort=True, dropna=False):
        yield dict(zip(swept, key if isinstance(key, tuple) else (key,), strict=True)), group


def metric_by_point(rows: pd.DataFrame, swept: list[str], metric: str) -> pd.DataFrame:
    """Median of the per-trial values of `metric` and its 95% CI for each swept combination.

    Each trial (each round's trial) counts once: a request-level metric enters through its
    per-trial median, so requests of one trial are never pooled as independent.
    """
    decl = metrics.find(metric)
    out = []
    for key, group in _points(rows, swept):
        s = stats.summarize(trial_values(group, decl, "median"))
        out.append({**key, **s})
    return pd.DataFrame(out)


def against_best(
    rows: pd.DataFrame, swept: list[str], metric: str, summary: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The best point by median, and every other point's ratio to it with the compare verdict.

    The same test as `mateperf compare`: per-trial values, ratio of medians with a bootstrap
    CI, Mann–Whitney across trials; verdict words say how the point does against the best.
    """
    decl = metrics.find(metric)
    if summary is None:
        summary = metric_by_point(rows, swept, metric)
    if summary.empty or summary["median"].isna().all():
        return pd.DataFrame()
    best = summary["median"].idxmax() if decl.higher_is_better else summary["median"].idxmin()
    best_key = {p: summary.at[best, p] for p in swept}
    groups = list(_points(rows, swept))
    best_rows = next(g for k, g in groups if k == best_key)
    out = []
    for key, group in groups:
        r = compare_metric(best_rows, group, decl, "median")
        is_best = key == best_key
        out.append(
            {
                **key,
                "median": r.median_b,
                "ratio_to_best": r.ratio,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "p": r.p_value,
                "verdict": "best" if is_best else r.verdict,
                "n": r.n_b,
            }
        )
    return pd.DataFrame(out)


def ties_with_best(ranked: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame, int, int]:
    """From `against_best`: (the best point, the tested points not distinguishable from it, how
    many points were tested against it, how many others there are; those not tested had too few
    trials for the rank test)."""
    best = ranked[ranked["verdict"] == "best"].iloc[0]
    others = ranked[ranked["verdict"] != "best"]
    # astype: with one point there are no others, and an empty object mask selects columns
    tested = others[others["verdict"].map(stats.is_tested).astype(bool)]
    return best, tested[tested["verdict"] == stats.NO_DIFFERENCE], len(tested), len(others)


def run_level_specs(phase: str, df: pd.DataFrame, swept: list[str]) -> list:
    """(label, rows, metric) for the phase's run-level metrics, one row per point and round.

    A memory session is one replicate; the phase derives its figures (leak slope, RSS at the
    checkpoints) from each point-round's whole frame, and the rounds are the replicates.
    """
    declared = [m for m in metrics.for_phase(phase) if m.level == metrics.RUN]
    derive = phases.declared(phase).trial_table
    if not declared or derive is None or "point" not in df.columns or not swept:
        return []
    parts = []
    for _, rows in df.groupby("point", sort=True):
        table_ = derive(rows)
        for name in swept:
            table_[name] = rows[name].iloc[0]
        parts.append(table_)
    derived = pd.concat(parts, ignore_index=True)
    return [(m.title, derived, m.name) for m in declared if m.name in derived.columns]


def sweep_specs(phase: str, df: pd.DataFrame, swept: list[str]) -> list:
    """(label, rows, metric) a sweep's section ranks: the phase's declared `sweep_metrics`,
    then its run-level metrics (`run_level_specs`)."""
    own = phases.declared(phase).sweep_metrics
    return (own(df) if own is not None else []) + run_level_specs(phase, df, swept)
