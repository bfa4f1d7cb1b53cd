"""Every metric, declared once: unit, direction, verdict words and the level it is measured at.

compare, sweeps, explore, reports and plots read these declarations; a column that is not
declared here is never compared (timestamps, counts and ids are not metrics, whatever their
name ends with). Like asv's benchmark `unit`, the declaration lives in one place and no
consumer guesses from a column name.

Levels say what repeats independently:
- REQUEST: many rows per trial (one per request or sample). Rows of one trial share the
  trial's conditions, so they are never pooled as independent: consumers reduce them to one
  statistic per trial (median, p95, p99) and compare those across trials.
- TRIAL: one value per trial, stored on one row of that trial.
- RUN: one value per run (a memory run's leak slope): a comparison needs replicated runs,
  e.g. a sweep's rounds, where each round is a replicate.

Units: memory columns ending in `_mb` hold MiB (2**20 bytes, as psutil and nvidia-smi count)
and `_kb` columns KiB; the declared unit says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LOWER, HIGHER = "lower", "higher"  # which direction is better
REQUEST, TRIAL, RUN = "request", "trial", "run"

# The one warm-up flag every phase writes and every consumer leaves out.
WARMUP_FLAG = "is_warmup"

SPEED = ("faster", "slower")
MEMORY = ("less memory", "more memory")
TOKENS = ("fewer tokens", "more tokens")
CPU = ("less CPU", "more CPU")
# a frame interval is a time, but "faster" would read as a higher frame rate: say which way
FRAME = ("lower", "higher")

# Per-trial statistics of a request-level metric that consumers compare across trials.
TRIAL_STATS = ("median", "p95", "p99")


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    direction: str  # LOWER or HIGHER is better
    level: str  # REQUEST, TRIAL or RUN
    words: tuple[str, str] = SPEED  # (better, worse)
    label: str = ""

    @property
    def higher_is_better(self) -> bool:
        return self.direction == HIGHER

    @property
    def title(self) -> str:
        return f"{self.label or self.name} ({self.unit})"


def _m(name, unit, direction, level, words=SPEED, label="") -> Metric:
    return Metric(name, unit, direction, level, words, label)


# -- phase 1, memory ----------------------------------------------------------------------------
# Memory rows are samples, markers and per-message readings of ONE session: none of them repeat
# independently. What a memory run measures is declared at run level and derived per run by
# mateperf.phases.memory.trial_table. The leak slope is the one the verdict rests on: the live
# heap (heap in use less garbage a later collection returned) per message after the warm-up.
# Reply times (gen_ms) are not declared: this phase does not control for speed (the llm phase
# measures it), and they run on a host shared with the sampler.
MEMORY_METRICS = (
    _m("leak_slope_kb_per_msg", "KiB/message", LOWER, RUN, MEMORY, "live-heap growth"),
    _m("rss_after_load_mb", "MiB", LOWER, RUN, MEMORY, "RSS after load"),
    _m("rss_after_chat_mb", "MiB", LOWER, RUN, MEMORY, "RSS after the chat"),
    _m("rss_peak_mb", "MiB", LOWER, RUN, MEMORY, "peak RSS during the chat"),
    _m("left_over_rss_mb", "MiB", LOWER, RUN, MEMORY, "RSS left after cleanup"),
)

# -- phase 2, llm -------------------------------------------------------------------------------
# bench_s is not declared: it is bench_tokens / pp_tps (or tg_tps), the same verdict twice.
LLM_METRICS = (
    _m("load_s", "s", LOWER, TRIAL, SPEED, "model load"),
    _m("warmup_ms", "ms", LOWER, TRIAL, SPEED, "warm-up"),
    _m("ttft_ms", "ms", LOWER, TRIAL, SPEED, "time to first token"),
    _m("e2e_ms", "ms", LOWER, TRIAL, SPEED, "whole reply"),
    _m("pp_tps", "tokens/s", HIGHER, TRIAL, SPEED, "prompt tokens/s"),
    _m("tg_tps", "tokens/s", HIGHER, TRIAL, SPEED, "generation tokens/s"),
    _m("prompt_tokens", "tokens", LOWER, TRIAL, TOKENS, "prompt tokens evaluated"),
    _m("membw_gbps", "GB/s", HIGHER, TRIAL, SPEED, "memory-copy bandwidth"),
)

# -- phase 3, ipc -------------------------------------------------------------------------------
# rtt_us is send to completion ack (the avatar has applied the command). The frame's
# completion_ms is the same measurement in ms, for frame-scale figures: not declared twice.
# Not metrics: since_start_ms (a timestamp), size_bytes (depends on the id's digits), frame,
# seq. apply_delay_ms is a parameter (a known answer), compared as a run-wide condition.
IPC_METRICS = (
    _m("rtt_us", "µs", LOWER, REQUEST, SPEED, "round trip (send to applied)"),
    _m("sendall_us", "µs", LOWER, REQUEST, SPEED, "sendall() time"),
    _m("peer_queue_us", "µs", LOWER, REQUEST, SPEED, "time queued in the peer"),
    _m("total_ms", "ms", LOWER, TRIAL, SPEED, "whole sequence"),
    _m("throughput_cmd_per_s", "commands/s", HIGHER, TRIAL, SPEED, "throughput"),
    _m("applied_ms", "ms", LOWER, TRIAL, SPEED, "until all applied"),
    # frame_cost: one row per frame (many per trial, like requests): the peer's main-thread
    # time in Tick, the cost the bridge adds to every frame of the game
    _m("tick_us", "µs", LOWER, REQUEST, SPEED, "main-thread Tick per frame"),
)

# Unity's FrameTimingManager, from an attached avatar that reports it (NaN otherwise, the reason
# in frame_note); the window's frame_first/frame_last are frame numbers, not metrics
AVATAR_TIMING = (
    _m("cpu_main_p99_ms", "ms", LOWER, TRIAL, SPEED, "avatar CPU main-thread frame p99"),
    _m("gpu_p99_ms", "ms", LOWER, TRIAL, SPEED, "avatar GPU frame time p99"),
)

# -- phase 4, cpu -------------------------------------------------------------------------------
# One row per trial (a fresh model load with one setting under one background). The frame and
# command figures are the peer's, per trial window (companion background only).
CPU_METRICS = (
    _m("pp_tps", "tokens/s", HIGHER, TRIAL, SPEED, "prompt tokens/s"),
    _m("tg_tps", "tokens/s", HIGHER, TRIAL, SPEED, "generation tokens/s"),
    _m("ttft_ms", "ms", LOWER, TRIAL, SPEED, "time to first token"),
    _m("e2e_ms", "ms", LOWER, TRIAL, SPEED, "whole reply"),
    _m("cpu_ms_per_token", "CPU ms/token", LOWER, TRIAL, CPU, "process CPU time per token"),
    _m("frame_p50_ms", "ms", LOWER, TRIAL, FRAME, "avatar frame interval p50"),
    _m("frame_p99_ms", "ms", LOWER, TRIAL, FRAME, "avatar frame interval p99"),
    *AVATAR_TIMING,
    _m("cmd_rtt_ms", "ms", LOWER, TRIAL, SPEED, "emotion command round trip"),
)

# -- phase 6, final -----------------------------------------------------------------------------
# One row per companion turn (model loaded afresh, peer started afresh). beat_ms is the turn's
# median emotion-beat completion (queued by the reply to its last command applied).
FINAL_METRICS = (
    _m("startup_ms", "ms", LOWER, TRIAL, SPEED, "model load and warm-up"),
    _m("ttft_ms", "ms", LOWER, TRIAL, SPEED, "time to first token"),
    _m("e2e_ms", "ms", LOWER, TRIAL, SPEED, "whole reply"),
    _m("tg_tps", "tokens/s", HIGHER, TRIAL, SPEED, "generation"),
    _m("beat_ms", "ms", LOWER, TRIAL, SPEED, "avatar emotion beat applied"),
    _m("frame_p99_ms", "ms", LOWER, TRIAL, FRAME, "avatar frame interval p99"),
    *AVATAR_TIMING,
    _m("peak_rss_mb", "MiB", LOWER, TRIAL, MEMORY, "peak RSS"),
    _m("peak_vram_mb", "MiB", LOWER, TRIAL, MEMORY, "peak VRAM"),
)

_BY_PHASE: dict[str, tuple[Metric, ...]] = {
    "memory": MEMORY_METRICS,
    "llm": LLM_METRICS,
    "ipc": IPC_METRICS,
    "cpu": CPU_METRICS,
    "final": FINAL_METRICS,
}

# What identifies a test inside a run: rows of A are matched with rows of B on these (and on
# any parameter that varies inside a run, such as a swept one). What the user asked for, never
# incidental values (the bytes of a request depend on the digits of its id).
IDENTITY: dict[str, tuple[str, ...]] = {
    "memory": (),
    "llm": ("scenario", "arm"),
    "ipc": ("scenario", "mode", "fps", "target_bytes", "batch_size", "commands_per_frame"),
    "cpu": ("background", "frame_busy", "n_threads", "n_threads_batch", "n_batch", "n_ubatch"),
    "final": ("arm", "peer"),
}


def declare(phase: str, metrics: tuple[Metric, ...], identity: tuple[str, ...] = ()) -> None:
    """Register a phase's metrics (phases added later declare theirs here too)."""
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"phase {phase}: a metric is declared twice")
    _BY_PHASE[phase] = tuple(metrics)
    IDENTITY[phase] = tuple(identity)


