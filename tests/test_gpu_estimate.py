"""The VRAM estimate from GGUF metadata: on the default model and on small generated GGUFs.

Without a GPU the estimate's device side cannot meet NVML here; what can be checked for real
is its parts against llama.cpp itself: a CPU-only build's dry run puts everything on the host,
and the metadata method's host prediction for that case must agree with llama.cpp's figures.
"""

import math

import pytest

from mateperf import gguf_file
from mateperf.gpu import estimate, projection
from mateperf.gpu.tinygguf import (
    MISTRAL_7B_SHAPES,
    TinySpec,
    write_shape_gguf,
    write_tiny_gguf,
)

MiB = 2**20


@pytest.fixture(scope="module")
def layout(default_model):
    return estimate.read_layout(default_model)


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    untied = write_tiny_gguf(
        d / "untied.gguf", TinySpec(n_vocab=32000, n_embd=512, n_ff=1536, n_layer=4)
    )
    tied = write_tiny_gguf(d / "tied.gguf", TinySpec(tied_output=True, n_layer=3))
    return untied, tied


CHECKS = [
    # (model, settings): the output dominates (both vocabularies), or attention does
    ("default", estimate.Settings(n_ctx=2048, n_ubatch=512)),
    ("default", estimate.Settings(n_ctx=1024, n_ubatch=256, flash_attn=True)),
    ("untied", estimate.Settings(n_ctx=2048, n_ubatch=512)),
    ("tied", estimate.Settings(n_ctx=4096, n_ubatch=512)),
    ("tied", estimate.Settings(n_ctx=4096, n_ubatch=512, flash_attn=True)),
]


def test_default_model_layout(layout, default_model):
    meta = gguf_file.gguf_metadata(default_model)
    assert (layout.architecture, layout.n_layer, layout.n_embd) == ("gemma3", 18, 640)
    assert layout.n_vocab == 262144 and layout.tied_output
    assert layout.n_head_kv == (1,) * 18 and layout.head_dim_k == layout.head_dim_v == 256
    # every tensor byte is placed in exactly one group
    assert layout.tensor_bytes == meta["tensor_bytes"]
    assert layout.output_matrix_bytes == 262144 * 640 // 32 * 34  # token_embd, Q8_0


def test_placement_follows_llama_cpp(layout):
    """k = 1 offloads only the output layer (for a tied model: a second copy of token_embd);
    -1 and anything above the layer count mean all; layers go from the last one down."""
    s = estimate.Settings(n_ctx=2048, n_ubatch=512)
    none = estimate.predict(layout, 0, s)
    out = estimate.predict(layout, 1, s)
    two = estimate.predict(layout, 2, s)
    full = estimate.predict(layout, -1, s)
    assert none["meta_weights_mb"] == 0 and none["meta_kv_mb"] == 0
    assert out["output_on_gpu"] and out["repeating_layers_on_gpu"] == 0
    assert out["meta_weights_mb"] * MiB == layout.output_bytes + layout.output_matrix_bytes
    assert estimate.gpu_layer_indices(layout, 2) == range(17, 18)
    assert two["meta_weights_mb"] * MiB - out["meta_weights_mb"] * MiB == layout.layer_bytes[17]
    above = estimate.predict(layout, 99, s)
    assert above["meta_buffers_mb"] == full["meta_buffers_mb"] and full["offloads_all"]
    assert full["gpu_layers"] == layout.all_layers == 19
    # KV: n_ctx cells x 1 head x (256 + 256) dims x 2 bytes, per offloaded layer
    assert full["meta_kv_mb"] == 18 * 2048 * 512 * 2 / MiB == 36.0
    assert full["meta_host_kv_mb"] == 0 and full["meta_host_weights_mb"] * MiB == layout.input_bytes


def test_settings_move_memory_as_llama_cpp_does(layout):
    base = estimate.predict(layout, -1, estimate.Settings())
    no_kqv = estimate.predict(layout, -1, estimate.Settings(offload_kqv=False))
    assert no_kqv["meta_kv_mb"] == 0 and no_kqv["meta_host_kv_mb"] == base["meta_kv_mb"]
    half_ubatch = estimate.predict(layout, -1, estimate.Settings(n_ubatch=256))
    # the logits of n_ubatch outputs dominate: half the batch, about half the compute buffer
    assert half_ubatch["meta_compute_mb"] == pytest.approx(base["meta_compute_mb"] / 2, rel=0.01)
    # at 0 layers a CUDA build still runs batched products on the GPU (op_offload), with a
    # copy of the output matrix; without op_offload nothing is on the device
    zero = estimate.predict(layout, 0, estimate.Settings())
    assert zero["meta_compute_mb"] * MiB == pytest.approx(
        262144 * 512 * 4 + 3 * 640 * 512 * 4 + layout.output_matrix_bytes
    )
    off = estimate.predict(layout, 0, estimate.Settings(op_offload=False))
    assert off["meta_buffers_mb"] == 0


