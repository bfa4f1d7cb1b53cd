"""The avatar's side of a reply, as background load for the model's measurements.

The companion never generates alone: Unity renders at 60 fps, its main thread busy for part of
every frame, while the bridge carries the emotion commands of the reply being streamed.
`CompanionLoad` recreates that beside a measurement: a frame-paced peer process (Python, or the
C# core under Mono) spinning on its main thread for `frame_busy` of every frame, and a thread
here sending emotion commands at `command_hz` and waiting for their completion acks.

A measurement window (`window()`) says what the peer achieved meanwhile: its frame intervals
(does the model's threading make the avatar stutter?), the commands' round trips, and what the
stand-in really cost: how late its 1 ms sleeps end (`timer_overshoot_us`, and the
`timer_resolution` it got), the share of the window its main thread was awake
(`peer_awake_share`) and the CPU its process got (`peer_busy_share`): where the overshoot is
comparable to the frame, the peer yields through every frame and the load is about a whole core,
whatever `frame_busy` says (mateperf/avatar_pacing.py).

Attached (`avatar="HOST:PORT"`): no peer is spawned; the load runs against an avatar that is
already running (mateperf.bridge.attach), its frame figures come from that avatar's own
`frame_stats` (with FrameTimingManager's CPU main-thread and GPU times where it sends them),
and each window records the avatar's frame numbers (`frame_first`, `frame_last`) so a figure can
be matched with the avatar's own log. An avatar without `frame_stats` (the companion's legacy
bridge) gets NaN frame figures and the reason in `frame_note`. At the end its expressions are
reset; a dropped connection raises `AvatarLost` (the run ends, its rows kept).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import psutil

from mateperf.avatar import AvatarIdentity, AvatarUnreachable
from mateperf.bridge.attach import AvatarLost, connect_avatar, leave_as_found, open_bridge
from mateperf.bridge.client import BridgeDisconnected, BridgeError, UnityBridge
from mateperf.bridge.frames import check_frame_busy
from mateperf.bridge.process import start_peer
from mateperf.params import BACKGROUNDS
from mateperf.workloads import expression_sequence  # the emotion beat


@dataclass
class WindowResult:
    """What the avatar side did during one measurement window."""

    frames: int = 0
    frame_interval_ms: list[float] = field(default_factory=list)
    tick_ms: list[float] = field(default_factory=list)
    command_rtt_ms: list[float] = field(default_factory=list)
    command_errors: int = 0
    beat_ms: list[float] = field(default_factory=list)  # enqueue to the beat's last ack
    # the avatar's running numbers of the window's first and last frame (None: not sent)
    frame_first: int | None = None
    frame_last: int | None = None
    # FrameTimingManager's per-frame times, where the avatar sends them (Unity with a renderer)
    cpu_main_ms: list[float] = field(default_factory=list)
    gpu_ms: list[float] = field(default_factory=list)
    note: str = ""  # why a frame figure is missing ("" when none is)
    timer_overshoot_us: float = float("nan")  # the peer's measured 1 ms sleep overshoot
    timer_resolution: str = ""  # what the peer got when it asked for a 1 ms timer
    peer_busy_share: float = float("nan")  # the peer process's CPU time / the window's time
    # the share of the window its main thread was not asleep (working, spinning or yielding):
    # the core it asks for, whatever a loaded host gives it (NaN where the peer does not say)
    peer_awake_share: float = float("nan")

    def figures(self) -> dict:
        """Per-window statistics: one value per trial for the phase's table."""
        intervals = np.asarray(self.frame_interval_ms, float)
        rtts = np.asarray(self.command_rtt_ms, float)

        def q(values, p):
            return float(np.percentile(values, p)) if len(values) else float("nan")

        def number(n):
            return float(n) if n is not None else float("nan")

        return {
            "frames": self.frames,
            "frame_first": number(self.frame_first),
            "frame_last": number(self.frame_last),
            "frame_p50_ms": q(intervals, 50),
            "frame_p99_ms": q(intervals, 99),
            "frame_max_ms": float(intervals.max()) if len(intervals) else float("nan"),
            "cpu_main_p99_ms": q(np.asarray(self.cpu_main_ms, float), 99),
            "gpu_p99_ms": q(np.asarray(self.gpu_ms, float), 99),
            "frame_note": self.note,
            "cmd_rtt_ms": q(rtts, 50),
            "cmd_count": len(rtts),
            "cmd_errors": self.command_errors,
            "beat_ms": q(np.asarray(self.beat_ms, float), 50),
            "beats": len(self.beat_ms),
            "timer_overshoot_us": self.timer_overshoot_us,
            "timer_resolution": self.timer_resolution,
            "peer_busy_share": self.peer_busy_share,
            "peer_awake_share": self.peer_awake_share,
        }


def _emotion_commands():
    for step in itertools.count():
        yield from expression_sequence(step)


