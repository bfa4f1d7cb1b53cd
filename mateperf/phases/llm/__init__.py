"""Phase 2 "llm": model load, first reply, cold-vs-warm cache, steady-state throughput.

Scenarios (one tidy row per trial or repetition):
- `first_reply`: every trial loads the model afresh; the warm arm runs the warm-up (the system
  prompt plus a greeting, `warmup_tokens` generated) right after load, as the app's
  load_model(warm_cache=True) does; then one real companion turn is streamed. Arms are
  interleaved in a balanced order (cold-warm, warm-cold, cold-warm, ...: ABBA), so each arm
  runs first in half of the pairs and a drift or a carry-over from the previous trial hits both
  alike; each pair uses the same user turn, so prompt length cancels. The first pair is a
  warm-up of the process and disk cache and is kept in the table marked `is_warmup`.
- `pp` / `tg`: throughput the way llama-bench measures it (random tokens, KV cache cleared
  before each repetition, decode calls with no sampling), one repetition per fresh model load
  after a short warm-up decode; the first repetition is a warm-up, left out.
- `membw`: memory-copy bandwidth with n_threads threads, measured in the same run, so the
  generation rate can be shown against the bound bandwidth / bytes read per token.
"""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pandas as pd

from mateperf import companion, metrics, model, progress, stats
from mateperf.phases.declaration import Phase
from mateperf.phases.llm.params import LlmParams

SCENARIO_FIRST_REPLY = "first_reply"
SCENARIO_PP = "pp"
SCENARIO_TG = "tg"
SCENARIO_MEMBW = "membw"
COLD, WARM = "cold", "warm"
ROUND_SPLIT = ("trials", "bench_reps")  # what a sweep's rounds divide among them, primary first

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


def gpu_offload_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


_progress = progress.reporter("llm")


def _perf(llm) -> dict:
    import llama_cpp

    data = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return {
        "t_p_eval_ms": data.t_p_eval_ms,
        "t_eval_ms": data.t_eval_ms,
        "n_p_eval": data.n_p_eval,
        "n_eval": data.n_eval,
    }


def _reset_perf(llm) -> None:
    import llama_cpp

    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)


def _rate(tokens: int, ms: float) -> float:
    return tokens / (ms / 1e3) if tokens > 0 and ms > 0 else float("nan")


def stream_reply(llm, messages: list[dict], max_tokens: int, seed: int, on_chunk=None) -> dict:
    """Stream one chat reply; times to first content and to the end, and llama.cpp's counters.

    Greedy decoding (temperature 0) so both arms of an A/B generate the same text.
    `on_chunk(index, text)` is called for every piece of content as it arrives (the companion
    drives the avatar from it); its time counts in the reply, as it would in the app.
    """
    text_tokens = len(llm.tokenize("\n".join(m["content"] for m in messages).encode()))
    # llama.cpp may round its context up; llama-cpp-python's token buffer keeps n_ctx as asked
    n_ctx = min(llm.n_ctx(), len(llm.input_ids))
    if text_tokens + max_tokens > n_ctx:
        raise ValueError(
            f"the conversation ({text_tokens} tokens before the chat template) plus "
            f"max_tokens={max_tokens} does not fit the context window n_ctx={n_ctx}"
        )
    _reset_perf(llm)
    start = time.perf_counter_ns()
    first = None
    text = []
    stream = llm.create_chat_completion(
        messages=companion.prepare_messages(llm, messages),
        max_tokens=max_tokens,
        temperature=0.0,
        seed=seed,
        stream=True,
    )
    for chunk in stream:
        delta = chunk["choices"][0]["delta"].get("content")
        if delta:
            if first is None:
                first = time.perf_counter_ns()
            if on_chunk is not None:
                on_chunk(len(text), delta)
            text.append(delta)
    end = time.perf_counter_ns()
    perf = _perf(llm)
    return {
        "ttft_ms": (first - start) / 1e6 if first is not None else float("nan"),
        "e2e_ms": (end - start) / 1e6,
        "prompt_tokens": perf["n_p_eval"],
        "gen_tokens": perf["n_eval"],
        "pp_tps": _rate(perf["n_p_eval"], perf["t_p_eval_ms"]),
        "tg_tps": _rate(perf["n_eval"], perf["t_eval_ms"]),
        "reply_chars": len("".join(text)),
        "reply_text": "".join(text),
    }


def warm_up(llm, tokens: int, seed: int) -> float:
    """The app's warm_cache step: a tiny generation on the system prompt; returns ms."""
    start = time.perf_counter_ns()
    llm.create_chat_completion(
        messages=companion.prepare_messages(
            llm, companion.chat_messages(companion.WARMUP_USER_TURN)
        ),
        max_tokens=tokens,
        temperature=0.0,
        seed=seed,
    )
    return (time.perf_counter_ns() - start) / 1e6


