"""Helpers for exploring stored runs in JupyterLab (notebooks/00_explore.ipynb)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mateperf import compare, metrics, results, stats


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
    return metrics.without_warmup(df)


def declared(df: pd.DataFrame) -> list[str]:
    """The metrics declared for the phases in `df` (what the dropdowns offer)."""
    phases = df["phase"].dropna().unique() if "phase" in df.columns else []
    return [m.name for p in phases for m in metrics.present(str(p), df)]


def replicate_values(rows: pd.DataFrame, metric: str) -> list[float]:
    """One value per run and trial (round, trial): the replicates a CI may be computed over.

    Per-request rows of one trial are not independent; they are reduced to the trial's median.
    """
    decl = metrics.find(metric)
    if decl is None:
        raise ValueError(f"{metric!r} is not a declared metric (see mateperf.metrics)")
    out: list[float] = []
    groups = rows.groupby("run_id", sort=True) if "run_id" in rows.columns else [("", rows)]
    for _, run_rows in groups:
        out += [float(v) for v in compare.trial_values(run_rows, decl, "median")]
    return out


def plot_metric(df: pd.DataFrame, metric: str, by: str = "run_id", hue: str | None = None):
    """Median over trials of `metric` per value of `by` (95% CI bars), one series per `hue`.

    Each trial counts once (a request-level metric through its per-trial median).
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = [(None, df)] if not hue else list(df.groupby(hue, sort=True))
    width = 0.8 / max(1, len(groups))
    categories = sorted(df[by].dropna().unique(), key=str)
    for i, (name, group) in enumerate(groups):
        xs, meds, lows, highs = [], [], [], []
        for j, cat in enumerate(categories):
            s = stats.summarize(replicate_values(group[group[by] == cat], metric))
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
    ax.set_ylabel(f"{metrics.find(metric).title}: median of trials, 95% CI")
    if hue:
        ax.legend(title=hue, fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
