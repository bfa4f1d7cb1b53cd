"""Phase 4 section: detection, the thread/batch sweep under each load, the recommendation."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mateperf import avatar_pacing, frame_budget, metrics, recommend, recommended_file
from mateperf.cpu_topology import CpuTopology
from mateperf.phases.cpu import analyse as cpu
from mateperf.reports.declaration import PhaseReport
from mateperf.reports.format import fmt, fmt_ci, fmt_p, repetition_note, save_figure, table
from mateperf.reports.overview import CLAIMS, ab_row

COLUMNS = (
    ("pp_tps", "pp tok/s", 0),
    ("tg_tps", "tg tok/s", 1),
    ("ttft_ms", "TTFT ms", 0),
    ("e2e_ms", "reply ms", 0),
    ("cpu_ms_per_token", "CPU ms/token", 1),
    ("frame_p50_ms", "frame p50 ms", 1),
    ("frame_p99_ms", "frame p99 ms", 1),
)


def _detection(topo: CpuTopology | None) -> list[str]:
    if topo is None:
        return ["_(this run's fingerprint has no CPU detection)_", ""]
    n = topo.notes
    quota = "none" if topo.cgroup_quota_cpus is None else f"{topo.cgroup_quota_cpus:g} CPUs"
    smt = (
        "unavailable"
        if topo.smt_groups is None
        else ("yes: " + " ".join(str(g) for g in topo.smt_groups if len(g) > 1))
        if topo.smt
        else "no (one logical CPU per core)"
    )
    hybrid = (
        f"performance {topo.performance_cpus}, efficiency {topo.efficiency_cpus}"
        if topo.efficiency_cpus
        else "no"
    )
    rows = [
        ("logical CPUs", topo.logical, "os.cpu_count"),
        ("physical cores", topo.physical, n.get("physical", n.get("smt", ""))),
        ("affinity mask", topo.affinity, n.get("affinity", "")),
        ("cgroup CPU quota", quota, n.get("cgroup", "")),
        ("SMT siblings", smt, n.get("smt", "")),
        ("hybrid cores", hybrid, n.get("hybrid", "")),
        ("load average (1, 5, 15 min)", topo.load_avg, n.get("load_avg", "")),
        ("usable (threads that can run at once)", topo.usable, "affinity, capped by quota"),
        ("usable physical cores", topo.physical_usable, "cores inside the mask"),
    ]
    frame = pd.DataFrame(rows, columns=["detected", "value", "source"])
    frame["value"] = frame["value"].map(lambda v: "unavailable" if v is None else str(v))
    return [table(frame), ""]


def _medians(d: pd.DataFrame) -> pd.DataFrame:
    """One row per condition and setting: median [95% CI] of every metric measured."""
    by = ["condition", *recommended_file.SETTINGS]
    summary = cpu.summarize(d)
    rows = []
    for key, sub in summary.groupby(by, sort=True):
        row = dict(zip(by, key, strict=True))
        row["n"] = int(sub["n"].max())
        stat = sub.set_index("metric")
        for name, label, digits in COLUMNS:
            if name in stat.index:
                r = stat.loc[name]
                row[label] = fmt_ci(r["median"], r["ci_low"], r["ci_high"], digits)
        rows.append(row)
    out = pd.DataFrame(rows).rename(
        columns={"n_threads": "t", "n_threads_batch": "tb", "n_batch": "b", "n_ubatch": "ub"}
    )
    return out.dropna(axis=1, how="all").fillna("–")


def _evidence(rec: dict) -> pd.DataFrame:
    rows = []
    for e in rec["evidence"]:
        rows.append(
            {
                "metric": e["metric"],
                "load": e["condition"],
                "chosen": ", ".join(f"{k}={v}" for k, v in e["chosen"].items()),
                "best": ", ".join(f"{k}={v}" for k, v in e["best"].items()),
                "chosen median": fmt(e["chosen_median"]),
                "best median": fmt(e["best_median"]),
                "gap to best": f"{fmt(e['gap_pct'])}%",
                "chosen/best [95% CI]": fmt_ci(e["ratio_to_best"], *e["ratio_ci"], digits=3),
                "p": fmt_p(e["p_value"]),
                "verdict vs best": e["verdict_vs_best"],
                "n": e["n"],
            }
        )
    return pd.DataFrame(rows)


def _heuristics(d: pd.DataFrame, topo: CpuTopology | None, rec: dict) -> pd.DataFrame:
    """Each rule's thread counts, what runs here, and its measured tg/pp under the target load."""
    if topo is None:
        return pd.DataFrame()
    rows = []
    for r in cpu.rules_measured(d, topo, rec):
        t, tb = r["n_threads"], r["n_threads_batch"]
        row = {
            "rule": r["rule"],
            "n_threads / batch": f"{t} / {tb}",
            "runs here": f"{r['runs'][0]} / {r['runs'][1]}"
            + (" (clamped)" if (t, tb) != r["runs"] else ""),
        }
        for cond, m in r["loads"].items():
            row[f"tg tok/s, {cond} (gap to best)"] = (
                f"{fmt(m['tg_tps'])} ({fmt(100 * m['tg_gap'])}%)"
                if not np.isnan(m["tg_tps"])
                else "not measured"
            )
            row[f"pp tok/s, {cond}"] = fmt(m["pp_tps"], 0)
        row["reasoning"] = r["reasoning"]
        rows.append(row)
    return pd.DataFrame(rows)


