"""Memory sampler: this process's RSS, USS, heap and NVIDIA VRAM over time, from a background
thread, with garbage collections on the same clock.

An instrument only: it knows nothing about scenarios. Wrap it around any work::

    with MemorySampler(interval_ms=20).track() as sampler:
        sampler.mark("model loaded")
        ...
    df = sampler.frame()          # one row per sample, per marker and per collection

What it reads, and why those sources: the RSS, USS and file-mapping readers are in
mateperf.trackers.process_memory, the heap in use and the collection recorder in
mateperf.trackers.heap; VRAM comes through the one NVML reader (mateperf.trackers.gpu): device-
wide used memory and, where the driver reports it, this process's own. Without NVML the sampler
still runs and says why in `gpu_status` ("no GPU: ..."). The thread, its schedule and the rows
are the sampler base's (mateperf.trackers.sampler).

Units: columns ending in `_mb` are MiB (2**20 bytes), as psutil and nvidia-smi count.
"""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd

from mateperf.trackers import heap
from mateperf.trackers.gpu import NvmlDevice
from mateperf.trackers.heap import GcRecorder, read_heap
from mateperf.trackers.process_memory import read_rss, read_uss, rss_status
from mateperf.trackers.sampler import Sampler

SAMPLE_COLUMNS = [
    "record",
    "label",
    "t_s",
    "rss_mb",
    "rss_anon_mb",
    "rss_file_mb",
    "uss_mb",
    "heap_used_mb",
    "heap_free_mb",
    "vram_device_used_mb",
    "vram_process_mb",
]


class GpuReader:
    """Device-used MB and this process's MB, read through the one NVML reader
    (`mateperf.trackers.gpu.NvmlDevice`). `status` says why when there is none."""

    def __init__(self, enabled: bool = True, device_index: int = 0):
        self.device = NvmlDevice(device_index, prefix="no GPU") if enabled else None
        self.available = self.device is not None and self.device.available
        self.status = (
            self.device.status if self.device else "no GPU: VRAM sampling disabled by the caller"
        )

    def read(self) -> tuple[float, float]:
        """(device_used_mb, process_mb); NaN where unknown (no GPU, or the driver hides it)."""
        nan = float("nan")
        if not self.available:
            return nan, nan
        used = self.device.memory_mb()[0]
        return (nan, nan) if used != used else (used, self.device.process_mb())


_NUMERIC = SAMPLE_COLUMNS[2:]  # t_s .. vram_process_mb


