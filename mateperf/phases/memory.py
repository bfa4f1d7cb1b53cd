"""Phase 1, memory: does RAM/VRAM leak over a long chat?

Scenarios, in one process and one sampler timeline:
  baseline        after the imports, before the model
  load_model      the model loaded (mmap'd) and its context created
  chat_session    N messages of a multi-turn companion conversation, the history trimmed to the
                  last `history_messages` messages as Desktop-Mate does
  memory_cleanup  close the model, gc.collect(), malloc_trim(0); each step marked

`run` measures and returns one tidy frame; `summarize`, `checkpoints` and `leak_fit` compute
from a stored frame. The frame's `record` column says what a row is:
  "sample"   a background sample of the MemorySampler (every ~20 ms)
  "marker"   an event with a full reading (baseline, model loaded, model closed, ...); the
             scenario's key moments carry a `checkpoint` name
  "message"  the reading right after message k of the chat (the series the leak test fits)

The leak test (see docs/memory.md): the least-squares slope of RSS and of USS against the message
number after `warmup_messages`, with its t-based 95% CI (mateperf.stats.slope). A metric's verdict
is "leak" only when the whole CI lies above `leak_threshold_mb_per_msg`, "no leak" when the whole
CI lies below it, otherwise "inconclusive". The detector is checked against itself by
`leak_kb_per_message`, which keeps that many KB alive per message: a real leak of known size.
"""

from __future__ import annotations

import gc
import os
import sys
import time

import numpy as np
import pandas as pd

from mateperf import companion, stats
from mateperf.errors import ParameterError
from mateperf.trackers.memory import MemorySampler, malloc_trim, mapped_file_rss_mb, read_heap

PHASE = "memory"
SCENARIOS = ("baseline", "load_model", "chat_session", "memory_cleanup")
CHECKPOINTS = ("baseline", "after_load", "after_chat", "after_close", "after_gc", "after_trim")
# Which fits vote. Heap in use (glibc mallinfo2) sees a malloc leak at once; RSS sees it only
# after the free chunks the allocator retained are used up (a 50 KB/message leak stayed flat in
# RSS for a whole 100-message run here: 64 MB of retained heap absorbs it). RSS and anonymous
# RSS together catch what does not go through malloc. USS is fitted and shown but does not
# vote: the mmap'd model's pages count as private only while no other process maps the same
# file, so USS jumps by the model's resident size when another process opens or closes it
# (observed on this shared host: -322 MB in the middle of a clean run). See docs/memory.md.
LEAK_METRICS = ("heap_used_mb", "rss_mb", "rss_anon_mb", "uss_mb")
VERDICT_METRICS = ("heap_used_mb", "rss_mb", "rss_anon_mb")
LEAK = "leak"
NO_LEAK = "no leak"
INCONCLUSIVE = "inconclusive"
TOO_FEW = "too few messages"

DEFAULTS = {
    "model": "",
    "messages": 100,
    "warmup_messages": 20,
    "sample_interval_ms": 20.0,
    "uss_interval_ms": 0.0,
    "leak_threshold_mb_per_msg": 0.025,
    "leak_kb_per_message": 0,
    "max_tokens": 48,
    "history_messages": companion.HISTORY_LIMIT,
    # Readings after a full collection, so the leak test sees live memory: llama-cpp-python
    # leaves each reply's sampler in a reference cycle (docs/memory.md), and without this the
    # fit follows CPython's GC rhythm instead. The garbage each collection frees is recorded.
    "gc_every_message": True,
    "n_ctx": 2048,
    "n_threads": 0,
    "n_gpu_layers": 0,
    "seed": 1234,
}

