"""The cpu phase's measurement: one fresh model load per trial under one background load."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from mateperf import companion, model, progress, recommend, runner, workloads
from mateperf.companion_load import avatar_alone, background
from mateperf.frame_budget import budget_fps
from mateperf.phases.cpu.params import CpuParams, Setting, settings
from mateperf.runner import Visit, adaptive
from mateperf.trackers import cpu as cpu_detect

SCENARIO = "threads"


def trial(setting: Setting, p: CpuParams, model_path: str, rng: np.random.Generator, user: str):
    """Load, warm up as llama-bench does, then pp, tg and one reply inside the load's window."""
    config = model.LlamaConfig.from_params({**p, **asdict(setting)}, model_path=model_path)
    load = background(setting.background, p.peer, p.fps, setting.frame_busy, p.command_hz, p.avatar)
    with load:
        llm, load_s = model.load(config)
        try:
            workloads.bench_warm_up(llm, p.pp_tokens, setting.n_batch, rng)
            with load.window() as avatar:
                pp_s = workloads.bench_pp(llm, p.pp_tokens, setting.n_batch, rng)
                cpu_start = time.process_time()
                tg_s = workloads.bench_tg(llm, p.tg_tokens, rng)
                cpu_tg_s = time.process_time() - cpu_start
                reply = workloads.stream_reply(
                    llm, companion.chat_messages(user), p.max_tokens, p.seed
                )
        finally:
            model.close(llm)
    row = {
        "load_s": load_s,
        "pp_tps": p.pp_tokens / pp_s,
        "tg_tps": p.tg_tokens / tg_s,
        "cpu_ms_per_token": 1e3 * cpu_tg_s / p.tg_tokens,
        "ttft_ms": reply["ttft_ms"],
        "e2e_ms": reply["e2e_ms"],
        "reply_tokens": reply["gen_tokens"],
        "prompt_tokens": reply["prompt_tokens"],
    }
    if avatar is not None:
        row.update(avatar.figures())
    return row


def avatar_alone_p99(p: CpuParams, visit: list[Setting]) -> dict[float, float]:
    """Per companion load, the avatar's frame p99 with no model working, measured before any
    setting (the frame rule's idle reading, mateperf.frame_budget)."""
    out = {}
    for busy in sorted({s.frame_busy for s in visit if s.background == "companion"}):
        with background("companion", p.peer, p.fps, busy, p.command_hz, p.avatar) as load:
            out[busy] = avatar_alone(load)["frame_p99_ms"]
        _progress(f"the avatar alone at {busy:.0%} busy, no model: frame p99 {out[busy]:.2f} ms")
    return out


def _frame_fps(p: CpuParams) -> tuple[float, str]:
    """The fps the frame rule's budget (1000/fps + slack) is set at, and where it came from:
    an attached avatar's own target_fps where it reports one, as tune takes it; `fps` (the
    spawned stand-in's rate) otherwise."""
    if not p.avatar:
        return budget_fps(p.fps, None)
    from mateperf.bridge.attach import connect_avatar

    bridge, identity = connect_avatar(p.avatar)
    bridge.close()
    fps, source = budget_fps(p.fps, identity)
    _progress(f"frame budget at {fps:g} fps ({source})")
    return fps, source


def _identity(setting: Setting, peer: str, avatar: str = "") -> dict:
    return {
        "scenario": SCENARIO,
        "n_threads": setting.n_threads,
        "n_threads_batch": setting.n_threads_batch,
        "n_batch": setting.n_batch,
        "n_ubatch": setting.n_ubatch,
        "background": setting.background,
        "frame_busy": setting.frame_busy,
        "condition": recommend.condition_label(setting.background, setting.frame_busy),
        # the companion background's peer: the stand-in's kind, or "live" for an attached avatar
        "peer": ("live" if avatar else peer) if setting.background == "companion" else "",
    }


def _figures(_visit: Visit, row: dict) -> str:
    frame = f", frame p99 {row['frame_p99_ms']:.1f} ms" if "frame_p99_ms" in row else ""
    return (
        f"pp {row['pp_tps']:.0f}, tg {row['tg_tps']:.1f} tok/s, ttft {row['ttft_ms']:.0f} ms{frame}"
    )


_progress = progress.reporter("cpu")


def _label(s: Setting) -> str:
    return s.label


def _tg(row: dict) -> float:
    """What a setting's repetition stops on: generation tokens/s, what threads decide."""
    return row["tg_tps"]


def run(**values) -> pd.DataFrame:
    """Every setting under every load, interleaved per round after one warm-up trial."""
    p = CpuParams.from_values(values)
    topo = cpu_detect.detect()
    path = model.resolve_model(p.model or None)
    visit = settings(p, topo.usable)
    rng = np.random.default_rng(p.seed)
    until = f", fewer once within ±{p.precision_pct:g}%" if p.precision_pct else ""
    _progress(
        f"{len(visit)} settings × {p.trials} trials{until} (+1 warm-up) on {topo.usable} usable "
        f"CPUs, seed {p.seed}"
    )

    frame_fps, frame_fps_source = _frame_fps(p)
    alone = avatar_alone_p99(p, visit)

    def one(v: Visit[Setting]) -> dict:
        user = companion.USER_TURNS[max(v.round, 0) % len(companion.USER_TURNS)]
        return trial(v.item, p, str(path), rng, user)

    base = lambda v: _identity(v.item, p.peer, p.avatar)  # noqa: E731 - the runner's identity columns
    if p.precision_pct and p.trials >= 2:  # a CI of a median needs two values
        precision = adaptive.Precision(
            p.precision_pct / 100, max(2, min(p.min_trials, p.trials)), p.trials
        )
        rows = runner.run_until_precise(
            "cpu", visit, one, _figures, _tg, precision, rng, base, label=_label
        )
    else:
        order = runner.interleaved(visit, p.trials, rng)
        rows = runner.run_trials("cpu", order, one, _figures, base, label=_label)
    df = pd.DataFrame(rows)
    runner.require_some(df, "trial")
    df["model_file"] = path.name
    df["usable_cpus"] = topo.usable
    # the frame rule's fps and where it came from (mateperf.frame_budget.from_frame reads them)
    df["frame_fps"] = frame_fps
    df["frame_fps_source"] = frame_fps_source
    # the frame rule's idle reading, per load: a column, as every condition of a trial is
    df["frame_p99_idle_ms"] = [
        alone.get(float(b), float("nan")) if bg == "companion" else float("nan")
        for bg, b in zip(df["background"], df["frame_busy"], strict=True)
    ]
    return df