class MemorySampler(Sampler):
    """Background sampling of this process's memory; markers for events; a DataFrame out.

    interval_ms: RSS/VRAM period (default 20 ms). uss_interval_ms: period of the costly reads,
    USS and heap in use (default 0 = only at markers). Measured on 2 cores with llama.cpp on
    both: background USS every 200 ms cost 4.5% of generation tokens/s, every 1 s 1.5%, none
    (markers only) no detectable difference; RSS every 20 ms is cheap.
    `start()` after `stop()` resumes sampling into the same record with the same time origin,
    so a stopped interval is a gap (mateperf.trackers.sampler). gc_events (default on):
    garbage collections are recorded while the sampler runs (GcRecorder), on the same clock;
    `collect()` forces a full one.

    The samples go into preallocated numpy blocks that are written through once when allocated:
    storing them in Python objects, or in pages first touched as they fill, would make the
    instrument's own memory grow steadily (about 10-30 KB per second at 20 ms) and show up as a
    slope in exactly the figure a leak test reads. A block holds `block_samples` samples (22
    minutes at 20 ms); a new one is a single step, not a slope.
    """

    thread_name = "memory-sampler"

    def __init__(
        self,
        interval_ms: float = 20.0,
        uss_interval_ms: float = 0.0,
        gpu: bool = True,
        gpu_index: int = 0,
        block_samples: int = 65536,
        gc_events: bool = True,
    ):
        super().__init__(interval_ms, _NUMERIC, block_samples)
        if uss_interval_ms < 0:
            raise ValueError(f"uss_interval_ms={uss_interval_ms} must be 0 (off) or positive")
        self.uss_interval_ms = float(uss_interval_ms)
        self.gpu = GpuReader(enabled=gpu, device_index=gpu_index)
        self._markers: list[dict] = []
        self._next_uss_ns = 0
        self.gc = GcRecorder(self.now_s) if gc_events else None
        self._rss_status = rss_status()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def gpu_status(self) -> str:
        return self.gpu.status

    def on_start(self) -> None:
        self._next_uss_ns = 0  # the first tick after a start reads USS too
        if self.gc is not None:
            self.gc.start()

    def on_stop(self) -> None:
        if self.gc is not None:
            self.gc.stop()

    @property
    def heap_status(self) -> str:
        return heap.HEAP_STATUS

    @property
    def rss_status(self) -> str:
        return self._rss_status

    # -- reading -----------------------------------------------------------------------------
    def collect(self) -> int:
        """A forced full collection, recorded as such when gc events are on; returns its count."""
        if self.gc is None:
            return gc.collect()
        return self.gc.collect()

    def _read(self, with_uss: bool) -> tuple[float, ...]:
        t_s = self.now_s()
        rss, anon, file_backed = read_rss()
        nan = float("nan")
        uss = read_uss() if with_uss else nan
        # mallinfo2 takes the allocator's locks: read it on the slow (USS) schedule only.
        heap_used, heap_free = read_heap() if with_uss else (nan, nan)
        used, process = self.gpu.read()
        return (t_s, rss, anon, file_backed, uss, heap_used, heap_free, used, process)

    def tick(self, now_ns: int) -> None:
        uss_ns = int(self.uss_interval_ms * 1e6)
        with_uss = uss_ns > 0 and now_ns >= self._next_uss_ns
        self.record(self._read(with_uss))
        if with_uss:
            self._next_uss_ns = now_ns + uss_ns

    def _read_atomic(self) -> tuple[float, ...]:
        # A collection triggered by an allocation inside the read would free heap between the
        # reading's timestamp and its heap figure, and the reading could not be placed before or
        # after that collection. Deferring collections for the read (about a millisecond) keeps
        # every full reading on one side of every collection.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._read(True)
        finally:
            if enabled:
                gc.enable()

    def mark(self, label: str, **extra) -> dict:
        """Record an event with a full reading (RSS, USS, VRAM) taken now; returns that reading.

        `extra` values (message number, token counts, ...) become columns of the marker's row.
        """
        row = {
            "record": "marker",
            "label": label,
            **dict(zip(_NUMERIC, self._read_atomic(), strict=True)),
        }
        row.update(extra)
        with self._lock:
            self._markers.append(row)
        return dict(row)

    def sample_now(self) -> dict:
        """One full reading (RSS, USS, VRAM), not recorded."""
        return {
            "record": "sample",
            "label": "",
            **dict(zip(_NUMERIC, self._read_atomic(), strict=True)),
        }

    def samples(self) -> pd.DataFrame:
        """The background samples, oldest first (uss_mb is NaN where USS was not read)."""
        df = self.rows_frame()
        df.insert(0, "label", "")
        df.insert(0, "record", "sample")
        df["gpu_status"] = self.gpu_status
        return df

    def markers(self) -> pd.DataFrame:
        with self._lock:
            rows = list(self._markers)
        df = pd.DataFrame(rows, columns=None if rows else SAMPLE_COLUMNS)
        df["gpu_status"] = self.gpu_status
        return df

    def gc_events(self) -> pd.DataFrame:
        """The collections as rows of the frame: record "gc", heap_used_mb = heap after."""
        if self.gc is None:
            return pd.DataFrame(columns=["record", "label", "t_s"])
        df = self.gc.events()
        forced = np.where(df["gc_forced"], " (forced)", "")
        labels = [f"gc gen {g}{f}" for g, f in zip(df["gc_generation"], forced, strict=True)]
        df = df.rename(columns={"heap_after_mb": "heap_used_mb"}).drop(columns="heap_before_mb")
        df.insert(0, "label", labels)
        df.insert(0, "record", "gc")
        df["gpu_status"] = self.gpu_status
        return df

    def frame(self) -> pd.DataFrame:
        """Samples, markers and collections in time order: `record` is "sample", "marker" or
        "gc" (one row per garbage collection; see GcRecorder)."""
        parts = [self.samples(), self.markers()]
        events = self.gc_events()
        if len(events):
            parts.append(events)
        df = pd.concat(parts, ignore_index=True, sort=False)
        df["heap_status"] = self.heap_status
        df["rss_status"] = self.rss_status
        return df.sort_values("t_s", kind="stable").reset_index(drop=True)
