"""How the companion loads its model, and what a tuned profile needs from that loader.

Facts of Desktop-Mate (src/ai/model_manager.py, `ModelManager.load_model`): it builds
`Llama(model_path, n_gpu_layers, n_ctx, n_batch, n_threads, use_mlock, verbose=False)` from
the current entry of `GPU_PROFILES` (src/ai/config.py). Every other load setting stays at
llama-cpp-python's default: `n_threads_batch` every logical CPU, `n_ubatch` 512 (at most
`n_batch`), flash
attention off, an f16 KV cache. `mateperf tune` measures those settings too, so they reach the
companion only through one added line in that call (`LOADER_LINE`), which passes the
profile's `llama_kwargs`. It is required: without it the companion runs the five settings with
llama-cpp-python's defaults for the rest, which is not what tune measured.
"""

from __future__ import annotations

from mateperf.params import GGML_TYPES

# What `ModelManager.load_model` passes to Llama(...) today, from the profile.
COMPANION_ARGS = ("n_gpu_layers", "n_ctx", "n_batch", "n_threads", "use_mlock")
# What a tuned profile also sets, through `llama_kwargs`.
KWARGS = ("n_threads_batch", "n_ubatch", "flash_attn", "type_k", "type_v")
# The one line added to the Llama(...) call in `ModelManager.load_model` (after `n_threads=`):
# `get_gpu_params()` keeps only the five keys above, `get_profile_info()` is the whole profile.
LOADER_LINE = '**self.config.get_profile_info().get("llama_kwargs", {}),'
LOADER_WHERE = "src/ai/model_manager.py, ModelManager.load_model, inside the Llama(...) call"
# llama-cpp-python's defaults for the settings the companion does not pass (0.3.x).
LLAMA_CPP_DEFAULTS = {"n_ubatch": 512, "flash_attn": False, "type_k": "f16", "type_v": "f16"}


def gpu_profile(settings: dict) -> dict:
    """The tuned settings as the companion's GPU_PROFILES entry: its own keys, plus
    `llama_kwargs` for the rest (KV types as ggml type numbers, as Llama takes them)."""
    entry = {k: int(settings[k]) for k in COMPANION_ARGS if k in settings}
    kwargs = {
        "n_threads_batch": int(settings["n_threads_batch"]),
        "n_ubatch": int(settings["n_ubatch"]),
        "flash_attn": bool(settings["flash_attn"]),
    }
    for key in ("type_k", "type_v"):
        if settings.get(key, "f16") != "f16":
            kwargs[key] = GGML_TYPES[settings[key]]
    return {**entry, "llama_kwargs": kwargs}


def needs_loader_line(settings: dict, logical_cpus: int | None) -> list[str]:
    """The tuned settings that differ from what the companion's loader gives today (llama-cpp-
    python's defaults: n_threads_batch = every logical CPU of the machine): without
    LOADER_LINE these are not what runs."""
    out = []
    if logical_cpus is None or int(settings["n_threads_batch"]) != int(logical_cpus):
        out.append("n_threads_batch")
    for key, default in LLAMA_CPP_DEFAULTS.items():
        if key == "n_ubatch":  # llama.cpp caps the micro-batch at n_batch
            default = min(default, int(settings["n_batch"]))
        if settings.get(key, default) != default:
            out.append(key)
    return out


def loader(settings: dict, logical_cpus: int | None) -> dict:
    """recommended.json's `companion` entry of a tuned profile."""
    needs = needs_loader_line(settings, logical_cpus)
    return {
        "gpu_profiles_entry": gpu_profile(settings),
        "needs_loader_line": needs,
        "loader_line": LOADER_LINE,
        "loader_where": LOADER_WHERE,
        "without_it": (
            "the companion's Llama(...) passes only "
            + ", ".join(COMPANION_ARGS)
            + (
                f": {', '.join(needs)} would run at llama-cpp-python's defaults, not as measured"
                if needs
                else ": every other setting tuned equals llama-cpp-python's default here"
            )
        ),
    }
