"""A tuned profile reaches llama.cpp when loaded the companion's way with the documented line.

Desktop-Mate's `ModelManager.load_model` builds Llama from five profile keys. The test merges a
tuned recommended.json into a GPU_PROFILES-like dict as docs/tune.md says, builds Llama with
those five keys plus the profile's `llama_kwargs` (the one added line), and reads back from
llama.cpp (its getters and its own context log) that every tuned setting arrived; and that
without the line they do not (llama-cpp-python's defaults run instead).
"""

from __future__ import annotations

import json
import os

import pytest

from mateperf import companion_config, model, recommended_file
from mateperf.companion_readback import expected, load_like_companion, readback
from mateperf.host import fingerprint

pytestmark = pytest.mark.slow

# The companion's balanced profile as src/ai/config.py has it (facts: its keys and values).
COMPANION_BALANCED = {
    "n_gpu_layers": 35,
    "n_ctx": 2048,
    "n_batch": 256,
    "n_threads": 6,
    "use_mlock": True,
}
# A tuned balanced profile whose every setting differs from llama-cpp-python's defaults.
TUNED = {
    "n_threads": 1,
    "n_threads_batch": 2,
    "n_batch": 128,
    "n_ubatch": 64,
    "n_gpu_layers": 0,
    "n_ctx": 1024,
    "type_k": "q8_0",
    "type_v": "q8_0",
    "flash_attn": True,
}


def tuned_file(tmp_path, fp: dict):
    entry = {"settings": TUNED, "measured": {}, "meets_frame_budget": True, "evidence": []}
    rec = recommended_file.tuned(
        {"profiles": {"balanced": entry}, "default_profile": "balanced"}, fp, run_id="t"
    )
    return recommended_file.write(tmp_path / recommended_file.FILE_NAME, rec)


def merged_profile(path) -> dict:
    """docs/tune.md's merge into GPU_PROFILES, for the balanced profile."""
    profiles = {"balanced": dict(COMPANION_BALANCED)}
    tuned = json.loads(path.read_text(encoding="utf-8"))
    for name, entry in tuned["profiles"].items():
        profiles.setdefault(name, {}).update(entry["companion"]["gpu_profiles_entry"])
    return profiles["balanced"]


def test_recommended_json_says_which_settings_need_the_loader_line(tmp_path):
    fp = fingerprint()
    rec = json.loads(tuned_file(tmp_path, fp).read_text(encoding="utf-8"))
    loader = rec["profiles"]["balanced"]["companion"]
    assert loader["loader_line"] == companion_config.LOADER_LINE
    assert set(loader["needs_loader_line"]) == {
        "n_threads_batch",
        "n_ubatch",
        "flash_attn",
        "type_k",
        "type_v",
    } - ({"n_threads_batch"} if fp["cores_logical"] == 2 else set())
    kwargs = loader["gpu_profiles_entry"]["llama_kwargs"]
    assert kwargs == {
        "n_threads_batch": 2,
        "n_ubatch": 64,
        "flash_attn": True,
        "type_k": 8,
        "type_v": 8,
    }


def test_every_tuned_setting_arrives_with_the_loader_line(tmp_path):
    path = tuned_file(tmp_path, fingerprint())
    profile = merged_profile(path)
    assert profile["use_mlock"] is True  # the companion's own key is kept
    profile["use_mlock"] = False  # mlock needs RLIMIT_MEMLOCK, which CI containers cap
    llm, log = load_like_companion(str(model.resolve_model(None)), profile)
    try:
        got = readback(llm, log)
    finally:
        model.close(llm)
    print(f"read back from llama.cpp: {got}")
    assert got == expected(TUNED)


def test_without_the_line_llama_cpp_python_defaults_run(tmp_path):
    """What the companion runs today: the tuned batch threads, micro-batch, flash attention and
    KV type do not arrive."""
    profile = {**merged_profile(tuned_file(tmp_path, fingerprint())), "use_mlock": False}
    llm, log = load_like_companion(str(model.resolve_model(None)), profile, loader_line=False)
    try:
        got = readback(llm, log)
    finally:
        model.close(llm)
    assert got["n_threads"] == 1 and got["n_batch"] == 128  # the five keys arrive
    assert got["n_threads_batch"] == os.cpu_count()
    # llama-cpp-python's n_ubatch 512, which llama.cpp caps at n_batch
    assert got["n_ubatch"] == min(512, got["n_batch"]) and got["flash_attn"] is False
    assert (got["type_k"], got["type_v"]) == ("f16", "f16")
