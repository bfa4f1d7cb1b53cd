"""Generated GGUF models written with the `gguf` package: random weights, real format.

llama.cpp loads and runs them like any model, which makes them useful where the default model is
too large to ship or where known shapes are wanted: checking the VRAM estimate against
llama.cpp's own projection on differently shaped models, measuring a device's fixed overhead
with weights of a few MiB (mateperf.gpu.calibration), and, on a machine the 253 MB default
model cannot reach in one transfer, a model with the default model's architecture and shapes
(`GEMMA3_270M_SHAPES`, Q8_0 throughout). The text they generate is meaningless.

`write_shape_gguf` writes the header only (hyperparameters, vocabulary, every tensor's shape and
type) and extends the file to its full size without writing the data: a sparse file of a 7B
model's shapes and quantisation mix (`MISTRAL_7B_SHAPES`, Q5_K_M as llama.cpp's quantize lays it
out: Zephyr-7B of the original study) takes a few MiB of disk and a fraction of a second. It
cannot generate text (its weights read as zeros), but llama.cpp's no-allocation dry run and the
metadata estimate read only what it has: it is what the VRAM predictions of a 7B are checked on
without a 7B on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import TokenType


@dataclass(frozen=True)
class TinySpec:
    architecture: str = "llama"  # or "gemma3"
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 768
    n_vocab: int = 4096
    n_ctx_train: int = 4096
    head_dim: int = 0  # 0: n_embd / n_head
    sliding_window: int = 0  # gemma3 only
    tied_output: bool = False
    weight_type: str = "Q8_0"  # quantised like real GGUFs, so CUDA takes the same kernels
    seed: int = 7
    mix: str = ""  # write_shape_gguf only: "Q5_K_M" lays types out as llama.cpp's quantize does
    rope_freq_base: float = 0.0  # 0: the architecture's usual


# The default model's architecture and shapes (Gemma 3 270M), every matrix in Q8_0.
GEMMA3_270M_SHAPES = TinySpec(
    architecture="gemma3",
    n_layer=18,
    n_embd=640,
    n_head=4,
    n_head_kv=1,
    head_dim=256,
    n_ff=2048,
    n_vocab=262144,
    n_ctx_train=32768,
    sliding_window=512,
    tied_output=True,
)


# Mistral-7B / Zephyr-7B: 32 layers, 4096 wide, 32 query and 8 KV heads of 128, FFN 14336,
# a 32000-token vocabulary, untied output; Q5_K_M as in the original study.
MISTRAL_7B_SHAPES = TinySpec(
    architecture="llama",
    n_layer=32,
    n_embd=4096,
    n_head=32,
    n_head_kv=8,
    n_ff=14336,
    n_vocab=32000,
    n_ctx_train=32768,
    weight_type="Q5_K",
    mix="Q5_K_M",
    rope_freq_base=10000.0,
)


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's quantize: the layers a _M mix gives more bits (first and last eighth, and
    every third in between)."""
    return (
        i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2
    )


def tensor_type(spec: TinySpec, name: str) -> str:
    """The type a tensor gets: weight_type throughout, or as llama.cpp's quantize lays out a
    Q5_K_M / Q4_K_M mix (output Q6_K; attn_v and ffn_down Q6_K in the layers that get more
    bits; the rest the base type)."""
    if not spec.mix:
        return spec.weight_type
    if spec.mix not in ("Q5_K_M", "Q4_K_M"):
        raise ValueError(f"mix {spec.mix!r}: Q5_K_M or Q4_K_M")
    base = "Q5_K" if spec.mix == "Q5_K_M" else "Q4_K"
    if name == "output.weight":
        return "Q6_K"
    if name.startswith("blk.") and name.endswith(("attn_v.weight", "ffn_down.weight")):
        if _use_more_bits(int(name.split(".")[1]), spec.n_layer):
            return "Q6_K"
    return base


