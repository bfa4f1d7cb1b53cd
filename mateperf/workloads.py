"""The workloads every model phase and the companion load run: one definition each.

- `stream_reply`: one companion turn, streamed, with time to first token and llama.cpp's counters;
- `warm_up`: the app's warm_cache step (a tiny generation on the system prompt after load);
- `bench_pp` / `bench_tg`: prompt processing and generation the way llama-bench measures them
  (random tokens, KV cache cleared first, decode calls with no sampling), after
  `bench_warm_up`, llama-bench's own warm-up: one prompt of the measured size, then one
  generated token, on the same context;
- `expression_sequence`: the avatar's emotion beat, as commands for the bridge, and
  `reply_emotion`: the emotion a reply's tag names (the beat the companion plays after it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import numpy as np

from mateperf import companion


def gpu_offload_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


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


def bench_warm_up(llm, pp_tokens: int, n_batch: int, rng: np.random.Generator) -> None:
    """llama-bench's warm-up: a prompt of the measured size, then one generated token.

    A fresh context pays once for what the timed runs must not: the first touch of its KV
    cache and compute buffers at full batch size, and of every weight. Warming up as
    llama-bench does leaves both tools timing a context in the same state. (On the 2-vCPU
    AMD host the first pp512 after a load showed no penalty against later ones; this is for
    hosts and builds where it does.)
    """
    bench_pp(llm, max(1, min(pp_tokens, llm.n_ctx())), n_batch, rng)
    bench_tg(llm, 1, rng)


# the tags the companion's system prompt asks for (mateperf.companion), as its avatar reads them
EMOTION_TAG = re.compile(r"\[(happy|sad|surprised|thinking|angry|relaxed)\]", re.I)


def reply_emotion(text: str) -> str:
    """The emotion a reply's tag names, "relaxed" where it has none."""
    tag = EMOTION_TAG.search(text)
    return tag.group(1).lower() if tag else "relaxed"


def expression_sequence(step: int, name: str | None = None) -> Iterator[tuple[str, dict]]:
    """A realistic emotion beat: ramp one expression up, hold, blink, ramp down, reset.

    `name`: the expression (a reply's emotion); by default one of five, by `step`.
    """
    names = ("happy", "sad", "angry", "surprised", "relaxed")
    name = name or names[step % len(names)]
    yield "set_transition_speed", {"speed": 2.0 + step % 3}
    for i in range(1, 6):
        yield "set_expression", {"name": name, "value": i / 5}
    yield "set_auto_blink", {"enabled": False}
    yield "set_auto_blink", {"enabled": True}
    yield (
        "set_auto_head_movement",
        {
            "enabled": True,
            "min_interval": 1.0,
            "max_interval": 3.0,
            "max_angle": 15.0,
        },
    )
    for i in range(4, -1, -1):
        yield "set_expression", {"name": name, "value": i / 5}
    yield "reset_expressions", {}
