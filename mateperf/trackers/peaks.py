"""The peak of this process's RSS and VRAM over a block of work, sampled in the background.

Both are samplers (mateperf.trackers.sampler) wrapped around the block::

    rss, vram = PeakRss(), PeakVram()
    with rss.track(), vram.track():
        ...
    rss.peak_mb, vram.peak_mb      # NaN, and `vram.status` says why, where there is no GPU
"""

from __future__ import annotations

import math

import numpy as np

from mateperf.trackers.gpu import GpuMonitor
from mateperf.trackers.process_memory import read_rss
from mateperf.trackers.sampler import Sampler


class PeakRss(Sampler):
    """This process's peak RSS over the last tracked block, read every `interval_ms`.

    One more reading when the block ends, so a block shorter than the interval has one.
    """

    thread_name = "peak-rss"

    def __init__(self, interval_ms: float = 20.0):
        super().__init__(interval_ms, ("t_s", "rss_mb"), block_rows=4096)

    def tick(self, now_ns: int) -> None:
        self.record((self.now_s(), read_rss()[0]))

    def on_stop(self) -> None:
        self.tick(0)

    @property
    def peak_mb(self) -> float:
        values = self.in_window("rss_mb")
        return float(np.nanmax(values)) if np.isfinite(values).any() else math.nan


class PeakVram(GpuMonitor):
    """Peak VRAM of this process over the last tracked block where NVML sees a GPU; NaN and
    a reason (`status`) otherwise. `nvml` as for GpuMonitor."""

    thread_name = "peak-vram"

    def __init__(self, interval_ms: float = 50.0, nvml=None):
        super().__init__(interval_ms=interval_ms, nvml=nvml)

    @property
    def peak_mb(self) -> float:
        if not self.available:
            return math.nan
        # this process's VRAM where NVML can attribute it (not inside a container), else the
        # device's used VRAM (nothing else runs on a benchmark machine)
        own = self.in_window("vram_process_mb")
        if np.isfinite(own).any() and np.nanmax(own) > 0:
            return float(np.nanmax(own))
        used = self.in_window("vram_used_mb")
        return float(np.nanmax(used)) if np.isfinite(used).any() else math.nan
