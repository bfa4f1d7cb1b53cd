"""Phase 3 section: the bridge against its floor, message sizes, batching, the original method,
and what the bridge costs the game's frame."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mateperf import avatar_pacing, metrics
from mateperf.phases.ipc import analyse
from mateperf.reports import ipc_plots
from mateperf.reports.declaration import PhaseReport
from mateperf.reports.format import fmt, fmt_ci, table
from mateperf.reports.overview import CLAIMS, ab_row, summary_row


def _headline_table(h: dict) -> pd.DataFrame:
    rows = []
    verdicts = analyse.target_verdicts(h)

    def add(figure: str, value: str, target: str, key: str | None) -> None:
        verdict = verdicts.get(key, "–") if key else "–"
        rows.append({"figure": figure, "value": value, "target": target, "verdict": verdict})

    if "bridge_p50_us" in h:
        ratio, (lo, hi) = h["bridge_over_floor_p50"], h["bridge_over_floor_ci"]
        add(
            "round trip p50, unpaced (µs): bridge / floor",
            f"{fmt(h['bridge_p50_us'])} / {fmt(h['floor_p50_us'])}",
            "",
            None,
        )
        add(
            f"bridge p50 ÷ floor p50 [95% CI], per-trial medians of {h['simple_trials']} trials",
            fmt_ci(ratio, lo, hi, 2),
            f"≤ {analyse.TARGET_P50_OVER_FLOOR:g}×",
            "bridge_over_floor_p50",
        )
        add(
            "round trip p99, unpaced (µs): bridge / floor",
            f"{fmt(h['bridge_p99_us'])} / {fmt(h['floor_p99_us'])}",
            "",
            None,
        )
    if "throughput_share_of_floor" in h:
        add(
            "pipelined throughput (commands/s): bridge / floor",
            f"{fmt(h['bridge_throughput_cmd_per_s'], 0)} / "
            f"{fmt(h['floor_throughput_cmd_per_s'], 0)}",
            "",
            None,
        )
        share = h["throughput_share_of_floor"]
        add(
            "bridge throughput ÷ floor's [95% CI]",
            fmt_ci(share, *h["throughput_share_ci"], 2),
            f"≥ {analyse.TARGET_THROUGHPUT_SHARE:g}",
            "throughput_share_of_floor",
        )
    for tag in analyse.frame_tags(h):
        frame_ms = h[f"{tag}_frame_ms"]
        label = "unpaced" if tag == "unpaced" else f"at {tag.replace('fps', ' fps')}"
        single = h[f"{tag}_one_by_one_completion_p50_ms"]
        batched = h[f"{tag}_batched_completion_p50_ms"]
        add(
            f"per-command completion p50 {label} (ms): one by one / batched / pipelined",
            f"{fmt(single, 3)} / {fmt(batched, 3)} / "
            f"{fmt(h[f'{tag}_pipelined_completion_p50_ms'], 3)}",
            "" if math.isnan(frame_ms) else f"≤ one frame ({fmt(frame_ms, 2)} ms)",
            f"{tag}_within_frame",
        )
        add(
            f"total time of the commands {label} (ms): one by one / batched / pipelined",
            f"{fmt(h[f'{tag}_one_by_one_total_ms'], 2)} / {fmt(h[f'{tag}_batched_total_ms'], 2)}"
            f" / {fmt(h[f'{tag}_pipelined_total_ms'], 2)}",
            "",
            None,
        )
        speedup = h.get(f"{tag}_one_by_one_over_batched_total", float("nan"))
        lo, hi = h.get(f"{tag}_one_by_one_over_batched_ci", (float("nan"), float("nan")))
        add(
            f"one by one ÷ batched, total time {label} [95% CI]",
            fmt_ci(speedup, lo, hi, 1),
            f"≥ {analyse.TARGET_BATCH_SPEEDUP:g}×" if tag != "unpaced" else "",
            f"{tag}_one_by_one_over_batched_total",
        )
    frame_us = h.get("frame_cost_frame_us")
    for tag, label in (
        ("100", "at 100 commands/frame"),
        ("non_reading", "with a non-reading client"),
    ):
        if f"frame_cost_{tag}_p50_us" not in h:
            continue
        add(
            f"main-thread Tick per frame {label}: p50 / p99 / max (µs; % of the "
            f"{fmt(frame_us / 1e3, 1)} ms frame)",
            " / ".join(
                f"{fmt(h[f'frame_cost_{tag}_{stat}_us'], 0)} "
                f"({fmt(h[f'frame_cost_{tag}_{stat}_share_pct'], 1)}%)"
                for stat in ("p50", "p99", "max")
            ),
            "",
            None,
        )
    for mode, label in (("sendall", "without sleep"), ("sendall_sleep_1ms", "with sleep(0.001)")):
        if math.isnan(h.get(f"original_{mode}_total_ms", float("nan"))):
            continue
        add(
            f"original method {label}: sendall p50 (µs) / loop total (ms) / really applied (ms)",
            f"{fmt(h[f'original_{mode}_p50_us'], 2)} / {fmt(h[f'original_{mode}_total_ms'], 2)}"
            f" / {fmt(h[f'original_{mode}_applied_ms'], 1)}",
            "",
            None,
        )
    return pd.DataFrame(rows)


def _latency_table(summary: pd.DataFrame, scenario: str, metric: str, digits: int) -> pd.DataFrame:
    unit = {"us": "µs"}.get(metric.rsplit("_", 1)[-1], metric.rsplit("_", 1)[-1])
    rows = []
    for _, r in ipc_plots.rows_of(summary, scenario, metric).iterrows():
        row = {"mode": r["mode"], "fps": fmt(float(r["fps"]), 0)}
        if scenario == "message_sizes":
            row["size (bytes)"] = fmt(float(r["target_bytes"]), 0)
        row.update(
            {
                "trials": int(r["trials"]),
                "requests": int(r["n"]),
                f"p50 [95% CI] ({unit})": fmt_ci(r["median"], r["ci_low"], r["ci_high"], digits),
                f"p95 ({unit})": fmt(r["p95"], digits),
                f"p99 ({unit})": fmt(r["p99"], digits),
                f"max ({unit})": fmt(r["max"], digits),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _per_trial_table(summary: pd.DataFrame, scenario: str, metrics: list[str]) -> pd.DataFrame:
    """Per-trial figures (total time, throughput): their median across trials, CI, range."""
    sel = summary[(summary["scenario"] == scenario) & summary["metric"].isin(metrics)]
    rows = []
    for (mode, fps), group in sel.groupby(["mode", "fps"], sort=False):
        row = {"mode": mode, "fps": fmt(float(fps), 0), "trials": int(group["trials"].max())}
        for metric in metrics:
            m = group[group["metric"] == metric]
            row[f"{metric} median [95% CI] (min–max)"] = (
                f"{fmt_ci(m['median'].iloc[0], m['ci_low'].iloc[0], m['ci_high'].iloc[0], 2)} "
                f"({fmt(m['min'].iloc[0], 2)}–{fmt(m['max'].iloc[0], 2)})"
                if len(m)
                else "–"
            )
        if scenario == "batching":
            comp = ipc_plots.rows_of(summary, scenario, "rtt_us")
            comp = comp[(comp["mode"] == mode) & (comp["fps"] == fps)]
            row["per-command completion p50 / p95 (ms)"] = (
                f"{fmt(comp['median'].iloc[0] / 1e3, 3)} / {fmt(comp['p95'].iloc[0] / 1e3, 3)}"
                if len(comp)
                else "–"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _frame_cost_table(cost: pd.DataFrame) -> pd.DataFrame:
    """frame_cost as the phase computed it: Tick per frame in µs and as a share of the frame."""
    rows = []
    for _, r in cost.iterrows():
        rows.append(
            {
                "mode": r["mode"],
                "commands/frame": fmt(r["commands_per_frame"], 0),
                "trials": int(r["trials"]),
                "frames": int(r["frames"]),
                "p50 [95% CI] (µs)": fmt_ci(r["tick_p50_us"], *r["tick_p50_ci_us"], 0),
                "p99 (µs)": fmt(r["tick_p99_us"], 0),
                "max (µs)": fmt(r["tick_max_us"], 0),
                f"p50 / p99 / max (% of {fmt(r['frame_us'] / 1e3, 1)} ms)": " / ".join(
                    fmt(r[f"tick_{stat}_share_pct"], 1) for stat in ("p50", "p99", "max")
                ),
            }
        )
    return pd.DataFrame(rows)


def _reading(h: dict) -> str:
    parts = []
    if "bridge_over_floor_p50" in h:
        parts.append(
            f"Unpaced, a command's round trip through the bridge has a median of "
            f"{fmt(h['bridge_p50_us'])} µs, {fmt(h['bridge_over_floor_p50'], 1)}× the raw socket "
            f"floor of {fmt(h['floor_p50_us'])} µs measured in the same run: the cost of JSON, "
            f"validation and the hand-off from the socket thread to the frame loop."
        )
    if "throughput_share_of_floor" in h:
        parts.append(
            f"Pipelined, it sustains {fmt(h['bridge_throughput_cmd_per_s'], 0)} commands/s, "
            f"{fmt(h['throughput_share_of_floor'] * 100, 0)}% of the floor's."
        )
    for tag in analyse.frame_tags(h):
        if tag == "unpaced":
            continue
        parts.append(
            f"At {tag.replace('fps', ' fps')} the frame dominates: awaited one by one, each "
            f"command completes in {fmt(h[f'{tag}_one_by_one_completion_p50_ms'], 1)} ms (p50; a "
            f"frame is {fmt(h[f'{tag}_frame_ms'], 1)} ms), so the commands take "
            f"{fmt(h[f'{tag}_one_by_one_total_ms'], 0)} ms in all; in batches they take "
            f"{fmt(h[f'{tag}_batched_total_ms'], 0)} ms, "
            f"{fmt(h.get(f'{tag}_one_by_one_over_batched_total', float('nan')), 1)}× less. "
            f"Batching buys frames, not microseconds: unpaced the same gain is "
            f"{fmt(h.get('unpaced_one_by_one_over_batched_total', float('nan')), 1)}×."
        )
    if "frame_cost_100_p99_us" in h:
        parts.append(
            f"Inside the game's frame, the bridge's Tick costs the main thread "
            f"{fmt(h.get('frame_cost_0_p50_us', float('nan')), 0)} µs idle and "
            f"{fmt(h['frame_cost_100_p50_us'], 0)} µs at 100 commands per frame (p50; p99 "
            f"{fmt(h['frame_cost_100_p99_us'], 0)} µs, "
            f"{fmt(h['frame_cost_100_p99_share_pct'], 1)}% of the frame)"
            + (
                f"; a client that stopped reading, its socket full, leaves it at "
                f"{fmt(h['frame_cost_non_reading_p50_us'], 0)} µs p50: its acks wait in its "
                "writer's bounded buffer, not in the frame."
                if "frame_cost_non_reading_p50_us" in h
                else "."
            )
        )
    if not math.isnan(h.get("original_sendall_sleep_1ms_total_ms", float("nan"))):
        plain = h["original_sendall_total_ms"]
        slept = h["original_sendall_sleep_1ms_total_ms"]
        parts.append(
            f"The original method timed only `sendall()`: "
            f"{fmt(h['original_sendall_p50_us'], 2)} µs per command, a figure that says nothing "
            f"about the avatar, which had applied them all only after "
            f"{fmt(h['original_sendall_applied_ms'], 1)} ms. With the `sleep(0.001)` in the "
            f"timed loop the loop takes {fmt(slept, 1)} ms instead of {fmt(plain, 2)} ms: "
            f"{fmt(analyse.sleep_share_pct(h), 0)}% of the old one-by-one figure was the "
            f"sleep, not the bridge."
        )
    return " ".join(parts)


def _failed(failed: pd.DataFrame) -> list[str]:
    if failed.empty:
        return []
    lines = [f"- trial {int(r.trial)}: {r.error}" for r in failed.itertuples()]
    return [f"{len(failed)} trial(s) failed and are left out:", "", *lines, ""]


def section(df: pd.DataFrame, info: dict, plots_dir: Path, md_dir: Path) -> str:
    """The phase 3 markdown section; plots go to ``plots_dir`` as ipc_*.png."""
    df = metrics.one_run(df)
    requests, _ = analyse.split_records(df)
    h = analyse.headline(df)
    summary = analyse.summarize(df)
    params = info.get("params", {})
    peer = h.get("peer") or params.get("peer", "?")
    skipped = str(df["skipped"].iloc[0]) if "skipped" in df and len(df) else ""
    where = (
        f"Peer: **the live avatar at {params['avatar']}** (above), paced by its own frame loop"
        f"{'; left out on it: ' + skipped if skipped else ''}."
        if params.get("avatar")
        else f"Peer: **{peer}** in its own process on 127.0.0.1, frame rate "
        f"{params.get('fps', '?')} fps (and unpaced)."
    )
    out = [
        "## Phase 3 — IPC",
        "",
        f"{where} {params.get('trials', '?')} trials, scenarios interleaved, warm-ups "
        "left out. Every latency is send → completion ack (the avatar has applied the command); "
        "the floor is a raw socket ping-pong of same-size lines between two processes, measured "
        "in the same run. "
        + (
            f"Client, peers and floor pinned to CPU {params['pin_cpu']}."
            if int(params.get("pin_cpu", -1)) >= 0
            else "CPU placement left to the scheduler (pin_cpu=-1): on an idle VM, waking a "
            "thread blocked on another vCPU costs tens of µs, and the bridge's round trip has "
            "more such wake-ups than the floor's; `-p pin_cpu=N` measures without them."
        )
        + (
            f" Injected apply delay: the peers spend {fmt(h['apply_delay_ms'], 2)} ms on every "
            "command they apply (a slow avatar, a known answer), so these are not the bridge's "
            "own figures."
            if h.get("apply_delay_ms", 0.0) > 0
            else ""
        ),
        "",
        "The trial is the unit of replication: a latency's p50 is the median across trials of "
        "each trial's median request, with a 95% CI across trials; p95, p99 and max describe "
        "all requests of all trials; totals and throughput are one value per trial; every "
        "ratio compares per-trial values (`stats.compare`). A target is met or missed only "
        "when the ratio's whole 95% CI lies on one side of it; otherwise it is unclear.",
        "",
        *([pacing, ""] if (pacing := avatar_pacing.sentence(analyse.pacing(df, params))) else []),
        *_failed(analyse.failed_trials(df)),
        "### Headline",
        "",
        table(_headline_table(h)),
        "",
        _reading(h),
        "",
    ]
    for scenario, metric, digits, title in (
        ("simple_commands", "rtt_us", 1, "Simple commands, one at a time"),
        ("expression_commands", "rtt_us", 1, "Expression sequences, one at a time"),
        ("message_sizes", "rtt_us", 1, "Message sizes"),
    ):
        t = _latency_table(summary, scenario, metric, digits)
        if len(t):
            out += [f"### {title}", "", table(t), ""]
    for scenario, names, title in (
        ("throughput", ["throughput_cmd_per_s", "total_ms"], "Pipelined throughput"),
        ("batching", ["total_ms"], "Batching"),
        ("original_method", ["total_ms", "applied_ms"], "The original method, reproduced"),
    ):
        t = _per_trial_table(summary, scenario, names)
        if len(t):
            out += [f"### {title}", "", table(t), ""]
    cost = analyse.frame_cost_table(df, summary)
    if len(cost):
        out += [
            "### Frame cost: main-thread time in Tick per frame",
            "",
            "From the peer's own frame log (`frame_stats`): p50 is the median across trials of "
            "each trial's median frame; p99 and max cover all frames of all trials. "
            "`non_reading_client`: a client whose socket is full sends "
            f"{analyse.NON_READING_COMMANDS_PER_FRAME} commands per frame and reads nothing.",
            "",
            table(_frame_cost_table(cost)),
            "",
        ]
    plots = [
        ipc_plots.latency_cdf(requests, plots_dir, md_dir),
        ipc_plots.latency_vs_size(summary, plots_dir, md_dir),
        ipc_plots.batching(summary, plots_dir, md_dir),
    ]
    plots = [p for p in plots if p]
    if plots:
        out += ["### Plots", "", *[f"{p}\n" for p in plots]]
    return "\n".join(out).rstrip() + "\n"


def summary_rows(df: pd.DataFrame, info: dict) -> list[dict]:
    """FINAL_RESULTS.md's summary rows: the round trip, and batches against one by one."""
    rows = []
    h = analyse.headline(df)
    if not math.isnan(h.get("bridge_p50_us", math.nan)):
        rows.append(
            summary_row(
                "ipc",
                f"— (round trip, {h.get('peer', '?')} peer, unpaced)",
                "send to applied p50 (ms)",
                "–",
                fmt(h["bridge_p50_us"] / 1e3, 3),
                "–",
                "–",
                CLAIMS["ipc_latency"],
            )
        )
    m = metrics.get("ipc", "total_ms")
    for fps, r in analyse.batching_comparisons(df):
        where = "unpaced" if fps == 0 else f"{fps:g} fps"
        rows.append(
            ab_row("ipc", f"batches instead of one by one ({where})", m, r, CLAIMS["batching"])
        )
    return rows


def variant_row(df: pd.DataFrame, info: dict) -> dict:
    """This run's columns in the table of the phase's variants."""
    h = analyse.headline(df)
    out = {
        "bridge p50 µs": fmt(h.get("bridge_p50_us", np.nan)),
        "raw socket p50 µs": fmt(h.get("floor_p50_us", np.nan)),
        "bridge/raw": fmt(h.get("bridge_over_floor_p50", np.nan), 2),
        "one-by-one/batched, 60 fps": fmt(h.get("60fps_one_by_one_over_batched_total", np.nan)),
    }
    if "frame_cost_100_p99_us" in h:
        out["Tick p99 at 100 cmds µs"] = fmt(h["frame_cost_100_p99_us"])
    return out


REPORT = PhaseReport(
    section=section,
    summary_rows=summary_rows,
    variant_row=variant_row,
    sweep_extra=None,
)
