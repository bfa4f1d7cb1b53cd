"""Phase 2 section: cold-vs-warm first reply, steady-state throughput, bandwidth bound."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mateperf import metrics
from mateperf.phases.llm import analyse as llm
from mateperf.reports.declaration import PhaseReport
from mateperf.reports.format import fmt, fmt_ci, fmt_p, repetition_note, save_figure, table
from mateperf.reports.overview import CLAIMS, ab_row

METRIC_LABELS = {
    "ttft_ms": "time to first token (ms)",
    "e2e_ms": "whole reply (ms)",
    "load_s": "model load (s)",
    "pp_tps": "prompt tokens/s",
    "tg_tps": "generation tokens/s",
    "prompt_tokens": "prompt tokens evaluated",
    "warmup_ms": "warm-up (ms)",
}


def _ab_table(ab: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    def ci(arm, metric):
        row = summary[(summary["arm"] == arm) & (summary["metric"] == metric)]
        if row.empty:
            return "–"
        r = row.iloc[0]
        digits = 2 if metric == "load_s" else 1
        return fmt_ci(r["median"], r["ci_low"], r["ci_high"], digits)

    rows = []
    for _, r in ab.iterrows():
        rows.append(
            {
                "metric": METRIC_LABELS.get(r["metric"], r["metric"]),
                "cold median [95% CI]": ci(llm.COLD, r["metric"]),
                "warm median [95% CI]": ci(llm.WARM, r["metric"]),
                "warm/cold [95% CI]": fmt_ci(
                    r["ratio_warm_over_cold"], r["ci_low"], r["ci_high"], 2
                ),
                "p (Mann–Whitney)": fmt_p(r["p_value"]),
                "verdict (warm vs cold)": r["verdict"],
                "n": f"{r['n_cold']}+{r['n_warm']}",
            }
        )
    return pd.DataFrame(rows)


def _throughput_table(summary: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    kept = llm.kept(df)
    for scenario, metric, unit in (
        (llm.SCENARIO_PP, "pp_tps", "tokens/s"),
        (llm.SCENARIO_TG, "tg_tps", "tokens/s"),
        (llm.SCENARIO_MEMBW, "membw_gbps", "GB/s"),
    ):
        row = summary[(summary["scenario"] == scenario) & (summary["metric"] == metric)]
        if row.empty:
            continue
        r = row.iloc[0]
        if scenario == llm.SCENARIO_MEMBW:
            name = "memory copy"
        else:
            tokens = kept.loc[kept["scenario"] == scenario, "bench_tokens"]
            name = f"{scenario}{int(tokens.iloc[0])}"
        rows.append(
            {
                "test": name,
                "unit": unit,
                "n": r["n"],
                "median [95% CI]": fmt_ci(r["median"], r["ci_low"], r["ci_high"]),
                "mean ± std": f"{fmt(r['mean'])} ± {fmt(r['std'])}",
                "p5 – p95": f"{fmt(r['p5'])} – {fmt(r['p95'])}",
            }
        )
    return pd.DataFrame(rows)


def _plot_ttft(df: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str:
    d = llm.kept(df)
    d = d[d["scenario"] == llm.SCENARIO_FIRST_REPLY]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("ttft_ms", "e2e_ms"), strict=True):
        data = [d.loc[d["arm"] == arm, metric].dropna().to_numpy() for arm in (llm.COLD, llm.WARM)]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks([1, 2], ["cold", "warm"])
        for i, values in enumerate(data, start=1):
            jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0]
            ax.scatter(i + np.asarray(jitter), values, s=14, alpha=0.7, zorder=3)
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("First reply after a fresh load: cold vs warm (each dot one trial)")
    fig.tight_layout()
    return save_figure(fig, plots_dir, "llm_ttft_cold_vs_warm", md_dir, "TTFT cold vs warm")


def _plot_throughput(df: pd.DataFrame, bound: dict, plots_dir: Path, md_dir: Path) -> str:
    d = llm.kept(df)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, scenario, metric in (
        (axes[0], llm.SCENARIO_PP, "pp_tps"),
        (axes[1], llm.SCENARIO_TG, "tg_tps"),
    ):
        values = d.loc[d["scenario"] == scenario, metric].dropna().to_numpy()
        ax.boxplot([values], showfliers=False)
        ax.scatter(np.ones(len(values)), values, s=14, alpha=0.7, zorder=3)
        ax.set_xticks([1], [f"{scenario} (n={len(values)})"])
        ax.set_ylabel("tokens/s")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        if scenario == llm.SCENARIO_TG and bound:
            ax.axhline(
                bound["bound_tps"],
                color="tab:red",
                linestyle="--",
                label=f"bandwidth bound {bound['bound_tps']:.0f}",
            )
            ax.legend(loc="lower right")
    fig.suptitle("Steady-state throughput, llama-bench method (each dot one repetition)")
    fig.tight_layout()
    return save_figure(fig, plots_dir, "llm_throughput", md_dir, "tokens/s with spread")


def _reading(ab: pd.DataFrame, summary: pd.DataFrame, bound: dict) -> list[str]:
    lines = []
    by_metric = ab.set_index("metric")
    if "ttft_ms" in by_metric.index:
        r = by_metric.loc["ttft_ms"]
        change = (1 - r["ratio_warm_over_cold"]) * 100
        if r["verdict"] == "faster":
            lines.append(
                f"- The warm-up makes the first reply's first token arrive "
                f"{change:.0f}% sooner (warm/cold {r['ratio_warm_over_cold']:.2f}, "
                f"CI {r['ci_low']:.2f}–{r['ci_high']:.2f})."
            )
        else:
            lines.append(
                f"- Time to first token: warm vs cold is {r['verdict']} "
                f"(ratio {r['ratio_warm_over_cold']:.2f}, CI {r['ci_low']:.2f}–"
                f"{r['ci_high']:.2f}, p {fmt_p(r['p_value'])})."
            )
    if "prompt_tokens" in by_metric.index:
        r = by_metric.loc["prompt_tokens"]
        lines.append(
            f"- The warm arm evaluates {r['warm_median']:.0f} prompt tokens instead of "
            f"{r['cold_median']:.0f}: the warm-up leaves the system prompt in the KV "
            f"cache, and llama-cpp-python reuses the matching prefix."
        )
    if "pp_tps" in by_metric.index and by_metric.loc["pp_tps", "verdict"] == "slower":
        lines.append(
            "- Prompt tokens/s is lower in the warm arm, which evaluates far fewer prompt "
            "tokens per reply (above); what the user feels is the time to first token."
        )
    warm_cost = summary[(summary["arm"] == llm.WARM) & (summary["metric"] == "warmup_ms")]
    if not warm_cost.empty:
        lines.append(
            f"- The warm-up itself costs {warm_cost.iloc[0]['median']:.0f} ms (median) "
            f"right after load; it pays off only if it runs before the user's first "
            f"message arrives."
        )
    if bound:
        lines.append(
            f"- Generation runs at {bound['tg_tps']:.1f} tokens/s, "
            f"{bound['fraction_of_bound'] * 100:.0f}% of the memory-bandwidth bound "
            f"({bound['bound_tps']:.1f} tokens/s = {bound['membw_gbps']:.1f} GB/s copy "
            f"bandwidth / {bound['bytes_per_token_mb']:.0f} MB of weights per token)."
        )
    return lines


def _order_note(df: pd.DataFrame) -> str:
    if "position_in_pair" in df.columns:
        return "arms in a balanced order (cold-warm, warm-cold, …), each first in half the pairs"
    return "arms interleaved cold, warm, cold, … (cold always first in a pair)"


def _gpu_note(df: pd.DataFrame, params: dict) -> list[str]:
    asked = params.get("n_gpu_layers", 0)
    if "gpu_offload" not in df or asked == 0 or bool(df["gpu_offload"].iloc[0]):
        return []
    return [
        f"**No GPU offload in this build: n_gpu_layers={asked} was asked for, but every "
        "layer ran on the CPU.**",
        "",
    ]


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    summary = llm.summarize(df)
    ab = llm.cold_vs_warm(df)
    bound = llm.bandwidth_bound(df)
    params = info.get("params", {})
    first = df.iloc[0]
    parts = [
        "## Phase 2 — LLM load, first reply and cache warm-up",
        "",
        f"Model: {first.get('model_name', '?')} (`{first.get('model_file', '?')}`), "
        f"n_ctx {params.get('n_ctx')}, n_batch {params.get('n_batch')}, threads "
        f"{int(first.get('threads_used', 0))}/{int(first.get('threads_batch_used', 0))} "
        f"(gen/batch), n_gpu_layers {params.get('n_gpu_layers')}. Every trial loads the model "
        f"afresh; {_order_note(df)}; the first pair is a warm-up, left out.",
        "",
        *(
            [note, ""]
            if (
                note := repetition_note(
                    df, params, "part (the first-reply pairs; the throughput repetitions)"
                )
            )
            else []
        ),
        *_gpu_note(df, params),
        "### Cold vs warm first reply",
        "",
        table(_ab_table(ab, summary)),
        "",
        _plot_ttft(df, plots_dir, md_dir),
        "",
        "### Steady-state throughput (llama-bench method)",
        "",
        "Random tokens, KV cache cleared before each repetition, each repetition on a "
        "fresh model load, the first left out; tokens/s from wall time around the decode calls.",
        "",
        table(_throughput_table(summary, df)),
        "",
        _plot_throughput(df, bound, plots_dir, md_dir),
        "",
        "### Reading",
        "",
        *_reading(ab, summary, bound),
        "",
    ]
    return "\n".join(parts)


def summary_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    """FINAL_RESULTS.md's summary rows: the warm-up after load against none (TTFT, tg, load)."""
    claims = {"ttft_ms": "warmup_ttft", "tg_tps": "warmup_tg", "load_s": "warmup_load"}
    rows = []
    for name, r in llm.warm_up_comparisons(df, tuple(claims)).items():
        m = metrics.get("llm", name)
        digits = 2 if name == "load_s" else 1
        rows.append(ab_row("llm", "warm-up after load", m, r, CLAIMS[claims[name]], digits))
    return rows


def variant_row(df: pd.DataFrame, info: dict) -> dict:
    """This run's columns in the table of the phase's variants."""
    s = llm.summarize(df).set_index(["scenario", "arm", "metric"])["median"]

    def get(*key):
        return fmt(float(s.get(key, np.nan)))

    return {
        "TTFT cold ms": get(llm.SCENARIO_FIRST_REPLY, llm.COLD, "ttft_ms"),
        "TTFT warm ms": get(llm.SCENARIO_FIRST_REPLY, llm.WARM, "ttft_ms"),
        "pp tok/s": get(llm.SCENARIO_PP, "", "pp_tps"),
        "tg tok/s": get(llm.SCENARIO_TG, "", "tg_tps"),
    }


REPORT = PhaseReport(
    section=section,
    summary_rows=summary_rows,
    variant_row=variant_row,
    sweep_extra=None,
)
