"""The companion's GPU_PROFILES as llama.cpp loads them: the clamp and the intent sentence.

Known answers on two generated shapes (header-only GGUFs of a Mistral-7B / Zephyr-7B, 32
blocks, and of the same model with 43 blocks, the count the companion's comment assumes),
with the H200 reference overhead.
"""

from __future__ import annotations

import dataclasses

import pytest

from mateperf.gpu import companion_profiles as cp
from mateperf.gpu import estimate
from mateperf.gpu.tinygguf import MISTRAL_7B_SHAPES, write_shape_gguf

REF = estimate.REFERENCE_OVERHEAD


@pytest.fixture(scope="module")
def layout_32(tmp_path_factory):
    path = write_shape_gguf(tmp_path_factory.mktemp("z") / "z.gguf", MISTRAL_7B_SHAPES, False)
    return estimate.read_layout(path)


@pytest.fixture(scope="module")
def layout_43(tmp_path_factory):
    spec = dataclasses.replace(MISTRAL_7B_SHAPES, n_layer=43)
    return estimate.read_layout(write_shape_gguf(tmp_path_factory.mktemp("z") / "z43.gguf", spec))


def test_the_companions_profiles_are_its_config():
    p = cp.PROFILES
    assert (p["balanced"].n_gpu_layers, p["balanced"].n_ctx, p["balanced"].n_batch) == (
        35,
        2048,
        256,
    )
    assert p["balanced"].stated_share == pytest.approx(35 / 43)
    assert p["balanced"].stated_vram_gb == (3.0, 4.0)
    assert p["performance"].stated_vram_gb == (5.0, 5.5)
    assert p["cpu_fallback"].stated_vram_gb == (0.0, 0.0)  # "(RAM: 4-6 GB)" is not VRAM


def test_balanced_on_a_32_block_model_is_full_offload(layout_32):
    e = cp.effect(cp.PROFILES["balanced"], layout_32, REF)
    assert (e.n_layer, e.all_layers, e.loaded_layers) == (32, 33, 33)
    assert e.past_the_model and e.full_offload and e.layers_differ
    assert e.intent_layers == 26  # round(35 / 43 × 32)
    # 4807 MiB of weights + 256 KV + 88 compute + 713 overhead (docs/gpu.md's table)
    assert e.predicted_mb == pytest.approx(5864, abs=1)
    assert e.sentence.startswith(
        "balanced: 35 layers on a 32-block model is full offload (all 33 layers), "
        "5.7 GiB predicted, not 3-4 GB; 26 layers is 81% ("
    )
    # performance loads the same layers: the two differ by context and batch only
    perf = cp.effect(cp.PROFILES["performance"], layout_32, REF)
    assert perf.loaded_layers == e.loaded_layers and not perf.layers_differ
    assert set(cp.intent_sentences(layout_32, REF)) == {"balanced"}


def test_balanced_on_a_43_block_model_is_what_its_comment_says(layout_43):
    e = cp.effect(cp.PROFILES["balanced"], layout_43, REF)
    assert (e.all_layers, e.loaded_layers, e.intent_layers) == (44, 35, 35)
    assert not e.past_the_model and not e.layers_differ
    assert e.sentence.startswith("balanced: 35 of 44 layers (81% of the 43 blocks")
    assert cp.intent_sentences(layout_43, REF) == {}


def test_the_section_for_the_companions_model(layout_32):
    rows = {r["cm_profile"]: r for r in cp.model_rows(layout_32, REF, 6144, 1024)}
    assert set(rows) == {"performance", "balanced", "cpu_fallback"}
    for name, r in rows.items():
        assert r["cm_available_mb"] == 5120
        # flash attention saves memory (the overhead and the attention's compute buffer)
        assert r["cm_fa_on_mb"] < r["cm_fa_off_mb"]
        assert r["cm_fa_on_max_layers"] >= r["cm_fa_off_max_layers"]
        for tag in ("off", "on"):
            k = r[f"cm_fa_{tag}_max_layers"]
            assert r[f"cm_fa_{tag}_max_mb"] <= 5120
            s = cp.settings(cp.PROFILES[name], tag == "on")
            # the most that fit: one layer more does not
            assert estimate.predict(layout_32, k + 1, s, REF)["meta_total_mb"] > 5120
    assert rows["balanced"]["cm_gpu_layers"] == 33 and rows["balanced"]["cm_fa_off_fits"] is False
    assert rows["balanced"]["cm_layers_differ"] and not rows["performance"]["cm_layers_differ"]
    assert rows["cpu_fallback"]["cm_fa_off_fits"] is True


def test_a_header_only_shape_reads_as_the_full_one(tmp_path):
    full = write_shape_gguf(tmp_path / "full.gguf", MISTRAL_7B_SHAPES)
    header = write_shape_gguf(tmp_path / "header.gguf", MISTRAL_7B_SHAPES, extend=False)
    assert header.stat().st_size < 8 << 20 < full.stat().st_size
    a, b = estimate.read_layout(full), estimate.read_layout(header)
    assert dataclasses.replace(a, path="") == dataclasses.replace(b, path="")


def test_the_gpu_report_says_it(tmp_path):
    """The stored rows of a gpu run render the section and the sentence about balanced."""
    import pandas as pd

    from mateperf.phases.gpu import predict
    from mateperf.reports import gpu

    rows, facts = predict.companion_model_rows("", tmp_path, REF, 1024)
    assert not list(tmp_path.iterdir())  # the shape is read and removed
    frame = pd.DataFrame([{"scenario": "companion_model", **r, **facts} for r in rows])
    text = "\n".join(gpu.companion_model_lines(frame))
    assert "### For the companion's model" in text
    assert "the generated Zephyr-7B Q5_K_M shape" in text and "= 5120 MiB" in text
    balanced = next(ln for ln in text.splitlines() if ln.startswith("| balanced"))
    assert "35 → 33 (all)" in balanced and "5864 (NO)" in balanced and "26: 5069 MiB" in balanced
    assert "balanced: 35 layers on a 32-block model is full offload (all 33 layers)" in text


def test_the_sentence_reads_on_the_default_models_18_blocks(default_model):
    e = cp.effect(cp.PROFILES["balanced"], estimate.read_layout(default_model), REF)
    assert e.sentence.startswith("balanced: 35 layers on an 18-block model is full offload")
    assert e.intent_layers == 15  # round(35 / 43 × 18)
