"""FramePacedPeer: a reference Unity side that applies commands once per frame.

Unity can touch the avatar only from its main thread, once per frame. The peer models that,
under the same rules as the C# core (unity/Runtime/Core/BridgeServer.cs):

- one reader thread per connection reads, validates and queues; bad input is answered from it
  and never reaches the main loop;
- the main loop wakes every ``1/fps`` seconds (or as soon as work arrives when ``fps`` is 0),
  and ticks: it applies queued commands to an in-memory ``AvatarState`` and acks them;
- the main thread never waits on a socket: acks go to the connection's ``AckWriter``, which
  sends without blocking what the kernel takes and leaves the rest to its own thread, within a
  bounded buffer. A client that stops reading is dropped once ``max_ack_buffer_bytes`` of its
  acks are unsent (counter ``dropped_clients``, one line on stderr), never waited for;
- each command is applied in isolation: one that raises gets an error ack (a batch is rolled
  back and gets one), is counted (``apply_errors``) and the frame goes on;
- a tick applies at most ``max_commands_per_frame`` commands and/or ``max_tick_us`` of work
  (0: no limit; a batch is never split, and a tick always applies at least one request) and
  leaves the rest, in order, for the next frame (counter ``deferred``, ``queue_depth``);
- the incoming side is bounded per connection: a request that would take a connection past
  ``max_queued_requests`` requests or ``max_queued_bytes`` bytes of request lines waiting for
  the main thread is refused at once from the reader thread, with an error response
  ``queue full: ...`` carrying its id (counters ``queue_full`` and ``rejected``; the first
  refusal of a connection is logged), so a client that sends faster than the frame budget is
  told so and the peer's memory stays bounded (a request into an empty queue is always taken);
- connections are served in turn: each frame applies one request of each connection with work
  before a second of any, so a flooding client delays its own requests, not another client's;
- state is bounded: duplicate ids are detected over the last ``id_window`` ids of a
  connection, closed connections are pruned, a failing accept backs off.

Paced frames (``fps`` > 0) are timed by ``FramePacer`` (mateperf/bridge/pacing.py): a 1 ms timer
asked of Windows while the peer runs, then sleep to a measured tail before the deadline and yield
through the tail, so the rate holds where the OS timer is coarse (Windows with Python 3.10). The
measured sleep overshoot, the tail and the timer resolution are in ``stats``.

``frame_busy`` (``--frame-busy``, a share of the frame period in [0, 1)) stands in for Unity's own
work on its main thread: after each paced frame's tick the main thread busy-spins that share of
the period. Every frame's interval and tick time are logged (the last 65536 frames) and
answered by the ``frame_stats`` query.

``apply_delay_ms`` (``--apply-delay-ms``) stands in for a slow avatar: the main thread sleeps
that long for every command it applies (each command of a batch too), before the ack. It is a
known answer for the benchmarks: a command awaited alone, unpaced, must take that much longer.
``--missing-blendshape NAME`` makes the avatar raise on ``set_expression`` of NAME, as a VRM rig
without that blendshape does: a real fault for the isolation tests.

The peer answers ``identity`` (what it is: ``PeerConfig.identity``), and ``--frame-log PATH``
writes every frame to a CSV file of its own (``FrameLogFile``) for tests to read independently.

Rooms: this module is the main loop (Unity's main thread); ``mateperf.bridge.connection`` the
sockets (accept, one reader per client, bounded writers); ``mateperf.bridge.peer_config`` the
settings; ``mateperf.bridge.peer_main`` the command line. Run it in its own process, as Unity
is: ``python -m mateperf.bridge.peer_main --fps 60 --port 0`` prints
``{"event": "listening", "port": N}``; Ctrl+C or SIGTERM (or, with ``--stop-on-stdin-eof``,
the end of its stdin) stops it and it prints
``{"event": "stopped", "counters": {...}}``.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from typing import Any

from mateperf.bridge.connection import (
    LEGACY_EARLY_ACK,
    Connection,
    Intake,
    PeerCounters,
    Queued,
)
from mateperf.bridge.frames import FrameLog, FrameLogFile, busy_spin_ns
from mateperf.bridge.pacing import FramePacer
from mateperf.bridge.peer_config import NO_FRAME_TIMING, PeerConfig
from mateperf.bridge.protocol import QUERY_COMMANDS, AvatarState, Request, encode, response


class FramePacedPeer:
    """The main loop; `FramePacedPeer(PeerConfig(...))`, or its fields as keywords."""

    def __init__(self, config: PeerConfig | None = None, **settings: Any):
        if config is None:
            config = PeerConfig(**settings)
        elif settings:
            raise TypeError("give a PeerConfig or its fields as keywords, not both")
        self.config = config
        self.fps = config.fps
        self.frame_busy = config.frame_busy
        self.legacy = config.legacy
        self.frames = FrameLog()
        self._frame_commands = 0  # commands applied in the current frame (a batch's each)
        self.apply_delay_s = config.apply_delay_ms / 1e3
        self.max_commands_per_frame = config.max_commands_per_frame
        self.max_tick_ns = int(config.max_tick_us * 1e3)
        self.pacer: FramePacer | None = None  # made when paced frames start (it measures)
        self.avatar = AvatarState(missing_blendshapes=config.missing_blendshapes)
        self.counters = PeerCounters()
        self.frame = 0
        # one queue item per received chunk: a burst of lines wakes the main loop once
        self._queue: queue.SimpleQueue[list[Queued]] = queue.SimpleQueue()
        # the main thread's own: connections with a backlog, in the order they are served
        self._active: collections.deque[Connection] = collections.deque()
        self._stop = threading.Event()
        self._intake = Intake(config, self.counters, self._queue.put)
        self.host, self.port = self._intake.host, self._intake.port
        if config.frame_log:
            self.frames.file = FrameLogFile(config.frame_log)

    def _apply_command(self, command: str, data: dict) -> None:
        self.avatar.apply(command, data)
        if self.apply_delay_s:
            if self.pacer is not None:  # made for an apply delay: held to the µs, not to the
                self.pacer.hold(self.apply_delay_s)  # timer's next tick (15.6 ms on Windows)
            else:
                time.sleep(self.apply_delay_s)

    def _bridge_state(self) -> dict:
        connections = self._intake.connections()
        queued = [c.queued for c in connections]
        pacer = self.pacer
        return {
            "open_connections": len(connections),
            "queue_depth": sum(len(c.backlog) for c in self._active),
            "seen_ids": max((len(c.seen_ids) for c in connections), default=0),
            "ack_buffer_bytes": sum(c.writer.pending_bytes for c in connections),
            "id_window": self.config.id_window,
            "max_ack_buffer_bytes": self.config.max_ack_buffer_bytes,
            "max_commands_per_frame": self.max_commands_per_frame,
            "max_tick_us": self.max_tick_ns / 1e3,
            "queued_requests": sum(q[0] for q in queued),
            "queued_bytes": sum(q[1] for q in queued),
            "max_queued_requests": self.config.max_queued_requests,
            "max_queued_bytes": self.config.max_queued_bytes,
            # paced frames: how late a 1 ms sleep ends here (median), the yielding tail, and
            # the timer resolution asked for (pacing.TimerResolution)
            "timer_overshoot_us": pacer.overshoot_median_ns / 1e3 if pacer else None,
            "spin_tail_us": pacer.spin_tail_ns / 1e3 if pacer else None,
            "timer_resolution": pacer.resolution.status if pacer else None,
            # the main thread's time asleep so far, on the peer's clock: a window's awake
            # share is 1 - its difference over the clock's
            "main_slept_s": pacer.slept_ns / 1e9 if pacer else None,
            "clock_s": time.perf_counter(),
        }

    def _run(self, request: Request) -> dict[str, Any]:
        """Apply one request (raises what the avatar raises); the ack's extra fields."""
        if request.command == "stats":
            state = {"counters": self.counters.as_dict(), "state": self.avatar.snapshot()}
            return {"data": {**state, "bridge": self._bridge_state()}}
        if request.command == "identity":
            return {"data": self.config.identity()}
        if request.command == "frame_stats":
            data = {
                **self.frames.snapshot(),
                "fps": float(self.fps),
                "frame_busy": self.frame_busy if self.fps else 0.0,  # applies to paced frames
                "frame_timing": NO_FRAME_TIMING,  # no cpu_main_us / gpu_us lists
            }
            if request.data.get("reset", True):
                self.frames.clear()
            return {"data": data}
        if request.command == "batch":
            subs = request.data["commands"]
            checkpoint = self.avatar.checkpoint()
            for i, sub in enumerate(subs):
                try:
                    self._apply_command(sub["command"], sub.get("data") or {})
                except Exception as exc:
                    self.avatar.restore(checkpoint)  # all or nothing
                    raise _BatchFailed(i, sub["command"], exc) from exc
            self.counters.count_applied(len(subs))
            self._frame_commands += len(subs)
            return {"count": len(subs)}
        self._apply_command(request.command, request.data)
        self.counters.count_applied(1)
        self._frame_commands += 1
        return {}

    def _apply(self, request: Request, recv_ns: int) -> bytes | None:
        """Apply one request in isolation: its ack, or its error response if applying raised."""
        try:
            extra = self._run(request)
        except Exception as exc:
            if request.command in QUERY_COMMANDS:
                self.counters.add(apply_errors=1)
            else:
                self.counters.add(apply_errors=1, rejected=1)
            if isinstance(exc, _BatchFailed):
                message = str(exc)
            else:
                message = f"{request.command} failed: {type(exc).__name__}: {exc}"
            error = response(request.command, "error", message, request.id, legacy=self.legacy)
            return encode(error)
        if self.legacy:
            if request.command in LEGACY_EARLY_ACK:
                return None
            return encode(response(request.command, "success", "applied", legacy=True, **extra))
        reply = response(
            request.command,
            "success",
            "applied",
            request.id,
            frame=self.frame,
            recv_ns=recv_ns,
            apply_ns=time.perf_counter_ns(),
            **extra,
        )
        return encode(reply)

    def _over_budget(self, start_ns: int, commands: int, cost: int) -> bool:
        limit = self.max_commands_per_frame
        if limit and commands + cost > limit:
            return True
        return bool(self.max_tick_ns) and time.perf_counter_ns() - start_ns >= self.max_tick_ns

    def _take(self, items: list[Queued]) -> None:
        active = self._active
        for conn, request, recv_ns, size in items:
            if not conn.backlog:
                active.append(conn)
            conn.backlog.append((request, recv_ns, size))

    def tick(self, first: list[Queued] | None = None) -> int:
        """One frame: apply what is queued, within the budget, one request of each connection
        in turn, and ack it; return how many requests were applied (or answered with an apply
        error)."""
        start_ns = time.perf_counter_ns()
        self.frames.frame_started(start_ns)
        self._frame_commands = 0
        self.frame += 1
        if first is not None:
            self._take(first)
        while True:
            try:
                self._take(self._queue.get_nowait())
            except queue.Empty:
                break
        active = self._active
        acks: dict[Connection, list[bytes]] = {}
        n = commands = 0
        budget = self.max_commands_per_frame or self.max_tick_ns
        while active:
            conn = active[0]
            request, recv_ns, size = conn.backlog[0]
            if budget:
                cost = _cost(request)
                if n and self._over_budget(start_ns, commands, cost):
                    break
                commands += cost
            conn.backlog.popleft()
            active.popleft()
            if conn.backlog:
                conn.tick_applied += 1
                active.append(conn)
            else:
                conn.tick_applied = conn.deferred_front = 0
            conn.queued_out += 1
            conn.queued_out_bytes += size
            n += 1
            line = self._apply(request, recv_ns)
            if line is not None:
                acks.setdefault(conn, []).append(line)
        for conn, lines in acks.items():
            conn.send(lines[0] if len(lines) == 1 else b"".join(lines))
        left = deferred = 0
        for conn in active:
            # each request is counted once, the first frame that leaves it for later
            waiting = len(conn.backlog)
            deferred += waiting - max(0, conn.deferred_front - conn.tick_applied)
            conn.deferred_front, conn.tick_applied = waiting, 0
            left += waiting
        if deferred:
            self.counters.add(deferred=deferred)
        self.frames.tick_done(time.perf_counter_ns() - start_ns, self._frame_commands, left)
        return n

    def serve_forever(self) -> None:
        """Run the main loop until `stop`; then close the frame log (its last lines written)."""
        self._intake.start()
        try:
            if self.fps == 0 and not self.apply_delay_s:
                self._loop()
                return
            # paced frames, or an apply delay held as exactly as a frame: a fine timer, measured
            tail_us = self.config.spin_tail_us
            tail_ns = None if tail_us is None else int(tail_us * 1e3)
            with FramePacer(tail_ns, who="mateperf-python peer") as pacer:
                self.pacer = pacer
                self._loop()
        finally:
            self.close_frame_log()

    def _loop(self) -> None:
        if self.fps == 0:
            while not self._stop.is_set():
                if self._active:  # left over by the budget: the next frame comes at once
                    self.tick()
                    continue
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                self.tick(first=item)
            return
        pacer = self.pacer
        assert pacer is not None  # serve_forever made it
        period_ns = int(1e9 / self.fps)
        busy_ns = int(self.frame_busy * period_ns)
        next_frame = time.perf_counter_ns()
        while not self._stop.is_set():
            now = time.perf_counter_ns()
            if now < next_frame:
                pacer.wait_until(next_frame)
            next_frame += period_ns
            if next_frame < now:  # fell behind: skip frames like a game loop, not a burst
                next_frame = now + period_ns
            self.tick()
            if busy_ns:
                busy_spin_ns(busy_ns)

    def stop(self) -> None:
        """Stop the loop and every connection (from any thread); the frame log is closed when
        the loop returns."""
        self._stop.set()
        self._intake.stop()

    def close_frame_log(self) -> None:
        if self.frames.file is not None:
            self.frames.file.close()
            self.frames.file = None


class _BatchFailed(Exception):
    def __init__(self, index: int, command: str, cause: Exception):
        super().__init__(
            f"batch.commands[{index}]: {command} failed: {type(cause).__name__}: {cause}; "
            "the batch was not applied"
        )


def _cost(request: Request) -> int:
    """What a request weighs against the per-frame command budget."""
    if request.command == "batch":
        return len(request.data["commands"])
    return 0 if request.command in QUERY_COMMANDS else 1
