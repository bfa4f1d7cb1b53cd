"""Memory sampler: this process's RSS, USS and NVIDIA VRAM over time, from a background thread.

An instrument only: it knows nothing about scenarios. Wrap it around any work::

    with MemorySampler(interval_ms=20) as sampler:
        sampler.mark("model loaded")
        ...
    df = sampler.frame()          # one row per sample and per marker

Why these sources:
- RSS (and its file-backed / anonymous split) comes from /proc/self/statm, one small read, so it
  can be taken every ~20 ms without disturbing the work. `shared` in statm is RssFile + RssShmem:
  the resident pages of mapped files, which for llama.cpp is mostly the mmap'd model. Without
  /proc (Windows), psutil's private bytes stand in for the anonymous figure and the file-backed
  one is NaN (resident minus committed is no figure); `rss_status` says which source a run
  used and why a figure is missing.
- USS (private pages) needs the page-level walk of /proc/self/smaps_rollup, which costs far more
  in a process with a large mapping, so it is taken at every marker and, if asked, every
  `uss_interval_ms`. File pages mapped only by this process count as private, so USS includes
  the touched part of the mmap'd model; the anonymous figure is the one that excludes it.
- Heap in use via glibc's mallinfo2 (at markers and on the USS schedule): a leak that refills
  free chunks the allocator retained is invisible in RSS until they run out, but not here.
- VRAM via NVML: device-wide used memory and, where the driver reports it, this process's own use.
  Without NVML the sampler still runs and says why in `gpu_status` ("no GPU: ...").
- Garbage collections from `gc.callbacks`: every collection CPython runs while the sampler is on
  (generation, objects collected and uncollectable, pause) with the heap in use before and
  after, i.e. what the collection gave back to malloc.
  Where glibc's mallinfo2 is missing, `heap_status` says so and the heap columns are NaN.

Units: columns ending in `_mb` are MiB (2**20 bytes), as psutil and nvidia-smi count.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import threading
import time
import weakref

import numpy as np
import pandas as pd

from mateperf.trackers.gpu import NvmlDevice
from mateperf.trackers.rows import RowBlocks

MB = float(1 << 20)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

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


PROC_SELF = "/proc/self"  # a module attribute so a test can take /proc away
RSS_FROM_STATM = "anonymous RSS from /proc/self/statm"
RSS_FROM_SHARED = "anonymous RSS from psutil (rss - shared)"
# Windows has no resident split of file-backed and private pages that is cheap to read; its
# private bytes (commit charge) is what Windows' own tools watch for leaks. It counts private
# memory whether or not it is resident, so it can sit above RSS, and RSS minus it mixes a
# resident figure with a committed one: no file-backed figure, NaN with this reason.
RSS_FROM_PRIVATE = (
    "anonymous memory from psutil private bytes (Windows commit, not resident); "
    "file-backed RSS unavailable on this OS (working set minus commit is no figure)"
)
RSS_ANON_UNAVAILABLE = "anonymous RSS unavailable on this OS (no /proc, psutil has no shared)"


@functools.lru_cache(maxsize=1)
def _this_process():
    """psutil's handle on this process, made once: read_rss runs every sample."""
    import psutil

    return psutil.Process()


def rss_status() -> str:
    """Where read_rss takes the anonymous figure from on this OS (or that it cannot)."""
    if os.path.exists(PROC_SELF + "/statm"):
        return RSS_FROM_STATM
    info = _this_process().memory_info()
    if hasattr(info, "shared"):
        return RSS_FROM_SHARED
    if hasattr(info, "private"):
        return RSS_FROM_PRIVATE
    return RSS_ANON_UNAVAILABLE


def read_rss() -> tuple[float, float, float]:
    """(rss_mb, rss_anon_mb, rss_file_mb) of this process; cheap enough for every sample.

    See rss_status for the source of the split on this OS; NaN where it has none.
    """
    try:
        with open(PROC_SELF + "/statm", "rb") as fh:
            fields = fh.read().split()
        resident, shared = int(fields[1]), int(fields[2])
        rss = resident * PAGE_SIZE / MB
        file_backed = shared * PAGE_SIZE / MB
        return rss, rss - file_backed, file_backed
    except OSError:  # not Linux: psutil's split where the OS has one
        info = _this_process().memory_info()
        rss = info.rss / MB
        if hasattr(info, "shared"):
            return rss, (info.rss - info.shared) / MB, info.shared / MB
        if hasattr(info, "private"):
            return rss, info.private / MB, float("nan")  # see RSS_FROM_PRIVATE
        return rss, float("nan"), float("nan")


def read_smaps_rollup() -> dict[str, float]:
    """The kB fields of /proc/self/smaps_rollup in MB (empty dict where the file is absent)."""
    out: dict[str, float] = {}
    try:
        with open(PROC_SELF + "/smaps_rollup", "rb") as fh:
            for line in fh.read().decode("ascii", "replace").splitlines()[1:]:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[-1] == "kB":
                    out[name.strip()] = int(parts[0]) / 1024.0
    except OSError:
        pass
    return out


def read_uss() -> float:
    """Unique set size in MB: Private_Clean + Private_Dirty (+ private huge pages)."""
    rollup = read_smaps_rollup()
    if rollup:
        return (
            rollup.get("Private_Clean", 0.0)
            + rollup.get("Private_Dirty", 0.0)
            + rollup.get("Private_Hugetlb", 0.0)
        )
    return _this_process().memory_full_info().uss / MB  # slower: walks the full smaps