def for_phase(phase: str) -> tuple[Metric, ...]:
    return _BY_PHASE.get(phase, ())


def get(phase: str, name: str) -> Metric | None:
    for metric in for_phase(phase):
        if metric.name == name:
            return metric
    return None


def find(name: str) -> Metric | None:
    """The declaration of `name` in whichever phase declares it (first match)."""
    for metrics in _BY_PHASE.values():
        for metric in metrics:
            if metric.name == name:
                return metric
    return None


def present(phase: str, df: pd.DataFrame) -> list[Metric]:
    """The phase's declared metrics that `df` has as numeric columns, in declaration order."""
    return [
        m
        for m in for_phase(phase)
        if m.name in df.columns and pd.api.types.is_numeric_dtype(df[m.name])
    ]


def without_warmup(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that count: warm-up rows left out (old runs' flags: mateperf.upgrade)."""
    if WARMUP_FLAG in df.columns:
        df = df[~df[WARMUP_FLAG].fillna(False).astype(bool)]
    return df


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that count in a phase that records failed trials (an `error` column): warm-ups
    and failures left out."""
    d = without_warmup(df)
    if "error" in d.columns:
        d = d[d["error"].fillna("") == ""]
    return d


def one_run(df: pd.DataFrame) -> pd.DataFrame:
    """The first run's rows of a frame that holds several (a phase's section shows one run)."""
    if "run_id" in df.columns and df["run_id"].nunique() > 1:
        df = df[df["run_id"] == df["run_id"].iloc[0]]
    return df


def replicate_keys(df: pd.DataFrame) -> list[str]:
    """The columns that name one independent replicate: a sweep's round, then the trial."""
    return [c for c in ("round", "trial") if c in df.columns]


def per_replicate(rows: pd.DataFrame, column: str, percentile: float = 50) -> np.ndarray:
    """One value of `column` per replicate (sorted by round and trial): a percentile of its
    rows (a trial's requests, or a trial row's own value); a frame without replicate columns
    is one replicate. Trials, not requests, are what repeat independently."""
    if column not in rows.columns:
        return np.array([], float)
    keys = replicate_keys(rows)
    values = rows[[*keys, column]].dropna(subset=[column])
    if values.empty:
        return np.array([], float)
    if not keys:
        return np.array([np.percentile(values[column].astype(float), percentile)])
    return values.groupby(keys, sort=True)[column].quantile(percentile / 100).to_numpy(float)


# -- phase 5, gpu -------------------------------------------------------------------------------
# One row per trial: a fresh load (in its own process on a CUDA build) of one configuration,
# the run's own n_gpu_layers (scenario `layers`) or a profile. VRAM is NVML's device-used memory
# after the trial's work minus the reading before the trial started (this process holds no CUDA
# context), so it includes the CUDA context. Predictions are not metrics: they do not repeat.
GPU_METRICS = (
    _m("load_s", "s", LOWER, TRIAL, SPEED, "model load"),
    _m("ttft_ms", "ms", LOWER, TRIAL, SPEED, "time to first token"),
    _m("e2e_ms", "ms", LOWER, TRIAL, SPEED, "whole reply"),
    _m("pp_tps", "tokens/s", HIGHER, TRIAL, SPEED, "prompt tokens/s"),
    _m("tg_tps", "tokens/s", HIGHER, TRIAL, SPEED, "generation tokens/s"),
    _m("vram_delta_mb", "MiB", LOWER, TRIAL, MEMORY, "VRAM in use after the work (NVML)"),
    _m("vram_peak_delta_mb", "MiB", LOWER, TRIAL, MEMORY, "peak VRAM during the trial (NVML)"),
)
declare("gpu", GPU_METRICS, identity=("scenario", "profile"))

# -- phase 7, live ------------------------------------------------------------------------------
# One row per model call of a real companion session (mateperf.live). A call is one value of
# each metric; two sessions compare call against call as replicates, which holds only where they
# ran the same kind of turns. prompt_eval_ms and eval_ms are llama.cpp's own counters over the
# call; wall_ms is what the user waits for. The recorder's own time (overhead_us) is not a metric
# of the companion.
LIVE_METRICS = (
    _m("wall_ms", "ms", LOWER, TRIAL, SPEED, "whole call (wall)"),
    _m("prompt_eval_ms", "ms", LOWER, TRIAL, SPEED, "prompt eval (llama.cpp)"),
    _m("eval_ms", "ms", LOWER, TRIAL, SPEED, "generation (llama.cpp)"),
    _m("pp_tps", "tokens/s", HIGHER, TRIAL, SPEED, "prompt tokens/s"),
    _m("tg_tps", "tokens/s", HIGHER, TRIAL, SPEED, "generation tokens/s"),
    _m("prompt_tokens", "tokens", LOWER, TRIAL, TOKENS, "prompt tokens"),
    _m("completion_tokens", "tokens", LOWER, TRIAL, TOKENS, "completion tokens"),
    _m("rss_mb", "MiB", LOWER, TRIAL, MEMORY, "RSS after the call"),
    _m("vram_used_mb", "MiB", LOWER, TRIAL, MEMORY, "device VRAM used after the call (NVML)"),
    _m("frame_p99_ms", "ms", LOWER, TRIAL, FRAME, "avatar frame interval p99 during the call"),
)
declare("live", LIVE_METRICS, identity=("method",))


# -- tune ---------------------------------------------------------------------------------------
# One row per trial of `mateperf tune` (stage race or confirm, per profile): a fresh load of one
# setting and one companion reply under the avatar's load. reply_ms is the objective, the frame
# p99 the constraint (mateperf.frame_budget).
TUNE_METRICS = (
    _m("reply_ms", "ms", LOWER, TRIAL, SPEED, "time to a fixed-length reply"),
    _m("ttft_ms", "ms", LOWER, TRIAL, SPEED, "time to first token"),
    _m("tg_tps", "tokens/s", HIGHER, TRIAL, SPEED, "generation tokens/s"),
    _m("pp_tps", "tokens/s", HIGHER, TRIAL, SPEED, "prompt tokens/s"),
    _m("load_s", "s", LOWER, TRIAL, SPEED, "model load"),
    _m("frame_p99_ms", "ms", LOWER, TRIAL, FRAME, "avatar frame interval p99"),
    _m("vram_delta_mb", "MiB", LOWER, TRIAL, MEMORY, "VRAM the trial added (NVML)"),
)
declare("tune", TUNE_METRICS, identity=("profile", "stage", "candidate", "role"))

# What a person may group a phase's rows by (explore's "by" and "hue"): its identity, the
# settings its runs and sweeps vary, and which run and host. Listed coarse to fine: the finest
# a metric varies over is explore's default series.
_COMMON_FACTORS = ("host", "run_id", "round")
_LOAD_SETTINGS = (
    "n_threads",
    "n_threads_batch",
    "n_batch",
    "n_ubatch",
    "n_gpu_layers",
    "n_ctx",
    "flash_attn",
    "type_k",
)
FACTORS: dict[str, tuple[str, ...]] = {
    "memory": (*_COMMON_FACTORS, "scenario", "collect_every", "leak_kb_per_msg"),
    "llm": (*_COMMON_FACTORS, *_LOAD_SETTINGS, "scenario", "arm"),
    "ipc": (*_COMMON_FACTORS, "peer", "fps", "scenario", "mode", "batch_size", "target_bytes"),
    "cpu": (*_COMMON_FACTORS, "background", "frame_busy", "condition", *_LOAD_SETTINGS),
    "gpu": (*_COMMON_FACTORS, *_LOAD_SETTINGS, "scenario", "profile"),
    "final": (*_COMMON_FACTORS, "peer", "arm"),
    "tune": (*_COMMON_FACTORS, "profile", "stage", "role", *_LOAD_SETTINGS, "candidate"),
    "live": (*_COMMON_FACTORS, "model_file", *_LOAD_SETTINGS, "method", "finish_reason"),
}


def factors(phase: str, df: pd.DataFrame | None = None) -> list[str]:
    """The phase's declared factors (FACTORS), those `df` has where one is given."""
    declared_ = FACTORS.get(phase, (*_COMMON_FACTORS, *IDENTITY.get(phase, ())))
    return [f for f in declared_ if df is None or f in df.columns]


# Decimals a table shows per unit: what the measurement resolves, not float noise.
UNIT_DECIMALS = {
    "ms": 1,
    "µs": 0,
    "s": 2,
    "tokens/s": 1,
    "tokens": 0,
    "GB/s": 2,
    "MiB": 1,
    "KiB/message": 1,
    "commands/s": 0,
    "CPU ms/token": 2,
}
# Undeclared columns by their name's unit suffix (medians, CIs and gaps of a metric).
SUFFIX_DECIMALS = (
    ("_ms", 1),
    ("_us", 0),
    ("_s", 2),
    ("_tps", 1),
    ("_mb", 1),
    ("_kb", 1),
    ("_pct", 1),
    ("_gbps", 2),
)


def decimals(column: str) -> int:
    """The decimals a table shows for `column`: its declared unit's, else its name's unit's,
    p-values 4, anything else 3."""
    declared_ = find(column)
    if declared_ is not None and declared_.unit in UNIT_DECIMALS:
        return UNIT_DECIMALS[declared_.unit]
    for suffix, n in SUFFIX_DECIMALS:
        if column.endswith(suffix):
            return n
    return 4 if column in ("p", "p_value") else 3


def rounded(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each float column rounded to its unit's precision (for display only)."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(decimals(str(col)))
    return out
