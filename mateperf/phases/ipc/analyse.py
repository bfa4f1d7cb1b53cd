"""Reading a stored ipc frame: its records, one value per trial, the summary, the headline,
and the headline's verdicts against the issue's targets.

Requests of one trial share its conditions, so every comparison here is across trials:
request metrics through their per-trial medians, trial metrics through their one value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mateperf import avatar_pacing, metrics, stats
from mateperf.metrics import per_replicate
from mateperf.phases.ipc.rows import (  # noqa: F401 - the report states it; it reads analyse only
    FRAME_COST_LOAD,
    FRAME_COST_NON_READING,
    FRAME_ROW,
    IDENTITY,
    NON_READING_COMMANDS_PER_FRAME,
    RECORD,
    REQUEST_ROW,
    TRIAL_ROW,
)

# the targets, stated once
TARGET_P50_OVER_FLOOR = 4.0
TARGET_THROUGHPUT_SHARE = 0.25
TARGET_BATCH_SPEEDUP = 5.0
MET, MISSED, UNCLEAR = "met", "missed", "unclear"


def split_records(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(request and frame rows, trial rows) of a stored frame, warm-ups and failed trials
    left out: the rows that are many per trial, and the rows that are one per trial. (Frames
    stored before trial rows existed are given them on load: mateperf.upgrade.)"""
    df = metrics.completed(df)
    return df[df[RECORD].isin((REQUEST_ROW, FRAME_ROW))], df[df[RECORD] == TRIAL_ROW]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per arm (its identity columns) and declared metric, warm-ups left out.

    A request-level metric: `median` is the median of the per-trial medians and its 95% CI is
    bootstrapped over those trials; n, mean, std, p5/p95/p99, min and max describe the pooled
    requests (the distribution a caller sees). A trial-level metric: one value per trial, so n
    counts trials. `trials` counts the trials in every row.
    """
    requests, trials = split_records(df)
    keys = [c for c in IDENTITY if c in df.columns]
    rows = []
    for frame, level in ((requests, metrics.REQUEST), (trials, metrics.TRIAL)):
        names = [m.name for m in metrics.IPC_METRICS if m.level == level]
        if frame.empty:
            continue
        for key, group in frame.groupby(keys, sort=False, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            for metric in names:
                if metric not in group or group[metric].isna().all():
                    continue
                medians = per_replicate(group, metric)
                row = {**dict(zip(keys, key, strict=True)), "metric": metric, "level": level}
                row["trials"] = len(medians)
                row.update(stats.summarize(group[metric]))
                if level == metrics.REQUEST:
                    across = stats.summarize(medians)
                    row.update({k: across[k] for k in ("median", "ci_low", "ci_high")})
                rows.append(row)
    columns = [*keys, "metric", "level", "trials", *stats.SUMMARY_KEYS]
    return pd.DataFrame(rows, columns=columns)


def frame_cost_table(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """frame_cost per arm: Tick time per frame (µs) and as a share of the frame period (%).

    p50 is the median across trials of each trial's median frame (with its 95% CI); p99 and
    max describe all frames of all trials, the frames a player sees.
    """
    summary = summarize(df) if summary is None else summary
    sel = summary[(summary["scenario"] == "frame_cost") & (summary["metric"] == "tick_us")]
    rows = []
    for _, r in sel.iterrows():
        frame_us = 1e6 / float(r["fps"])
        row = {
            "mode": r["mode"],
            "commands_per_frame": float(r["commands_per_frame"]),
            "fps": float(r["fps"]),
            "frame_us": frame_us,
            "trials": int(r["trials"]),
            "frames": int(r["n"]),
        }
        for stat, key in (("p50", "median"), ("p99", "p99"), ("max", "max")):
            row[f"tick_{stat}_us"] = float(r[key])
            row[f"tick_{stat}_share_pct"] = float(r[key]) / frame_us * 100
        row["tick_p50_ci_us"] = (float(r["ci_low"]), float(r["ci_high"]))
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        order = {FRAME_COST_LOAD: 0, FRAME_COST_NON_READING: 1}
        out = out.sort_values(
            ["mode", "commands_per_frame"], key=lambda c: c.map(order) if c.name == "mode" else c
        ).reset_index(drop=True)
    return out


def _arm(rows: pd.DataFrame, scenario: str, mode: str, **where) -> pd.DataFrame:
    sel = rows[(rows["scenario"] == scenario) & (rows["mode"] == mode)]
    for key, value in where.items():
        sel = sel[sel[key] == value]
    return sel


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def headline(df: pd.DataFrame) -> dict:
    """The figures the issue asks for, computed from a stored frame (NaN when not measured).

    Every centre is a median across trials of one value per trial (a trial's median request,
    or its whole-sequence figure), and every ratio is `stats.compare` of those per-trial values.
    """
    requests, trials = split_records(df)
    out: dict = {"peer": str(df["peer"].iloc[0]) if len(df) else ""}
    if "apply_delay_ms" in df.columns and len(df):
        out["apply_delay_ms"] = float(df["apply_delay_ms"].iloc[0])
    floor = _arm(requests, "simple_commands", "floor")
    bridge = _arm(requests, "simple_commands", "bridge_unpaced")
    if floor["rtt_us"].notna().any() and bridge["rtt_us"].notna().any():
        ab = stats.compare(per_replicate(floor, "rtt_us"), per_replicate(bridge, "rtt_us"))
        out["simple_trials"] = min(ab.n_a, ab.n_b)
        out["floor_p50_us"] = ab.median_a
        out["bridge_p50_us"] = ab.median_b
        out["floor_p99_us"] = _median(per_replicate(floor, "rtt_us", 99))
        out["bridge_p99_us"] = _median(per_replicate(bridge, "rtt_us", 99))
        out["bridge_over_floor_p50"] = ab.ratio
        out["bridge_over_floor_ci"] = (ab.ci_low, ab.ci_high)
        out["bridge_over_floor_verdict"] = ab.verdict
        out["bridge_completion_p50_ms"] = ab.median_b / 1e3
    tp_floor = per_replicate(_arm(trials, "throughput", "floor"), "throughput_cmd_per_s")
    tp_bridge = per_replicate(_arm(trials, "throughput", "bridge_unpaced"), "throughput_cmd_per_s")
    if len(tp_floor) and len(tp_bridge):
        ab = stats.compare(tp_floor, tp_bridge, higher_is_better=True)
        out["floor_throughput_cmd_per_s"] = ab.median_a
        out["bridge_throughput_cmd_per_s"] = ab.median_b
        out["throughput_share_of_floor"] = ab.ratio
        out["throughput_share_ci"] = (ab.ci_low, ab.ci_high)
    batching_fps = {
        float(f) for rows in (requests, trials) for f in rows[rows["scenario"] == "batching"]["fps"]
    }
    for fps in sorted(batching_fps):
        tag = "unpaced" if fps == 0 else f"{fps:g}fps"
        totals = {}
        for mode in ("one_by_one", "batched", "pipelined"):
            rtt = per_replicate(_arm(requests, "batching", mode, fps=fps), "rtt_us")
            out[f"{tag}_{mode}_completion_p50_ms"] = _median(rtt) / 1e3
            totals[mode] = per_replicate(_arm(trials, "batching", mode, fps=fps), "total_ms")
            out[f"{tag}_{mode}_total_ms"] = _median(totals[mode])
        out[f"{tag}_frame_ms"] = 1000.0 / fps if fps else float("nan")
        if len(totals["batched"]) and len(totals["one_by_one"]):
            ab = stats.compare(totals["batched"], totals["one_by_one"])
            out[f"{tag}_one_by_one_over_batched_total"] = ab.ratio
            out[f"{tag}_one_by_one_over_batched_ci"] = (ab.ci_low, ab.ci_high)
    cost = frame_cost_table(df)
    for _, r in cost.iterrows():
        tag = (
            "non_reading" if r["mode"] == FRAME_COST_NON_READING else f"{r['commands_per_frame']:g}"
        )
        for stat in ("p50", "p99", "max"):
            out[f"frame_cost_{tag}_{stat}_us"] = r[f"tick_{stat}_us"]
            out[f"frame_cost_{tag}_{stat}_share_pct"] = r[f"tick_{stat}_share_pct"]
        out["frame_cost_frame_us"] = r["frame_us"]
    for mode in ("sendall", "sendall_sleep_1ms"):
        sent = per_replicate(_arm(requests, "original_method", mode), "sendall_us")
        out[f"original_{mode}_p50_us"] = _median(sent)
        sequence = _arm(trials, "original_method", mode)
        out[f"original_{mode}_total_ms"] = _median(per_replicate(sequence, "total_ms"))
        out[f"original_{mode}_applied_ms"] = _median(per_replicate(sequence, "applied_ms"))
    return out


def failed_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The trials that failed (trial, error): recorded by the runner, measured nothing."""
    if "error" not in df.columns:
        return pd.DataFrame(columns=["trial", "error"])
    return df[df["error"].fillna("") != ""][["trial", "error"]].reset_index(drop=True)