def test_overhead_is_added_only_when_measured(layout):
    s = estimate.Settings()
    assert math.isnan(estimate.predict(layout, 5, s)["meta_total_mb"])
    o = estimate.Overhead(none_mb=500.0, attention_mb=600.0, source="test figures")
    assert estimate.predict(layout, 0, s, o)["meta_overhead_mb"] == 500.0
    assert estimate.predict(layout, 1, s, o)["meta_overhead_mb"] == 500.0  # output only
    with_layers = estimate.predict(layout, 5, s, o)
    assert with_layers["meta_total_mb"] == with_layers["meta_buffers_mb"] + 600.0
    no_kqv = estimate.predict(layout, 5, estimate.Settings(offload_kqv=False), o)
    assert no_kqv["meta_overhead_mb"] == 500.0


def test_table_covers_every_layer_count(layout):
    table = estimate.predict_table(layout)
    assert list(table["gpu_layers"]) == list(range(20))
    assert table["meta_buffers_mb"].is_monotonic_increasing


def test_tiny_gguf_is_a_real_model(tiny_paths):
    untied, tied = tiny_paths
    lu, lt = estimate.read_layout(untied), estimate.read_layout(tied)
    assert (lu.n_layer, lu.n_vocab, lu.n_head_kv, lu.tied_output) == (4, 32000, (2,) * 4, False)
    assert lt.tied_output and lt.output_bytes < lu.output_bytes
    # untied: k = 1 moves output.weight and the norm, no second copy of the embedding
    out = estimate.predict(lu, 1, estimate.Settings())
    assert out["meta_weights_mb"] * MiB == lu.output_bytes


@pytest.mark.slow
def test_metadata_agrees_with_llama_cpp_on_this_build(default_model, tiny_paths):
    """Known answer from llama.cpp itself: its no-allocation dry run (common_fit_print) on a
    CPU-only build puts everything on the host; the metadata method must give the same KV
    cache and compute buffers within 2 MiB or 3% (llama.cpp prints whole MiB, truncated: the
    true figure is up to 1 MiB above), and the same weights except what llama.cpp repacks into
    CPU_REPACK buffers, which its host figure leaves out."""
    if _offload():
        pytest.skip("a CUDA build places layers on the GPU; this check is for the CPU build")
    paths = {"default": default_model, "untied": tiny_paths[0], "tied": tiny_paths[1]}
    configs = {}
    for name, s in CHECKS:
        config = projection.dry_run_config(0, s.n_ctx, s.n_ubatch, s.n_ubatch, True, s.flash_attn)
        configs.setdefault(name, []).append((s, config))
    for name, items in configs.items():
        layout = estimate.read_layout(paths[name])
        results, facts = projection.project(paths[name], [c for _, c in items])
        assert facts["status"] == "ok", facts
        for (s, _), result in zip(items, results, strict=True):
            meta = estimate.predict(layout, 0, s, gpu_build=False)
            assert result["proj_device_mb"] == 0
            for meta_key, proj_key in (
                ("meta_host_kv_mb", "proj_host_context_mb"),
                ("meta_host_compute_mb", "proj_host_compute_mb"),
            ):
                gap = meta[meta_key] - (result[proj_key] + 0.5)
                assert abs(gap) <= max(2.0, 0.03 * meta[meta_key]), (name, s, meta_key, result)
            weights_gap = meta["meta_host_weights_mb"] - result["proj_host_model_mb"]
            assert 0 <= weights_gap < max(1.0, 0.06 * meta["meta_host_weights_mb"]), (name, result)


def _offload() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


@pytest.fixture(scope="module")
def mistral_7b(tmp_path_factory):
    """A Mistral-7B / Zephyr-7B-shaped Q5_K_M GGUF, header only (a sparse file)."""
    return write_shape_gguf(tmp_path_factory.mktemp("7b") / "7b-q5_k_m.gguf", MISTRAL_7B_SHAPES)


def test_7b_shaped_gguf_has_the_shapes_and_no_data(mistral_7b):
    layout = estimate.read_layout(mistral_7b)
    assert (layout.architecture, layout.n_layer, layout.n_embd, layout.n_ff) == (
        "llama",
        32,
        4096,
        14336,
    )
    assert (layout.n_head, layout.n_head_kv, layout.head_dim_k) == (32, (8,) * 32, 128)
    assert (layout.n_vocab, layout.tied_output) == (32000, False)
    # the mix llama.cpp's quantize makes: output and 16 layers' attn_v and ffn_down in Q6_K
    assert layout.types == {"Q5_K": 193, "Q6_K": 33, "F32": 65}
    # Mistral-7B-v0.1 Q5_K_M is 5.13 GB; this file's tensors are the same bytes ...
    assert 4.7 < layout.tensor_bytes / 2**30 < 4.85
    # ... and its size, with almost nothing on disk
    st = mistral_7b.stat()
    assert st.st_size > layout.tensor_bytes and st.st_blocks * 512 < 16 * MiB
    # KV cache, f16, all 32 layers at n_ctx 4096: 32 x 4096 x 8 heads x 256 dims x 2 bytes
    full = estimate.predict(layout, -1, estimate.Settings(n_ctx=4096))
    assert full["meta_kv_mb"] == 512.0


