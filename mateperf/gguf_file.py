"""A GGUF file's header, read directly: is it a complete GGUF file, and what does it hold.

Reading the header ourselves takes milliseconds and needs no llama.cpp, so a model file is
checked before every run, and the VRAM estimate (mateperf.gpu) reads a model's layout, without
loading anything.
"""

from __future__ import annotations

import os
import struct
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


class _HeaderReader:
    """Sequential reader of a GGUF header that raises on a short read (a cut file)."""

    def __init__(self, fh):
        self.fh = fh

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise ModelFileError(self.fh.name, "is truncated inside its header")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return self.take(self.unpack("<Q"))

    def value(self, vtype: int, keep: bool):
        if vtype in GGUF_SCALAR_FORMATS:
            return self.unpack(GGUF_SCALAR_FORMATS[vtype])
        if vtype == GGUF_STRING:
            raw = self.string()
            return raw.decode("utf-8", "replace") if keep else None
        if vtype == GGUF_ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in GGUF_SCALAR_FORMATS:  # skip fixed-size arrays in one seek
                size = struct.calcsize(GGUF_SCALAR_FORMATS[etype]) * count
                self.fh.seek(size, os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.value(etype, keep=False)
            return None
        raise ModelFileError(self.fh.name, f"has an unknown GGUF value type {vtype}")


def gguf_metadata(path: Path) -> dict:
    """Architecture, layers, context, quantisation and tensor bytes, read from the header only.

    Reading the header ourselves takes milliseconds; gguf.GGUFReader maps every tensor and
    takes seconds on a 250 MB file, too slow for a check before every run.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    kv: dict = {}
    tensors = []
    with path.open("rb") as fh:
        r = _HeaderReader(fh)
        r.take(8)  # magic and version, checked by validate_gguf
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        for _ in range(n_kv):
            key = r.string().decode("utf-8", "replace")
            vtype = r.unpack("<I")
            keep = key in _WANTED_KEYS or key.endswith(
                (".block_count", ".context_length", ".embedding_length")
            )
            value = r.value(vtype, keep)
            if keep:
                kv[key] = value
        for _ in range(n_tensors):
            r.string()  # name
            n_dims = r.unpack("<I")
            shape = [r.unpack("<Q") for _ in range(n_dims)]
            ggml_type, offset = r.unpack("<I"), r.unpack("<Q")
            tensors.append((shape, ggml_type, offset))
        header_end = fh.tell()
    alignment = int(kv.get("general.alignment", 32))
    data_start = (header_end + alignment - 1) // alignment * alignment
    tensor_bytes = 0
    data_end = data_start
    for shape, ggml_type, offset in tensors:
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise ModelFileError(path, f"has a tensor of unknown ggml type {ggml_type}") from None
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        n_bytes = n_elements // block * type_size
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