def against_target(low: float, high: float, target: float, at_most: bool) -> str:
    """Met or missed only when the whole 95% CI is on one side of the target; else unclear."""
    if np.isnan(low) or np.isnan(high):
        return UNCLEAR
    if (high <= target) if at_most else (low >= target):
        return MET
    if (low > target) if at_most else (high < target):
        return MISSED
    return UNCLEAR


def frame_tags(h: dict) -> list[str]:
    """The frame rates of the batching scenario in a headline: `unpaced`, `60fps`, ..."""
    return sorted(k[: -len("_frame_ms")] for k in h if k.endswith("_frame_ms"))


def target_verdicts(h: dict) -> dict[str, str]:
    """Each headline figure that has a target -> met, missed or unclear, keyed as in `h`.

    `<tag>_within_frame`: whether a command, one by one and batched, completes within one
    frame at that frame rate (p50 against the frame period; no CI: a fact about medians).
    """
    out = {}
    if "bridge_over_floor_ci" in h:
        low, high = h["bridge_over_floor_ci"]
        out["bridge_over_floor_p50"] = against_target(
            low, high, TARGET_P50_OVER_FLOOR, at_most=True
        )
    if "throughput_share_ci" in h:
        low, high = h["throughput_share_ci"]
        out["throughput_share_of_floor"] = against_target(
            low, high, TARGET_THROUGHPUT_SHARE, at_most=False
        )
    for tag in frame_tags(h):
        frame_ms = h[f"{tag}_frame_ms"]
        if not np.isnan(frame_ms):
            slowest = max(
                h[f"{tag}_one_by_one_completion_p50_ms"], h[f"{tag}_batched_completion_p50_ms"]
            )
            out[f"{tag}_within_frame"] = MET if slowest <= frame_ms else MISSED
        speedup = h.get(f"{tag}_one_by_one_over_batched_total", float("nan"))
        if tag != "unpaced" and not np.isnan(speedup):
            low, high = h[f"{tag}_one_by_one_over_batched_ci"]
            out[f"{tag}_one_by_one_over_batched_total"] = against_target(
                low, high, TARGET_BATCH_SPEEDUP, at_most=False
            )
    return out


