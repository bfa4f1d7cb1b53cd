"""VRAM predicted from the GGUF file alone, for every n_gpu_layers from 0 to all.

What llama.cpp puts on the GPU for `n_gpu_layers = k` (llama-model.cpp, load_tensors):
- the output layer counts as layer n_layer and is offloaded FIRST: k = 1 puts only the output
  matrix and its norm on the GPU, k = n_layer + 1 (or -1) everything;
- repeating layers n_layer + 1 - k .. n_layer - 1 follow, from the last one down;
- the input embedding (token_embd) always stays on the CPU. A model without `output.weight`
  ties its output to token_embd, and llama.cpp then loads a SECOND copy of token_embd into the
  output layer's buffer: for Gemma 3 270M that copy (170 MiB of Q8_0) is most of what k = 1
  puts on the GPU, a cost calculators that count the file's bytes once miss.

The KV cache: n_ctx (padded to 256) cells per layer of n_head_kv × (key_length × size(type_k) +
value_length × size(type_v)) bytes, on the device for offloaded layers when offload_kqv is on.
llama-cpp-python asks for the full-size sliding-window cache (swa_full), so sliding-window
layers hold n_ctx cells as well.

Compute buffers are reserved for the worst batch (n_ubatch tokens, every one an output), and
the graph allocator reuses memory, so the buffer is the peak of live activations, not their
sum. The candidates:
- the output: logits n_vocab × n_ubatch × 4 bytes plus three hidden states. For a 262k-token
  vocabulary at n_ubatch 512 that is 512 MiB, whatever the number of layers;
- a layer: attention scores n_head × n_ctx × n_ubatch × 4 and the KQ mask (with flash
  attention only the mask, in f16) plus Q, K, V and three hidden states, or the feed-forward's
  gate and up (2 × n_ff × n_ubatch × 4);
- with op_offload (llama.cpp's default) a CUDA build runs batched matrix products on the GPU
  even for weights left in host memory, copying those weights into the device compute buffer
  first: at k = 0 the output matrix is such a copy; with layers still on the CPU, the weights of
  one scheduler split (two layers, taken here) are.

What the file cannot tell: the CUDA context, cuBLAS workspace and the CUDA backend's pools.
That device overhead is measured once per device (mateperf.gpu.calibration) and added; where it
was never measured the total is NaN and only the buffers are predicted: nothing is guessed.
It is measured at two placements, because cuBLAS (its handle and workspace) comes to life only
when a product it serves runs on the device: with quantised weights that is attention over a
KV cache on the GPU (layers offloaded with offload_kqv), while the weight products of a
quantised model run in llama.cpp's own kernels. So `none_mb` applies while no layer's attention
runs on the GPU (n_gpu_layers 0 and 1, or offload_kqv off) and `attention_mb` otherwise.
And it is measured with flash attention off and on: on an H200 every configuration with flash
attention used 83–96 MiB less, at every placement, while llama.cpp's own projection of its
buffers moved by at most a few MiB (its compute buffer for these models is the output's logits,
which flash attention does not touch): the difference is device overhead, not a buffer, so each
prediction takes the figure measured with its own flash-attention setting.

KV cache types (type_k, type_v: f16, q8_0, q4_0, ...) change only the KV cache's bytes per
element (a q8_0 block is 34 bytes per 32 values, q4_0 18): checked on this CPU build against
llama.cpp's projection for every pair it accepts (a quantised V cache needs flash attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mateperf.gpu.layout import Layout as Layout  # re-exported: callers read estimate.Layout
from mateperf.gpu.layout import read_layout as read_layout

MiB = float(1 << 20)
F32 = 4
CTX_PAD = 256
SPLIT_LAYERS = 2  # layers of host weights copied for one scheduler split (op_offload)


def cache_type_bytes(name: str) -> float:
    """Bytes per element of a KV cache type (f16, f32, q8_0, q4_0, ...)."""
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]]
    except KeyError:
        raise ValueError(f"unknown KV cache type {name!r}") from None
    return size / block


def padded_ctx(n_ctx: int) -> int:
    return -(-n_ctx // CTX_PAD) * CTX_PAD


# KV cache types llama.cpp's CPU and CUDA backends both serve, smallest last.
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


def kv_type_allowed(type_k: str, type_v: str, flash_attn: bool) -> bool:
    """llama.cpp refuses a quantised V cache without flash attention (the V matrix is read
    transposed there, which quantised blocks cannot be)."""
    return flash_attn or type_v in ("f16", "f32", "bf16")


def kv_variants() -> list[tuple[str, str, bool]]:
    """(type_k, type_v, flash_attn) worth predicting: each K type with an f16 V cache and flash
    attention off, and each type for both with flash attention on."""
    off = [(t, "f16", False) for t in KV_CACHE_TYPES]
    on = [(t, t, True) for t in KV_CACHE_TYPES]
    return off + on


@dataclass(frozen=True)
class Overhead:
    """Device memory no buffer accounts for, in MiB, measured once per device: with no
    attention on the device and with attention on it, flash attention off and on."""

    none_mb: float = float("nan")  # no attention on the device, flash attention off
    attention_mb: float = float("nan")  # attention over a device KV cache (cuBLAS alive)
    source: str = "never measured"
    none_fa_mb: float = float("nan")  # the same two with flash attention on
    attention_fa_mb: float = float("nan")

    def for_layers(self, layout: Layout, k: int, settings: Settings) -> float:
        attention_on_gpu = settings.offload_kqv and len(gpu_layer_indices(layout, k)) > 0
        if settings.flash_attn:
            return self.attention_fa_mb if attention_on_gpu else self.none_fa_mb
        return self.attention_mb if attention_on_gpu else self.none_mb

    @property
    def flash_attn_saving_mb(self) -> float:
        """How much less flash attention needs, with attention on the device."""
        return self.attention_mb - self.attention_fa_mb


# Measured on the lent NVIDIA H200 (driver 580.159.04, CUDA 13.0, sm90 build of 0.3.36), for
# planning a card that is not here (the companion's 6 GB laptop GPU): NVML device-used less the
# metadata buffers, in a fresh process per point (issue 17). Flash attention off: the real
# default model at n_ctx 2048 measured 1399 MiB at 0 layers and 1417-1499 at 4..all, 713 MiB
# above its buffers at every count. Flash attention on: performance and balanced measured 1442
# and 1412 MiB against 820 and 790 of buffers (622), low_memory (KV cache in RAM) 1094 against
# 476 (618). Another card's CUDA context and cuBLAS workspace differ: `mateperf run gpu` on it
# stores its own figures, which every prediction on that device uses instead.
REFERENCE_OVERHEAD = Overhead(
    none_mb=713.0,
    attention_mb=713.0,
    none_fa_mb=618.0,
    attention_fa_mb=622.0,
    source=(
        "reference figures measured on an NVIDIA H200 (driver 580.159.04), not on this "
        "device: calibrate the target card with `mateperf run gpu` there"
    ),
)


@dataclass(frozen=True)
class Settings:
    """The load and context settings that change what is allocated."""

    n_ctx: int = 2048
    n_ubatch: int = 512
    offload_kqv: bool = True
    flash_attn: bool = False
    op_offload: bool = True
    type_k: str = "f16"
    type_v: str = "f16"


def gpu_layer_indices(layout: Layout, k: int) -> range:
    """Repeating layers on the GPU for n_gpu_layers = k (k already resolved to 0..all)."""
    start = max(0, layout.n_layer + 1 - k)
    return range(start, layout.n_layer) if k > 1 else range(0)


def kv_bytes_per_layer(layout: Layout, s: Settings) -> list[float]:
    n_ctx = padded_ctx(s.n_ctx)
    bk, bv = cache_type_bytes(s.type_k), cache_type_bytes(s.type_v)
    return [
        n_ctx * heads * (layout.head_dim_k * bk + layout.head_dim_v * bv)
        for heads in layout.n_head_kv
    ]


def activation_peaks(layout: Layout, s: Settings) -> dict[str, float]:
    """Peak live activations in bytes: at the output, and inside one layer.

    Three hidden states are live at any point (the residual stream, the normed input, the
    result being formed); the KQ mask (f32, or f16 with flash attention) lives through the
    layers. Attention without flash attention holds the scores (n_head × n_kv × n_ubatch × 4)
    and, with an f16 K cache, one more Q-sized buffer; with flash attention only the mask. The
    feed-forward holds gate, up and their product (3 × n_ff × n_ubatch × 4) with four hidden
    states, and without flash attention the batch's K and V as well. Checked against llama.cpp's
    own reservation on this CPU build: the default model (its output dominates), generated
    models where attention or the output does, and a 7B's shapes where the feed-forward does
    with flash attention on or at a short context (tests).
    """
    ub = s.n_ubatch
    n_kv = padded_ctx(s.n_ctx)
    hidden = layout.n_embd * ub * F32
    out_peak = layout.n_vocab * ub * F32 + 3 * hidden
    q = layout.n_head * layout.head_dim_k * ub * F32
    kv_cur = max(layout.n_head_kv) * (layout.head_dim_k + layout.head_dim_v) * ub * F32
    mask = n_kv * ub * (2 if s.flash_attn else F32)
    ffn_peak = 3 * layout.n_ff * ub * F32 + 4 * hidden + mask
    if s.flash_attn:
        attn_peak = mask + q + kv_cur + 3 * hidden
    else:
        f16_k = s.type_k.lower() in ("f16", "bf16")
        scores = layout.n_head * n_kv * ub * F32
        attn_peak = scores + mask + q * (2 if f16_k else 1) + kv_cur + 3 * hidden
        ffn_peak += kv_cur
    return {"hidden": hidden, "output": out_peak, "layer": max(attn_peak, ffn_peak)}


def predict(
    layout: Layout,
    n_gpu_layers: int,
    settings: Settings | None = None,
    overhead: Overhead | None = None,
    gpu_build: bool = True,
) -> dict:
    """Predicted MiB on the device and on the host for one n_gpu_layers.

    gpu_build=False predicts a CPU-only build (everything on the host), which is what this
    module can be checked against on a machine without a GPU.
    """
    s = settings or Settings()
    k = layout.resolve_layers(n_gpu_layers) if gpu_build else 0
    gpu_layers = gpu_layer_indices(layout, k)
    output_on_gpu = k >= 1
    host_layers = [i for i in range(layout.n_layer) if i not in gpu_layers]
    kv = kv_bytes_per_layer(layout, s)
    peaks = activation_peaks(layout, s)
    split_copy = SPLIT_LAYERS * max(layout.layer_bytes)

    dev_weights = sum(layout.layer_bytes[i] for i in gpu_layers)
    host_weights = layout.input_bytes + layout.other_bytes
    host_weights += sum(layout.layer_bytes[i] for i in host_layers)
    if output_on_gpu:
        # a tied output is a second copy of token_embd, loaded into the output's buffer
        dev_weights += layout.output_bytes + (
            layout.output_matrix_bytes if layout.tied_output else 0
        )
    else:
        host_weights += layout.output_bytes
    dev_kv = sum(kv[i] for i in gpu_layers) if s.offload_kqv else 0.0
    host_kv = sum(kv) - dev_kv

    if not gpu_build:
        dev_compute = 0.0
        host_compute = max(peaks["output"], peaks["layer"])
    elif k == 0:
        dev_compute = (
            max(peaks["output"] + layout.output_matrix_bytes, peaks["layer"] + split_copy)
            if s.op_offload
            else 0.0
        )
        host_compute = 2 * peaks["hidden"] if s.op_offload else max(peaks.values())
    else:
        copies = split_copy if (s.op_offload and host_layers) else 0
        layer_on_device = bool(gpu_layers) or s.op_offload
        dev_compute = max(peaks["output"], (peaks["layer"] + copies) if layer_on_device else 0)
        if s.op_offload or not host_layers:
            host_compute = 2 * peaks["hidden"]
        else:
            host_compute = peaks["layer"]

    buffers = (dev_weights + dev_kv + dev_compute) / MiB
    overhead_mb = (overhead or Overhead()).for_layers(layout, k, s) if gpu_build else 0.0
    return {
        "gpu_layers": k,
        "offloads_all": k == layout.all_layers,
        "repeating_layers_on_gpu": len(gpu_layers),
        "output_on_gpu": output_on_gpu,
        "meta_weights_mb": dev_weights / MiB,
        "meta_kv_mb": dev_kv / MiB,
        "meta_compute_mb": dev_compute / MiB,
        "meta_buffers_mb": buffers,
        "meta_overhead_mb": overhead_mb,
        "meta_total_mb": buffers + overhead_mb,  # NaN while the overhead was never measured
        "meta_host_weights_mb": host_weights / MiB,
        "meta_host_kv_mb": host_kv / MiB,
        "meta_host_compute_mb": host_compute / MiB,
        "meta_host_mb": (host_weights + host_kv + host_compute) / MiB,
    }


def predict_table(
    layout: Layout,
    settings: Settings | None = None,
    overhead: Overhead | None = None,
) -> pd.DataFrame:
    """One row per n_gpu_layers from 0 to all (n_layer + 1), for a CUDA build."""
    rows = [predict(layout, k, settings, overhead) for k in range(layout.all_layers + 1)]
    return pd.DataFrame(rows)


def fit_grid(
    layout: Layout,
    budget_mb: float,
    margin_mb: float,
    overhead: Overhead,
    n_ctxs: list[int],
    kv: list[tuple[str, str, bool]],
    n_ubatch: int = 512,
) -> pd.DataFrame:
    """Every n_ctx × KV cache type × n_gpu_layers: predicted device MiB and whether it fits
    `budget_mb` with `margin_mb` to spare. Where the overhead was never measured the total is
    NaN and `fits` is None (buffers alone are still given)."""
    rows = []
    for type_k, type_v, flash_attn in kv:
        if not kv_type_allowed(type_k, type_v, flash_attn):
            continue
        for n_ctx in n_ctxs:
            s = Settings(
                n_ctx=n_ctx,
                n_ubatch=min(n_ubatch, n_ctx),
                flash_attn=flash_attn,
                type_k=type_k,
                type_v=type_v,
            )
            for k in range(layout.all_layers + 1):
                p = predict(layout, k, s, overhead)
                total = p["meta_total_mb"]
                rows.append(
                    {
                        "n_ctx": n_ctx,
                        "type_k": type_k,
                        "type_v": type_v,
                        "flash_attn": flash_attn,
                        "gpu_layers": k,
                        "meta_kv_mb": p["meta_kv_mb"],
                        "meta_buffers_mb": p["meta_buffers_mb"],
                        "meta_overhead_mb": p["meta_overhead_mb"],
                        "meta_total_mb": total,
                        "budget_mb": budget_mb,
                        "margin_mb": margin_mb,
                        "fits": None if math.isnan(total) else bool(total + margin_mb <= budget_mb),
                    }
                )
    return pd.DataFrame(rows)


def largest_fit(grid: pd.DataFrame) -> pd.DataFrame:
    """Per n_ctx and KV cache type: the most layers that fit (-1 where not even 0 does) and
    its predicted MiB, beside what all layers would need."""
    rows = []
    for (type_k, type_v, fa, n_ctx), g in grid.groupby(
        ["type_k", "type_v", "flash_attn", "n_ctx"], sort=False
    ):
        g = g.sort_values("gpu_layers")
        fitting = g[g["fits"].fillna(False).astype(bool)]
        best = fitting.iloc[-1] if len(fitting) else None
        full = g.iloc[-1]
        rows.append(
            {
                "n_ctx": int(n_ctx),
                "type_k": type_k,
                "type_v": type_v,
                "flash_attn": bool(fa),
                "max_gpu_layers": int(best["gpu_layers"]) if best is not None else -1,
                "all_layers": int(full["gpu_layers"]),
                "max_fit_mb": float(best["meta_total_mb"]) if best is not None else math.nan,
                "all_layers_mb": float(full["meta_total_mb"]),
                "all_layers_buffers_mb": float(full["meta_buffers_mb"]),
                "kv_all_layers_mb": float(full["meta_kv_mb"]),
                "budget_mb": float(full["budget_mb"]),
                "margin_mb": float(full["margin_mb"]),
                "known": full["fits"] is not None,
            }
        )
    return pd.DataFrame(rows)
