"""Generated GGUF models written with the `gguf` package: random weights, real format.

llama.cpp loads and runs them like any model, which makes them useful where the default model is
too large to ship or where known shapes are wanted: checking the VRAM estimate against
llama.cpp's own projection on differently shaped models, measuring a device's fixed overhead
with weights of a few MiB (mateperf.gpu.calibration), and, on a machine the 253 MB default
model cannot reach in one transfer, a model with the default model's architecture and shapes
(`GEMMA3_270M_SHAPES`, Q8_0 throughout). The text they generate is meaningless.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


def _tokens(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary: unk, bos, eos, the 256 byte tokens, then words."""
    from gguf import TokenType

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


def write_tiny_gguf(path: str | os.PathLike, spec: TinySpec | None = None) -> Path:
    """Write the model to `path` (atomically) and return the path."""
    import gguf

    spec = spec or TinySpec()
    if spec.n_vocab < 300:
        raise ValueError("n_vocab must be at least 300 (3 specials + 256 byte tokens + words)")
    if spec.architecture not in ("llama", "gemma3"):
        raise ValueError(f"architecture {spec.architecture!r}: llama or gemma3")
    if spec.n_head % spec.n_head_kv or (not spec.head_dim and spec.n_embd % spec.n_head):
        raise ValueError("n_head must divide by n_head_kv (and n_embd by n_head)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    qtype = gguf.GGMLQuantizationType[spec.weight_type]
    rng = np.random.default_rng(spec.seed)
    head_dim = spec.head_dim or spec.n_embd // spec.n_head
    n_embd_q, n_embd_kv = head_dim * spec.n_head, head_dim * spec.n_head_kv
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
        writer.add_rope_freq_base(1e6)
        writer.add_sliding_window(spec.sliding_window or 512)
    else:
        writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == gguf.GGMLQuantizationType.Q8_0 else 0
    )
    tokens, scores, types = _tokens(spec.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def matrix(name: str, rows: int, cols: int) -> None:
        # numpy (rows, cols) is GGUF ne = [cols, rows]: cols is the input dimension
        data = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, data.astype(np.float16 if qtype.name == "F16" else np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    def norm(name: str, size: int = spec.n_embd) -> None:
        writer.add_tensor(name, np.ones(size, dtype=np.float32))

    matrix("token_embd.weight", spec.n_vocab, spec.n_embd)
    norm("output_norm.weight")
    if not spec.tied_output:
        matrix("output.weight", spec.n_vocab, spec.n_embd)
    for i in range(spec.n_layer):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", n_embd_q, spec.n_embd)
        matrix(f"blk.{i}.attn_k.weight", n_embd_kv, spec.n_embd)
        matrix(f"blk.{i}.attn_v.weight", n_embd_kv, spec.n_embd)
        matrix(f"blk.{i}.attn_output.weight", spec.n_embd, n_embd_q)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", spec.n_ff, spec.n_embd)
        matrix(f"blk.{i}.ffn_up.weight", spec.n_ff, spec.n_embd)
        matrix(f"blk.{i}.ffn_down.weight", spec.n_embd, spec.n_ff)
        if gemma:
            norm(f"blk.{i}.attn_q_norm.weight", head_dim)
            norm(f"blk.{i}.attn_k_norm.weight", head_dim)
            norm(f"blk.{i}.post_attention_norm.weight")
            norm(f"blk.{i}.post_ffw_norm.weight")

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path
