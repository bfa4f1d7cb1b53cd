"""Reading a stored llm frame: summaries, cold against warm, the bandwidth bound, sweep rows.

Every function here takes the frame `measure.run` made (or one read back from a run
directory) and computes; nothing here loads a model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mateperf import metrics, stats

SCENARIO_FIRST_REPLY = "first_reply"
SCENARIO_PP = "pp"
SCENARIO_TG = "tg"
SCENARIO_MEMBW = "membw"
COLD, WARM = "cold", "warm"

FIRST_REPLY_METRICS = [
    "load_s",
    "warmup_ms",
    "ttft_ms",
    "e2e_ms",
    "pp_tps",
    "tg_tps",
    "prompt_tokens",
    "gen_tokens",
]
COLD_VS_WARM_METRICS = ("ttft_ms", "e2e_ms", "load_s", "pp_tps", "tg_tps", "prompt_tokens")
BENCH_METRICS = ((SCENARIO_PP, "pp_tps"), (SCENARIO_TG, "tg_tps"), (SCENARIO_MEMBW, "membw_gbps"))


def kept(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that count: warm-ups and failed trials left out."""
    return metrics.completed(df)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Summary rows per scenario/arm and metric (warm-ups left out)."""
    d = kept(df)
    first = d[d["scenario"] == SCENARIO_FIRST_REPLY]
    parts = [stats.summary_table(first, ["scenario", "arm"], FIRST_REPLY_METRICS)]
    for scenario, metric in BENCH_METRICS:
        sub = d[d["scenario"] == scenario]
        if len(sub):
            table = stats.summary_table(sub, ["scenario"], [metric])
            table.insert(1, "arm", "")
            parts.append(table)
    return pd.concat(parts, ignore_index=True)


def warm_up_comparisons(df: pd.DataFrame, names=COLD_VS_WARM_METRICS) -> dict[str, stats.ABResult]:
    """Metric -> the warm arm against the cold one (the trial is the replicate)."""
    d = kept(df)
    first = d[d["scenario"] == SCENARIO_FIRST_REPLY]
    cold, warm = first[first["arm"] == COLD], first[first["arm"] == WARM]
    out = {}
    for name in names:
        metric = metrics.get("llm", name)
        out[name] = stats.compare(
            cold[name], warm[name], higher_is_better=metric.higher_is_better, words=metric.words
        )
    return out


def cold_vs_warm(df: pd.DataFrame) -> pd.DataFrame:
    """A/B of the warm arm against the cold one, per metric (the trial is the replicate)."""
    rows = []
    for name, r in warm_up_comparisons(df).items():
        rows.append(
            {
                "metric": name,
                "cold_median": r.median_a,
                "warm_median": r.median_b,
                "ratio_warm_over_cold": r.ratio,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "p_value": r.p_value,
                "verdict": r.verdict,
                "n_cold": r.n_a,
                "n_warm": r.n_b,
            }
        )
    return pd.DataFrame(rows)


def bandwidth_bound(df: pd.DataFrame) -> dict:
    """Generation tokens/s against bandwidth / bytes read per token (all weights, once)."""
    d = kept(df)
    bw = d.loc[d["scenario"] == SCENARIO_MEMBW, "membw_gbps"]
    tg = d.loc[d["scenario"] == SCENARIO_TG, "tg_tps"]
    if bw.empty or tg.empty:
        return {}
    bytes_per_token = float(d["model_tensor_bytes"].iloc[0])
    bw_gbps = float(np.median(bw))
    bound_tps = bw_gbps * 1e9 / bytes_per_token
    tg_tps = float(np.median(tg))
    return {
        "membw_gbps": bw_gbps,
        "bytes_per_token_mb": bytes_per_token / 1e6,
        "bound_tps": bound_tps,
        "tg_tps": tg_tps,
        "fraction_of_bound": tg_tps / bound_tps,
    }


def sweep_metrics(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """What a sweep of this phase plots: (label, the rows that count, metric column)."""
    d = kept(df)
    first = d[d["scenario"] == SCENARIO_FIRST_REPLY]
    return [
        ("generation tokens/s (tg)", d[d["scenario"] == SCENARIO_TG], "tg_tps"),
        ("prompt tokens/s (pp)", d[d["scenario"] == SCENARIO_PP], "pp_tps"),
        ("time to first token, cold (ms)", first[first["arm"] == COLD], "ttft_ms"),
        ("time to first token, warm (ms)", first[first["arm"] == WARM], "ttft_ms"),
    ]