def mapped_file_rss_mb(path: str | os.PathLike) -> float:
    """Resident MB of this process's mappings of one file (e.g. the mmap'd model); 0 if unmapped.

    Walks /proc/self/smaps, which is costly; call it at checkpoints, not in a sampling loop.
    """
    target = os.path.realpath(os.fspath(path))
    total_kb = 0
    current = None
    try:
        with open(PROC_SELF + "/smaps", "rb") as fh:
            for raw in fh:
                line = raw.decode("utf-8", "replace")
                head = line.split(None, 5)
                # A mapping header starts with "start-end perms ..." ; field lines with "Name:".
                if head and "-" in head[0] and not head[0].endswith(":"):
                    current = head[5].strip() if len(head) > 5 else ""
                elif current == target and line.startswith("Rss:"):
                    total_kb += int(line.split()[1])
    except OSError:
        return float("nan")
    return total_kb / 1024.0


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


_NUMERIC = SAMPLE_COLUMNS[2:]  # t_s .. vram_process_mb


class MemorySampler:
    """Background sampling of this process's memory; markers for events; a DataFrame out.

    interval_ms: RSS/VRAM period (default 20 ms). uss_interval_ms: period of the costly reads,
    USS and heap in use (default 0 = only at markers). Measured on 2 cores with llama.cpp on
    both: background USS every 200 ms cost 4.5% of generation tokens/s, every 1 s 1.5%, none
    (markers only) no detectable difference; RSS every 20 ms is cheap.
    `start()` after `stop()` resumes sampling into the same record with the same time origin,
    so a stopped interval is a gap. gc_events (default on): garbage collections are recorded
    while the sampler runs (GcRecorder), on the same clock; `collect()` forces a full one.

    The samples go into preallocated numpy blocks that are written through once when allocated:
    storing them in Python objects, or in pages first touched as they fill, would make the
    instrument's own memory grow steadily (about 10-30 KB per second at 20 ms) and show up as a
    slope in exactly the figure a leak test reads. A block holds `block_samples` samples (22
    minutes at 20 ms); a new one is a single step, not a slope.
    """

    def __init__(
        self,
        interval_ms: float = 20.0,
        uss_interval_ms: float = 0.0,
        gpu: bool = True,
        gpu_index: int = 0,
        block_samples: int = 65536,
        gc_events: bool = True,
    ):
        if not interval_ms > 0:
            raise ValueError(f"interval_ms={interval_ms} must be positive")
        if uss_interval_ms < 0:
            raise ValueError(f"uss_interval_ms={uss_interval_ms} must be 0 (off) or positive")
        self.interval_ms = float(interval_ms)
        self.uss_interval_ms = float(uss_interval_ms)
        self.gpu = GpuReader(enabled=gpu, device_index=gpu_index)
        self._rows = RowBlocks(len(_NUMERIC), block_samples)
        self._markers: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0_ns: int | None = None
        self._starts = 0
        self.gc = GcRecorder(self._now_s) if gc_events else None
        self._rss_status = rss_status()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def gpu_status(self) -> str:
        return self.gpu.status

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def starts(self) -> int:
        return self._starts

    def start(self) -> MemorySampler:
        if self.running:
            return self
        if self._t0_ns is None:
            self._t0_ns = time.perf_counter_ns()
        self._starts += 1
        if self.gc is not None:
            self.gc.start()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name=f"memory-sampler-{self._starts}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> MemorySampler:
        thread = self._thread
        if thread is not None:
            self._stop.set()
            thread.join()
            self._thread = None
        if self.gc is not None:
            self.gc.stop()
        return self

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def heap_status(self) -> str:
        return HEAP_STATUS

    @property
    def rss_status(self) -> str:
        return self._rss_status

    # -- reading -----------------------------------------------------------------------------
    def _now_s(self) -> float:
        if self._t0_ns is None:
            self._t0_ns = time.perf_counter_ns()
        return (time.perf_counter_ns() - self._t0_ns) / 1e9

    def now_s(self) -> float:
        """Seconds on the sampler's clock (the `t_s` of its rows)."""
        return self._now_s()

    def collect(self) -> int:
        """A forced full collection, recorded as such when gc events are on; returns its count."""
        if self.gc is None:
            return gc.collect()
        return self.gc.collect()

    def _read(self, with_uss: bool) -> tuple[float, ...]:
        t_s = self._now_s()
        rss, anon, file_backed = read_rss()
        nan = float("nan")
        uss = read_uss() if with_uss else nan
        # mallinfo2 takes the allocator's locks: read it on the slow (USS) schedule only.
        heap_used, heap_free = read_heap() if with_uss else (nan, nan)
        used, process = self.gpu.read()
        return (t_s, rss, anon, file_backed, uss, heap_used, heap_free, used, process)

    def _store(self, values: tuple[float, ...]) -> None:
        with self._lock:
            self._rows.append(values)

    def _loop(self) -> None:
        interval_ns = int(self.interval_ms * 1e6)
        uss_ns = int(self.uss_interval_ms * 1e6)
        next_ns = time.perf_counter_ns()
        next_uss_ns = next_ns
        while not self._stop.is_set():
            now = time.perf_counter_ns()
            with_uss = uss_ns > 0 and now >= next_uss_ns
            self._store(self._read(with_uss))
            if with_uss:
                next_uss_ns = now + uss_ns
            # Fixed schedule (not sleep(interval) after the work) so the period does not drift;
            # after a stall the missed ticks are skipped rather than sampled in a burst.
            next_ns += interval_ns
            now = time.perf_counter_ns()
            if next_ns < now:
                next_ns = now + interval_ns - (now - next_ns) % interval_ns
            self._stop.wait((next_ns - now) / 1e9)

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

    @property
    def n_samples(self) -> int:
        with self._lock:
            return len(self._rows)

    def samples(self) -> pd.DataFrame:
        """The background samples, oldest first (uss_mb is NaN where USS was not read)."""
        with self._lock:
            data = self._rows.array()
        df = pd.DataFrame(data, columns=_NUMERIC)
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
