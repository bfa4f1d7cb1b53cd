"""One measurement at a time per results root.

Two phases measuring at once on a small machine ruin each other's timings (llama.cpp's worker
threads spin while they wait), so a second measurement waits here and says so. `filelock`
takes an OS lock (flock on POSIX, msvcrt.locking on Windows) that the OS drops when the holder
dies, so a killed run never leaves the root locked. Who holds it is written beside the lock,
since a locked file cannot be read on Windows.
`mateperf run` and `sweep` hold it around each phase's kernel (`mateperf.execute`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from mateperf import results


@contextlib.contextmanager
def measurement_lock(root: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / ".measure.lock"))
    holder_path = root / ".measure.lock.holder"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = holder_path.read_text(encoding="utf-8").strip() or "another process"
        except OSError:
            holder = "another process"
        print(f"mateperf: waiting for another measurement ({holder}) to finish", file=sys.stderr)
        lock.acquire()
    try:
        results.atomic_write_text(holder_path, f"pid {os.getpid()}")
        yield
    finally:
        lock.release()
