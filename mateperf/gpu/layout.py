"""What a GGUF file's header says about sizes: hyperparameters and tensor bytes by placement.

Read straight from the header (milliseconds, no tensor data): the groups llama.cpp places
separately (each repeating layer, the input embedding, the output layer and its matrix, the
rest), for `mateperf.gpu.estimate` to predict from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mateperf.errors import ModelFileError
from mateperf.gguf_file import read_header, tensor_size

_INPUT_PREFIXES = ("token_embd", "pos_embd", "token_types", "token_embd_norm")
_OUTPUT_PREFIXES = ("output.", "output_norm.", "cls.", "cls_out.")


@dataclass(frozen=True)
class Layout:
    """What the GGUF says about sizes: hyperparameters and tensor bytes by placement group."""

    path: str
    name: str
    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: tuple[int, ...]
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ctx_train: int
    layer_bytes: tuple[int, ...]
    input_bytes: int
    output_bytes: int  # tensors of the output layer that the file has (norm, output.weight)
    output_matrix_bytes: int  # output.weight, or token_embd.weight when tied
    tied_output: bool
    other_bytes: int
    tensor_bytes: int
    types: dict = field(default_factory=dict, compare=False)  # tensor type name -> count

    @property
    def all_layers(self) -> int:
        """The n_gpu_layers value that offloads everything (repeating layers + output)."""
        return self.n_layer + 1

    def resolve_layers(self, n_gpu_layers: int) -> int:
        """-1 or anything above the model's layers means all of them."""
        if n_gpu_layers < 0 or n_gpu_layers > self.all_layers:
            return self.all_layers
        return n_gpu_layers


def _wanted(key: str) -> bool:
    return key.startswith("general.") or not key.startswith("tokenizer.")


def read_layout(path: str | Path) -> Layout:
    """Hyperparameters and tensor bytes from the header (milliseconds; no tensor data read).

    `gguf.GGUFReader` would do, but it maps every tokenizer string and takes ~20 s on the
    default model; the `gguf` package's type table gives the bytes of every tensor.
    """
    path = Path(path)
    kv, tensors, _ = read_header(path, _wanted)

    arch = kv.get("general.architecture", "")

    def hp(key: str, default=None):
        return kv.get(f"{arch}.{key}", default)

    n_layer = int(hp("block_count", 0))
    if n_layer <= 0:
        raise ModelFileError(path, f"has no {arch}.block_count: not a layered language model")
    n_embd = int(hp("embedding_length", 0))
    n_head = _largest(hp("attention.head_count", 1))
    n_ff = _largest(hp("feed_forward_length", 4 * n_embd))
    kv_heads = hp("attention.head_count_kv", n_head)
    if isinstance(kv_heads, list):
        n_head_kv = tuple(int(v) for v in kv_heads[:n_layer])
    else:
        n_head_kv = (int(kv_heads),) * n_layer
    head_dim_k = int(hp("attention.key_length", n_embd // max(1, n_head)))
    head_dim_v = int(hp("attention.value_length", head_dim_k))

    layer_bytes = [0] * n_layer
    input_bytes = output_bytes = other_bytes = 0
    embd_bytes = out_matrix = 0
    n_vocab = int(hp("vocab_size", 0))
    types: dict[str, int] = {}
    for name, shape, ggml_type, _offset in tensors:
        type_name, n_bytes = tensor_size(path, shape, ggml_type)
        types[type_name] = types.get(type_name, 0) + 1
        if name.startswith("blk."):
            index = int(name.split(".")[1])
            if index < n_layer:
                layer_bytes[index] += n_bytes
            else:  # e.g. next-token-prediction layers llama.cpp does not load by default
                other_bytes += n_bytes
        elif name.startswith(_INPUT_PREFIXES):
            input_bytes += n_bytes
            if name == "token_embd.weight":
                embd_bytes = n_bytes
                n_vocab = n_vocab or int(shape[-1])
        elif name.startswith(_OUTPUT_PREFIXES):
            output_bytes += n_bytes
            if name == "output.weight":
                out_matrix = n_bytes
                n_vocab = n_vocab or int(shape[-1])
        else:
            other_bytes += n_bytes
    tied = out_matrix == 0
    return Layout(
        path=str(path),
        name=str(kv.get("general.name", path.stem)),
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        n_vocab=n_vocab,
        n_ctx_train=int(hp("context_length", 0)),
        layer_bytes=tuple(layer_bytes),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        output_matrix_bytes=embd_bytes if tied else out_matrix,
        tied_output=tied,
        other_bytes=other_bytes,
        tensor_bytes=input_bytes + output_bytes + other_bytes + sum(layer_bytes),
        types=types,
    )


def _largest(value) -> int:
    """A per-layer array (some architectures vary heads or FFN width by layer) or a scalar."""
    if isinstance(value, list):
        return int(max(value)) if value else 0
    return int(value)