def sleep_share_pct(h: dict) -> float:
    """The share of the original one-by-one loop's time that was its `sleep(0.001)` (%)."""
    plain = h.get("original_sendall_total_ms", float("nan"))
    slept = h.get("original_sendall_sleep_1ms_total_ms", float("nan"))
    return (slept - plain) / slept * 100


def batching_comparisons(df: pd.DataFrame) -> list[tuple[float, stats.ABResult]]:
    """(fps, batched against one by one in total time) per frame rate of the batching scenario."""
    _requests, trials = split_records(df)
    batching = trials[trials["scenario"] == "batching"] if "scenario" in trials else trials
    m = metrics.get("ipc", "total_ms")
    out = []
    for fps in sorted(set(batching.get("fps", pd.Series(dtype=float)))):
        one = batching[(batching["fps"] == fps) & (batching["mode"] == "one_by_one")]
        batched = batching[(batching["fps"] == fps) & (batching["mode"] == "batched")]
        if one.empty or batched.empty:
            continue
        r = stats.compare(
            per_replicate(one, "total_ms"),
            per_replicate(batched, "total_ms"),
            higher_is_better=m.higher_is_better,
            words=m.words,
        )
        out.append((float(fps), r))
    return out


def pacing(df: pd.DataFrame, params: dict) -> dict:
    """The paced peer's timer, CPU and whether its pacing held (avatar_pacing.summary), from the
    figures stored per trial since the overshoot was recorded."""
    return avatar_pacing.summary(df, float(params.get("fps") or 0))