def _tokens(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary: unk, bos, eos, the 256 byte tokens, then words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(tokens) < n_vocab:
        word, j = "", i
        while True:
            word = letters[j % 26] + word
            j = j // 26 - 1
            if j < 0:
                break
        tokens.append("\u2581" + word)
        types.append(TokenType.NORMAL)
        i += 1
    scores = [0.0, 0.0, 0.0] + [-1000.0] * 256 + [-float(k) for k in range(len(tokens) - 259)]
    return tokens[:n_vocab], scores[:n_vocab], [int(t) for t in types[:n_vocab]]


def _tensors(spec: TinySpec) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) of every tensor, in file order: matrices (rows, cols), norms (n,)."""
    head_dim = spec.head_dim or spec.n_embd // spec.n_head
    n_embd_q, n_embd_kv = head_dim * spec.n_head, head_dim * spec.n_head_kv
    out: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (spec.n_vocab, spec.n_embd)),
        ("output_norm.weight", (spec.n_embd,)),
    ]
    if not spec.tied_output:
        out.append(("output.weight", (spec.n_vocab, spec.n_embd)))
    for i in range(spec.n_layer):
        out += [
            (f"blk.{i}.attn_norm.weight", (spec.n_embd,)),
            (f"blk.{i}.attn_q.weight", (n_embd_q, spec.n_embd)),
            (f"blk.{i}.attn_k.weight", (n_embd_kv, spec.n_embd)),
            (f"blk.{i}.attn_v.weight", (n_embd_kv, spec.n_embd)),
            (f"blk.{i}.attn_output.weight", (spec.n_embd, n_embd_q)),
            (f"blk.{i}.ffn_norm.weight", (spec.n_embd,)),
            (f"blk.{i}.ffn_gate.weight", (spec.n_ff, spec.n_embd)),
            (f"blk.{i}.ffn_up.weight", (spec.n_ff, spec.n_embd)),
            (f"blk.{i}.ffn_down.weight", (spec.n_embd, spec.n_ff)),
        ]
        if spec.architecture == "gemma3":
            out += [
                (f"blk.{i}.attn_q_norm.weight", (head_dim,)),
                (f"blk.{i}.attn_k_norm.weight", (head_dim,)),
                (f"blk.{i}.post_attention_norm.weight", (spec.n_embd,)),
                (f"blk.{i}.post_ffw_norm.weight", (spec.n_embd,)),
            ]
    return out


def _check(spec: TinySpec) -> None:
    if spec.n_vocab < 300:
        raise ValueError("n_vocab must be at least 300 (3 specials + 256 byte tokens + words)")
    if spec.architecture not in ("llama", "gemma3"):
        raise ValueError(f"architecture {spec.architecture!r}: llama or gemma3")
    if spec.n_head % spec.n_head_kv or (not spec.head_dim and spec.n_embd % spec.n_head):
        raise ValueError("n_head must divide by n_head_kv (and n_embd by n_head)")


def _writer(tmp: Path, spec: TinySpec):
    """A GGUFWriter with the model's hyperparameters and vocabulary added."""
    head_dim = spec.head_dim or spec.n_embd // spec.n_head
    gemma = spec.architecture == "gemma3"
    writer = gguf.GGUFWriter(str(tmp), spec.architecture)
    writer.add_name(f"mateperf generated {spec.architecture}")
    writer.add_block_count(spec.n_layer)
    writer.add_context_length(spec.n_ctx_train)
    writer.add_embedding_length(spec.n_embd)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-6 if gemma else 1e-5)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if gemma:
        writer.add_rope_freq_base(spec.rope_freq_base or 1e6)
        writer.add_sliding_window(spec.sliding_window or 512)
    else:
        writer.add_rope_dimension_count(head_dim)
        if spec.rope_freq_base:
            writer.add_rope_freq_base(spec.rope_freq_base)
    qtype = gguf.GGMLQuantizationType[spec.weight_type]
    file_types = {
        "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "Q5_K_M": gguf.LlamaFileType.MOSTLY_Q5_K_M,
        "Q4_K_M": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    }
    writer.add_file_type(file_types.get(spec.mix or qtype.name, 0))
    tokens, scores, types = _tokens(spec.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    return writer


def write_tiny_gguf(path: str | os.PathLike, spec: TinySpec | None = None) -> Path:
    """Write the model to `path` (atomically) and return the path."""
    spec = spec or TinySpec()
    _check(spec)
    if spec.mix:
        raise ValueError("a quantisation mix is for write_shape_gguf (no weights written)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    qtype = gguf.GGMLQuantizationType[spec.weight_type]
    rng = np.random.default_rng(spec.seed)
    writer = _writer(tmp, spec)
    for name, shape in _tensors(spec):
        if len(shape) == 1:
            writer.add_tensor(name, np.ones(shape[0], dtype=np.float32))
            continue
        # numpy (rows, cols) is GGUF ne = [cols, rows]: cols is the input dimension
        data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, data.astype(np.float16 if qtype.name == "F16" else np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


def write_shape_gguf(path: str | os.PathLike, spec: TinySpec, extend: bool = True) -> Path:
    """The model's header (hyperparameters, vocabulary, tensor shapes and types) and no tensor
    data: the file is extended to its full size as a sparse file, so llama.cpp's bounds checks
    pass and a dry run or the metadata estimate sees the real model's sizes. Atomic.

    extend=False leaves the header alone (a few MiB): enough for the metadata estimate, which
    reads only the header, and safe where a filesystem would allocate the extension (NTFS
    without the sparse flag); llama.cpp refuses such a file."""
    _check(spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = _writer(tmp, spec)
    data_bytes = 0
    for name, shape in _tensors(spec):
        qtype = gguf.GGMLQuantizationType["F32" if len(shape) == 1 else tensor_type(spec, name)]
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_bytes = int(np.prod(shape)) // block * type_size
        writer.add_tensor_info(name, shape, np.dtype(np.float32), n_bytes, raw_dtype=qtype)
        data_bytes += -(-n_bytes // writer.data_alignment) * writer.data_alignment
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    if extend:
        with tmp.open("r+b") as fh:
            fh.seek(0, os.SEEK_END)
            start = -(-fh.tell() // writer.data_alignment) * writer.data_alignment
            fh.truncate(start + data_bytes)
    os.replace(tmp, path)
    return path