class CompanionLoad:
    """A busy frame-paced peer (or an attached avatar) plus a stream of emotion commands; a
    context manager."""

    def __init__(
        self,
        peer: str = "python",
        fps: float = 60.0,
        frame_busy: float = 0.5,
        command_hz: float = 10.0,
        avatar: str = "",
    ):
        frame_busy = check_frame_busy(frame_busy)  # the peers' own rule
        if fps <= 0:
            raise ValueError(f"fps must be positive for a companion load, got {fps}")
        if command_hz < 0:
            raise ValueError(f"command_hz must be >= 0, got {command_hz}")
        self.peer_kind, self.fps, self.frame_busy = peer, fps, frame_busy
        self.command_hz = command_hz
        self.avatar = avatar  # HOST:PORT of a running avatar; "" spawns the stand-in
        self.identity: AvatarIdentity | None = None  # the attached avatar's
        self._proc = None
        self._commands: UnityBridge | None = None
        self._stats: UnityBridge | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._rtts_ms: list[float] = []
        self._errors = 0
        self._beats: queue.Queue = queue.Queue()
        self._beat_ms: list[float] = []
        self._beat_thread: threading.Thread | None = None

    def __enter__(self) -> CompanionLoad:
        if self.avatar:
            try:
                self._commands, self.identity = connect_avatar(self.avatar)
            except AvatarUnreachable as exc:  # it answered when the run began: it went away
                raise AvatarLost(self.avatar, exc) from exc
            try:
                self._stats = open_bridge(self.avatar)
            except Exception as exc:
                leave_as_found(self._commands)
                if isinstance(exc, AvatarUnreachable):
                    raise AvatarLost(self.avatar, exc) from exc
                raise
        else:
            self._proc = start_peer(self.peer_kind, fps=self.fps, frame_busy=self.frame_busy)
            try:
                self._commands = UnityBridge(port=self._proc.port, auto_reconnect=False).connect()
                self._stats = UnityBridge(port=self._proc.port, auto_reconnect=False).connect()
            except Exception:
                self._proc.kill()
                raise
        if self.command_hz > 0:
            self._thread = threading.Thread(target=self._stream, daemon=True, name="emotions")
            self._thread.start()
        self._beat_thread = threading.Thread(target=self._send_beats, daemon=True, name="beats")
        self._beat_thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._beats.put(None)
        for thread in (self._thread, self._beat_thread):
            if thread is not None:
                thread.join(timeout=5)
        if self.avatar:  # a live avatar is left as it was found
            leave_as_found(self._commands)
        for bridge in (self._commands, self._stats):
            if bridge is not None:
                bridge.close()
        if self._proc is not None:
            self._proc.stop(timeout_s=5)
            self._proc.kill()

    def _stream(self) -> None:
        period_s = 1.0 / self.command_hz
        next_at = time.perf_counter()
        for command, data in _emotion_commands():
            if self._stop.is_set():
                return
            try:
                ack = self._commands.request(command, data, timeout_s=2.0)
                with self._lock:
                    self._rtts_ms.append(ack.rtt_ns / 1e6)
            except BridgeError:
                with self._lock:
                    self._errors += 1
            next_at += period_s
            delay = next_at - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.perf_counter()  # fell behind: no burst to catch up

    def send_beat(self, commands: list[tuple[str, dict]], batched: bool) -> None:
        """Queue an emotion beat for the avatar without blocking the caller (the reply keeps
        streaming): sent as one `batch`, or command by command, each waited for, as the
        original companion did. Its latency runs from this call to the last ack."""
        self._beats.put((time.perf_counter_ns(), list(commands), batched))

    def drain_beats(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued beat has been acknowledged."""
        deadline = time.monotonic() + timeout_s
        while self._beats.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def _send_beats(self) -> None:
        while True:
            item = self._beats.get()
            if item is None:
                self._beats.task_done()
                return
            queued_ns, commands, batched = item
            try:
                if batched:
                    self._commands.send_batch(commands, timeout_s=5.0)
                else:
                    for command, data in commands:
                        self._commands.request(command, data, timeout_s=5.0)
                with self._lock:
                    self._beat_ms.append((time.perf_counter_ns() - queued_ns) / 1e6)
            except BridgeError:
                with self._lock:
                    self._errors += 1
            finally:
                self._beats.task_done()

    def _take_commands(self) -> tuple[list[float], int]:
        with self._lock:
            out, self._rtts_ms = self._rtts_ms, []
            errors, self._errors = self._errors, 0
        return out, errors

    def _take_beats(self) -> list[float]:
        with self._lock:
            out, self._beat_ms = self._beat_ms, []
        return out

    @property
    def _frame_stats(self) -> bool:
        return self.identity is None or self.identity.frame_stats

    def _query_frames(self) -> dict:
        """The avatar's frames since the last query (and a reset); {} from one without them."""
        if not self._frame_stats:
            return {}
        try:
            return self._stats.frame_stats(reset=True)
        except BridgeDisconnected as exc:
            if self.avatar:
                raise AvatarLost(self.avatar, exc) from exc
            raise

    def _check_connected(self) -> None:
        """Attached: a dropped command connection ends the run (a legacy avatar has no queries
        that would see it)."""
        if self.avatar and not self._commands.connected:
            raise AvatarLost(self.avatar, "the command connection closed")

    @contextmanager
    def window(self):
        """Measure the avatar side over the body of the `with`; yields a WindowResult."""
        self._query_frames()
        self._take_commands()
        self._take_beats()
        result = WindowResult()
        cpu_start_s, wall_start_s = self._peer_cpu_s(), time.perf_counter()
        start = self._bridge_state()
        try:
            yield result
        finally:
            self.drain_beats()
            stats = self._query_frames()
            self._check_connected()
            cpu_s, wall_s = self._peer_cpu_s() - cpu_start_s, time.perf_counter() - wall_start_s
            result.peer_busy_share = cpu_s / wall_s if wall_s > 0 else float("nan")
            bridge = self._bridge_state()
            result.peer_awake_share = _awake_share(start, bridge)
            overshoot = bridge.get("timer_overshoot_us")
            result.timer_overshoot_us = float("nan") if overshoot is None else float(overshoot)
            result.timer_resolution = str(bridge.get("timer_resolution") or "")
            rtts, errors = self._take_commands()
            result.beat_ms = self._take_beats()
            _fill_frames(result, stats, self.identity)
            result.command_rtt_ms = rtts
            result.command_errors = errors

    def _bridge_state(self) -> dict:
        """The peer's `stats` bridge state (its timer, its main thread's sleep); {} from an
        avatar that answers no queries (the companion's legacy bridge)."""
        if not self._frame_stats:
            return {}
        return self._stats.stats().get("bridge", {})

    def _peer_cpu_s(self) -> float:
        """The peer process's CPU time so far (user + system), NaN where it cannot be read."""
        try:
            times = psutil.Process(self._proc.proc.pid).cpu_times()
        except (psutil.Error, AttributeError):
            return float("nan")
        return times.user + times.system


def _awake_share(start: dict, end: dict) -> float:
    """1 - the main thread's time asleep over the peer's clock between two stats replies."""
    if None in (start.get("main_slept_s"), end.get("main_slept_s"), start.get("clock_s")):
        return float("nan")
    clock_s = end["clock_s"] - start["clock_s"]
    return (
        1.0 - (end["main_slept_s"] - start["main_slept_s"]) / clock_s
        if clock_s > 0
        else float("nan")
    )


def _fill_frames(result: WindowResult, stats: dict, identity: AvatarIdentity | None) -> None:
    """A frame_stats reply into the window's result, and why a figure is missing."""
    if identity is not None and not identity.frame_stats:
        result.note = identity.frames_unavailable
        return
    result.frames = int(stats.get("frames", 0))
    result.frame_interval_ms = [v / 1e3 for v in stats.get("frame_interval_us", [])]
    result.tick_ms = [v / 1e3 for v in stats.get("tick_us", [])]
    result.frame_first, result.frame_last = stats.get("first_frame"), stats.get("last_frame")
    result.cpu_main_ms = [v / 1e3 for v in stats.get("cpu_main_us") or []]
    result.gpu_ms = [v / 1e3 for v in stats.get("gpu_us") or []]
    timing = stats.get("frame_timing")
    if not (result.cpu_main_ms or result.gpu_ms):
        result.note = f"CPU main / GPU frame times: {timing or 'unavailable: not reported'}"


class NoLoad:
    """The `idle` background: nothing beside the measurement; windows report nothing."""

    def __enter__(self) -> NoLoad:
        return self

    def __exit__(self, *exc) -> None:
        pass

    @contextmanager
    def window(self):
        yield None


def avatar_alone(load, seconds: float = 3.0) -> dict:
    """The avatar's figures over `seconds` with no model working: what its frame pacing alone
    gives on this host (measured before any setting, so the frame rule can tell a host that
    cannot pace its frames from a setting that breaks them)."""
    with load.window() as avatar:
        time.sleep(seconds)
    return avatar.figures()


def background(
    kind: str,
    peer: str = "python",
    fps: float = 60.0,
    frame_busy: float = 0.5,
    command_hz=10.0,
    avatar: str = "",
):
    """The load for a background name: `idle` or `companion` (`avatar`: a running avatar's
    HOST:PORT instead of a spawned stand-in)."""
    if kind == "idle":
        return NoLoad()
    if kind == "companion":
        return CompanionLoad(peer, fps, frame_busy, command_hz, avatar)
    raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {kind!r}")