def _flips(d: pd.DataFrame) -> pd.DataFrame:
    """The best setting per load: where it flips as the avatar's frame gets busier."""
    labels = {
        "tg_tps": "best n_threads (tg)",
        "pp_tps": "best n_threads_batch (pp)",
        "e2e_ms": "best for the whole reply",
    }
    rows = []
    for load in cpu.best_per_load(d):
        row = {"load": load["load"]}
        for metric, best in load["best"].items():
            row[labels[metric]] = ", ".join(f"{k}={v}" for k, v in best.items())
        if "frame_p99_ms" in load:
            row["frame p99 ms by n_threads"] = ", ".join(
                f"{t}: {fmt(v)}" for t, v in load["frame_p99_ms"].items()
            )
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def _share(value: float) -> str:
    """A share as a percentage ("100%": a bare 1.00 would be read back as the number 1)."""
    return "–" if not np.isfinite(value) else f"{value:.0%}"


def _pacing(d: pd.DataFrame, fps: float) -> list[str]:
    """The avatar stand-in's pacing per load, beside its frame figures: the timer overshoot it
    measured, the share of a core its process used, and whether pacing held (avatar_pacing)."""
    table_rows, sentences = [], []
    for s in cpu.pacing_by_load(d, fps):
        table_rows.append(
            {
                "load": recommend.condition_label("companion", s["frame_busy"]),
                "frame p50 ms": fmt(s["frame_p50_ms"]),
                "frame p99 ms": fmt(s["frame_p99_ms"]),
                "timer overshoot µs": fmt(s[avatar_pacing.OVERSHOOT], 0),
                "peer main thread awake": _share(s[avatar_pacing.AWAKE_SHARE]),
                "peer CPU (cores)": fmt(s[avatar_pacing.BUSY_SHARE], 2),
                "timer resolution": s[avatar_pacing.RESOLUTION] or "–",
                "pacing": "holds" if s["holds"] else "cannot hold",
            }
        )
        if not s["holds"] or not sentences:
            sentences.append(avatar_pacing.sentence(s))
    if not table_rows:
        return []
    return [table(pd.DataFrame(table_rows)), "", *[f"- {t}" for t in sentences if t], ""]


def _plot_threads(d: pd.DataFrame, rec: dict, plots_dir: Path, md_dir: Path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    # prompt rows at the recommended batch pair, so batch sizes do not mix into the curve
    pp_rows = d[(d["n_batch"] == rec["n_batch"]) & (d["n_ubatch"] == rec["n_ubatch"])]
    panels = (
        (axes[0], pp_rows, "n_threads_batch", "pp_tps", "prompt tokens/s (pp)"),
        (axes[1], d, "n_threads", "tg_tps", "generation tokens/s (tg)"),
    )
    for ax, rows, by, metric, title in panels:
        for cond, sub in rows.groupby("condition", sort=True):
            xs, med, lo, hi = cpu.band(sub, by, metric)
            (line,) = ax.plot(xs, med, marker="o", label=cond)
            ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
        ax.axvline(rec[by], color="black", linestyle="--", linewidth=1, label="recommended")
        ax.set_xlabel(by)
        ax.set_ylabel("tokens/s (median, 95% CI)")
        ax.set_title(title)
        ax.set_xticks(sorted(int(x) for x in d[by].unique()))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, plots_dir, "cpu_threads", md_dir, "tokens/s vs threads per load")


