"""Phase 1, memory: the measuring. One long companion session under the memory sampler.

`run` loads the model, chats, closes the model, collects and trims, marking each step on one
sampler timeline, and returns the tidy frame that `analyse` and `verdict` read.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from mateperf import companion, model, progress
from mateperf.metrics import WARMUP_FLAG
from mateperf.phases.memory.params import MemoryParams
from mateperf.trackers.heap import malloc_trim
from mateperf.trackers.memory import MemorySampler
from mateperf.trackers.process_memory import mapped_file_rss_mb

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


def run(settle_s: float = 0.5, progress: bool = True, **values) -> pd.DataFrame:
    """Measure the four scenarios; returns samples, markers, messages and gc events in one frame.

    `values` are the phase's parameters (`MemoryParams`, which validates them); `settle_s` is
    the pause before each checkpoint's reading, `progress` whether to print progress lines.
    """
    p = MemoryParams.from_values(values, what="memory")
    say = _progress if progress else (lambda _text: None)

    # baseline is "after the imports": everything the later scenarios import is imported now.
    # Here, not at the top: reading a stored run (reports, `run memory --help`) needs no llama.cpp.
    import llama_cpp  # noqa: F401

    model_path = model.resolve_model(p.model or None)
    sampler = MemorySampler(interval_ms=p.sample_interval_ms, uss_interval_ms=p.uss_interval_ms)
    say(f"{sampler.gpu_status}; {sampler.heap_status}; {sampler.rss_status}")
    retained: list[bytes] = []  # the injected leak, alive until the end of memory_cleanup
    leak_bytes = int(p.leak_kb_per_message) * 1024

    def checkpoint(label: str, scenario: str, name: str, **extra) -> dict:
        """A checkpoint's reading after the settling pause, with the model file's mapped pages."""
        time.sleep(settle_s)
        mapped_mb = mapped_file_rss_mb(model_path)
        return sampler.mark(
            label, scenario=scenario, checkpoint=name, **extra, model_mapped_mb=mapped_mb
        )

    with sampler:
        # -- baseline
        sampler.mark("baseline start", scenario="baseline")
        base = checkpoint("baseline", "baseline", "baseline")
        say(f"baseline rss {base['rss_mb']:.1f} MiB uss {base['uss_mb']:.1f} MiB")

        # -- load_model
        sampler.mark("load start", scenario="load_model")
        config = model.LlamaConfig.from_params(p, model_path=str(model_path))
        llm, load_s = model.load(config)
        loaded = checkpoint("model loaded", "load_model", "after_load", load_s=load_s)
        say(f"model loaded in {load_s:.2f} s, rss {loaded['rss_mb']:.1f} MiB")

        # -- chat_session
        # One full collection before the first message and one after the last: the garbage of
        # every reply is then returned by a recorded full collection, which the live-heap
        # reconstruction needs; in between CPython collects on its own schedule.
        collected = sampler.collect()
        sampler.mark("chat start", scenario="chat_session", gc_collected=collected)
        history: list[dict] = []
        every = 1 if p.messages <= 20 else 5
        for i in range(1, p.messages + 1):
            history = history[-p.history_messages :] if p.history_messages else []
            user = {"role": "user", "content": USER_TURNS[(i - 1) % len(USER_TURNS)]}
            prompt = [{"role": "system", "content": companion.SYSTEM_PROMPT}, *history, user]
            start = time.perf_counter_ns()
            reply_start_s = sampler.now_s()
            # Not workloads.stream_reply, which is greedy (temperature 0, so that A/B arms generate
            # the same text) and tokenizes the whole conversation for its context check: this
            # phase measures the companion's own call, sampled as the app samples, and that extra
            # allocation would land in the heap series the detector fits. The stored runs were
            # measured on this call; a change here would make new runs incomparable with them.
            # A reply that fails ends the run (the sampler stops, the error propagates): one
            # session is one replicate, and a gap in messages 1..N leaves the live heap unplaced
            # (pending_garbage needs every reply), so a recorded failure could not be analysed.
            reply = llm.create_chat_completion(
                messages=companion.prepare_messages(llm, prompt),
                max_tokens=_reply_budget(i, p.max_tokens),
                temperature=0.8,
                top_p=0.95,
                seed=p.seed + i,
            )
            gen_ms = (time.perf_counter_ns() - start) / 1e6
            reply_end_s = sampler.now_s()
            text = reply["choices"][0]["message"]["content"] or "..."
            history += [user, {"role": "assistant", "content": text}]
            if leak_bytes:
                # bytes * n fills the buffer, so every page of the injected leak is resident.
                retained.append(b"\xa5" * leak_bytes)
            if p.gc_every_message:
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
            if i % every == 0 or i == p.messages:
                say(
                    f"message {i}/{p.messages} rss {row['rss_mb']:.1f} MiB "
                    f"heap in use {row['heap_used_mb']:.1f} MiB "
                    f"({row['completion_tokens']} tokens, {gen_ms:.0f} ms)"
                )
        chat_end = checkpoint("chat end", "chat_session", "after_chat")
        collected = sampler.collect()
        checkpoint(
            "chat garbage collected", "chat_session", "after_chat_gc", gc_collected=collected
        )

        # -- memory_cleanup
        sampler.mark("cleanup start", scenario="memory_cleanup")
        model.close(llm)
        del llm, reply
        checkpoint("model closed", "memory_cleanup", "after_close")
        collected = sampler.collect()
        checkpoint("gc.collect", "memory_cleanup", "after_gc", gc_collected=collected)
        released, trim_note = malloc_trim()
        trimmed = checkpoint(
            "malloc_trim",
            "memory_cleanup",
            "after_trim",
            malloc_trim_released=released,
            malloc_trim_note=trim_note,
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
    warm = (df["message"] <= p.warmup_messages).fillna(False)
    df[WARMUP_FLAG] = (df["record"] == "message") & warm
    for name, value in p.items():  # the frame describes itself even before results.tidy
        df[name] = value
    return df


def _place_collections(df: pd.DataFrame) -> None:
    """gc_replies_done on gc rows: how many replies had finished when the collection started.

    Part of the stored frame (the analysis reads the column), so it is set here, once.
    """
    ends = np.sort(df.loc[df["record"] == "message", "reply_end_s"].to_numpy(float))
    is_gc = df["record"] == "gc"
    df["gc_replies_done"] = np.nan
    df.loc[is_gc, "gc_replies_done"] = np.searchsorted(
        ends, df.loc[is_gc, "t_s"].to_numpy(float), side="left"
    )
