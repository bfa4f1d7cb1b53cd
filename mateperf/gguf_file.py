"""A GGUF file's header, read directly: is it a complete GGUF file, and what does it hold.

Reading the header ourselves takes milliseconds and needs no llama.cpp, so a model file is
checked before every run, and the VRAM estimate (mateperf.gpu) reads a model's layout, without
loading anything.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from pathlib import Path

from mateperf.errors import ModelFileError

GGUF_MAGIC = b"GGUF"


def validate_gguf(path: Path) -> dict:
    """Check that path is a complete GGUF file; returns its metadata. Raises ModelFileError."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "does not exist")
    if path.is_dir():
        raise ModelFileError(path, "is a directory, not a GGUF file")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(path, "is empty (0 bytes)")
    with path.open("rb") as fh:
        head = fh.read(24)
    if head[:4] != GGUF_MAGIC:
        raise ModelFileError(path, f"is not a GGUF file (starts with {head[:4]!r}, not b'GGUF')")
    if len(head) < 24:
        raise ModelFileError(path, f"is truncated ({size} bytes, shorter than a GGUF header)")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (2, 3):
        raise ModelFileError(path, f"has unsupported GGUF version {version}")
    try:
        meta = gguf_metadata(path)
    except ModelFileError:
        raise
    except Exception as exc:  # the reader's errors on a cut header are of many types
        raise ModelFileError(path, f"is corrupt or truncated (header unreadable: {exc})") from None
    if meta["data_end_bytes"] > size:
        raise ModelFileError(
            path,
            f"is truncated: {size} bytes, but its tensors need {meta['data_end_bytes']} bytes",
        )
    return meta


GGUF_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
GGUF_STRING, GGUF_ARRAY = 8, 9
_WANTED_KEYS = ("general.architecture", "general.name", "general.file_type", "general.alignment")


class HeaderReader:
    """Sequential reader of a GGUF header that raises on a short read (a cut file); keeps the
    scalars, strings and integer arrays asked for and skips the rest."""

    def __init__(self, fh, path):
        self.fh, self.path = fh, path

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise ModelFileError(self.path, "is truncated inside its header")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", "replace")

    def value(self, vtype: int, keep: bool):
        if vtype in GGUF_SCALAR_FORMATS:
            return self.unpack(GGUF_SCALAR_FORMATS[vtype])
        if vtype == GGUF_STRING:
            text = self.string()
            return text if keep else None
        if vtype == GGUF_ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in GGUF_SCALAR_FORMATS:  # fixed-size arrays: read whole or skipped in one seek
                fmt = GGUF_SCALAR_FORMATS[etype]
                size = struct.calcsize(fmt)
                if keep:
                    raw = self.take(size * count)
                    return list(struct.unpack(f"<{count}{fmt[1]}", raw))
                self.fh.seek(size * count, os.SEEK_CUR)
                return None
            for _ in range(count):
                self.value(etype, keep=False)
            return None
        raise ModelFileError(self.path, f"has an unknown GGUF value type {vtype}")


def read_header(path: Path, keep: Callable[[str], bool]) -> tuple[dict, list[tuple], int]:
    """(the key/values `keep` accepts, each tensor's (name, shape, ggml type, offset), the
    header's end in bytes), read from the header only."""
    kv: dict = {}
    tensors = []
    with path.open("rb") as fh:
        r = HeaderReader(fh, path)
        if r.take(4) != GGUF_MAGIC:
            raise ModelFileError(path, "is not a GGUF file")
        r.take(4)  # the version, checked by validate_gguf
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        for _ in range(n_kv):
            key = r.string()
            vtype = r.unpack("<I")
            value = r.value(vtype, keep(key))
            if keep(key):
                kv[key] = value
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            shape = [r.unpack("<Q") for _ in range(n_dims)]
            ggml_type, offset = r.unpack("<I"), r.unpack("<Q")
            tensors.append((name, shape, ggml_type, offset))
        header_end = fh.tell()
    return kv, tensors, header_end


def tensor_size(path: Path, shape: list[int], ggml_type: int) -> tuple[str, int]:
    """(the ggml type's name, the tensor's bytes) by the `gguf` package's type table."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(ggml_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ModelFileError(path, f"has a tensor of unknown ggml type {ggml_type}") from None
    return qtype.name, math.prod(shape) // block * type_size


def _metadata_key(key: str) -> bool:
    return key in _WANTED_KEYS or key.endswith(
        (".block_count", ".context_length", ".embedding_length")
    )


def gguf_metadata(path: Path) -> dict:
    """Architecture, layers, context, quantisation and tensor bytes, read from the header only.

    Reading the header ourselves takes milliseconds; gguf.GGUFReader maps every tensor and
    takes seconds on a 250 MB file, too slow for a check before every run.
    """
    path = Path(path)
    kv, tensors, header_end = read_header(path, _metadata_key)
    alignment = int(kv.get("general.alignment", 32))
    data_start = (header_end + alignment - 1) // alignment * alignment
    tensor_bytes = 0
    data_end = data_start
    for _name, shape, ggml_type, offset in tensors:
        n_bytes = tensor_size(path, shape, ggml_type)[1]
        tensor_bytes += n_bytes
        data_end = max(data_end, data_start + offset + n_bytes)
    arch = kv.get("general.architecture", "unknown")
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "architecture": arch,
        "name": kv.get("general.name", path.stem),
        "n_layers": int(kv.get(f"{arch}.block_count", 0)),
        "n_ctx_train": int(kv.get(f"{arch}.context_length", 0)),
        "n_embd": int(kv.get(f"{arch}.embedding_length", 0)),
        "file_type": int(kv.get("general.file_type", -1)),
        "n_tensors": len(tensors),
        "tensor_bytes": tensor_bytes,
        "data_end_bytes": data_end,
    }