def first_reply_trial(config: model.LlamaConfig, arm: str, user: str, p: dict) -> dict:
    llm, load_s = model.load(config)
    try:
        warmup_ms = float("nan")
        if arm == WARM:
            warmup_ms = warm_up(llm, p["warmup_tokens"], config.seed)
        row = stream_reply(llm, companion.chat_messages(user), p["max_tokens"], config.seed)
    finally:
        model.close(llm)
    return {"load_s": load_s, "warmup_ms": warmup_ms, **row}


def arm_order(pair: int) -> tuple[str, str]:
    """Balanced (ABBA) order: cold first in even pairs, warm first in odd ones."""
    return (COLD, WARM) if pair % 2 == 0 else (WARM, COLD)


# --- llama-bench style throughput -------------------------------------------------------------


def _clear_kv(llm) -> None:
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm._ctx.ctx), True)


def _decode(llm, tokens: list[int]) -> None:
    import llama_cpp

    arr = (llama_cpp.llama_token * len(tokens))(*tokens)
    rc = llama_cpp.llama_decode(llm._ctx.ctx, llama_cpp.llama_batch_get_one(arr, len(tokens)))
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc}")


def bench_pp(llm, n_tokens: int, n_batch: int, rng: np.random.Generator) -> float:
    """Prompt processing of n_tokens random tokens in n_batch chunks; returns seconds."""
    import llama_cpp

    n_vocab = llm.n_vocab()
    tokens = [int(t) for t in rng.integers(0, n_vocab, n_tokens)]
    tokens[0] = llm.token_bos()
    _clear_kv(llm)
    start = time.perf_counter_ns()
    for i in range(0, n_tokens, n_batch):
        _decode(llm, tokens[i : i + n_batch])
    llama_cpp.llama_synchronize(llm._ctx.ctx)
    return (time.perf_counter_ns() - start) / 1e9


def bench_tg(llm, n_tokens: int, rng: np.random.Generator) -> float:
    """Generation of n_tokens, one decode each, random next tokens; returns seconds."""
    import llama_cpp

    n_vocab = llm.n_vocab()
    token = llm.token_bos()
    _clear_kv(llm)
    start = time.perf_counter_ns()
    for _ in range(n_tokens):
        _decode(llm, [token])
        llama_cpp.llama_synchronize(llm._ctx.ctx)
        token = int(rng.integers(0, n_vocab))
    return (time.perf_counter_ns() - start) / 1e9


def throughput_trial(
    config: model.LlamaConfig, p: dict, rep: int, rng: np.random.Generator
) -> list[dict]:
    """One llama-bench repetition (pp, then tg) on a model loaded for it alone.

    A fresh load per repetition makes the repetitions independent of one load's placement of
    weights and threads (repetitions on one load agree with each other far better than two
    runs do: an A/A pair was called different on pp and tg that way). A short decode first
    touches every weight once, so the measured one does not pay a fresh load's page faults.
    """
    llm, _ = model.load(config)
    rows = []
    try:
        bench_pp(llm, min(16, llm.n_ctx()), config.n_batch, rng)
        if p["pp_tokens"]:
            s = bench_pp(llm, p["pp_tokens"], config.n_batch, rng)
            rows.append(_bench_row(SCENARIO_PP, rep, p["pp_tokens"], s, "pp_tps"))
        if p["tg_tokens"]:
            s = bench_tg(llm, p["tg_tokens"], rng)
            rows.append(_bench_row(SCENARIO_TG, rep, p["tg_tokens"], s, "tg_tps"))
    finally:
        model.close(llm)
    return rows


def _bench_row(scenario: str, rep: int, n_tokens: int, seconds: float, metric: str) -> dict:
    return {
        "scenario": scenario,
        "trial": rep,
        "is_warmup": rep < 0,
        "bench_tokens": n_tokens,
        "bench_s": seconds,
        metric: n_tokens / seconds,
    }


# --- memory bandwidth ceiling -----------------------------------------------------------------


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


def _bench_figure(row: dict) -> float:
    return row.get("tg_tps", row.get("pp_tps", row.get("membw_gbps", float("nan"))))


def membw_row(p: dict, n_threads: int, rep: int) -> dict:
    gbps = copy_bandwidth_gbps(p["membw_mb"], n_threads)
    return {"scenario": SCENARIO_MEMBW, "trial": rep, "is_warmup": rep < 0, "membw_gbps": gbps}


# --- the phase --------------------------------------------------------------------------------