def test_kv_cache_types_scale_the_cache_only(layout):
    f16 = estimate.predict(layout, -1, estimate.Settings(flash_attn=True))
    q8 = estimate.predict(
        layout, -1, estimate.Settings(flash_attn=True, type_k="q8_0", type_v="q8_0")
    )
    q4 = estimate.predict(
        layout, -1, estimate.Settings(flash_attn=True, type_k="q4_0", type_v="q4_0")
    )
    assert q8["meta_kv_mb"] == pytest.approx(f16["meta_kv_mb"] * 34 / 64)  # 34 bytes per 32
    assert q4["meta_kv_mb"] == pytest.approx(f16["meta_kv_mb"] * 18 / 64)  # 18 bytes per 32
    assert q8["meta_weights_mb"] == f16["meta_weights_mb"]
    assert estimate.kv_variants() == [
        ("f16", "f16", False),
        ("q8_0", "f16", False),
        ("q4_0", "f16", False),
        ("f16", "f16", True),
        ("q8_0", "q8_0", True),
        ("q4_0", "q4_0", True),
    ]
    assert not estimate.kv_type_allowed("f16", "q8_0", flash_attn=False)


def test_overhead_follows_flash_attention(layout):
    o = estimate.Overhead(700.0, 710.0, "test figures", 610.0, 615.0)
    on = estimate.Settings(flash_attn=True)
    assert estimate.predict(layout, -1, on, o)["meta_overhead_mb"] == 615.0
    assert estimate.predict(layout, 0, on, o)["meta_overhead_mb"] == 610.0
    assert estimate.predict(layout, -1, estimate.Settings(), o)["meta_overhead_mb"] == 710.0
    assert o.flash_attn_saving_mb == 95.0
    # a device calibrated before flash attention was measured predicts no total with it on
    old = estimate.Overhead(700.0, 710.0, "old entry")
    assert math.isnan(estimate.predict(layout, -1, on, old)["meta_total_mb"])


# (n_ctx, n_ubatch) per model: the default model's output dominates its compute buffer; the
# 7B's attention scores do without flash attention (32 heads x n_ctx x n_ubatch x 4 bytes)
KV_CHECKS = {
    "default": [(2048, 512), (4096, 128)],
    "7b": [(4096, 512), (2048, 256), (512, 512), (8192, 256)],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "7b"])
def test_kv_types_and_flash_attention_agree_with_llama_cpp(name, default_model, mistral_7b):
    """For every KV cache type pair llama.cpp accepts, flash attention off and on: the metadata
    method's KV cache and compute buffer against llama.cpp's own dry run on this CPU build,
    within 2 MiB or 3% (llama.cpp prints whole MiB, truncated)."""
    if _offload():
        pytest.skip("a CUDA build places layers on the GPU; this check is for the CPU build")
    path = {"default": default_model, "7b": mistral_7b}[name]
    layout = estimate.read_layout(path)
    items = []
    for n_ctx, ub in KV_CHECKS[name]:
        for type_k, type_v, fa in estimate.kv_variants():
            s = estimate.Settings(
                n_ctx=n_ctx, n_ubatch=ub, flash_attn=fa, type_k=type_k, type_v=type_v
            )
            items.append((s, projection.dry_run_config(0, n_ctx, ub, ub, True, fa, type_k, type_v)))
    results, facts = projection.project(path, [c for _, c in items])
    assert facts["status"] == "ok", facts
    for (s, _), result in zip(items, results, strict=True):
        assert result["status"] == "ok", (s, result)
        meta = estimate.predict(layout, 0, s, gpu_build=False)
        for meta_key, proj_key in (
            ("meta_host_kv_mb", "proj_host_context_mb"),
            ("meta_host_compute_mb", "proj_host_compute_mb"),
        ):
            gap = meta[meta_key] - (result[proj_key] + 0.5)
            tolerance = max(2.0, 0.03 * meta[meta_key])
            # a quantised cache with flash attention at a long context: llama.cpp reserves
            # 4-8 MiB less compute than predicted (unexplained; the prediction errs high)
            high = (
                8.0
                if (s.flash_attn and s.type_k != "f16" and meta_key.endswith("compute_mb"))
                else 0
            )
            assert -tolerance <= gap <= tolerance + high, (name, s, meta_key, result)
