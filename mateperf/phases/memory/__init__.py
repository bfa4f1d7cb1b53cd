"""Phase 1, memory: does RAM/VRAM leak over a long chat?

Scenarios, in one process and one sampler timeline:
  baseline        after the imports, before the model
  load_model      the model loaded (mmap'd) and its context created
  chat_session    N messages of a multi-turn companion conversation, the history trimmed to the
                  last `history_messages` messages as Desktop-Mate does; it starts right after a
                  full garbage collection and one more closes it (checkpoint after_chat_gc)
  memory_cleanup  close the model, gc.collect(), malloc_trim(0); each step marked

`run` measures and returns one tidy frame; `summarize`, `verdict_table`, `checkpoints`,
`cleanup_effects` and `trial_table` compute from a stored frame. The frame's `record` column
says what a row is:
  "sample"   a background sample of the MemorySampler (every ~20 ms)
  "marker"   an event with a full reading (baseline, model loaded, model closed, ...); the
             scenario's key moments carry a `checkpoint` name
  "message"  the reading right after message k of the chat (the series the leak test fits)
  "gc"       one garbage collection CPython ran (gc.callbacks): generation, objects collected,
             for full collections the heap in use they returned (`gc_freed_heap_mb`);
             `gc_replies_done` is the number of replies finished when it ran
Memory columns ending in `_mb` are MiB, `_kb` KiB.

The leak test (see docs/memory.md) reads the live heap: heap in use after each reply less the
reply garbage that a later collection returned, placed with the gc events (`freed_by` models
which collection frees which reply's garbage; `pending_garbage` shares each collection's
returned heap among those replies). Its slope per message after `warmup_messages` gets a CI
robust to autocorrelation (mateperf.stats.slope_hac), and the run is called
  leak          the live heap's CI lies wholly above `leak_threshold_mb_per_msg`
  inconclusive  the CI straddles the threshold
  bounded       the live heap's CI lies below it, but memory rose: automatic full collections
                returned heap at a rate at or above the threshold, or a raw series (heap in
                use, RSS, anonymous RSS) grew above it: growth that collections return or that
                plateaus (the report gives the peak and the collection period)
  flat          none of that
The detector is checked against itself by `leak_kb_per_message`, which keeps that many KiB alive
per message: a real leak of known size.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from mateperf import companion, progress, stats
from mateperf.metrics import WARMUP_FLAG
from mateperf.phases.declaration import Phase
from mateperf.phases.memory.params import MemoryParams
from mateperf.trackers.memory import (
    HEAP_READ,
    HEAP_UNAVAILABLE,
    MemorySampler,
    malloc_trim,
    mapped_file_rss_mb,
)

PHASE = "memory"
SCENARIOS = ("baseline", "load_model", "chat_session", "memory_cleanup")
CHECKPOINTS = (
    "baseline",
    "after_load",
    "after_chat",
    "after_chat_gc",
    "after_close",
    "after_gc",
    "after_trim",
)
# The series fitted per message. heap_live_mb (computed, not stored) decides; the raw series
# tell flat from bounded. RSS cannot tell garbage from a leak while collections are pending
# (glibc keeps freed heap resident), so RSS and anonymous RSS vote "leak" only when every
# reading follows a collection (gc_every_message) or heap in use cannot be read. USS is fitted
# and shown but never votes: the mmap'd model's pages count as private only while no other
# process maps the same file (on the shared test host USS moved by -322 MiB mid-run).
LEAK_METRICS = ("heap_live_mb", "heap_used_mb", "rss_mb", "rss_anon_mb", "uss_mb")
RAW_GROWTH_METRICS = ("heap_used_mb", "rss_mb", "rss_anon_mb")
LIVE = "heap_live_mb"

# run verdicts
LEAK = "leak"
BOUNDED = "bounded"
FLAT = "flat"
INCONCLUSIVE = "inconclusive"
TOO_FEW = "too few messages"
# where one series' slope CI lies against the threshold
ABOVE = "above threshold"
BELOW = "below threshold"
SPANS = "CI spans threshold"

# A sweep's rounds each run the whole session again: no repetition parameter to divide.
ROUND_SPLIT: tuple[str, ...] = ()

DEFAULTS = MemoryParams.defaults()

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


_progress = progress.reporter("memory")


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
    """Measure the four scenarios; returns samples, markers, messages and gc events in one frame.

    Extra keyword arguments (other notebook parameters such as run_dir) are ignored.
    """
    params = dict(locals())
    for key in ("settle_s", "progress", "_ignored"):
        params.pop(key)
    MemoryParams(**params)
    say = _progress if progress else (lambda _text: None)

    # baseline is "after the imports": everything the later scenarios import is imported now.
    import llama_cpp  # noqa: F401

    from mateperf import model as model_mod

    model_path = model_mod.resolve_model(model or None)
    sampler = MemorySampler(interval_ms=sample_interval_ms, uss_interval_ms=uss_interval_ms)
    say(f"{sampler.gpu_status}; {sampler.heap_status}; {sampler.rss_status}")
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
        say(f"baseline rss {base['rss_mb']:.1f} MiB uss {base['uss_mb']:.1f} MiB")

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
        say(f"model loaded in {load_s:.2f} s, rss {loaded['rss_mb']:.1f} MiB")

        # -- chat_session
        # One full collection before the first message and one after the last: the garbage of
        # every reply is then returned by a recorded full collection, which the live-heap
        # reconstruction needs; in between CPython collects on its own schedule.
        collected = sampler.collect()
        sampler.mark("chat start", scenario="chat_session", gc_collected=collected)
        history: list[dict] = []
        every = 1 if messages <= 20 else 5
        for i in range(1, messages + 1):
            history = history[-history_messages:] if history_messages else []
            user = {"role": "user", "content": USER_TURNS[(i - 1) % len(USER_TURNS)]}
            prompt = [{"role": "system", "content": companion.SYSTEM_PROMPT}, *history, user]
            start = time.perf_counter_ns()
            reply_start_s = sampler.now_s()
            reply = llm.create_chat_completion(
                messages=companion.prepare_messages(llm, prompt),
                max_tokens=_reply_budget(i, max_tokens),
                temperature=0.8,
                top_p=0.95,
                seed=seed + i,
            )
            gen_ms = (time.perf_counter_ns() - start) / 1e6
            reply_end_s = sampler.now_s()
            text = reply["choices"][0]["message"]["content"] or "..."
            history += [user, {"role": "assistant", "content": text}]
            if leak_bytes:
                # bytes * n fills the buffer, so every page of the injected leak is resident.
                retained.append(b"\xa5" * leak_bytes)
            if gc_every_message:
                # recorded as a forced gen-2 gc event with the heap it returned
                sampler.collect()
            usage = reply.get("usage", {})
            row = sampler.mark(
                f"message {i}",
                scenario="chat_session",
                message=i,
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                history_len=len(prompt) - 1,
                reply_start_s=reply_start_s,
                reply_end_s=reply_end_s,
                gen_ms=gen_ms,
            )
            if i % every == 0 or i == messages:
                say(
                    f"message {i}/{messages} rss {row['rss_mb']:.1f} MiB "
                    f"heap in use {row['heap_used_mb']:.1f} MiB "
                    f"({row['completion_tokens']} tokens, {gen_ms:.0f} ms)"
                )
        time.sleep(settle_s)
        chat_end = sampler.mark(
            "chat end",
            scenario="chat_session",
            checkpoint="after_chat",
            model_mapped_mb=mapped_file_rss_mb(model_path),
        )
        collected = sampler.collect()
        time.sleep(settle_s)
        sampler.mark(
            "chat garbage collected",
            scenario="chat_session",
            checkpoint="after_chat_gc",
            gc_collected=collected,
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
        collected = sampler.collect()
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
            f"after chat rss {chat_end['rss_mb']:.1f} MiB; after cleanup rss "
            f"{trimmed['rss_mb']:.1f} MiB ({trim_note})"
        )
        if retained:
            retained.clear()
            malloc_trim()
            time.sleep(settle_s)
            sampler.mark("injected leak released", scenario="memory_cleanup")

    df = sampler.frame()
    df.loc[df["message"].notna(), "record"] = "message"
    df["scenario"] = df["scenario"].ffill().fillna("baseline")
    _place_collections(df)
    df["model_path"] = str(model_path)
    df["model_file_mb"] = os.path.getsize(model_path) / float(1 << 20)
    df["n_threads_used"] = config.threads
    ints = ("message", "prompt_tokens", "completion_tokens", "history_len", "gc_collected")
    ints += ("gc_generation", "gc_uncollectable", "gc_replies_done")
    for name in ints:
        df[name] = df[name].astype("Int64")
    df["gc_forced"] = df["gc_forced"].astype("boolean")
    df["malloc_trim_released"] = df["malloc_trim_released"].astype("boolean")
    df["trial"] = 0
    df[WARMUP_FLAG] = (df["record"] == "message") & (df["message"] <= warmup_messages).fillna(False)
    for name, value in params.items():  # the frame describes itself even before results.tidy
        df[name] = value
    return df


def _place_collections(df: pd.DataFrame) -> None:
    """gc_replies_done on gc rows: how many replies had finished when the collection started."""
    ends = np.sort(df.loc[df["record"] == "message", "reply_end_s"].to_numpy(float))
    is_gc = df["record"] == "gc"
    df["gc_replies_done"] = np.nan
    df.loc[is_gc, "gc_replies_done"] = np.searchsorted(
        ends, df.loc[is_gc, "t_s"].to_numpy(float), side="left"
    )


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


def collections(df: pd.DataFrame) -> pd.DataFrame:
    """The garbage collections of one run (every generation), in time order; empty for runs
    stored before gc events were recorded."""
    if "gc_generation" not in df.columns:
        return df.iloc[0:0]
    rows = df[df["record"] == "gc"]
    return rows.sort_values("t_s", kind="stable").reset_index(drop=True)


def full_collections(df: pd.DataFrame) -> pd.DataFrame:
    """The full (generation 2) collections of one run, in time order."""
    rows = collections(df)
    return rows[rows["gc_generation"] == 2].reset_index(drop=True)


def reply_heap_added(df: pd.DataFrame) -> np.ndarray:
    """Heap each reply added (MiB): the rise from the previous reading plus whatever the
    collections in between returned; NaN where there is no previous reading."""
    msgs = message_rows(df)
    marks = df[df["record"] == "marker"]
    start = marks.loc[marks["label"] == "chat start", "heap_used_mb"]
    heap = msgs["heap_used_mb"].to_numpy(float)
    before = np.concatenate([[float(start.iloc[0]) if len(start) else np.nan], heap[:-1]])
    t_read = msgs["t_s"].to_numpy(float)
    t_prev = np.concatenate([[-np.inf], t_read[:-1]])
    gcs = collections(df)
    t_gc = gcs["t_s"].to_numpy(float)
    freed = np.nan_to_num(gcs["gc_freed_heap_mb"].to_numpy(float)) if len(gcs) else t_gc
    returned = [freed[(t_gc > a) & (t_gc < b)].sum() for a, b in zip(t_prev, t_read, strict=True)]
    return heap - before + np.asarray(returned, float)


def garbage_unit_mb(df: pd.DataFrame) -> float:
    """The heap one reply leaves for the collector (MiB), from the recorded collections.

    Every reply leaves the same garbage here (one sampler chain, n_vocab × 12 bytes), so each
    collection returns a whole number of units: the unit is the size, within 20% of the median
    heap a reply added, that makes the collections' returned heap closest to whole multiples of
    it. The median alone would do if nothing else grew; a leak adds to it.
    """
    added = reply_heap_added(df)
    rough = float(np.nanmedian(added)) if np.isfinite(added).any() else np.nan
    freed = collections(df)["gc_freed_heap_mb"].to_numpy(float) if "gc_generation" in df else []
    freed = np.asarray(freed, float)
    freed = freed[np.isfinite(freed) & (freed > 0.5 * rough)] if np.isfinite(rough) else []
    if not np.isfinite(rough) or rough <= 0 or len(freed) == 0:
        return rough
    grid = rough * np.linspace(0.8, 1.25, 1801)
    ratio = freed[None, :] / grid[:, None]
    cost = ((ratio - np.round(ratio)) ** 2).sum(axis=1)
    return float(grid[int(np.argmin(cost))])


def freed_by(df: pd.DataFrame) -> np.ndarray:
    """For each message row, the index (in `collections(df)`) of the collection that freed the
    garbage its reply left; -1 where none did (or the frame lacks what it takes to tell).

    Replies leave garbage of one size (`garbage_unit_mb`), so each collection's returned heap
    says how many replies' garbage it freed. Which ones follows CPython's generational
    collector: a collection of generation g frees the oldest unfreed replies' garbage among
    those of generation ≤ g (older promoted ones if it returned more), and promotes to g + 1
    (at most 2) every reply's garbage it examined and left, including the reply in progress.
    That matters because llama-cpp-python 0.3.36 keeps a reply's sampler chain referenced until
    the next reply replaces it somewhere in its course, and the collector usually runs right
    then: in the default runs a young collection freed all older chains and promoted the last one
    or two, which then waited for an older collection (here the forced full one after the chat).
    """
    msgs = message_rows(df)
    out = np.full(len(msgs), -1)
    gcs = collections(df)
    if gcs.empty or "reply_start_s" not in msgs.columns or msgs.empty:
        return out
    unit = garbage_unit_mb(df)
    if not np.isfinite(unit) or unit <= 0:
        return out
    marks = df[df["record"] == "marker"]
    closed = marks.loc[marks["label"] == "model closed", "t_s"]
    t_closed = float(closed.iloc[0]) if len(closed) else np.inf
    starts = msgs["reply_start_s"].to_numpy(float)
    level = np.zeros(len(msgs))
    for c, g in enumerate(gcs.itertuples(index=False)):
        t, generation, freed = float(g.t_s), float(g.gc_generation), float(g.gc_freed_heap_mb)
        # replies whose garbage exists at t; the newest one is still referenced until the model
        # is closed, unless the collection ran after that
        current = int(np.searchsorted(starts, t)) - 1
        if current < 0:
            continue
        alive = current if t < t_closed else current + 1
        unfreed = np.flatnonzero(out[: current + 1] < 0)
        count = int(round(freed / unit)) if np.isfinite(freed) else 0
        young = [i for i in unfreed if i < alive and level[i] <= generation]
        old = [i for i in unfreed if i < alive and level[i] > generation]
        take = (young + old)[:count]
        out[take] = c
        for i in unfreed:
            if out[i] < 0 and level[i] <= generation:
                level[i] = min(generation + 1, 2.0)
    return out


def pending_garbage(df: pd.DataFrame) -> pd.Series:
    """Heap (MiB) at each message reading that a later collection returned: reply garbage.

    Each collection's returned heap is shared evenly among the replies whose garbage it freed
    (`freed_by`); a reading carries the shares of every reply up to it whose collection had not
    run yet. NaN where heap in use cannot be read or where a reply's garbage was never seen
    freed. Index: message_rows(df).
    """
    msgs = message_rows(df)
    gcs = collections(df)
    by = freed_by(df)
    pending = pd.Series(np.nan, index=msgs.index)
    if gcs.empty or not (by >= 0).any():
        return pending
    if msgs["message"].tolist() != list(range(1, len(msgs) + 1)):
        # Every reply's garbage counts in the shares, warm-up ones too: a frame whose warm-up
        # rows were left out (metrics.without_warmup) cannot be shared out, so say nothing.
        return pending
    freed = np.append(gcs["gc_freed_heap_mb"].to_numpy(float), np.nan)  # [-1]: never freed
    counts = np.append(np.bincount(by[by >= 0], minlength=len(gcs)), 1)
    share = freed[by] / counts[by]
    freed_at = np.append(gcs["t_s"].to_numpy(float), np.inf)[by]
    t_read = msgs["t_s"].to_numpy(float)
    order = np.arange(len(msgs))
    for i, t in enumerate(t_read):
        pending.iloc[i] = float(share[(order <= i) & (freed_at > t)].sum())
    return pending


def live_heap(df: pd.DataFrame) -> pd.Series:
    """Heap in use after each reply less the reply garbage pending collection (index:
    message_rows). Runs stored before gc events were recorded have it only if every reading
    followed a forced collection (gc_every_message): then nothing was pending.
    """
    msgs = message_rows(df)
    heap = msgs["heap_used_mb"].astype(float)
    if collections(df).empty and bool(_param(df, "gc_every_message")):
        return heap
    return heap - pending_garbage(df)


def _series(df: pd.DataFrame, metric: str) -> pd.Series:
    if metric == LIVE:
        return live_heap(df)
    msgs = message_rows(df)
    if metric not in msgs.columns:
        return pd.Series(np.nan, index=msgs.index)
    return msgs[metric].astype(float)


def leak_fit(
    df: pd.DataFrame, metric: str = LIVE, warmup: int | None = None, robust: bool = True
) -> stats.SlopeFit:
    """Slope of `metric` (MiB) per message after the warm-up; HAC CI (plain OLS if not robust)."""
    msgs = message_rows(df)
    warmup = int(_param(df, "warmup_messages")) if warmup is None else warmup
    keep = (msgs["message"] > warmup).to_numpy()
    x = msgs["message"].astype(float).to_numpy()[keep]
    y = _series(df, metric).to_numpy(float)[keep]
    return stats.slope_hac(x, y) if robust else stats.slope(x, y)


def growth(fit: stats.SlopeFit, threshold_mb: float) -> str:
    """Where the slope's 95% CI lies against the threshold."""
    if not np.isfinite(fit.ci_low) or not np.isfinite(fit.ci_high):
        return TOO_FEW
    if fit.ci_low > threshold_mb:
        return ABOVE
    if fit.ci_high < threshold_mb:
        return BELOW
    return SPANS


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run and fitted series: slope (MiB and KiB per message) with its robust CI,
    the plain OLS CI beside it, the HAC bandwidth and where the CI lies against the threshold."""
    out = []
    for run_id, run in _runs(df):
        warmup = int(_param(run, "warmup_messages"))
        threshold = float(_param(run, "leak_threshold_mb_per_msg"))
        injected = int(_param(run, "leak_kb_per_message"))
        msgs = message_rows(run)
        for metric in LEAK_METRICS:
            fit = leak_fit(run, metric, warmup)
            ols = leak_fit(run, metric, warmup, robust=False)
            keep = (msgs["message"] > warmup).to_numpy()
            y = _series(run, metric).to_numpy(float)[keep]
            x = msgs["message"].astype(float).to_numpy()[keep]
            out.append(
                {
                    "run_id": run_id,
                    "metric": metric,
                    "warmup_messages": warmup,
                    "n": fit.n,
                    "slope_mb_per_msg": fit.slope,
                    "ci_low": fit.ci_low,
                    "ci_high": fit.ci_high,
                    "intercept": fit.intercept,
                    "slope_kb_per_msg": fit.slope * 1024,
                    "ci_low_kb_per_msg": fit.ci_low * 1024,
                    "ci_high_kb_per_msg": fit.ci_high * 1024,
                    "ols_ci_low_kb_per_msg": ols.ci_low * 1024,
                    "ols_ci_high_kb_per_msg": ols.ci_high * 1024,
                    "hac_bandwidth": stats.hac_bandwidth(x, y),
                    "threshold_mb_per_msg": threshold,
                    "leak_kb_per_message": injected,
                    "growth": growth(fit, threshold),
                }
            )
    return pd.DataFrame(out)


def gc_summary(df: pd.DataFrame) -> dict:
    """What the recorded collections of one run show (NaN/0 where none were recorded).

    automatic: collections CPython ran on its own during the chat (any generation);
    freed_mb / freed_at: the heap each returned and the message during which it ran;
    period_messages: the median number of replies between consecutive ones (counting from the
    forced collection before the first message); returned_mb_per_msg: their total over the
    number of messages; pending_end_mb: what the forced full collection after the last message
    returned (garbage the chat left); per_message_mb: the median heap returned by the forced
    collection after each reply (gc_every_message).
    """
    out = {
        "gc_events": False,
        "automatic": 0,
        "generations": [],
        "freed_mb": [],
        "freed_at": [],
        "period_messages": np.nan,
        "returned_mb_per_msg": np.nan,
        "pending_end_mb": np.nan,
        "per_message_mb": np.nan,
    }
    gcs = collections(df)
    if gcs.empty:
        return out
    out["gc_events"] = True
    marks = df[df["record"] == "marker"]
    t_start = marks.loc[marks["label"] == "chat start", "t_s"]
    t_end = marks.loc[marks["label"] == "chat end", "t_s"]
    t0 = float(t_start.iloc[0]) if len(t_start) else -np.inf
    t1 = float(t_end.iloc[0]) if len(t_end) else np.inf
    chat = gcs[(gcs["t_s"] > t0) & (gcs["t_s"] < t1)]
    forced = chat["gc_forced"].fillna(False).astype(bool)
    auto = chat[~forced]
    n_msgs = len(message_rows(df))
    out["automatic"] = len(auto)
    out["generations"] = [int(g) for g in auto["gc_generation"]]
    out["freed_mb"] = [float(v) for v in auto["gc_freed_heap_mb"]]
    out["freed_at"] = [int(v) + 1 for v in auto["gc_replies_done"]]  # during message k
    if n_msgs:
        out["returned_mb_per_msg"] = float(auto["gc_freed_heap_mb"].sum()) / n_msgs
    if len(auto):
        starts = [0.0] if len(t_start) else []
        gaps = np.diff(np.asarray(starts + [float(v) for v in auto["gc_replies_done"]]))
        out["period_messages"] = float(np.median(gaps)) if gaps.size else np.nan
    per_message = chat[forced]["gc_freed_heap_mb"]
    if bool(_param(df, "gc_every_message")) and per_message.notna().any():
        out["per_message_mb"] = float(per_message.median())
    after = gcs[(gcs["t_s"] >= t1) & gcs["gc_forced"].fillna(False).astype(bool)]
    if len(after) and np.isfinite(t1):
        out["pending_end_mb"] = float(after["gc_freed_heap_mb"].iloc[0])
    return out


def _decide(
    growths: dict[str, str], facts: dict, gc_every_message: bool, threshold: float
) -> tuple[str, str]:
    """(verdict, the series it rests on) from each series' growth class and the gc facts."""
    live = growths.get(LIVE, TOO_FEW)
    rss_leak = growths.get("rss_mb") == ABOVE and growths.get("rss_anon_mb") == ABOVE
    if live != TOO_FEW:
        if live == ABOVE:
            return LEAK, LIVE
        if gc_every_message and rss_leak:
            return LEAK, "rss_mb"
        if live == SPANS:
            return INCONCLUSIVE, LIVE
        returned = facts.get("returned_mb_per_msg", np.nan)
        raw_grew = any(growths.get(m) == ABOVE for m in RAW_GROWTH_METRICS)
        if raw_grew or (np.isfinite(returned) and returned >= threshold):
            return BOUNDED, LIVE
        return FLAT, LIVE
    # No live heap: no mallinfo2 on this OS, or a run stored before gc events were recorded.
    rss = [growths.get(m, TOO_FEW) for m in ("rss_mb", "rss_anon_mb")]
    if TOO_FEW in rss:
        return TOO_FEW, "rss_mb"
    if all(g == BELOW for g in rss):
        return FLAT, "rss_mb"
    if gc_every_message and rss_leak:
        return LEAK, "rss_mb"
    # RSS keeps the high-water mark of garbage awaiting collection: it cannot say which it is.
    return INCONCLUSIVE, "rss_mb"