# The companion's persona prompt and history handling come from mateperf.companion (shared by
# every model phase). The turns here vary more in length than companion.USER_TURNS (from "lol" to
# a paragraph) so prompt sizes and KV use vary over a long session as in real use.
USER_TURNS = (
    "Hi Mate!",
    "I just got home from work, it was a long day.",
    "Can you remind me what I should do first when I'm tired but still have chores?",
    "Thanks. What's your favourite season?",
    "Mine is autumn. I love walking through the park when the leaves turn orange and the air "
    "smells like rain, and then coming home to a hot cup of tea and a book.",
    "lol",
    "Do you think I should learn to play the guitar or the piano?",
    "I'm worried about my presentation tomorrow. My manager will be there, and the last time I "
    "presented I forgot half of what I wanted to say. Any tips for staying calm?",
    "Okay, I'll try the breathing thing.",
    "Tell me a short joke.",
    "Haha, that was terrible. Another one?",
    "What did I say my favourite season was?",
    "Could you help me plan dinner? I have rice, eggs, spinach and some leftover chicken.",
    "Sounds good. How long does that take?",
    "Can you wave at me?",
    "I've been thinking about adopting a cat, but my apartment is small and I work long hours. "
    "My friend says cats are fine alone during the day. What do you think, honestly?",
    "Good night, Mate.",
    "Morning! I slept badly.",
    "Give me three quick ideas for a productive morning.",
    "The presentation went well by the way!",
)