def run(
    model: str = "",  # noqa: A002 - the parameter name users type
    n_threads: int = 0,
    n_threads_batch: int = 0,
    n_ctx: int = 2048,
    n_batch: int = 512,
    n_ubatch: int = 0,
    n_gpu_layers: int = 0,
    flash_attn: bool = False,
    trials: int = 5,
    max_tokens: int = 48,
    warmup_tokens: int = 2,
    bench_reps: int = 5,
    pp_tokens: int = 512,
    tg_tokens: int = 128,
    membw_mb: int = 512,
    seed: int = 1234,
) -> pd.DataFrame:
    p = LlmParams(**locals()).as_dict()
    from mateperf import model as model_mod

    path = model_mod.resolve_model(model or None)  # validates the file
    meta = model_mod.gguf_metadata(path)
    config = model_mod.LlamaConfig(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        n_threads=n_threads,
        n_threads_batch=n_threads_batch,
        n_gpu_layers=n_gpu_layers,
        flash_attn=flash_attn,
        seed=seed,
    )
    rows: list[dict] = []
    offload = gpu_offload_available()
    if n_gpu_layers != 0 and not offload:
        _progress(
            f"WARNING: n_gpu_layers={n_gpu_layers} asked for, but this llama-cpp-python build "
            "has no GPU offload: every layer runs on the CPU (see README, CUDA build)"
        )

    # Round 0 warms the process and the page cache and is left out; rounds 1.. count. A round
    # is one cold/warm pair, one throughput repetition and one bandwidth reading, so every
    # scenario's trials are spread over the whole run instead of one block at its end.
    rng = np.random.default_rng(config.seed)
    total = 2 * (trials + 1)
    done = 0
    for k in range(max(trials, bench_reps) + 1):
        if k <= trials:
            user = companion.USER_TURNS[k % len(companion.USER_TURNS)]
            for position, arm in enumerate(arm_order(k)):
                row = first_reply_trial(config, arm, user, p)
                done += 1
                rows.append(
                    {
                        "scenario": SCENARIO_FIRST_REPLY,
                        "arm": arm,
                        "trial": k - 1,
                        "is_warmup": k == 0,
                        "position_in_pair": position,
                        "user_turn": k % len(companion.USER_TURNS),
                        **row,
                    }
                )
                _progress(
                    f"first reply {done}/{total} {arm}: load {row['load_s']:.2f} s, "
                    f"ttft {row['ttft_ms']:.0f} ms, tg {row['tg_tps']:.1f} tok/s"
                )
        if k <= bench_reps:
            bench = throughput_trial(config, p, k - 1, rng)
            if membw_mb:
                bench.append(membw_row(p, config.threads, k - 1))
            rows += bench
            if k > 0 and bench:
                figures = [f"{r['scenario']} {_bench_figure(r):.1f}" for r in bench]
                _progress(f"throughput rep {k}/{bench_reps}: {', '.join(figures)}")

    df = pd.DataFrame(rows)
    df["model_name"] = meta["name"]
    df["model_file"] = path.name
    df["model_tensor_bytes"] = meta["tensor_bytes"]
    df["gpu_offload"] = offload
    df["gpu_layers_effective"] = n_gpu_layers if offload else 0
    df["threads_used"] = config.threads
    df["threads_batch_used"] = config.threads_batch
    return df


# --- summaries (compute only) -----------------------------------------------------------------


def kept(df: pd.DataFrame) -> pd.DataFrame:
    return metrics.without_warmup(df)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Summary rows per scenario/arm and metric (warm-ups left out)."""
    d = kept(df)
    first = d[d["scenario"] == SCENARIO_FIRST_REPLY]
    parts = [stats.summary_table(first, ["scenario", "arm"], FIRST_REPLY_METRICS)]
    for scenario, metric in (
        (SCENARIO_PP, "pp_tps"),
        (SCENARIO_TG, "tg_tps"),
        (SCENARIO_MEMBW, "membw_gbps"),
    ):
        sub = d[d["scenario"] == scenario]
        if len(sub):
            table = stats.summary_table(sub, ["scenario"], [metric])
            table.insert(1, "arm", "")
            parts.append(table)
    return pd.concat(parts, ignore_index=True)


def cold_vs_warm(df: pd.DataFrame) -> pd.DataFrame:
    """A/B of the warm arm against the cold one, per metric."""
    d = kept(df)
    first = d[d["scenario"] == SCENARIO_FIRST_REPLY]
    cold, warm = first[first["arm"] == COLD], first[first["arm"] == WARM]
    rows = []
    for name in ("ttft_ms", "e2e_ms", "load_s", "pp_tps", "tg_tps", "prompt_tokens"):
        metric = metrics.get("llm", name)
        # one row per trial and arm: the trial is the replicate
        r = stats.compare(
            cold[name], warm[name], higher_is_better=metric.higher_is_better, words=metric.words
        )
        verdict = r.verdict
        rows.append(
            {
                "metric": name,
                "cold_median": r.median_a,
                "warm_median": r.median_b,
                "ratio_warm_over_cold": r.ratio,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "p_value": r.p_value,
                "verdict": verdict,
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


DECLARATION = Phase(
    name="llm",
    number=2,
    notebook=None,
    run=run,
    summarize=summarize,
    params=LlmParams,
    round_split=ROUND_SPLIT,
    trial_table=None,
    sweep_metrics=sweep_metrics,
    representative=None,
    report="mateperf.reports.llm",
)
