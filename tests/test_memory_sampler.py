"""The memory sampler on its own: timing, markers, stop/restart, no-GPU behaviour, file maps."""

from __future__ import annotations

import gc
import mmap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mateperf.trackers.heap import HEAP_STATUS, heap_available, malloc_trim
from mateperf.trackers.memory import GpuReader, MemorySampler
from mateperf.trackers.process_memory import mapped_file_rss_mb, read_rss, read_uss


def test_samples_at_the_interval_with_uss_less_often():
    with MemorySampler(interval_ms=20, uss_interval_ms=100) as sampler:
        time.sleep(0.6)
    df = sampler.samples()
    assert 15 <= len(df) <= 40, len(df)
    assert (df["t_s"].diff().dropna() > 0).all()
    assert df["rss_mb"].gt(0).all()
    assert np.allclose(df["rss_mb"], df["rss_anon_mb"] + df["rss_file_mb"])
    uss = df["uss_mb"].notna().sum()
    assert 2 <= uss < len(df)
    assert df["uss_mb"].dropna().gt(0).all()


def test_stop_and_restart_resume_the_same_record():
    sampler = MemorySampler(interval_ms=10)
    sampler.start()
    sampler.start()  # a second start while running is a no-op, not a second thread
    time.sleep(0.2)
    sampler.stop()
    assert not sampler.running
    n_first = sampler.n_samples
    assert n_first > 5
    time.sleep(0.2)
    assert sampler.n_samples == n_first  # nothing sampled while stopped
    t_stopped = sampler.samples()["t_s"].max()
    with sampler:  # restart through the context manager
        time.sleep(0.2)
    assert sampler.starts == 2
    df = sampler.samples()
    assert len(df) > n_first + 5
    after = df["t_s"].iloc[n_first:]
    assert after.min() > t_stopped + 0.15  # same time origin: the stop shows as a gap
    assert (df["t_s"].diff().dropna() > 0).all()
    sampler.stop()
    sampler.stop()  # stopping twice is harmless


def test_markers_carry_a_full_reading_and_extra_columns():
    with MemorySampler(interval_ms=20, uss_interval_ms=0) as sampler:
        time.sleep(0.05)
        reading = sampler.mark("message 1", message=1, tokens=7)
        time.sleep(0.05)
    assert reading["uss_mb"] > 0 and reading["rss_mb"] > 0
    df = sampler.frame()
    assert set(df["record"]) == {"sample", "marker"}
    mark = df[df["record"] == "marker"].iloc[0]
    assert mark["label"] == "message 1" and mark["message"] == 1 and mark["tokens"] == 7
    assert df["uss_mb"].notna().sum() == 1  # USS off in the background, on at markers
    assert df["t_s"].is_monotonic_increasing


def test_storage_is_preallocated_so_the_sampler_does_not_grow():
    """What the sampler's own code keeps allocated while it samples (tracemalloc, filtered to
    mateperf/trackers): the process's RSS would also count what other threads of the test
    process allocate meanwhile."""
    import tracemalloc

    trackers = str(Path(MemorySampler.__module__.replace(".", "/")).parent)
    only = [tracemalloc.Filter(True, f"*{trackers}*")]
    sampler = MemorySampler(interval_ms=1, uss_interval_ms=0, block_samples=100_000)
    tracemalloc.start()
    try:
        with sampler:
            time.sleep(0.2)
            first = sampler.n_samples
            before = tracemalloc.take_snapshot().filter_traces(only)
            time.sleep(1.0)
            after = tracemalloc.take_snapshot().filter_traces(only)
            taken = sampler.n_samples - first
    finally:
        tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert taken > 200
    # storing each sample as Python objects would keep ~100 bytes or more per sample
    assert grown < 20 * taken, (grown, taken)


