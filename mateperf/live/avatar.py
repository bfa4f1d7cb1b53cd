"""The attached avatar's frames during each call, read off the caller's thread.

The avatar answers `frame_stats` on its main thread, once per frame: waiting for it would add
up to a frame (16.7 ms at 60 fps) to every call the companion makes. So a worker thread with
its own connection does it: at a call's start it resets the avatar's frame window, at its end
reads the window (and resets it again), and hands the call's figures back; the caller only
puts two items on a queue. The window starts up to one frame after the call and ends up to one
frame after it.

The connection and the identity query are `mateperf.bridge.attach`'s (what `--avatar` uses).
A legacy bridge (no `frame_stats`), an avatar that cannot be reached or one that drops the
connection: the figures are NaN and `frame_status` says which, once per call; the companion's
calls go on unrecorded by the avatar, never failed by it. Nothing is sent to the avatar but
the frame queries: it is left as it was found.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable

import numpy as np

from mateperf.avatar import AvatarUnreachable, parse_address
from mateperf.bridge.attach import connect_avatar
from mateperf.bridge.client import BridgeError
from mateperf.errors import RunAborted

OK = "ok"


def figures(stats: dict) -> dict:
    """A frame window's p99 and count from the avatar's `frame_stats` answer."""
    intervals_ms = np.asarray(stats.get("frame_interval_us") or [], float) / 1e3
    return {
        "frames": int(stats.get("frames", len(intervals_ms))),
        "frame_p99_ms": float(np.percentile(intervals_ms, 99)) if intervals_ms.size else math.nan,
    }


class AvatarFrames:
    """A worker reading the avatar's frame window around each call; `on_figures(call, row)`
    receives {frames, frame_p99_ms, frame_status} for each call that ended."""

    def __init__(self, address: str, on_figures: Callable[[int, dict], None]):
        host, port = parse_address(address)  # AvatarAddressError: bad input, one line
        self.address = f"{host}:{port}"
        self._on_figures = on_figures
        self._queue: queue.Queue = queue.Queue()
        self._bridge = None
        self.identity: dict = {}
        try:
            self._bridge, identity = connect_avatar(self.address)
            self.identity = identity.as_dict()
            self.status = identity.frames_unavailable or OK
        except (AvatarUnreachable, RunAborted, BridgeError, OSError) as exc:
            self.status = f"avatar {self.address} unreachable: {exc}"
        self._thread = threading.Thread(target=self._loop, name="mateperf-live-avatar", daemon=True)
        self._thread.start()

    def start_call(self, call: int) -> None:
        self._queue.put(("reset", call))

    def end_call(self, call: int) -> None:
        self._queue.put(("read", call))

    def close(self, timeout_s: float = 2.0) -> None:
        """Let the worker finish what is queued (a call's last read), then disconnect."""
        self._queue.put(("stop", -1))
        self._thread.join(timeout_s)
        if self._bridge is not None:
            self._bridge.close()

    def _loop(self) -> None:
        while True:
            what, call = self._queue.get()
            if what == "stop":
                return
            if self.status != OK:
                if what == "read":
                    nan = {"frames": 0, "frame_p99_ms": math.nan}
                    self._on_figures(call, {**nan, "frame_status": self.status})
                continue
            try:
                stats = self._bridge.frame_stats(reset=True)
            except (BridgeError, OSError) as exc:
                self.status = f"avatar {self.address} lost: {exc}"
                if what == "read":
                    nan = {"frames": 0, "frame_p99_ms": math.nan}
                    self._on_figures(call, {**nan, "frame_status": self.status})
                continue
            if what == "read":
                self._on_figures(call, {**figures(stats), "frame_status": OK})
