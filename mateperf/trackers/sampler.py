"""The one sampler base: a background thread that reads on a fixed schedule into float rows.

Every polling instrument of mateperf.trackers is a `Sampler`: the memory sampler, the GPU
monitor, and the peaks of RSS and VRAM over a block of work. A subclass says what one reading
is (`tick`) and what its rows hold (`columns`); the base owns the thread, the schedule, the
clock and the rows::

    with sampler.track():          # start, and stop however the block ends
        ...
    sampler.window_s               # (start, end) of that block on the sampler's clock

Why a fixed schedule: the next tick is due `interval_ms` after the previous one was due, not
after the reading finished, so the period does not drift with the cost of a reading; after a
stall the missed ticks are skipped rather than read in a burst. Why preallocated rows
(mateperf.trackers.rows): an instrument whose own memory grows with its history would show up
in the very figures a leak test reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd

from mateperf.trackers.rows import RowBlocks


class Sampler:
    """A thread that calls `tick(now_ns)` every `interval_ms`, and the rows it records.

    `start()` after `stop()` resumes into the same rows on the same clock, so a stopped
    interval is a gap. The clock (`now_s`, the rows' `t_s`) starts at the first `start()` or
    `now_s()`, whichever comes first.
    """

    thread_name = "sampler"

    def __init__(self, interval_ms: float, columns: Sequence[str], block_rows: int = 65536):
        if not interval_ms > 0:
            raise ValueError(f"interval_ms={interval_ms} must be positive")
        self.interval_ms = float(interval_ms)
        self.columns = list(columns)
        self.window_s = (float("nan"), float("nan"))
        self._rows = RowBlocks(len(self.columns), block_rows)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0_ns: int | None = None
        self._starts = 0

    # -- what a subclass says -------------------------------------------------------------------
    def tick(self, now_ns: int) -> None:
        """One reading, stored with `record`; `now_ns` is perf_counter_ns at the tick."""
        raise NotImplementedError

    def can_sample(self) -> bool:
        """Whether there is anything to read (no GPU: no thread at all)."""
        return True

    def on_start(self) -> None:
        """Called by `start()` before the thread runs."""

    def on_stop(self) -> None:
        """Called by `stop()` after the thread has ended."""

    # -- the clock and the rows ---------------------------------------------------------------
    def now_s(self) -> float:
        """Seconds on the sampler's clock (the `t_s` of its rows)."""
        if self._t0_ns is None:
            self._t0_ns = time.perf_counter_ns()
        return (time.perf_counter_ns() - self._t0_ns) / 1e9

    def record(self, values: Sequence[float]) -> None:
        with self._lock:
            self._rows.append(values)

    @property
    def n_samples(self) -> int:
        with self._lock:
            return len(self._rows)

    def rows(self) -> np.ndarray:
        """Every recorded row, oldest first (a copy)."""
        with self._lock:
            return self._rows.array()

    def rows_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows(), columns=self.columns)

    # -- the thread ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def starts(self) -> int:
        return self._starts

    def start(self):
        if self.running or not self.can_sample():
            return self
        self.now_s()
        self._starts += 1
        self.on_start()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name=f"{self.thread_name}-{self._starts}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self):
        thread = self._thread
        if thread is not None:
            self._stop.set()
            thread.join()
            self._thread = None
        self.on_stop()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextmanager
    def track(self) -> Iterator:
        """Sample around a block; `window_s` is then the block's (start, end)."""
        t_from = self.now_s()  # before the thread's first reading
        self.start()
        try:
            yield self
        finally:
            self.stop()
            self.window_s = (t_from, self.now_s())

    def in_window(self, column: str) -> np.ndarray:
        """`column`'s readings inside the last tracked window."""
        data = self.rows()
        t = data[:, self.columns.index("t_s")]
        t_from, t_to = self.window_s
        return data[(t >= t_from) & (t <= t_to), self.columns.index(column)]

    def _loop(self) -> None:
        interval_ns = int(self.interval_ms * 1e6)
        next_ns = time.perf_counter_ns()
        while not self._stop.is_set():
            self.tick(time.perf_counter_ns())
            next_ns += interval_ns
            now = time.perf_counter_ns()
            if next_ns < now:
                next_ns = now + interval_ns - (now - next_ns) % interval_ns
            self._stop.wait((next_ns - now) / 1e9)
