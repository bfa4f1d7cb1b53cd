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

Paced frames (``fps`` > 0) are timed by ``FramePacer`` (mateperf/bridge/pacing.py): sleep to a
measured tail before the deadline, yield through the tail, so the rate holds where the OS timer
is coarse (Windows with Python 3.10). The measured sleep overshoot and the tail are in ``stats``.

``frame_busy`` (``--frame-busy``, a share of the frame period in [0, 1)) stands in for Unity's own
work on its main thread: after each paced frame's tick the main thread busy-spins that share of
the period. Every frame's interval and tick time are logged (the last 65536 frames) and
answered by the ``frame_stats`` query.

``apply_delay_ms`` (``--apply-delay-ms``) stands in for a slow avatar: the main thread sleeps
that long for every command it applies (each command of a batch too), before the ack. It is a
known answer for the benchmarks: a command awaited alone, unpaced, must take that much longer.
``--missing-blendshape NAME`` makes the avatar raise on ``set_expression`` of NAME, as a VRM rig
without that blendshape does: a real fault for the isolation tests.

Run it in its own process, as Unity is: ``python -m mateperf.bridge.peer --fps 60 --port 0``
prints ``{"event": "listening", "port": N}``; closing its stdin (or SIGTERM) stops it and it
prints ``{"event": "stopped", "counters": {...}}``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mateperf.bridge.frames import FrameLog, busy_spin_ns, check_frame_busy
from mateperf.bridge.pacing import FramePacer
from mateperf.bridge.protocol import (
    DEFAULT_HOST,
    MAX_LINE_BYTES,
    QUERY_COMMANDS,
    AvatarState,
    LineBuffer,
    ProtocolError,
    Request,
    decode_request,
    encode,
    greeting,
    response,
)

# What the original bridge answered from its socket thread before the main thread ran them.
LEGACY_EARLY_ACK = frozenset(
    {
        "set_expression",
        "reset_expressions",
        "set_transition_speed",
        "set_auto_blink",
        "set_auto_head_movement",
        "echo",
    }
)

# Defaults shared with the C# core (BridgeServer): a frame_stats reply of a full frame log is
# about 0.8 MB, and a buffer holding one is always accepted whatever the bound (see AckWriter).
DEFAULT_MAX_ACK_BUFFER_BYTES = 1 << 20
DEFAULT_ID_WINDOW = 4096
# the incoming bound per connection (the C# core's defaults too): 4096 requests is about 40
# frames of a 100-command budget and far above any pipelining window the client uses; the byte
# bound keeps large lines (up to MAX_LINE_BYTES each) from multiplying it
DEFAULT_MAX_QUEUED_REQUESTS = 4096
DEFAULT_MAX_QUEUED_BYTES = 4 << 20
ACCEPT_BACKOFF_S = (0.01, 1.0)  # first and longest pause after a failed accept
# a send that never blocks, per call, on a blocking socket (Linux, macOS); elsewhere every
# response goes through the writer thread
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def log(message: str) -> None:
    """One line on stderr; called from I/O threads only, never from the main loop."""
    print(f"mateperf-python peer: {message}", file=sys.stderr, flush=True)


@dataclass
class PeerCounters:
    """received = applied + rejected (+ still queued); a batch counts once, its commands apart.

    An apply error is a rejection too (the client gets an error response), and is also counted
    in ``apply_errors``; so is a request refused because its connection's queue was full
    (``queue_full``). Queries are never counted, except their apply errors.
    """

    received: int = 0
    applied: int = 0
    applied_commands: int = 0
    rejected: int = 0
    connections: int = 0
    dropped_clients: int = 0
    apply_errors: int = 0
    deferred: int = 0
    accept_errors: int = 0
    queue_full: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def count_received(self) -> None:  # the hot path: once per request line
        with self._lock:
            self.received += 1

    def count_applied(self, commands: int) -> None:
        with self._lock:
            self.applied += 1
            self.applied_commands += commands

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class RecentIds:
    """The last ``window`` request ids of one connection: duplicates are caught within it."""

    def __init__(self, window: int):
        self.window = window
        self._ids: set[Any] = set()
        self._order: collections.deque[Any] = collections.deque()

    def add(self, request_id: Any) -> bool:
        """Remember ``request_id``; False if it is already among the last ``window``."""
        if request_id in self._ids:
            return False
        self._ids.add(request_id)
        self._order.append(request_id)
        if len(self._order) > self.window:
            self._ids.discard(self._order.popleft())
        return True

    def __len__(self) -> int:
        return len(self._ids)


