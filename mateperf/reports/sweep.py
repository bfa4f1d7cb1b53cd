"""A sweep's section: metric against each swept parameter with CI bands, and the point table."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mateperf import compare, stats
from mateperf.reports import declaration
from mateperf.reports.format import fmt, fmt_ci, fmt_p, save_figure, table
from mateperf.reports.header import run_header


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


def _where(row, swept: list[str]) -> str:
    return ", ".join(f"{p}={row[p]}" for p in swept)


def _best_reading(table_: pd.DataFrame, swept: list[str], metric: str) -> str:
    """Name the best point, the points not distinguishable from it, and the tests made."""
    best, ties, n_tested, n_others = compare.ties_with_best(table_)
    text = f"Best median: {_where(best, swept)} ({fmt(best['median'])})."
    if len(ties):
        text += (
            " Not distinguishable from it: "
            + "; ".join(_where(r, swept) for _, r in ties.iterrows())
            + "."
        )
    text += f" Comparisons made: {n_tested} (each other point against the best)."
    if n_tested < n_others:
        k = stats.rank_test_min_n()
        text += (
            " Points with too few trials are not tested (a rank test needs "
            f"{k}+{k}); sweep with more trials or rounds."
        )
    return text


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    phase = info["phase"]
    grid = info.get("grid", {})
    swept = [p for p in grid if p in df.columns]
    specs = compare.sweep_specs(phase, df, swept)
    parts = [
        f"## Sweep of phase {phase}: {' × '.join(f'{k} ∈ {v}' for k, v in grid.items())}",
        "",
        f"Fixed: {info.get('fixed') or 'defaults'}. Points ok: {info.get('points_ok', '?')}, "
        f"failed: {info.get('points_failed', '?')}. Each trial counts once (a per-request "
        "metric through its per-trial median); bands are 95% CIs of the median of trials. "
        "Every point is compared with the best one as `mateperf compare` does (ratio of "
        "medians with a bootstrap CI, Mann–Whitney across trials at the 5% level); there is no "
        "correction for the number of comparisons, and the best was picked from the same data, "
        "so a close second is called worse by chance about 1 time in 20.",
        "",
    ]
    numeric = [p for p in swept if pd.api.types.is_numeric_dtype(df[p])]
    for i, (label, rows, metric) in enumerate(specs):
        if rows.empty or not swept:
            continue
        summary = compare.metric_by_point(rows, swept, metric)
        if summary.empty:
            continue
        if numeric:
            fig, axes = plt.subplots(
                1, len(numeric), figsize=(4.8 * len(numeric), 3.6), squeeze=False
            )
            for ax, x in zip(axes[0], numeric, strict=True):
                _plot_against(summary, swept, x, label, ax)
            fig.suptitle(f"{label} across the sweep")
            name = f"sweep_{phase}_{i}_{metric}"
            parts += [save_figure(fig, plots_dir, name, md_dir, label), ""]
        ranked = compare.against_best(rows, swept, metric, summary)
        shown = ranked[swept].copy()
        shown[f"{label} median [95% CI]"] = [
            fmt_ci(r["median"], r["ci_low"], r["ci_high"]) for _, r in summary.iterrows()
        ]
        shown["point / best [95% CI]"] = [
            "1 (best)"
            if r["verdict"] == "best"
            else fmt_ci(r["ratio_to_best"], r["ci_low"], r["ci_high"], 3)
            for _, r in ranked.iterrows()
        ]
        shown["p"] = [
            fmt_p(v) if r["verdict"] != "best" else ""
            for v, (_, r) in zip(ranked["p"], ranked.iterrows(), strict=True)
        ]
        shown["verdict"] = ranked["verdict"]
        shown["trials"] = summary["n"]
        parts += [f"### {label}", "", table(shown), ""]
        parts += [_best_reading(ranked, swept, metric), ""]
    # what only the phase knows how to show per point (the gpu phase: VRAM against predictions)
    extra = declaration.declared(phase).sweep_extra
    if extra is not None:
        parts += [extra(df, info, plots_dir, md_dir).rstrip(), ""]
    return "\n".join(parts)


def write_markdown(run) -> None:
    """The sweep's `<phase>.md` beside its combined frame (nothing when no point-round ran)."""
    if not run.has_frame(run.phase):
        return
    df = run.read_frame(run.phase)
    md = run_header(run.info) + "\n" + section(df, run.info, run.plots_dir, run.path)
    run.write_text(f"{run.phase}.md", md)
