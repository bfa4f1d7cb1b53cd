"""Measuring the llm phase: first replies after a fresh load, llama-bench throughput, bandwidth.

`run(**values)` visits, round by round, one cold/warm pair of first replies (ABBA order) and
one throughput repetition (pp, tg and the memory-copy bandwidth), so every scenario's trials
spread over the whole run; round -1 is the warm-up of each. With `precision_pct` (adaptive
repetition, `mateperf.runner.run_rounds`) the pairs stop once both arms' time to first token
is precise and the repetitions once pp and tg are, from `min_trials` on; else at their caps.
Trials go through `mateperf.runner.run_trials`: a failed one is a row with its `error`, and the
run goes on.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mateperf import companion, gguf_file, model, progress, runner, workloads
from mateperf.phases.llm.analyse import (
    COLD,
    SCENARIO_FIRST_REPLY,
    SCENARIO_MEMBW,
    SCENARIO_PP,
    SCENARIO_TG,
    WARM,
)
from mateperf.phases.llm.params import LlmParams
from mateperf.runner import Visit, adaptive

BENCH = "throughput"  # the visit of one throughput repetition (its rows: pp, tg, membw)
# A stored frame's first columns, in the order runs have always had them.
LEADING_COLUMNS = ["scenario", "arm", "trial", "is_warmup", "position_in_pair", "user_turn"]

_progress = progress.reporter("llm")


def first_reply_trial(config: model.LlamaConfig, arm: str, user: str, p: LlmParams) -> dict:
    """Load afresh, warm up (warm arm: the app's warm_cache step), stream one companion turn."""
    llm, load_s = model.load(config)
    try:
        warmup_ms = float("nan")
        if arm == WARM:
            warmup_ms = workloads.warm_up(llm, p.warmup_tokens, config.seed)
        messages = companion.chat_messages(user)
        row = workloads.stream_reply(llm, messages, p.max_tokens, config.seed)
    finally:
        model.close(llm)
    return {"load_s": load_s, "warmup_ms": warmup_ms, **row}


def throughput_trial(
    config: model.LlamaConfig, p: Mapping[str, int], rng: np.random.Generator
) -> list[dict]:
    """One llama-bench repetition (pp, then tg) on a model loaded for it alone.

    `p` holds `pp_tokens` and `tg_tokens` (an LlmParams, or any mapping with both).

    A fresh load per repetition makes the repetitions independent of one load's placement of
    weights and threads (repetitions on one load agree with each other far better than two
    runs do: an A/A pair was called different on pp and tg that way). llama-bench's own
    warm-up comes first (`workloads.bench_warm_up`: a full prompt of the measured size, one
    generated token), so both tools time a context in the same state.
    """
    llm, _ = model.load(config)
    rows = []
    try:
        workloads.bench_warm_up(llm, p["pp_tokens"], config.n_batch, rng)
        if p["pp_tokens"]:
            s = workloads.bench_pp(llm, p["pp_tokens"], config.n_batch, rng)
            rows.append(_bench_row(SCENARIO_PP, p["pp_tokens"], s, "pp_tps"))
        if p["tg_tokens"]:
            s = workloads.bench_tg(llm, p["tg_tokens"], rng)
            rows.append(_bench_row(SCENARIO_TG, p["tg_tokens"], s, "tg_tps"))
    finally:
        model.close(llm)
    return rows


def _bench_row(scenario: str, n_tokens: int, seconds: float, metric: str) -> dict:
    return {
        "scenario": scenario,
        "bench_tokens": n_tokens,
        "bench_s": seconds,
        metric: n_tokens / seconds,
    }


def copy_bandwidth_gbps(total_mb: int, n_threads: int) -> float:
    """Memory-copy bandwidth in GB/s (bytes read + written), n_threads copying at once.

    ctypes.memmove releases the GIL, so the threads really copy in parallel, like the decode
    threads stream weights. Each thread copies its own buffers, larger than the caches.
    """
    per_thread = max(1, total_mb // max(1, n_threads)) * 2**20
    # Both buffers written once up front: a first-touch page fault inside the timed copy
    # would measure the kernel, not the memory.
    bufs = [
        (np.full(per_thread, 1, np.uint8), np.full(per_thread, 2, np.uint8))
        for _ in range(n_threads)
    ]
    barrier = threading.Barrier(n_threads + 1)

    def copy(src, dst):
        barrier.wait()
        ctypes.memmove(dst.ctypes.data, src.ctypes.data, per_thread)
        barrier.wait()

    threads = [threading.Thread(target=copy, args=b) for b in bufs]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter_ns()
    barrier.wait()
    seconds = (time.perf_counter_ns() - start) / 1e9
    for t in threads:
        t.join()
    return 2 * per_thread * n_threads / seconds / 1e9


def streams(trials: int, bench_reps: int) -> list[runner.Stream[str]]:
    """Round by round: the cold/warm pair (balanced ABBA order), then one throughput visit.

    The pairs stop on both arms' time to first token; the throughput repetitions on pp and tg
    tokens/s (what llama-bench reports), each when precise or at its own cap.
    """
    pairs = runner.abba(COLD, WARM, trials)

    def pair_figures(visit: Visit[str], row: dict) -> dict[str, float]:
        return {f"ttft_ms {visit.item}": row["ttft_ms"]}

    def bench_figures(_visit: Visit[str], rows: list[dict]) -> dict[str, float]:
        return {m: r[m] for r in rows for m in ("pp_tps", "tg_tps") if m in r}

    return [
        runner.Stream(
            "first replies", lambda k: [v for v in pairs if v.round == k], pair_figures, trials
        ),
        runner.Stream("throughput", lambda k: [Visit(k, BENCH)], bench_figures, bench_reps),
    ]


def _user_turn(visit: Visit[str]) -> int:
    # both arms of a pair answer the same user turn, so prompt length cancels
    return (visit.round + 1) % len(companion.USER_TURNS)


def run(**values) -> pd.DataFrame:
    """Phase 2: first replies cold and warm, throughput and bandwidth; one row per trial."""
    p = LlmParams.from_values(values, what="llm")
    path = model.resolve_model(p.model or None)  # validates the file
    meta = gguf_file.gguf_metadata(path)
    config = model.LlamaConfig.from_params(p, model_path=str(path))
    offload = workloads.gpu_offload_available()
    if p.n_gpu_layers != 0 and not offload:
        _progress(
            f"WARNING: n_gpu_layers={p.n_gpu_layers} asked for, but this llama-cpp-python build "
            "has no GPU offload: every layer runs on the CPU (see README, CUDA build)"
        )
    rng = np.random.default_rng(config.seed)
    latest: list[dict] = []  # the latest throughput rows, for its progress line

    def trial(visit: Visit[str]) -> dict | list[dict]:
        if visit.item != BENCH:
            user = companion.USER_TURNS[_user_turn(visit)]
            return first_reply_trial(config, visit.item, user, p)
        latest[:] = throughput_trial(config, p, rng)
        if p.membw_mb:
            gbps = copy_bandwidth_gbps(p.membw_mb, config.threads)
            latest.append({"scenario": SCENARIO_MEMBW, "membw_gbps": gbps})
        return list(latest)

    def base(visit: Visit[str]) -> dict:
        if visit.item == BENCH:  # a failed repetition is recorded under its first test
            return {"scenario": SCENARIO_PP if p.pp_tokens else SCENARIO_TG}
        return {
            "scenario": SCENARIO_FIRST_REPLY,
            "arm": visit.item,
            "position_in_pair": visit.position,
            "user_turn": _user_turn(visit),
        }

    def describe(visit: Visit[str], row: dict) -> str:
        if visit.item == BENCH:
            return ", ".join(f"{r['scenario']} {_bench_figure(r):.1f}" for r in latest)
        return (
            f"load {row['load_s']:.2f} s, ttft {row['ttft_ms']:.0f} ms, "
            f"tg {row['tg_tps']:.1f} tok/s"
        )

    precision = None
    if p.precision_pct and min(p.trials, p.bench_reps) >= 2:  # a CI of a median needs two
        # run_rounds caps each part at its own count (trials, bench_reps), not at max_reps
        precision = adaptive.Precision(
            p.precision_pct / 100, p.min_trials, max(p.trials, p.bench_reps, p.min_trials)
        )
    rows = runner.run_rounds(
        "llm",
        streams(p.trials, p.bench_reps),
        trial,
        describe,
        base=base,
        label=lambda item: item if item == BENCH else f"first reply {item}",
        precision=precision,
    )
    df = pd.DataFrame(rows).drop(columns="visit")
    df = df[LEADING_COLUMNS + [c for c in df.columns if c not in LEADING_COLUMNS]]
    first = df["scenario"] == SCENARIO_FIRST_REPLY
    for what, part in (("first-reply trial", df[first]), ("throughput repetition", df[~first])):
        if len(part):  # no throughput rows at all where pp, tg and membw are all 0
            runner.require_some(part, what)
    df["model_name"] = meta["name"]
    df["model_file"] = path.name
    df["model_tensor_bytes"] = meta["tensor_bytes"]
    df["gpu_offload"] = offload
    df["gpu_layers_effective"] = p.n_gpu_layers if offload else 0
    df["threads_used"] = config.threads
    df["threads_batch_used"] = config.threads_batch
    return df


def _bench_figure(row: dict) -> float:
    return row.get("tg_tps", row.get("pp_tps", row.get("membw_gbps", float("nan"))))
