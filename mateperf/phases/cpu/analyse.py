"""Reading a cpu frame: summaries per load and setting, the recommendation, the sweep's metrics.

Trials that count are `metrics.completed` (warm-up and failed trials left out).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mateperf import metrics, progress, recommend, stats


def _tolerance(df: pd.DataFrame) -> float:
    if "tolerance" in df.columns:
        return float(df["tolerance"].iloc[0])
    return recommend.DEFAULT_TOLERANCE


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Median and CI per condition and setting for every metric measured."""
    d = metrics.completed(df)
    names = [m.name for m in metrics.present("cpu", d) if d[m.name].notna().any()]
    by = ["condition", "background", "frame_busy", *recommend.SETTINGS]
    parts = []
    for key, sub in d.groupby(by, sort=True):
        for name in names:
            values = sub[name].dropna()
            if values.empty:
                continue
            s = stats.summarize(values)
            parts.append({**dict(zip(by, key, strict=True)), "metric": name, **s})
    return pd.DataFrame(parts)


def recommendation(df: pd.DataFrame, fingerprint: dict, run_id: str = "") -> dict:
    """recommended.json's content for this run (see mateperf.recommend)."""
    model_file = str(df["model_file"].iloc[0]) if "model_file" in df.columns else ""
    return recommend.recommend(
        df, fingerprint, _tolerance(df), run_id=run_id, model_file=model_file
    )


def sweep_metrics(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    out = []
    for cond, sub in metrics.completed(df).groupby("condition", sort=True):
        out += [
            (f"generation tokens/s, {cond}", sub, "tg_tps"),
            (f"prompt tokens/s, {cond}", sub, "pp_tps"),
        ]
    return out


def per_condition(df: pd.DataFrame) -> pd.DataFrame:
    """The recommender's rule per metric and load (mateperf.recommend.per_condition)."""
    return recommend.per_condition(metrics.completed(df), _tolerance(df))


def write_recommendation(run, df: pd.DataFrame) -> Path:
    """Write recommended.json into the run directory; returns its path."""
    rec = recommendation(df, run.info.get("fingerprint", {}), run.run_id)
    path = recommend.write(run.path / "recommended.json", rec)
    say = progress.reporter("cpu")
    chosen = ", ".join(f"{k}={rec[k]}" for k in recommend.SETTINGS)
    say(f"recommended for {rec['for']}: {chosen} -> {path}")
    for note in rec["notes"]:
        say(f"note: {note}")
    return path
