"""Helpers for exploring stored runs in JupyterLab (notebooks/00_explore.ipynb)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mateperf import results, stats


def runs_table(root: Path | None = None) -> pd.DataFrame:
    """One row per stored run: id, phase, kind, status, start and parameters."""
    rows = []
    for run in results.list_runs(root):
        rows.append(
            {
                "run_id": run.run_id,
                "phase": run.phase,
                "kind": run.info.get("kind", "run"),
                "status": run.info.get("status"),
                "started_at": run.info.get("started_at"),
                "path": str(run.path),
                **{f"p.{k}": v for k, v in run.info.get("params", {}).items()},
            }
        )
    return pd.DataFrame(rows)


def load(run_dirs: list[str | Path], phase: str | None = None) -> pd.DataFrame:
    """The tidy rows of several runs in one frame; run_id tells them apart."""
    df = results.load_runs([Path(p) for p in run_dirs], phase)
    if "discarded" in df:
        df = df[~df["discarded"].astype(bool)]
    return df


def plot_metric(df: pd.DataFrame, metric: str, by: str = "run_id", hue: str | None = None):
    """Median of `metric` per value of `by` with 95% CI error bars, one series per `hue`."""
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = [(None, df)] if not hue else list(df.groupby(hue, sort=True))
    width = 0.8 / max(1, len(groups))
    categories = sorted(df[by].dropna().unique(), key=str)
    for i, (name, group) in enumerate(groups):
        xs, meds, lows, highs = [], [], [], []
        for j, cat in enumerate(categories):
            s = stats.summarize(group.loc[group[by] == cat, metric])
            if s["n"] == 0:
                continue
            xs.append(j + (i - (len(groups) - 1) / 2) * width)
            meds.append(s["median"])
            lows.append(s["median"] - (s["ci_low"] if s["n"] > 1 else s["median"]))
            highs.append((s["ci_high"] if s["n"] > 1 else s["median"]) - s["median"])
        ax.bar(
            xs, meds, width=width, yerr=[lows, highs], capsize=3, label=str(name) if hue else None
        )
    ax.set_xticks(range(len(categories)), [str(c) for c in categories], rotation=30, ha="right")
    ax.set_xlabel(by)
    ax.set_ylabel(f"{metric} (median, 95% CI)")
    if hue:
        ax.legend(title=hue, fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
