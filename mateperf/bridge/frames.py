"""What a peer's main thread did per frame, and the stand-in for Unity's own per-frame work.

`FrameLog` keeps, for the last `FRAME_LOG_CAPACITY` frames, the frame interval (start of a
frame to the start of the next, µs), the main-thread time spent in Tick (µs, without the
frame's busy-spin), the commands Tick applied and the requests it left queued. A frame is
recorded when the next one starts, so the log only ever holds completed frames. The C# core
keeps the same log (unity/Runtime/Core/FrameLog.cs); both answer the `frame_stats` query from it.
Frames are numbered from 1 and never reset (a reply's `first_frame` and `last_frame`), so a
window of replies can be matched against `FrameLogFile`, the peer's own CSV log of every frame
(`--frame-log`), read independently.

`busy_spin_ns` is real CPU work on the calling thread, not a sleep: what Unity's main thread
spends on rendering, animation and scripts in every frame (`--frame-busy` of the peers).
"""

from __future__ import annotations

import array
import collections
import math
import threading
import time
from pathlib import Path

FRAME_LOG_CAPACITY = 65536


def check_frame_busy(share: object) -> float:
    """`share` as a float in [0, 1); ValueError otherwise (a name the caller can act on)."""
    try:
        value = float(share)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"frame_busy must be a number in [0, 1), got {share!r}") from None
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"frame_busy must be in [0, 1), got {share!r}")
    return value


def busy_spin_ns(duration_ns: int) -> None:
    """Keep the calling thread on the CPU for `duration_ns` (no sleep, no yield)."""
    end = time.perf_counter_ns() + duration_ns
    while time.perf_counter_ns() < end:
        pass


class FrameLog:
    """A bounded log of completed frames, owned by the main thread (no locking).

    Four preallocated int64 rings, as in the C# core: its memory is fixed from the first frame
    on, whatever the run's length, and recording a frame allocates nothing.
    """

    def __init__(self, capacity: int = FRAME_LOG_CAPACITY):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        zeros = bytes(8 * capacity)
        self._interval = array.array("q", zeros)
        self._tick = array.array("q", zeros)
        self._commands = array.array("q", zeros)
        self._depth = array.array("q", zeros)
        self._head = 0
        self._count = 0
        self._recorded = 0  # frames recorded since the start: the newest one's number
        self._start_ns = 0
        self._frame = (0, 0, 0)  # the current frame's tick_ns, commands, queue depth
        # the peer's own log file (--frame-log): every recorded frame, never reset
        self.file: FrameLogFile | None = None

    def frame_started(self, now_ns: int) -> None:
        """Call at the start of every frame: the previous frame is complete and recorded."""
        if self._start_ns:
            i = self._head
            tick_ns, commands, depth = self._frame
            self._interval[i] = (now_ns - self._start_ns) // 1000
            self._tick[i] = tick_ns // 1000
            self._commands[i] = commands
            self._depth[i] = depth
            self._head = i + 1 if i + 1 < self._capacity else 0
            if self._count < self._capacity:
                self._count += 1
            self._recorded += 1
            if self.file is not None:
                self.file.append(self._recorded, self._interval[i], self._tick[i])
        self._start_ns = now_ns
        self._frame = (0, 0, 0)

    def tick_done(self, tick_ns: int, commands: int, queue_depth: int) -> None:
        """The current frame's Tick: main-thread time, commands applied, requests left queued."""
        self._frame = (tick_ns, commands, queue_depth)

    def __len__(self) -> int:
        return self._count

    def _ordered(self, ring: array.array) -> list[int]:
        first = (self._head - self._count) % self._capacity
        if first + self._count <= self._capacity:
            return ring[first : first + self._count].tolist()
        return ring[first:].tolist() + ring[: self._head].tolist()

    def snapshot(self) -> dict:
        """The logged frames as the `frame_stats` reply's lists, oldest first, with the
        numbers of the oldest and newest (None when there is none)."""
        last = self._recorded if self._count else None
        return {
            "frames": self._count,
            "first_frame": self._recorded - self._count + 1 if self._count else None,
            "last_frame": last,
            "frame_interval_us": self._ordered(self._interval),
            "tick_us": self._ordered(self._tick),
            "commands": self._ordered(self._commands),
            "queue_depth": self._ordered(self._depth),
        }

    def clear(self) -> None:
        self._count = 0


class FrameLogFile:
    """The peer's own record of every frame: a CSV `frame,interval_us,tick_us`, appended.

    The main thread only appends a tuple to a queue (no I/O on the frame's path); a writer
    thread swaps the list out and writes it at least every `flush_s`, and `close` writes the
    rest. The file is what a test reads to check the frame figures mateperf stored, without
    going through the `frame_stats` reply.
    """

    HEADER = "frame,interval_us,tick_us\n"

    def __init__(self, path: str | Path, flush_s: float = 0.5):
        self.path = Path(path)
        self._file = self.path.open("w", encoding="utf-8", newline="\n")
        self._file.write(self.HEADER)
        self._file.flush()
        # deque: append (main thread) and popleft (writer) are thread-safe without a lock
        self._rows: collections.deque[tuple[int, int, int]] = collections.deque()
        self._flush_s = flush_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="frame-log")
        self._thread.start()

    def append(self, frame: int, interval_us: int, tick_us: int) -> None:
        self._rows.append((frame, interval_us, tick_us))

    def _write(self) -> None:
        rows = []
        while True:
            try:
                rows.append(self._rows.popleft())
            except IndexError:
                break
        if rows:
            self._file.write("".join(f"{f},{i},{t}\n" for f, i, t in rows))
            self._file.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self._write()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._write()
        self._file.close()


def read_frame_log(path: str | Path) -> dict[int, tuple[int, int]]:
    """A frame log written by either peer (`--frame-log`): frame number -> (interval, tick) µs."""
    out: dict[int, tuple[int, int]] = {}
    with Path(path).open(encoding="utf-8") as f:
        header = f.readline().strip()
        if header != FrameLogFile.HEADER.strip():
            raise ValueError(f"{path}: not a frame log (header {header!r})")
        for line in f:
            parts = line.strip().split(",")
            if len(parts) == 3:  # a line cut short by a killed peer is left out
                out[int(parts[0])] = (int(parts[1]), int(parts[2]))
    return out