class AckWriter:
    """Sends one connection's responses without the caller ever waiting on the socket.

    ``offer`` sends at once, without blocking (``MSG_DONTWAIT``), what the kernel takes when
    nothing is waiting before it (the common case, with no thread hand-off in the round trip),
    and leaves the rest to this writer's thread, which may block. When the unsent bytes would
    exceed ``max_bytes`` while earlier ones are still unsent, the client is not reading:
    ``offer`` returns False and the connection is closed (the caller counts it; this thread
    logs it). A single response larger than the bound is still accepted into an empty buffer,
    so a big reply is never a drop.
    """

    def __init__(self, sock: socket.socket, max_bytes: int, name: str, on_exit: Callable):
        self._sock = sock
        self._max_bytes = max_bytes
        self._name = name
        self._on_exit = on_exit
        self._lock = threading.Lock()  # taken directly on the hot path (offer), not via _cond
        self._cond = threading.Condition(self._lock)
        self._chunks: list[bytes] = []
        self.pending_bytes = 0
        self.closed = False
        self._sending = False  # the thread is sending a taken chunk: offer must not overtake it
        self._overflow = ""
        self._thread = threading.Thread(target=self._run, daemon=True, name="bridge-write")
        self._thread.start()

    def offer(self, payload: bytes) -> bool:
        with self._lock:
            if self.closed:
                return True  # already gone: the response is dropped with the connection
            if _DONTWAIT and not self._chunks and not self._sending:
                try:
                    sent = self._sock.send(payload, _DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._close_locked()  # a broken connection: its reader ends it
                    return True
                if sent == len(payload):
                    return True
                payload = payload[sent:]
            if self.pending_bytes and self.pending_bytes + len(payload) > self._max_bytes:
                self._overflow = (
                    f"dropped client {self._name}: {self.pending_bytes + len(payload)} bytes of "
                    f"responses unread, over the bound of {self._max_bytes}"
                )
                self._close_locked()
                return False
            self._chunks.append(payload)
            self.pending_bytes += len(payload)
            self._cond.notify()
            return True

    def close(self) -> None:
        with self._cond:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._cond.notify()
        try:
            # wakes this connection's reader (recv returns) and a writer blocked in send
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._chunks and not self.closed:
                        self._cond.wait()
                    if self.closed:
                        break
                    chunks, self._chunks = self._chunks, []
                    self._sending = True
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                try:
                    self._sock.sendall(data)
                except OSError:
                    self.close()
                    break
                finally:
                    with self._cond:
                        self._sending = False
                        self.pending_bytes -= len(data)
        finally:
            if self._overflow:
                log(self._overflow)
            self._on_exit()


class _Connection:
    def __init__(self, sock: socket.socket, name: str, peer: FramePacedPeer):
        self.sock = sock
        self.name = name
        self._peer = peer
        self.seen_ids = RecentIds(peer.id_window)
        # requests and bytes queued for the main thread: each total has one writer (the reader
        # thread puts in, the main thread takes out), so neither needs a lock; a stale read
        # only refuses a little early
        self.queued_in = self.queued_in_bytes = 0
        self.queued_out = self.queued_out_bytes = 0
        self.queue_full_logged = False
        # the main thread's own: requests drained from the peer's queue and not yet applied,
        # and how many of the leading ones were already counted as deferred
        self.backlog: collections.deque[tuple[Request, int, int]] = collections.deque()
        self.deferred_front = 0
        self.tick_applied = 0
        self._users = 2  # the reader and the writer: the last one out closes the socket
        self._users_lock = threading.Lock()
        self.writer = AckWriter(sock, peer.max_ack_buffer_bytes, name, self.release)

    @property
    def open(self) -> bool:
        return not self.writer.closed

    @property
    def queued(self) -> tuple[int, int]:
        """Requests and bytes of request lines waiting for the main thread."""
        return self.queued_in - self.queued_out, self.queued_in_bytes - self.queued_out_bytes

    def send(self, payload: bytes) -> None:
        if not self.writer.offer(payload):
            self._peer.counters.add(dropped_clients=1)

    def close(self) -> None:
        self.writer.close()

    def release(self) -> None:
        """The reader or the writer is done; the last one closes the socket and prunes."""
        with self._users_lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.sock.close()
            self._peer._forget(self)


class FramePacedPeer:
    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        fps: float = 60.0,
        legacy: bool = False,
        max_line_bytes: int = MAX_LINE_BYTES,
        apply_delay_ms: float = 0.0,
        frame_busy: float = 0.0,
        *,
        max_ack_buffer_bytes: int = DEFAULT_MAX_ACK_BUFFER_BYTES,
        id_window: int = DEFAULT_ID_WINDOW,
        max_commands_per_frame: int = 0,
        max_tick_us: float = 0.0,
        missing_blendshapes: frozenset[str] = frozenset(),
        max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        spin_tail_us: float | None = None,
    ):
        if fps < 0:
            raise ValueError(f"fps must be >= 0, got {fps}")
        if apply_delay_ms < 0:
            raise ValueError(f"apply_delay_ms must be >= 0, got {apply_delay_ms}")
        if max_ack_buffer_bytes < 1 or id_window < 1:
            raise ValueError("max_ack_buffer_bytes and id_window must be >= 1")
        if max_commands_per_frame < 0 or max_tick_us < 0:
            raise ValueError("max_commands_per_frame and max_tick_us must be >= 0 (0: no limit)")
        if max_queued_requests < 1 or max_queued_bytes < 1:
            raise ValueError("max_queued_requests and max_queued_bytes must be >= 1")
        if spin_tail_us is not None and not spin_tail_us >= 0:
            raise ValueError(f"spin_tail_us must be >= 0, got {spin_tail_us}")
        self.fps = fps
        self.frame_busy = check_frame_busy(frame_busy)
        self.frames = FrameLog()
        self._frame_commands = 0  # commands applied in the current frame (a batch's each)
        self.apply_delay_s = apply_delay_ms / 1e3
        self.legacy = legacy
        self.max_line_bytes = max_line_bytes
        self.max_ack_buffer_bytes = max_ack_buffer_bytes
        self.id_window = id_window
        self.max_commands_per_frame = max_commands_per_frame
        self.max_tick_ns = int(max_tick_us * 1e3)
        self.max_queued_requests = max_queued_requests
        self.max_queued_bytes = max_queued_bytes
        self.spin_tail_us = spin_tail_us
        self.pacer: FramePacer | None = None  # made when paced frames start (it measures)
        self.avatar = AvatarState(missing_blendshapes=frozenset(missing_blendshapes))
        self.counters = PeerCounters()
        self.frame = 0
        # one queue item per received chunk: a burst of lines wakes the main loop once
        self._queue: queue.SimpleQueue[list[_Queued]] = queue.SimpleQueue()
        # the main thread's own: connections with a backlog, in the order they are served
        self._active: collections.deque[_Connection] = collections.deque()
        self._stop = threading.Event()
        self._listener = _listen(host, port)
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._connections: set[_Connection] = set()
        self._connections_lock = threading.Lock()

    # -- I/O side --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        pause_s, failing = ACCEPT_BACKOFF_S[0], False
        while not self._stop.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                # a persistent error (no file descriptors left) must not spin: back off
                self.counters.add(accept_errors=1)
                if not failing:
                    longest = ACCEPT_BACKOFF_S[1]
                    log(f"accept failed ({exc}); retrying with backoff up to {longest:g} s")
                failing = True
                self._stop.wait(pause_s)
                pause_s = min(pause_s * 2, ACCEPT_BACKOFF_S[1])
                continue
            if failing:
                log("accept works again")
            pause_s, failing = ACCEPT_BACKOFF_S[0], False
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock, f"{addr[0]}:{addr[1]}", self)
            with self._connections_lock:
                self._connections.add(conn)
            self.counters.add(connections=1)
            conn.send(encode(greeting(legacy=self.legacy, peer="mateperf-python")))
            t = threading.Thread(target=self._read_loop, args=(conn,), daemon=True)
            t.start()

    def _forget(self, conn: _Connection) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def _reject(self, conn: _Connection, message: str, request_id: Any, command: Any) -> None:
        self.counters.add(rejected=1)
        conn.send(encode(response(command, "error", message, request_id, legacy=self.legacy)))

    def _read_loop(self, conn: _Connection) -> None:
        lines = LineBuffer(self.max_line_bytes)
        try:
            while not self._stop.is_set() and conn.open:
                chunk = conn.sock.recv(1 << 16)
                if not chunk:
                    break
                recv_ns = time.perf_counter_ns()
                ready: list[_Queued] = []
                for line in lines.feed(chunk):
                    self._handle_line(conn, line, recv_ns, ready)
                if ready:
                    self._queue.put(ready)
        except OSError:
            pass
        finally:
            conn.close()
            conn.release()

    def _handle_line(
        self, conn: _Connection, line: bytes | None, recv_ns: int, ready: list
    ) -> None:
        if line is None:
            self.counters.add(received=1)
            self._reject(conn, f"line exceeds {self.max_line_bytes} bytes", None, None)
            return
        if not line.strip():
            return
        try:
            request = decode_request(line)
        except ProtocolError as exc:
            self.counters.add(received=1)
            self._reject(conn, str(exc), exc.request_id, exc.command)
            return
        if request.command not in QUERY_COMMANDS:
            self.counters.count_received()
        size = len(line) + 1  # as on the wire, with its newline
        queued, queued_bytes = conn.queued
        if queued and (
            queued >= self.max_queued_requests or queued_bytes + size > self.max_queued_bytes
        ):
            self._refuse_queue_full(conn, request, queued, queued_bytes)
            return
        if request.id is not None and not conn.seen_ids.add(request.id):
            message = f"duplicate id {request.id!r}"
            if request.command in QUERY_COMMANDS:  # answered, but queries are never counted
                conn.send(encode(response(request.command, "error", message, request.id)))
            else:
                self._reject(conn, message, request.id, request.command)
            return
        if self.legacy and request.command in LEGACY_EARLY_ACK:
            conn.send(encode(response(request.command, "success", "queued", legacy=True)))
        conn.queued_in += 1
        conn.queued_in_bytes += size
        ready.append((conn, request, recv_ns, size))

    def _refuse_queue_full(
        self, conn: _Connection, request: Request, queued: int, queued_bytes: int
    ) -> None:
        bound = f"{self.max_queued_requests} requests or {self.max_queued_bytes} bytes"
        message = (
            f"queue full: {queued} requests ({queued_bytes} bytes) from this connection wait for "
            f"the main thread, at the bound of {bound}; wait for acks before sending more"
        )
        if request.command in QUERY_COMMANDS:  # answered, but queries are never counted
            conn.send(encode(response(request.command, "error", message, request.id)))
        else:
            self.counters.add(queue_full=1)
            self._reject(conn, message, request.id, request.command)
        if not conn.queue_full_logged:
            conn.queue_full_logged = True
            log(
                f"client {conn.name} sends faster than the frame budget: {queued} requests "
                f"({queued_bytes} bytes) queued, at the bound of {bound}; its requests get "
                '"queue full" errors until the main thread catches up (counter queue_full)'
            )

    # -- main thread -----------------------------------------------------------------------------

    def _apply_command(self, command: str, data: dict) -> None:
        self.avatar.apply(command, data)
        if self.apply_delay_s:
            time.sleep(self.apply_delay_s)

    def _bridge_state(self) -> dict:
        with self._connections_lock:
            connections = list(self._connections)
        queued = [c.queued for c in connections]
        pacer = self.pacer
        return {
            "open_connections": len(connections),
            "queue_depth": sum(len(c.backlog) for c in self._active),
            "seen_ids": max((len(c.seen_ids) for c in connections), default=0),
            "ack_buffer_bytes": sum(c.writer.pending_bytes for c in connections),
            "id_window": self.id_window,
            "max_ack_buffer_bytes": self.max_ack_buffer_bytes,
            "max_commands_per_frame": self.max_commands_per_frame,
            "max_tick_us": self.max_tick_ns / 1e3,
            "queued_requests": sum(q[0] for q in queued),
            "queued_bytes": sum(q[1] for q in queued),
            "max_queued_requests": self.max_queued_requests,
            "max_queued_bytes": self.max_queued_bytes,
            # paced frames: how late a 1 ms sleep ends here (median) and the yielding tail
            "timer_overshoot_us": pacer.overshoot_median_ns / 1e3 if pacer else None,
            "spin_tail_us": pacer.spin_tail_ns / 1e3 if pacer else None,
        }

    def _run(self, request: Request) -> dict[str, Any]:
        """Apply one request (raises what the avatar raises); the ack's extra fields."""
        if request.command == "stats":
            state = {"counters": self.counters.as_dict(), "state": self.avatar.snapshot()}
            return {"data": {**state, "bridge": self._bridge_state()}}
        if request.command == "frame_stats":
            data = {
                **self.frames.snapshot(),
                "fps": float(self.fps),
                "frame_busy": self.frame_busy if self.fps else 0.0,  # applies to paced frames
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

    def _take(self, items: list[_Queued]) -> None:
        active = self._active
        for conn, request, recv_ns, size in items:
            if not conn.backlog:
                active.append(conn)
            conn.backlog.append((request, recv_ns, size))

    def tick(self, first: list[_Queued] | None = None) -> int:
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
        acks: dict[_Connection, list[bytes]] = {}
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
        accept = threading.Thread(target=self._accept_loop, daemon=True)
        accept.start()
        self._threads.append(accept)
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
        tail_ns = None if self.spin_tail_us is None else int(self.spin_tail_us * 1e3)
        self.pacer = pacer = FramePacer(tail_ns)
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
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close()


# a request on its way to the main thread: its connection, the request, when its chunk was
# received (perf_counter_ns) and its size on the wire
_Queued = tuple[_Connection, Request, int, int]


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


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket no other process can share: on Windows SO_REUSEADDR would let one
    bind the same port, so it is exclusive there; elsewhere SO_REUSEADDR lets a restarted peer
    rebind while old connections sit in TIME_WAIT (socket.create_server's default)."""
    if os.name == "nt":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)  # type: ignore[attr-defined]
        sock.bind((host, port))
        sock.listen()
        return sock
    return socket.create_server((host, port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mateperf reference Unity peer")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fps", type=float, default=60.0)
    parser.add_argument("--legacy", action="store_true")
    parser.add_argument("--max-line-bytes", type=int, default=MAX_LINE_BYTES)
    parser.add_argument(
        "--apply-delay-ms", type=float, default=0.0, help="main-thread time per applied command"
    )
    parser.add_argument(
        "--frame-busy",
        default="0",
        metavar="SHARE",
        help="share of each paced frame the main thread busy-spins after its tick, in [0, 1)",
    )
    parser.add_argument(
        "--max-ack-buffer-bytes",
        type=int,
        default=DEFAULT_MAX_ACK_BUFFER_BYTES,
        help="unsent response bytes per connection before a non-reading client is dropped",
    )
    parser.add_argument(
        "--id-window", type=int, default=DEFAULT_ID_WINDOW, help="ids kept per connection"
    )
    parser.add_argument(
        "--max-commands-per-frame", type=int, default=0, help="frame budget (0: no limit)"
    )
    parser.add_argument(
        "--max-tick-us", type=float, default=0.0, help="frame budget in µs (0: no limit)"
    )
    parser.add_argument(
        "--max-queued-requests",
        type=int,
        default=DEFAULT_MAX_QUEUED_REQUESTS,
        help="requests a connection may have waiting for the main thread; more get 'queue full'",
    )
    parser.add_argument(
        "--max-queued-bytes",
        type=int,
        default=DEFAULT_MAX_QUEUED_BYTES,
        help="bytes of request lines a connection may have waiting for the main thread",
    )
    parser.add_argument(
        "--spin-tail-us",
        type=float,
        default=None,
        help="paced frames: yield this long before each frame instead of sleeping "
        "(default: measured from the sleep overshoot at start)",
    )
    parser.add_argument(
        "--missing-blendshape",
        action="append",
        default=[],
        metavar="NAME",
        help="the avatar raises on set_expression of NAME (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.apply_delay_ms < 0:
        parser.error(f"--apply-delay-ms must be >= 0, got {args.apply_delay_ms:g}")
    try:
        frame_busy = check_frame_busy(args.frame_busy)
    except ValueError:
        print(f"--frame-busy must be a number in [0, 1), got {args.frame_busy!r}", file=sys.stderr)
        return 2
    try:
        peer = FramePacedPeer(
            args.host,
            args.port,
            args.fps,
            args.legacy,
            args.max_line_bytes,
            args.apply_delay_ms,
            frame_busy,
            max_ack_buffer_bytes=args.max_ack_buffer_bytes,
            id_window=args.id_window,
            max_commands_per_frame=args.max_commands_per_frame,
            max_tick_us=args.max_tick_us,
            missing_blendshapes=frozenset(args.missing_blendshape),
            max_queued_requests=args.max_queued_requests,
            max_queued_bytes=args.max_queued_bytes,
            spin_tail_us=args.spin_tail_us,
        )
    except ValueError as exc:
        print(f"mateperf-python peer: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"mateperf-python peer: cannot listen on {args.host}:{args.port}: "
            f"{exc.strerror or exc} (is another bridge running?)",
            file=sys.stderr,
        )
        return 1

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        peer.stop()

    threading.Thread(target=watch_stdin, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: peer.stop())
    print(json.dumps({"event": "listening", "peer": "python", "port": peer.port}), flush=True)
    peer.serve_forever()
    stopped = {"event": "stopped", "counters": peer.counters.as_dict(), "frames": peer.frame}
    print(json.dumps(stopped), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
