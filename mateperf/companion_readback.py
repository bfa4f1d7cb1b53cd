"""A tuned profile loaded as the companion loads it, and what llama.cpp says it got.

`load_like_companion` builds `Llama` with the arguments of Desktop-Mate's
`ModelManager.load_model` (its five profile keys, verbose off) and, with `loader_line`, the
profile's `llama_kwargs` too (mateperf.companion_config.LOADER_LINE). `readback` asks llama.cpp,
not the Python object, what the context runs with: threads, batch threads, batch and micro-
batch sizes and context from its getters (`llama_n_threads`, ...), flash attention and the K/V
cache types from the lines llama.cpp logs while it builds the context (it has no getter for
them).
"""

from __future__ import annotations

import ctypes
import re


def load_like_companion(model_path: str, profile: dict, loader_line: bool = True):
    """(llm, llama.cpp's log of the load) for a GPU_PROFILES entry, loaded the companion's way."""
    import llama_cpp

    from mateperf import model

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        extra = profile.get("llama_kwargs", {}) if loader_line else {}
        llm = llama_cpp.Llama(
            model_path=model_path,
            n_gpu_layers=profile["n_gpu_layers"],
            n_ctx=profile["n_ctx"],
            n_batch=profile["n_batch"],
            n_threads=profile["n_threads"],
            use_mlock=profile.get("use_mlock", False),
            verbose=False,
            **extra,
        )
    finally:
        model.restore_llama_log()  # mateperf's own log callback back in place
    return llm, "".join(lines)


def readback(llm, log: str) -> dict:
    """What the context runs with, read from llama.cpp."""
    import llama_cpp

    ctx = llm.ctx
    flash = re.search(r"llama_context: flash_attn\s*=\s*(\S+)", log)
    kv = re.search(r"K \((\w+)\):.*V \((\w+)\):", log)
    return {
        "n_threads": int(llama_cpp.llama_n_threads(ctx)),
        "n_threads_batch": int(llama_cpp.llama_n_threads_batch(ctx)),
        "n_batch": int(llama_cpp.llama_n_batch(ctx)),
        "n_ubatch": int(llama_cpp.llama_n_ubatch(ctx)),
        "n_ctx": int(llama_cpp.llama_n_ctx(ctx)),
        "flash_attn": None if flash is None else flash.group(1) in ("enabled", "1", "true"),
        "type_k": None if kv is None else kv.group(1),
        "type_v": None if kv is None else kv.group(2),
    }


def expected(settings: dict) -> dict:
    """The tuned settings in readback's terms."""
    return {
        "n_threads": int(settings["n_threads"]),
        "n_threads_batch": int(settings["n_threads_batch"]),
        "n_batch": int(settings["n_batch"]),
        "n_ubatch": int(settings["n_ubatch"]),
        "n_ctx": int(settings["n_ctx"]),
        "flash_attn": bool(settings["flash_attn"]),
        "type_k": settings.get("type_k", "f16"),
        "type_v": settings.get("type_v", "f16"),
    }