def test_without_a_gpu_the_sampler_says_why():
    reader = GpuReader(enabled=True)
    with MemorySampler(interval_ms=20) as sampler:
        time.sleep(0.1)
    df = sampler.frame()
    assert (df["gpu_status"] == sampler.gpu_status).all()
    if reader.available:  # a GPU host: VRAM is read
        assert df["vram_device_used_mb"].notna().all()
        assert df["vram_process_mb"].notna().any()
    else:
        assert sampler.gpu_status.startswith("no GPU: "), sampler.gpu_status
        assert len(sampler.gpu_status) > len("no GPU: ")
        assert df["vram_device_used_mb"].isna().all()
        assert df["vram_process_mb"].isna().all()
    disabled = MemorySampler(gpu=False)
    assert disabled.gpu_status == "no GPU: VRAM sampling disabled by the caller"
    assert all(np.isnan(v) for v in disabled.gpu.read())


def test_mapped_file_pages_are_counted(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\x01" * (8 << 20))
    assert mapped_file_rss_mb(path) == 0.0
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        total = sum(mm[i] for i in range(0, len(mm), 4096))  # touch every page
        assert total == (8 << 20) // 4096
        assert 7.5 <= mapped_file_rss_mb(path) <= 8.5


def test_uss_and_malloc_trim():
    assert 0 < read_uss() <= read_rss()[0] + 1
    released, note = malloc_trim()
    assert isinstance(released, bool) and note


def test_bad_intervals_are_refused():
    with pytest.raises(ValueError, match="interval_ms"):
        MemorySampler(interval_ms=0)
    with pytest.raises(ValueError, match="uss_interval_ms"):
        MemorySampler(uss_interval_ms=-1)


class _Cycle:
    """An object in a reference cycle holding a buffer: garbage only the cyclic GC frees."""

    def __init__(self, size: int):
        self.me = self
        self.buffer = bytearray(size)


def test_collections_are_recorded_with_the_heap_they_return():
    gc.collect()  # garbage of earlier tests is not this test's
    with MemorySampler(interval_ms=20) as sampler:
        assert sampler.gc.running
        gc.disable()  # so that all of it waits for the forced collection
        try:
            for _ in range(40):
                _Cycle(256 << 10)  # 10 MiB of cyclic garbage in all, freed by malloc's free()
            collected = sampler.collect()
        finally:
            gc.enable()
        sampler.mark("after")
        time.sleep(0.05)
    assert not sampler.gc.running and sampler.gc._callback not in gc.callbacks
    df = sampler.frame()
    events = df[df["record"] == "gc"]
    forced = events[events["gc_forced"].astype(bool)]
    assert len(forced) == 1
    event = forced.iloc[0]
    assert event["gc_generation"] == 2 and event["gc_collected"] == collected >= 40
    assert event["label"] == "gc gen 2 (forced)" and event["gc_pause_ms"] > 0
    assert df["t_s"].is_monotonic_increasing
    if heap_available():
        assert 9.5 < event["gc_freed_heap_mb"] < 11.0, event.to_dict()
        assert event["heap_used_mb"] > 0
        assert (df["heap_status"] == "heap in use from glibc mallinfo2").all()
    else:
        assert np.isnan(event["gc_freed_heap_mb"])
        assert "unavailable on this OS" in HEAP_STATUS


def test_automatic_collections_from_other_threads_are_recorded_too():
    def churn():
        for _ in range(3000):
            _Cycle(16)

    def collections_so_far() -> int:
        return sum(g["collections"] for g in gc.get_stats())

    with MemorySampler(interval_ms=5) as sampler:
        before = collections_so_far()
        threads = [threading.Thread(target=churn) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ran = collections_so_far() - before
    events = sampler.gc.events()
    automatic = events[~events["gc_forced"]]
    # known answer: CPython's own count of the collections that ran meanwhile (how many run
    # for 9000 cycles depends on the version's thresholds and the sampler's own allocations)
    assert ran >= 1
    assert len(automatic) >= ran
    assert set(automatic["gc_generation"]) <= {0, 1, 2}
    assert automatic["gc_collected"].sum() > 1000
    # no events are recorded once the sampler is stopped
    n = sampler.gc.n_events
    gc.collect()
    assert sampler.gc.n_events == n


def test_without_gc_events_the_frame_has_none():
    with MemorySampler(interval_ms=20, gc_events=False) as sampler:
        assert sampler.gc is None
        sampler.collect()
        time.sleep(0.05)
    assert "gc" not in set(sampler.frame()["record"])
