"""The device overhead: VRAM a CUDA process uses beyond llama.cpp's buffers, measured and stored.

The CUDA context, cuBLAS's handle and workspace and the CUDA backend's memory pools do not
depend on the model much, and nothing in a GGUF file predicts them: on an H100 they are most of
the ~1.2 GiB the default model uses at 0 offloaded layers. So they are measured once per device
(and driver and llama-cpp-python version) with a tiny generated GGUF whose own buffers are a
few MiB: NVML device-used memory after a load and a decode, in a fresh child process, minus
the parent's reading before the child started, minus the tiny model's predicted buffers. Two
placements (no layers; all layers with the KV cache on the device), each with flash attention
off and on, give the four figures estimate.Overhead distinguishes (on an H200 flash attention
needed 83-96 MiB less at every placement, while the buffers did not move). The result is stored
in ~/.cache/mateperf/gpu/overhead.json (keyed by device) and recorded in every run that uses
it; an entry stored before the flash-attention figures existed is measured again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import tempfile
from pathlib import Path

from mateperf import llama_features
from mateperf.gpu import estimate
from mateperf.gpu.tinygguf import TinySpec, write_tiny_gguf
from mateperf.gpu.trial import run_trial, work_spec
from mateperf.model import cache_dir
from mateperf.results import atomic_write_json

CALIBRATION_SETTINGS = estimate.Settings(n_ctx=512, n_ubatch=512)


def store_path() -> Path:
    return cache_dir().parent / "gpu" / "overhead.json"


def device_key(device: dict) -> str:
    return (
        f"{device.get('name')} {device.get('uuid')}; driver {device.get('driver_version')}; "
        f"llama-cpp-python {llama_features.installed_version()}"
    )


def load_stored(key: str) -> estimate.Overhead | None:
    try:
        entry = json.loads(store_path().read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None
    if not entry or "attention_fa_mb" not in entry:  # older entries lack flash attention
        return None
    return estimate.Overhead(
        entry["none_mb"],
        entry["attention_mb"],
        entry["source"],
        entry["none_fa_mb"],
        entry["attention_fa_mb"],
    )


def save(key: str, overhead: estimate.Overhead) -> None:
    path = store_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data[key] = {
        "none_mb": overhead.none_mb,
        "attention_mb": overhead.attention_mb,
        "none_fa_mb": overhead.none_fa_mb,
        "attention_fa_mb": overhead.attention_fa_mb,
        "source": overhead.source,
    }
    atomic_write_json(path, data)


def measure(monitor, timeout_s: float = 300.0) -> estimate.Overhead:
    """Measure the four figures on the monitor's device (needs a GPU and a CUDA build)."""
    device = monitor.device()
    with tempfile.TemporaryDirectory(prefix="mateperf-calibration-") as tmp:
        path = write_tiny_gguf(Path(tmp) / "calibration.gguf", TinySpec())
        layout = estimate.read_layout(path)
        figures = {}
        for label, k, fa in (
            ("none", 0, False),
            ("attention", layout.all_layers, False),
            ("none_fa", 0, True),
            ("attention_fa", layout.all_layers, True),
        ):
            s = dataclasses.replace(CALIBRATION_SETTINGS, flash_attn=fa)
            before = monitor.read()["vram_used_mb"]
            config = {
                "model_path": str(path),
                "n_ctx": s.n_ctx,
                "n_batch": s.n_ubatch,
                "n_gpu_layers": -1 if k == layout.all_layers else k,
                "n_threads": 1,
                "flash_attn": fa,
            }
            result = run_trial(config, work_spec(0, 256, 16), isolate=True, timeout_s=timeout_s)
            if not result["ok"]:
                raise RuntimeError(f"calibration load failed ({label}): {result['error']}")
            buffers = estimate.predict(layout, k, s)["meta_buffers_mb"]
            figures[label] = result["vram_after_mb"] - before - buffers
            if not math.isfinite(figures[label]):
                raise RuntimeError(f"calibration ({label}): NVML gave no reading")
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    source = (
        f"measured {when} on {device.get('name')} (driver {device.get('driver_version')}) with a "
        "tiny generated GGUF: NVML device-used after load and decode in a fresh process, minus "
        "the reading before it, minus the tiny model's predicted buffers"
    )
    return estimate.Overhead(
        figures["none"], figures["attention"], source, figures["none_fa"], figures["attention_fa"]
    )


def overhead_for(monitor, gpu_offload: bool, remeasure: bool = False) -> estimate.Overhead:
    """The stored figures for the monitor's device, measured first if there are none."""
    if not monitor.available:
        return estimate.Overhead(source=f"not measured: {monitor.status}")
    if not gpu_offload:
        return estimate.Overhead(
            source="not measured: this llama-cpp-python build has no GPU offload (CPU only)"
        )
    key = device_key(monitor.device())
    stored = None if remeasure else load_stored(key)
    if stored is not None:
        return stored
    try:
        overhead = measure(monitor)
    except RuntimeError as exc:
        return estimate.Overhead(source=f"not measured: {exc}")
    save(key, overhead)
    return overhead
