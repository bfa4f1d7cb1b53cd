"""A sweep's section: metric against each swept parameter with CI bands, and the point table."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mateperf import phases, stats
from mateperf.report import fmt, fmt_ci, save_figure, table


def metric_by_point(rows: pd.DataFrame, swept: list[str], metric: str) -> pd.DataFrame:
    """Median and 95% CI of `metric` for each combination of swept values."""
    out = []
    for key, group in rows.groupby(swept, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        s = stats.summarize(group[metric])
        out.append({**dict(zip(swept, key, strict=True)), **s})
    return pd.DataFrame(out)


def _plot_against(summary: pd.DataFrame, swept: list[str], x: str, label: str, ax) -> None:
    others = [p for p in swept if p != x]
    combos = (
        [()]
        if not others
        else list(itertools.product(*[sorted(summary[o].unique()) for o in others]))
    )
    for combo in combos:
        sel = summary
        for name, value in zip(others, combo, strict=True):
            sel = sel[sel[name] == value]
        sel = sel.sort_values(x)
        if sel.empty:
            continue
        name = ", ".join(f"{n}={v}" for n, v in zip(others, combo, strict=True)) or label
        line = ax.plot(sel[x], sel["median"], marker="o", label=name)[0]
        ax.fill_between(sel[x], sel["ci_low"], sel["ci_high"], alpha=0.2, color=line.get_color())
    ax.set_xticks(sorted(summary[x].unique()))
    ax.set_xlabel(x)
    ax.set_ylabel(label)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize="small")


def _best_reading(summary: pd.DataFrame, swept: list[str], metric: str) -> str:
    """Name the best point, and the points whose CI overlaps it (not distinguishable)."""
    best = (
        summary["median"].idxmax() if stats.higher_is_better(metric) else summary["median"].idxmin()
    )

    def where(i) -> str:
        return ", ".join(f"{p}={summary.at[i, p]}" for p in swept)

    lo, hi = summary.at[best, "ci_low"], summary.at[best, "ci_high"]
    ties = [
        i
        for i in summary.index
        if i != best and summary.at[i, "ci_low"] <= hi and summary.at[i, "ci_high"] >= lo
    ]
    text = f"Best median: {where(best)} ({fmt(summary.at[best, 'median'])})."
    if ties:
        text += (
            " Not distinguishable from it (95% CIs overlap): "
            + "; ".join(where(i) for i in ties)
            + "."
        )
    return text


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    phase = info["phase"]
    grid = info.get("grid", {})
    swept = [p for p in grid if p in df.columns]
    module = phases.module(phase)
    specs = module.sweep_metrics(df) if hasattr(module, "sweep_metrics") else []
    parts = [
        f"## Sweep of phase {phase}: {' × '.join(f'{k} ∈ {v}' for k, v in grid.items())}",
        "",
        f"Fixed: {info.get('fixed') or 'defaults'}. Points ok: {info.get('points_ok', '?')}, "
        f"failed: {info.get('points_failed', '?')}. Bands are 95% CIs of the median.",
        "",
    ]
    numeric = [p for p in swept if pd.api.types.is_numeric_dtype(df[p])]
    for i, (label, rows, metric) in enumerate(specs):
        if rows.empty or not swept:
            continue
        summary = metric_by_point(rows, swept, metric)
        if numeric:
            fig, axes = plt.subplots(
                1, len(numeric), figsize=(4.8 * len(numeric), 3.6), squeeze=False
            )
            for ax, x in zip(axes[0], numeric, strict=True):
                _plot_against(summary, swept, x, label, ax)
            fig.suptitle(f"{label} across the sweep")
            name = f"sweep_{phase}_{i}_{metric}"
            parts += [save_figure(fig, plots_dir, name, md_dir, label), ""]
        shown = summary[swept].copy()
        shown[f"{label} median [95% CI]"] = [
            fmt_ci(r["median"], r["ci_low"], r["ci_high"]) for _, r in summary.iterrows()
        ]
        shown["n"] = summary["n"]
        parts += [f"### {label}", "", table(shown), ""]
        parts += [_best_reading(summary, swept, metric), ""]
    return "\n".join(parts)