def verdict_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the verdict, the slope it rests on (KiB/message, robust 95% CI), and
    the measured facts the report states: collections, heap they returned, period and peaks."""
    rows = []
    leak = summarize(df)
    for run_id, run in _runs(df):
        table = leak[leak["run_id"] == run_id].set_index("metric")
        threshold = float(_param(run, "leak_threshold_mb_per_msg"))
        gc_every = bool(_param(run, "gc_every_message"))
        facts = gc_summary(run)
        verdict, basis = _decide(table["growth"].to_dict(), facts, gc_every, threshold)
        r = table.loc[basis]
        msgs = message_rows(run)
        chat = run[run["scenario"] == "chat_session"] if "scenario" in run.columns else run
        heap = msgs["heap_used_mb"].astype(float)
        rss = msgs["rss_mb"].astype(float)
        status = run["heap_status"].dropna() if "heap_status" in run.columns else pd.Series()
        if status.empty:  # stored before the status was: the data say whether heap was read
            status = pd.Series([HEAP_READ if heap.notna().any() else HEAP_UNAVAILABLE])
        rows.append(
            {
                "run_id": run_id,
                "verdict": verdict,
                "decided_by": basis,
                "n": int(r["n"]),
                "slope_kb_per_msg": float(r["slope_kb_per_msg"]),
                "ci_low_kb_per_msg": float(r["ci_low_kb_per_msg"]),
                "ci_high_kb_per_msg": float(r["ci_high_kb_per_msg"]),
                "threshold_kb_per_msg": threshold * 1024,
                "gc_every_message": gc_every,
                "gc_events": facts["gc_events"],
                "heap_status": str(status.iloc[0]),
                "collections": facts["automatic"],
                "freed_per_collection_mb": (
                    float(np.median(facts["freed_mb"])) if facts["freed_mb"] else np.nan
                ),
                "period_messages": facts["period_messages"],
                "returned_mb_per_msg": facts["returned_mb_per_msg"],
                "pending_end_mb": facts["pending_end_mb"],
                "per_message_gc_mb": facts["per_message_mb"],
                "heap_peak_mb": float(heap.max()) if heap.notna().any() else np.nan,
                "heap_peak_message": (
                    int(msgs.loc[heap.idxmax(), "message"]) if heap.notna().any() else -1
                ),
                "rss_peak_mb": float(chat["rss_mb"].max()),
                "rss_peak_message": (
                    int(msgs.loc[rss.idxmax(), "message"]) if rss.notna().any() else -1
                ),
            }
        )
    return pd.DataFrame(rows)


def overall_verdict(df: pd.DataFrame) -> str:
    """The verdict of the (first) run in `df`."""
    return str(verdict_table(df)["verdict"].iloc[0])


def checkpoints(df: pd.DataFrame) -> pd.DataFrame:
    """RSS/USS/anonymous/file-backed/model-mapped MiB at each checkpoint, in scenario order."""
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
    """MiB returned by each step after the chat, and the mmap'd model's share of RSS.

    chat_gc: the full collection right after the chat (its pending garbage; absent in runs
    stored before it existed). malloc_trim is allocator retention: heap the program had freed
    but glibc still held.
    """
    rows = []
    for run_id, _run in _runs(df):
        cp = checkpoints(_run).set_index("checkpoint")

        def get(name: str, col: str, cp=cp) -> float:
            return float(cp.loc[name, col]) if name in cp.index else np.nan

        before_close = "after_chat_gc" if "after_chat_gc" in cp.index else "after_chat"
        row = {"run_id": run_id}
        for metric in ("rss_mb", "uss_mb", "heap_used_mb"):
            unit = metric.removesuffix("_mb")
            row[f"chat_gc_freed_{unit}_mb"] = get("after_chat", metric) - get(
                "after_chat_gc", metric
            )
            row[f"close_freed_{unit}_mb"] = get(before_close, metric) - get("after_close", metric)
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


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per replicate (a sweep's round, else the run) with the run-level metrics that
    mateperf.metrics.MEMORY_METRICS declares, plus `trial` (0), `round` where the frame has one,
    and the verdict (not a metric).

    Pass the whole frame, warm-up rows included: the leak slope leaves the warm-up out of its
    fit, but the garbage of warm-up replies is part of what later collections returned. Without
    them the live heap cannot be placed and the slope is NaN.

    A memory session is one replicate: its samples and per-message readings are not independent
    repetitions, so a comparison of memory runs compares these rows across replicates.
    """
    keys = [c for c in ("run_id", "round") if c in df.columns]
    groups = df.groupby(keys, sort=True, dropna=False) if keys else [((), df)]
    rows = []
    for key, rep in groups:
        key = key if isinstance(key, tuple) else (key,)
        rep = rep.drop(columns="run_id") if "run_id" in rep.columns else rep
        cp = checkpoints(rep).set_index("checkpoint")
        effects = cleanup_effects(rep).iloc[0]
        verdict = verdict_table(rep).iloc[0]
        live = leak_fit(rep, LIVE)
        chat = rep[rep["scenario"] == "chat_session"]

        def at(name: str, cp=cp) -> float:
            return float(cp.loc[name, "rss_mb"]) if name in cp.index else np.nan

        row = dict(zip(keys, key, strict=True))
        row.update(
            {
                "trial": 0,
                "leak_slope_kb_per_msg": live.slope * 1024,
                "rss_after_load_mb": at("after_load"),
                "rss_after_chat_mb": at("after_chat"),
                "rss_peak_mb": float(chat["rss_mb"].max()) if len(chat) else np.nan,
                "left_over_rss_mb": float(effects["left_over_rss_mb"]),
                "verdict": verdict["verdict"],
            }
        )
        for name in DEFAULTS:  # the replicate's parameters, for matching across runs
            if name in rep.columns and rep[name].nunique(dropna=False) == 1:
                row[name] = rep[name].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def representative(info: dict) -> bool:
    """Runs that describe the companion itself: not the detector's injected-leak self-check."""
    return not info.get("params", {}).get("leak_kb_per_message")


DECLARATION = Phase(
    name="memory",
    number=1,
    notebook=None,
    run=run,
    summarize=summarize,
    params=MemoryParams,
    round_split=ROUND_SPLIT,
    trial_table=trial_table,
    sweep_metrics=None,
    representative=representative,
    report="mateperf.reports.memory",
)