def validate(params: dict) -> None:
    """Refuse values the phase cannot run with (ParameterError, one clear line)."""
    p = {**DEFAULTS, **params}
    checks = [
        (p["messages"] >= 1, f"messages={p['messages']} must be at least 1"),
        (p["warmup_messages"] >= 0, f"warmup_messages={p['warmup_messages']} must be ≥ 0"),
        (
            p["messages"] - p["warmup_messages"] >= 3,
            f"messages={p['messages']} with warmup_messages={p['warmup_messages']} leaves "
            f"{p['messages'] - p['warmup_messages']} messages to fit a slope to; need at least 3",
        ),
        (
            p["sample_interval_ms"] > 0,
            f"sample_interval_ms={p['sample_interval_ms']} must be positive",
        ),
        (p["uss_interval_ms"] >= 0, f"uss_interval_ms={p['uss_interval_ms']} must be ≥ 0"),
        (
            p["leak_threshold_mb_per_msg"] >= 0,
            f"leak_threshold_mb_per_msg={p['leak_threshold_mb_per_msg']} must be ≥ 0",
        ),
        (
            p["leak_kb_per_message"] >= 0,
            f"leak_kb_per_message={p['leak_kb_per_message']} must be ≥ 0",
        ),
        (p["max_tokens"] >= 1, f"max_tokens={p['max_tokens']} must be at least 1"),
        (
            p["history_messages"] >= 0 and p["history_messages"] % 2 == 0,
            f"history_messages={p['history_messages']} must be an even number ≥ 0 "
            "(user/assistant pairs: chat templates need the roles to alternate)",
        ),
        (p["n_ctx"] >= 64, f"n_ctx={p['n_ctx']} must be at least 64"),
        (p["n_threads"] >= 0, f"n_threads={p['n_threads']} must be 0 (auto) or positive"),
        (p["n_gpu_layers"] >= -1, f"n_gpu_layers={p['n_gpu_layers']} must be -1 (all) or ≥ 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ParameterError(message)


def _progress(text: str) -> None:
    print(f"[memory] {text}", file=sys.stderr, flush=True)


def _reply_budget(i: int, max_tokens: int) -> int:
    """Reply token budget of message i: 50-100% of max_tokens in a fixed, varied cycle."""
    return max(4, int(round(max_tokens * (0.5 + 0.125 * ((i * 3) % 5)))))


def run(
    model: str = DEFAULTS["model"],
    messages: int = DEFAULTS["messages"],
    warmup_messages: int = DEFAULTS["warmup_messages"],
    sample_interval_ms: float = DEFAULTS["sample_interval_ms"],
    uss_interval_ms: float = DEFAULTS["uss_interval_ms"],
    leak_threshold_mb_per_msg: float = DEFAULTS["leak_threshold_mb_per_msg"],
    leak_kb_per_message: int = DEFAULTS["leak_kb_per_message"],
    max_tokens: int = DEFAULTS["max_tokens"],
    history_messages: int = DEFAULTS["history_messages"],
    gc_every_message: bool = DEFAULTS["gc_every_message"],
    n_ctx: int = DEFAULTS["n_ctx"],
    n_threads: int = DEFAULTS["n_threads"],
    n_gpu_layers: int = DEFAULTS["n_gpu_layers"],
    seed: int = DEFAULTS["seed"],
    settle_s: float = 0.5,
    progress: bool = True,
    **_ignored,
) -> pd.DataFrame:
    """Measure the four scenarios; returns samples, markers and per-message rows in one frame.

    Extra keyword arguments (other notebook parameters such as run_dir) are ignored.
    """
    params = dict(locals())
    for key in ("settle_s", "progress", "_ignored"):
        params.pop(key)
    validate(params)
    say = _progress if progress else (lambda _text: None)

    # baseline is "after the imports": everything the later scenarios import is imported now.
    import llama_cpp  # noqa: F401

    from mateperf import model as model_mod

    model_path = model_mod.resolve_model(model or None)
    sampler = MemorySampler(interval_ms=sample_interval_ms, uss_interval_ms=uss_interval_ms)
    say(sampler.gpu_status)
    retained: list[bytes] = []  # the injected leak, alive until the end of memory_cleanup
    leak_bytes = int(leak_kb_per_message) * 1024
    with sampler:
        # -- baseline
        sampler.mark("baseline start", scenario="baseline")
        time.sleep(settle_s)
        base = sampler.mark(
            "baseline",
            scenario="baseline",
            checkpoint="baseline",
            model_mapped_mb=mapped_file_rss_mb(model_path),
        )
        say(f"baseline rss {base['rss_mb']:.1f} MB uss {base['uss_mb']:.1f} MB")

        # -- load_model
        sampler.mark("load start", scenario="load_model")
        config = model_mod.LlamaConfig(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            seed=seed,
        )
        llm, load_s = model_mod.load(config)
        time.sleep(settle_s)
        loaded = sampler.mark(
            "model loaded",
            scenario="load_model",
            checkpoint="after_load",
            load_s=load_s,
            model_mapped_mb=mapped_file_rss_mb(model_path),
        )
        say(f"model loaded in {load_s:.2f} s, rss {loaded['rss_mb']:.1f} MB")

        # -- chat_session
        sampler.mark("chat start", scenario="chat_session")
        history: list[dict] = []
        every = 1 if messages <= 20 else 5
        for i in range(1, messages + 1):
            history = history[-history_messages:] if history_messages else []
            user = {"role": "user", "content": USER_TURNS[(i - 1) % len(USER_TURNS)]}
            prompt = [{"role": "system", "content": companion.SYSTEM_PROMPT}, *history, user]
            start = time.perf_counter_ns()
            reply = llm.create_chat_completion(
                messages=companion.prepare_messages(llm, prompt),
                max_tokens=_reply_budget(i, max_tokens),
                temperature=0.8,
                top_p=0.95,
                seed=seed + i,
            )
            gen_ms = (time.perf_counter_ns() - start) / 1e6
            text = reply["choices"][0]["message"]["content"] or "..."
            history += [user, {"role": "assistant", "content": text}]
            if leak_bytes:
                # bytes * n fills the buffer, so every page of the injected leak is resident.
                retained.append(b"\xa5" * leak_bytes)
            collected, gc_freed_heap_mb = 0, float("nan")
            if gc_every_message:
                # Heap in use before and after the collection: what the reply left as cyclic
                # garbage, reported apart from the leak test, which sees only live memory.
                heap_before_mb = read_heap()[0]
                collected = gc.collect()
                gc_freed_heap_mb = heap_before_mb - read_heap()[0]
            usage = reply.get("usage", {})
            row = sampler.mark(
                f"message {i}",
                scenario="chat_session",
                message=i,
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                history_len=len(prompt) - 1,
                gc_collected=collected,
                gc_freed_heap_mb=gc_freed_heap_mb,
                gen_ms=gen_ms,
            )
            if i % every == 0 or i == messages:
                say(
                    f"message {i}/{messages} rss {row['rss_mb']:.1f} MB "
                    f"uss {row['uss_mb']:.1f} MB ({row['completion_tokens']} tokens, "
                    f"{gen_ms:.0f} ms)"
                )
        time.sleep(settle_s)
        chat_end = sampler.mark(
            "chat end",
            scenario="chat_session",
            checkpoint="after_chat",
            model_mapped_mb=mapped_file_rss_mb(model_path),
        )

        # -- memory_cleanup
        sampler.mark("cleanup start", scenario="memory_cleanup")
        model_mod.close(llm)
        del llm, reply
        time.sleep(settle_s)
        sampler.mark(
            "model closed",
            scenario="memory_cleanup",
            checkpoint="after_close",
            model_mapped_mb=mapped_file_rss_mb(model_path),
        )
        collected = gc.collect()
        time.sleep(settle_s)
        sampler.mark(
            "gc.collect",
            scenario="memory_cleanup",
            checkpoint="after_gc",
            gc_collected=collected,
            model_mapped_mb=mapped_file_rss_mb(model_path),
        )
        released, trim_note = malloc_trim()
        time.sleep(settle_s)
        trimmed = sampler.mark(
            "malloc_trim",
            scenario="memory_cleanup",
            checkpoint="after_trim",
            malloc_trim_released=released,
            malloc_trim_note=trim_note,
            model_mapped_mb=mapped_file_rss_mb(model_path),
        )
        say(
            f"after chat rss {chat_end['rss_mb']:.1f} MB; after cleanup rss "
            f"{trimmed['rss_mb']:.1f} MB ({trim_note})"
        )
        if retained:
            retained.clear()
            malloc_trim()
            time.sleep(settle_s)
            sampler.mark("injected leak released", scenario="memory_cleanup")

    df = sampler.frame()
    df.loc[df["message"].notna(), "record"] = "message"
    df["scenario"] = df["scenario"].ffill().fillna("baseline")
    df["model_path"] = str(model_path)
    df["model_file_mb"] = os.path.getsize(model_path) / float(1 << 20)
    df["n_threads_used"] = config.threads
    for name in ("message", "prompt_tokens", "completion_tokens", "history_len", "gc_collected"):
        df[name] = df[name].astype("Int64")
    df["malloc_trim_released"] = df["malloc_trim_released"].astype("boolean")
    for name, value in params.items():  # the frame describes itself even before results.tidy
        df[name] = value
    return df


# -- computing from a stored frame ----------------------------------------------------------
def _runs(df: pd.DataFrame):
    if "run_id" in df.columns:
        yield from df.groupby("run_id", sort=False)
    else:
        yield "", df


def _param(df: pd.DataFrame, name: str):
    if name in df.columns and df[name].notna().any():
        return df[name].dropna().iloc[0]
    return DEFAULTS[name]


def message_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["record"] == "message"].sort_values("message").reset_index(drop=True)


def verdict_for(fit: stats.SlopeFit, threshold_mb: float) -> str:
    """'leak' only if the whole 95% CI is above the threshold; 'no leak' if wholly below."""
    if not np.isfinite(fit.ci_low) or not np.isfinite(fit.ci_high):
        return TOO_FEW
    if fit.ci_low > threshold_mb:
        return LEAK
    if fit.ci_high < threshold_mb:
        return NO_LEAK
    return INCONCLUSIVE


def leak_fit(df: pd.DataFrame, metric: str = "rss_mb", warmup: int | None = None) -> stats.SlopeFit:
    """Slope of `metric` (MB) per message over the messages after the warm-up."""
    rows = message_rows(df)
    warmup = int(_param(df, "warmup_messages")) if warmup is None else warmup
    rows = rows[rows["message"] > warmup]
    return stats.slope(rows["message"].astype(float), rows[metric].astype(float))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """The leak test: one row per run and metric with slope, CI, threshold and verdict."""
    out = []
    for run_id, run in _runs(df):
        warmup = int(_param(run, "warmup_messages"))
        threshold = float(_param(run, "leak_threshold_mb_per_msg"))
        injected = int(_param(run, "leak_kb_per_message"))
        for metric in LEAK_METRICS:
            fit = leak_fit(run, metric, warmup)
            out.append(
                {
                    "run_id": run_id,
                    "metric": metric,
                    "warmup_messages": warmup,
                    "votes": metric in VERDICT_METRICS,
                    "n": fit.n,
                    "slope_mb_per_msg": fit.slope,
                    "ci_low": fit.ci_low,
                    "ci_high": fit.ci_high,
                    "slope_kb_per_msg": fit.slope * 1024,
                    "threshold_mb_per_msg": threshold,
                    "leak_kb_per_message": injected,
                    "verdict": verdict_for(fit, threshold),
                }
            )
    return pd.DataFrame(out)


def overall_verdict(leak_table: pd.DataFrame) -> str:
    """'leak' if heap in use says leak, or RSS and anonymous RSS both do; 'no leak' only if
    every voting metric that could be measured says no leak; otherwise 'inconclusive'."""
    verdict = dict(zip(leak_table["metric"], leak_table["verdict"], strict=True))
    if verdict.get("heap_used_mb") == LEAK:
        return LEAK
    if verdict.get("rss_mb") == LEAK and verdict.get("rss_anon_mb") == LEAK:
        return LEAK
    voting = [verdict[m] for m in VERDICT_METRICS if m in verdict]
    if "heap_used_mb" in verdict and verdict["heap_used_mb"] == TOO_FEW:
        # no mallinfo2 (not glibc): RSS and anonymous RSS decide alone
        voting = [verdict[m] for m in ("rss_mb", "rss_anon_mb") if m in verdict]
    if voting and all(v == NO_LEAK for v in voting):
        return NO_LEAK
    return TOO_FEW if voting and all(v == TOO_FEW for v in voting) else INCONCLUSIVE


def checkpoints(df: pd.DataFrame) -> pd.DataFrame:
    """RSS/USS/anonymous/file-backed/model-mapped MB at each checkpoint, in scenario order."""
    cols = ["rss_mb", "uss_mb", "rss_anon_mb", "rss_file_mb", "model_mapped_mb"]
    cols += ["heap_used_mb", "heap_free_mb"]
    cols += [c for c in ("vram_device_used_mb", "vram_process_mb") if c in df.columns]
    rows = []
    for run_id, run in _runs(df):
        marks = run[run["record"] == "marker"].dropna(subset=["checkpoint"])
        for name in CHECKPOINTS:
            hit = marks[marks["checkpoint"] == name]
            if hit.empty:
                continue
            rec = hit.iloc[-1]
            row = {"run_id": run_id, "checkpoint": name, "scenario": rec["scenario"]}
            row.update({c: float(rec[c]) for c in cols})
            rows.append(row)
        msgs = message_rows(run)
        if not msgs.empty:  # "after N messages": the reading right after the last message
            rec = msgs.iloc[-1]
            row = {
                "run_id": run_id,
                "checkpoint": f"after message {int(rec['message'])}",
                "scenario": "chat_session",
            }
            row.update({c: float(rec[c]) if c in rec else np.nan for c in cols})
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {name: i for i, name in enumerate(CHECKPOINTS)}
    table["_order"] = table["checkpoint"].map(lambda c: order.get(c, order["after_chat"] - 0.5))
    return table.sort_values(["run_id", "_order"], kind="stable").drop(columns="_order")


def cleanup_effects(df: pd.DataFrame) -> pd.DataFrame:
    """MB returned by each cleanup step, and the mmap'd model's share of RSS after load/chat.

    malloc_trim_mb is allocator retention: heap the program had freed but glibc still held.
    """
    rows = []
    for run_id, _run in _runs(df):
        cp = checkpoints(_run).set_index("checkpoint")

        def get(name: str, col: str, cp=cp) -> float:
            return float(cp.loc[name, col]) if name in cp.index else np.nan

        row = {"run_id": run_id}
        for metric in ("rss_mb", "uss_mb", "heap_used_mb"):
            unit = metric.removesuffix("_mb")
            row[f"close_freed_{unit}_mb"] = get("after_chat", metric) - get("after_close", metric)
            row[f"gc_freed_{unit}_mb"] = get("after_close", metric) - get("after_gc", metric)
            row[f"malloc_trim_freed_{unit}_mb"] = get("after_gc", metric) - get(
                "after_trim", metric
            )
            row[f"left_over_{unit}_mb"] = get("after_trim", metric) - get("baseline", metric)
        # free chunks glibc kept just before malloc_trim: the retention malloc_trim can return
        row["heap_free_before_trim_mb"] = get("after_gc", "heap_free_mb")
        for name in ("after_load", "after_chat"):
            rss = get(name, "rss_mb")
            row[f"{name}_model_mapped_mb"] = get(name, "model_mapped_mb")
            row[f"{name}_model_mapped_share"] = get(name, "model_mapped_mb") / rss
            row[f"{name}_file_backed_mb"] = get(name, "rss_file_mb")
            row[f"{name}_anon_mb"] = get(name, "rss_anon_mb")
        rows.append(row)
    return pd.DataFrame(rows)


def representative(info: dict) -> bool:
    """Runs that describe the companion itself: not the detector's injected-leak self-check."""
    return not info.get("params", {}).get("leak_kb_per_message")
