"""Phase 6 section: a whole companion turn, every optimisation against the original settings."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mateperf import avatar_pacing, metrics
from mateperf.phases.final import analyse as final
from mateperf.reports.axes import finite_range, ratio_axis
from mateperf.reports.declaration import PhaseReport
from mateperf.reports.format import fmt, fmt_ci, fmt_p, save_figure, table
from mateperf.reports.overview import CLAIMS, summary_row

ARM_WORDS = {
    final.BASELINE: "original settings",
    "threads": "+ recommended threads/batch",
    "warmup": "+ warm-up after load",
    "batching": "+ one batch per emotion beat",
    "profile": "+ selected GPU profile",
    final.OPTIMISED: "all four together",
}


def _settings(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    first = df.drop_duplicates("arm").set_index("arm")
    cfg_columns = [c for c in first.columns if c.startswith("cfg_")]
    baseline = first.loc[final.BASELINE, cfg_columns] if final.BASELINE in first.index else None
    for arm in [a for a in final.ARMS if a in first.index]:
        r = first.loc[arm]
        same = arm != final.BASELINE and baseline is not None and r[cfg_columns].equals(baseline)
        rows.append(
            {
                "arm": arm,
                "what": ARM_WORDS[arm] + (" — same settings as the baseline here" if same else ""),
                "n_threads / batch": f"{r['cfg_n_threads']} / {r['cfg_n_threads_batch']}",
                "n_batch / n_ubatch": f"{r['cfg_n_batch']} / {r['cfg_n_ubatch']}",
                "n_gpu_layers": r["cfg_n_gpu_layers"],
                "warm-up": "yes" if r["cfg_warmup"] else "no",
                "commands": "one batch per beat" if r["cfg_batching"] else "one by one, waited",
                "profile": r["cfg_profile"],
            }
        )
        if "cfg_type_k" in r:  # runs stored before KV cache types were an arm setting lack it
            kv = (
                r["cfg_type_k"]
                if r["cfg_type_k"] == r["cfg_type_v"]
                else "/".join((r["cfg_type_k"], r["cfg_type_v"]))
            )
            rows[-1]["KV cache"] = f"{kv}, flash attention {'on' if r['cfg_flash_attn'] else 'off'}"
    return pd.DataFrame(rows)


def _medians(d: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (peer, arm), sub in final.arm_medians(d).groupby(["peer", "arm"], sort=False):
        row = {"peer": peer, "arm": arm, "n": int(sub["n"].iloc[0])}
        for _, r in sub.iterrows():
            m = metrics.get("final", r["metric"])
            digits = 0 if m.unit in ("ms", "MiB") else 1
            row[m.title] = fmt_ci(r["median"], r["ci_low"], r["ci_high"], digits)
        rows.append(row)
    return pd.DataFrame(rows)


def _vs_baseline(ab: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in ab.iterrows():
        m = metrics.get("final", r["metric"])
        rows.append(
            {
                "peer": r["peer"],
                "arm": r["arm"],
                "metric": m.title if m else r["metric"],
                "baseline": fmt(r["baseline"]),
                "arm median": fmt(r["arm_median"]),
                "arm/baseline [95% CI]": fmt_ci(r["ratio"], r["ci_low"], r["ci_high"], 2),
                "p": fmt_p(r["p_value"]),
                "verdict": r["verdict"],
                "n": r["n"],
            }
        )
    return pd.DataFrame(rows)


def _add_up(ab: pd.DataFrame) -> pd.DataFrame:
    t = final.add_up(ab)
    if t.empty:
        return t
    t["metric"] = t["metric"].map(lambda n: metrics.get("final", n).title)
    t["product of single ratios"] = t["product of single ratios"].map(lambda v: fmt(v, 2))
    t["measured combination [95% CI]"] = [
        fmt_ci(v, lo, hi, 2)
        for v, (lo, hi) in zip(t["measured combination"], t["combination CI"], strict=True)
    ]
    return t.drop(columns=["measured combination", "combination CI"])


def _plot_forest(ab: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str | None:
    """One panel per metric (four to a row), each arm's ratio to the baseline with its CI on
    a log axis labelled in plain ratios; the peers' key below the panels, off the data."""
    if ab.empty:
        return None
    names = [m.name for m in metrics.for_phase("final") if m.name in set(ab["metric"])]
    arms = [a for a in final.ARMS if a in set(ab["arm"])]
    peers = sorted(ab["peer"].unique())
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(2.7 * cols, 0.9 + (0.3 * len(arms) + 0.9) * rows),
        sharey=True,
        squeeze=False,
    )
    for ax, name in zip(axes.flat[: len(names)], names, strict=True):
        sub = ab[ab["metric"] == name]
        for j, peer in enumerate(peers):
            r = sub[sub["peer"] == peer].set_index("arm")
            r = r.loc[[a for a in arms if a in r.index]]
            ys = [arms.index(a) + 0.15 * j for a in r.index]
            err = [r["ratio"] - r["ci_low"], r["ci_high"] - r["ratio"]]
            ax.errorbar(r["ratio"], ys, xerr=err, fmt="o", ms=4, capsize=3, label=peer)
        ax.axvline(1.0, color="grey", linewidth=1)
        ratio_axis(ax, *finite_range(sub["ci_low"], sub["ratio"], sub["ci_high"]))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(metrics.get("final", name).label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_yticks(range(len(arms)), arms)
    axes[0, 0].invert_yaxis()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    key = {"title": "peer", "fontsize": 8, "title_fontsize": 8}
    spare = axes.flat[len(names) :]
    for ax in spare:
        ax.axis("off")
    fig.suptitle("arm / baseline (median ratio, 95% CI; left of 1 = lower)", fontsize=10)
    if len(spare):  # the peers' key in a spare cell of the grid, off every panel's data
        spare[0].legend(handles, labels, loc="center", **key)
        fig.tight_layout()
    else:
        fig.legend(handles, labels, loc="lower center", ncol=len(peers), **key)
        fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    return save_figure(fig, plots_dir, "final_vs_baseline", md_dir, "each arm against baseline")


def _pacing(d: pd.DataFrame, params: dict) -> list[str]:
    """The avatar stand-in's timer and CPU beside the frame figures (avatar_pacing)."""
    line = avatar_pacing.sentence(final.pacing(d, params))
    return [line, ""] if line else []


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    d = metrics.completed(df)
    params = info.get("params", {})
    ab = final.against_baseline(df)
    first = df.iloc[0]
    failed = df[df["error"].fillna("") != ""]
    vram = str(first.get("vram_status", ""))
    parts = [
        "## Phase 6 — Final: a whole companion turn, original settings against every optimisation",
        "",
        f"Model `{first['model_file']}`, n_ctx {params.get('n_ctx')}, replies of up to "
        f"{params.get('max_tokens')} tokens; an emotion beat every {params.get('beat_chunks')} "
        f"pieces of text and at the emotion tag, to a peer at {params.get('fps')} fps busy for "
        f"{float(params.get('frame_busy', 0)):.0%} of every frame. Every turn loads the model "
        f"afresh; {params.get('trials')} turns per arm, arms in a seeded random order per round "
        f"(seed {params.get('seed')}); the first turn is a warm-up, left out.",
        "",
        f"Threads of the tuned arms: {first['threads_source']}. GPU profile: "
        f"{first['profile_reason']}. VRAM: "
        + (vram if vram and not vram.startswith("GPU") else "measured with NVML")
        + (
            "; **no GPU was measured on this host**: the profile arm runs on the CPU."
            if not bool(first.get("gpu_offload")) or "no NVIDIA GPU" in vram
            else "."
        ),
        "",
        table(_settings(df)),
        "",
        *_pacing(d, params),
        "### Every arm (median [95% CI] over turns)",
        "",
        table(_medians(d)),
        "",
        "### Against the baseline",
        "",
        "Ratio of medians arm/baseline with a bootstrap 95% CI and a Mann–Whitney test across "
        "turns; below 1 is lower (better for times and memory, worse for tokens/s).",
        "",
        table(_vs_baseline(ab)),
        "",
    ]
    forest = _plot_forest(ab, plots_dir, md_dir)
    if forest:
        parts += [forest, ""]
    adds = _add_up(ab)
    if len(adds):
        parts += [
            "### Do they add up?",
            "",
            "If the optimisations were independent, the combination's ratio would be the "
            "product of the single ones.",
            "",
            table(adds),
            "",
        ]
    if len(failed):
        parts += [
            f"{len(failed)} turn(s) failed and are left out:",
            "",
            *[f"- `{r['arm']}` ({r['peer']}): {r['error']}" for _, r in failed.iterrows()],
            "",
        ]
    return "\n".join(parts)


# What each optimisation is judged on in the summary table of FINAL_RESULTS.md, and the original
# study's claim about it (mateperf.reports.overview.CLAIMS).
# the threads are picked to keep the avatar's frame, not for speed: their row and the row of
# all four together show what the frame gained beside what the reply cost
HEADLINE_METRICS = {
    "threads": ("tg_tps", "frame_p99_ms"),
    "warmup": ("ttft_ms",),
    "batching": ("beat_ms",),
    "profile": ("e2e_ms",),
    final.OPTIMISED: ("e2e_ms", "frame_p99_ms"),
}


CLAIM_OF_ARM = {
    "threads": "threads",
    "warmup": "warmup_ttft",
    "batching": "batching",
    "profile": "gpu",
    final.OPTIMISED: "overall",
}


def summary_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    """Rows of the final report's summary table: each optimisation against the baseline."""
    ab = final.against_baseline(df)
    rows = []
    for arm, metric in ((a, m) for a, ms in HEADLINE_METRICS.items() for m in ms):
        sub = ab[(ab["arm"] == arm) & (ab["metric"] == metric)]
        for _, r in sub.iterrows():
            rows.append(
                summary_row(
                    "final",
                    ARM_WORDS[arm] + (f" ({r['peer']} peer)" if r["peer"] else ""),
                    metrics.get("final", metric).title,
                    fmt(r["baseline"]),
                    fmt(r["arm_median"]),
                    fmt_ci(r["ratio"], r["ci_low"], r["ci_high"], 2),
                    r["verdict"],
                    CLAIMS[CLAIM_OF_ARM[arm]],
                )
            )
    return rows


def variant_row(df: pd.DataFrame, info: dict) -> dict:
    """This run's columns in the table of the phase's variants."""
    ab = final.against_baseline(df)
    out = {}
    for metric in ("e2e_ms", "ttft_ms", "beat_ms"):
        r = ab[(ab["arm"] == final.OPTIMISED) & (ab["metric"] == metric)]
        if len(r):
            r = r.iloc[0]
            out[f"optimised/baseline {metric}"] = fmt_ci(r["ratio"], r["ci_low"], r["ci_high"], 2)
    return out


REPORT = PhaseReport(
    section=section,
    summary_rows=summary_rows,
    variant_row=variant_row,
    sweep_extra=None,
)