def _plot_heatmap(d: pd.DataFrame, rec: dict, plots_dir: Path, md_dir: Path) -> str:
    threads, batches, grid = cpu.batch_grid(d, rec)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(batches), 1.4 + 0.9 * len(threads)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    for i in range(len(threads)):
        for j in range(len(batches)):
            mark = threads[i] == rec["n_threads_batch"] and batches[j] == (
                rec["n_batch"],
                rec["n_ubatch"],
            )
            text = fmt(grid[i, j], 0) + (" ★" if mark else "")
            ax.text(j, i, text, ha="center", va="center", color="white", fontsize=9)
    ax.set_xticks(range(len(batches)), [f"{b}/{u}" for b, u in batches])
    ax.set_yticks(range(len(threads)), [str(t) for t in threads])
    ax.set_xlabel("n_batch / n_ubatch")
    ax.set_ylabel("n_threads_batch")
    ax.set_title(f"prompt tokens/s, {rec['for']} (★ recommended)")
    fig.colorbar(im, ax=ax, label="pp tokens/s (median)")
    fig.tight_layout()
    return save_figure(fig, plots_dir, "cpu_batch_heatmap", md_dir, "pp tokens/s, threads × batch")


def _plot_frames(d: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str | None:
    rows = d[(d["background"] == "companion")]
    if rows.empty or "frame_p99_ms" not in rows.columns or rows["frame_p99_ms"].isna().all():
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for cond, sub in rows.groupby("condition", sort=True):
        xs, med, lo, hi = cpu.band(sub, "n_threads", "frame_p99_ms")
        (line,) = ax.plot(xs, med, marker="o", label=f"{cond}, p99")
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
        xs, med, _, _ = cpu.band(sub, "n_threads", "frame_p50_ms")
        ax.plot(xs, med, marker=".", linestyle=":", color=line.get_color(), label=f"{cond}, p50")
    budget = frame_budget.from_frame(rows)
    ax.axhline(
        budget.budget_ms,
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"frame budget {budget.budget_ms:.2f} ms",
    )
    ax.set_xlabel("n_threads")
    ax.set_xticks(sorted(int(t) for t in rows["n_threads"].unique()))
    ax.set_ylabel("avatar frame interval (ms)")
    ax.set_title("Does the model's threading make the avatar stutter?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, plots_dir, "cpu_frame_time", md_dir, "avatar frame time vs threads")


def _frame_line(rec: dict) -> list[str]:
    """The pick's frame p99 against the budget the recommender kept it within."""
    if rec.get("meets_frame_budget") is None:
        return []
    budget = frame_budget.FrameBudget(
        rec.get("frame_fps") or 1e3 / rec["frame_period_ms"],
        rec["frame_slack_ms"],
        rec.get("frame_p99_idle_ms"),
        rec.get("frame_fps_source", frame_budget.FPS_FROM_PARAM),
    )
    verdict = "kept" if rec["meets_frame_budget"] else "**over**"
    return [
        f"- avatar frame p99 at the pick {fmt(rec['frame_p99_ms'], 2)} ms: {verdict} "
        f"({budget.describe()}; the rule `mateperf tune` uses)"
    ]


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    d = metrics.completed(df)
    params = info.get("params", {})
    topo = cpu.topology_from(info)
    failed = df[df.get("error", pd.Series("", index=df.index)).fillna("") != ""]
    rec = cpu.recommendation(df, info.get("fingerprint", {}), info.get("run_id", ""))
    conditions = ", ".join(sorted(d["condition"].unique()))
    peer = params.get("peer", "python")
    settings = ", ".join(f"{k}={rec[k]}" for k in recommended_file.SETTINGS)
    parts = [
        "## Phase 4 — CPU threads under the companion's load",
        "",
        f"Model `{df['model_file'].iloc[0]}`, n_ctx {params.get('n_ctx')}; "
        f"pp{params.get('pp_tokens')} and tg{params.get('tg_tokens')} (llama-bench method) "
        f"and one companion reply of up to {params.get('max_tokens')} tokens "
        "per trial, each trial on a fresh model load; "
        f"{params.get('trials')} trials per setting, settings in a seeded random order per "
        f"round (seed {params.get('seed')}), the first trial a warm-up, left out.",
        "",
        f"Loads measured: {conditions}. `companion X%`: a {peer} peer at "
        f"{params.get('fps')} fps, its main thread busy for X% of every frame, emotion commands "
        f"streaming to it at {params.get('command_hz')}/s, all during the measurement.",
        "",
        *([note, ""] if (note := repetition_note(df, params, "setting")) else []),
        "### Detected CPU budget",
        "",
        *_detection(topo),
        "### Recommendation",
        "",
        f"**{settings}** — for `{rec['for']}` "
        f"(frame_busy {', '.join(f'{f:.0%}' for f in rec['frame_busy'])}). "
        f"Rule: {rec['rule']}; tolerance {rec['tolerance_pct']:g}%. Written to "
        f"`{info.get('run_id', '?')}/recommended.json`; load it with "
        "`mateperf run PHASE --config PATH` or `LlamaConfig.from_recommended(PATH, model)`.",
        "",
        *_frame_line(rec),
        *[f"- {note}" for note in rec["notes"]],
        "",
        table(_evidence(rec)),
        "",
        "### Against the usual rules",
        "",
        table(_heuristics(d, topo, rec)),
        "",
        "### Where the best setting flips as the avatar gets busier",
        "",
        table(_flips(d)),
        "",
        *(
            ["### The avatar stand-in's pacing", "", *pacing]
            if (pacing := _pacing(d, float(params.get("fps") or 60.0)))
            else []
        ),
        _plot_threads(d, rec, plots_dir, md_dir),
        "",
    ]
    if d["n_batch"].nunique() > 1 or d["n_ubatch"].nunique() > 1:
        parts += [_plot_heatmap(d, rec, plots_dir, md_dir), ""]
    frames = _plot_frames(d, plots_dir, md_dir)
    if frames:
        parts += [frames, ""]
    parts += [
        "### Every setting (median [95% CI] over trials)",
        "",
        "t = n_threads (generation), tb = n_threads_batch (prompt), b/ub = n_batch/n_ubatch.",
        "",
        table(_medians(d)),
        "",
    ]
    if len(failed):
        parts += [
            f"{len(failed)} trial(s) failed and are left out:",
            "",
            *[
                f"- `{r['condition']}` t={r['n_threads']}: {r['error']}"
                for _, r in failed.iterrows()
            ],
            "",
        ]
    return "\n".join(parts)


def summary_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    """FINAL_RESULTS.md's summary rows: the recommended n_threads against the original 6, in
    generation speed and (the recommendation keeps the avatar's frame) in frame p99."""
    rec = cpu.recommendation(df, info.get("fingerprint", {}), info.get("run_id", ""))
    return [
        ab_row(
            "cpu",
            f"recommended n_threads={rec['n_threads']} instead of 6 (runs as {original}), {cond}",
            metrics.get("cpu", metric),
            r,
            CLAIMS["threads"],
        )
        for metric in ("tg_tps", "frame_p99_ms")
        for cond, original, r in cpu.against_original(df, rec, metric)
    ]


def variant_row(df: pd.DataFrame, info: dict) -> dict:
    """This run's columns in the table of the phase's variants."""
    rec = cpu.recommendation(df, info.get("fingerprint", {}), info.get("run_id", ""))
    return {
        "recommended": ", ".join(f"{k}={rec[k]}" for k in recommended_file.SETTINGS),
        "for": f"{rec['for']} {', '.join(f'{f:.0%}' for f in rec['frame_busy'])}",
        "tg gap to best": ", ".join(
            f"{e['condition']}: {fmt(e['gap_pct'])}%"
            for e in rec["evidence"]
            if e["metric"] == "tg_tps"
        ),
    }


REPORT = PhaseReport(
    section=section,
    summary_rows=summary_rows,
    variant_row=variant_row,
    sweep_extra=None,
)
