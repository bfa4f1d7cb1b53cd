"""The sampler base and the peaks over a block: real readings of this process, a scripted GPU.

The VRAM peak is driven by `FakeNvml` (tests/test_gpu_monitor.py): VRAM readings cannot be
caused on a machine without an NVIDIA GPU. RSS is this process's own, moved by real
allocations of a known size.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from mateperf.trackers.peaks import PeakRss, PeakVram
from mateperf.trackers.process_memory import read_rss
from mateperf.trackers.sampler import Sampler
from tests.test_gpu_monitor import FakeNvml, has_gpu

MB = 2**20


class Counter(Sampler):
    def __init__(self, interval_ms: float):
        super().__init__(interval_ms, ("t_s", "n"))
        self.events: list[str] = []

    def tick(self, now_ns: int) -> None:
        self.record((self.now_s(), self.n_samples))

    def on_start(self) -> None:
        self.events.append("start")

    def on_stop(self) -> None:
        self.events.append("stop")


def test_track_samples_the_block_and_keeps_its_window():
    sampler = Counter(interval_ms=5)
    with sampler.track() as same:
        assert same is sampler and sampler.running
        time.sleep(0.1)
    assert not sampler.running and sampler.events == ["start", "stop"]
    t_from, t_to = sampler.window_s
    assert 0 <= t_from < t_to
    rows = sampler.rows_frame()
    assert list(rows.columns) == ["t_s", "n"] and len(rows) >= 3
    assert list(rows["n"]) == list(range(len(rows)))  # one reading per tick, in order
    assert rows["t_s"].is_monotonic_increasing and (rows["t_s"] <= t_to).all()
    assert len(sampler.in_window("n")) == len(rows)


def test_a_second_block_resumes_on_the_same_clock_and_has_its_own_window():
    sampler = Counter(interval_ms=5)
    with sampler.track():
        time.sleep(0.05)
    first = sampler.n_samples
    time.sleep(0.05)  # a gap: nothing is read between the blocks
    with sampler.track():
        time.sleep(0.05)
    rows = sampler.rows_frame()
    assert sampler.starts == 2 and len(rows) > first
    gap = rows["t_s"].iloc[first] - rows["t_s"].iloc[first - 1]
    assert gap >= 0.04
    assert len(sampler.in_window("n")) == len(rows) - first


def test_the_interval_is_checked():
    with pytest.raises(ValueError, match="interval_ms=0 must be positive"):
        Counter(interval_ms=0)


def test_peak_rss_sees_an_allocation_inside_the_block_and_not_one_before():
    rss = PeakRss(interval_ms=5)
    block = np.ones(128 * MB, dtype=np.uint8)  # a known answer: 128 MiB of touched pages
    with rss.track():
        time.sleep(0.05)
    with_block = rss.peak_mb
    del block
    with rss.track():
        time.sleep(0.05)
    after = rss.peak_mb
    assert with_block - after >= 100, (with_block, after)
    assert after == pytest.approx(read_rss()[0], abs=32)


def test_peak_rss_of_a_block_shorter_than_the_interval_still_has_a_reading():
    rss = PeakRss(interval_ms=10_000)
    with rss.track():
        pass
    assert rss.peak_mb > 0


def test_peak_vram_is_the_highest_reading_of_each_block():
    # device-used MiB as the scripted card reports them, one per reading
    vram = PeakVram(interval_ms=2, nvml=FakeNvml([1000.0] * 3 + [3000.0] * 3 + [1500.0]))
    with vram.track():
        time.sleep(0.05)
    first = vram.peak_mb
    with vram.track():
        time.sleep(0.05)
    second = vram.peak_mb
    vram.close()
    assert first == 3000.0  # this process is not listed: the device's used memory
    assert second == 1500.0  # the first block's peak is not carried into the second


def test_peak_vram_without_a_gpu_is_nan_and_says_why():
    if has_gpu():
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU path cannot be taken for real")
    vram = PeakVram()
    with vram.track():
        pass
    assert math.isnan(vram.peak_mb) and vram.status.startswith("no NVIDIA GPU: ")
    assert not vram.running
    vram.close()
