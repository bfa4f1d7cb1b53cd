"""This process's memory as the OS reports it: RSS and its split, USS, one file's mapping.

One reader per question, each choosing its source on this OS in one place (pyperf's way: a
reader per OS behind one function):

- RSS (and its file-backed / anonymous split) comes from /proc/self/statm, one small read, so it
  can be taken every ~20 ms without disturbing the work. `shared` in statm is RssFile + RssShmem:
  the resident pages of mapped files, which for llama.cpp is mostly the mmap'd model. Without
  /proc (Windows), psutil's private bytes stand in for the anonymous figure and the file-backed
  one is NaN (resident minus committed is no figure); `rss_status` says which source a run
  used and why a figure is missing.
- USS (private pages) needs the page-level walk of /proc/self/smaps_rollup, which costs far more
  in a process with a large mapping, so a sampler takes it at markers or on a slow schedule.
  File pages mapped only by this process count as private, so USS includes the touched part of
  the mmap'd model; the anonymous figure is the one that excludes it.

Units: `_mb` figures are MiB (2**20 bytes), as psutil and nvidia-smi count.
"""

from __future__ import annotations

import functools
import os

MB = float(1 << 20)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

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
