"""The C heap and Python's garbage collector: heap in use (glibc mallinfo2), malloc_trim, and
a recorder of every collection.

- Heap in use via glibc's mallinfo2: a leak that refills free chunks the allocator retained is
  invisible in RSS until they run out, but not here. Where glibc's mallinfo2 is missing,
  `HEAP_STATUS` says so and the figures are NaN.
- Garbage collections from `gc.callbacks` (`GcRecorder`): every collection CPython runs while
  the recorder is on (generation, objects collected and uncollectable, pause) with the heap in
  use before and after, i.e. what the collection gave back to malloc.
- `malloc_trim`: glibc's call that gives freed heap pages back to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
import weakref

import pandas as pd

from mateperf.trackers.process_memory import MB
from mateperf.trackers.rows import RowBlocks


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _load_mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2  # glibc 2.33+; the older mallinfo's ints wrap at 2 GiB
    except (OSError, AttributeError):
        return None
    fn.argtypes = []
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _load_mallinfo2()
HEAP_READ = "heap in use from glibc mallinfo2"
HEAP_UNAVAILABLE = "heap in use unavailable on this OS (no glibc mallinfo2)"
HEAP_STATUS = HEAP_READ if _MALLINFO2 is not None else HEAP_UNAVAILABLE


def heap_available() -> bool:
    """Whether read_heap can read the allocator (glibc 2.33+); see HEAP_STATUS for why not."""
    return _MALLINFO2 is not None


def read_heap() -> tuple[float, float]:
    """(heap_used_mb, heap_free_mb) from glibc's mallinfo2, over all arenas; NaN without glibc.

    used = bytes in allocated chunks (uordblks) + in mmap'd chunks (hblkhd): what the program
    holds through malloc, whether or not its pages are resident. free = free chunks the
    allocator keeps (fordblks). RSS cannot see a leak that fills retained free chunks (they are
    already resident) until they run out; `used` sees it at once. Not covered: memory Python's
    small-object allocator takes straight from mmap, and anything not from malloc.
    """
    if _MALLINFO2 is None:
        return float("nan"), float("nan")
    info = _MALLINFO2()
    return (info.uordblks + info.hblkhd) / MB, info.fordblks / MB


def malloc_trim() -> tuple[bool, str]:
    """glibc malloc_trim(0): give freed heap pages back to the OS.

    Returns (released, note): released is glibc's answer (1 = some memory was returned); note
    says why nothing was called where the C library has no malloc_trim (musl, macOS, Windows).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError) as exc:
        return False, f"malloc_trim unavailable: {exc}"
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0)), "malloc_trim(0) called"


GC_COLUMNS = [
    "t_s",
    "gc_generation",
    "gc_collected",
    "gc_uncollectable",
    "gc_pause_ms",
    "heap_before_mb",
    "heap_after_mb",
    "gc_forced",
]


class GcRecorder:
    """Every collection CPython's garbage collector runs while the recorder is on.

    Registered in `gc.callbacks`, so it sees automatic collections as well as `gc.collect()`.
    A row per collection: start time (on the owner's clock), generation, objects collected and
    uncollectable, pause, and `gc_forced` (1 when it came through `collect()`). For collections of
    `heap_generation` and above (default 0: all) it reads heap in use before and after, so
    `heap_before_mb - heap_after_mb` is what the collection gave back to malloc. That costs two
    mallinfo2 calls (every arena's lock, a walk of the free lists) per collection, which is cheap
    where collections are rare, as in a chat: CPython counts net allocations of tracked objects,
    a reply allocates and frees nearly in balance: the 100-message default chat ran two automatic
    collections, the 300-message one six. Raise it for allocation-heavy work. Without glibc the
    heap columns are NaN.

    Events go into preallocated numpy blocks, as the sampler's samples do: a Python object per
    event would make the recorder's own memory grow with the work it watches.
    """

    def __init__(self, now_s, heap_generation: int = 0, block_events: int = 16384):
        # A bound method of the owner would put owner and recorder in a reference cycle, and the
        # sampler's blocks (megabytes) would then wait for the collector it is watching.
        self._clock = weakref.WeakMethod(now_s) if hasattr(now_s, "__self__") else lambda: now_s
        self.heap_generation = int(heap_generation)
        self._rows = RowBlocks(len(GC_COLUMNS), block_events)
        # Re-entrant: a reader that allocates while holding it can trigger a collection in its
        # own thread, whose callback then takes the lock again.
        self._lock = threading.RLock()
        self._forced = False
        self._start_t_s = float("nan")
        self._start_ns = 0
        self._heap_before = float("nan")

    @property
    def running(self) -> bool:
        return self._callback in gc.callbacks

    def start(self) -> GcRecorder:
        if not self.running:
            gc.callbacks.append(self._callback)
        return self

    def stop(self) -> GcRecorder:
        while self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        return self

    def collect(self, generation: int = 2) -> int:
        """`gc.collect(generation)`, recorded with gc_forced = 1; returns what it collected."""
        self._forced = True
        try:
            return gc.collect(generation)
        finally:
            self._forced = False

    def _callback(self, phase: str, info: dict) -> None:
        # Runs inside the collection, in whichever thread triggered it; CPython does not start
        # another collection until this one has finished, so start/stop pairs never interleave.
        generation = info.get("generation", -1)
        if phase == "start":
            clock = self._clock()
            self._start_t_s = clock() if clock is not None else float("nan")
            self._start_ns = time.perf_counter_ns()
            self._heap_before = (
                read_heap()[0] if generation >= self.heap_generation else float("nan")
            )
            return
        pause_ms = (time.perf_counter_ns() - self._start_ns) / 1e6
        heap_after = read_heap()[0] if generation >= self.heap_generation else float("nan")
        values = (
            self._start_t_s,
            generation,
            info.get("collected", 0),
            info.get("uncollectable", 0),
            pause_ms,
            self._heap_before,
            heap_after,
            1.0 if self._forced else 0.0,
        )
        with self._lock:
            self._rows.append(values)

    @property
    def n_events(self) -> int:
        with self._lock:
            return len(self._rows)

    def events(self) -> pd.DataFrame:
        """One row per collection, oldest first; gc_freed_heap_mb = heap before - after."""
        with self._lock:
            data = self._rows.array()
        df = pd.DataFrame(data, columns=GC_COLUMNS)
        for name in ("gc_generation", "gc_collected", "gc_uncollectable"):
            df[name] = df[name].astype("int64")
        df["gc_forced"] = df["gc_forced"].astype(bool)
        df["gc_freed_heap_mb"] = df["heap_before_mb"] - df["heap_after_mb"]
        return df
