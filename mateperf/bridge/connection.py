"""The reference peer's connection I/O: listening, one reader thread per client, bounded writers.

Everything here runs off the main thread (Unity's): the reader thread of a connection reads,
validates and queues its requests for the main loop (`mateperf.bridge.peer`), and answers bad
input itself; the connection's `AckWriter` sends the main loop's acks without the main loop ever
waiting on the socket. The rules are the C# core's (unity/Runtime/Core/BridgeServer.cs); the
module docstring of `mateperf.bridge.peer` lists them.
"""

from __future__ import annotations

import collections
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mateperf.bridge.peer_config import PEER_NAME, PeerConfig
from mateperf.bridge.protocol import (
    QUERY_COMMANDS,
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
ACCEPT_BACKOFF_S = (0.01, 1.0)  # first and longest pause after a failed accept
# a send that never blocks, per call, on a blocking socket (Linux, macOS); elsewhere every
# response goes through the writer thread
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def log(message: str) -> None:
    """One line on stderr; called from I/O threads only, never from the main loop."""
    print(f"{PEER_NAME} peer: {message}", file=sys.stderr, flush=True)


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


class Connection:
    """One client: its socket, its writer, the ids it sent, what it has queued for the main
    thread. The reader thread and the writer each hold it; the last one out closes it."""

    def __init__(self, sock: socket.socket, name: str, intake: Intake):
        self.sock = sock
        self.name = name
        self._intake = intake
        self.seen_ids = RecentIds(intake.config.id_window)
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
        self.writer = AckWriter(sock, intake.config.max_ack_buffer_bytes, name, self.release)

    @property
    def open(self) -> bool:
        return not self.writer.closed

    @property
    def queued(self) -> tuple[int, int]:
        """Requests and bytes of request lines waiting for the main thread."""
        return self.queued_in - self.queued_out, self.queued_in_bytes - self.queued_out_bytes

    def send(self, payload: bytes) -> None:
        if not self.writer.offer(payload):
            self._intake.counters.add(dropped_clients=1)

    def close(self) -> None:
        self.writer.close()

    def release(self) -> None:
        """The reader or the writer is done; the last one closes the socket and prunes."""
        with self._users_lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.sock.close()
            self._intake.forget(self)


# a request on its way to the main thread: its connection, the request, when its chunk was
# received (perf_counter_ns) and its size on the wire
Queued = tuple[Connection, Request, int, int]


class Intake:
    """The listening socket and every connection's reader: requests go to `deliver` (one list
    per received chunk, so a burst of lines wakes the main loop once)."""

    def __init__(self, config: PeerConfig, counters: PeerCounters, deliver: Callable[[list], None]):
        self.config = config
        self.counters = counters
        self._deliver = deliver
        self._stop = threading.Event()
        self._listener = listen(config.host, config.port)
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._connections: set[Connection] = set()
        self._connections_lock = threading.Lock()

    def connections(self) -> list[Connection]:
        with self._connections_lock:
            return list(self._connections)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.accept_loop, daemon=True, name="bridge-accept")
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        for conn in self.connections():
            conn.close()

    def accept_loop(self) -> None:
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
            conn = Connection(sock, f"{addr[0]}:{addr[1]}", self)
            with self._connections_lock:
                self._connections.add(conn)
            self.counters.add(connections=1)
            conn.send(encode(greeting(legacy=self.config.legacy, peer=PEER_NAME)))
            t = threading.Thread(target=self._read_loop, args=(conn,), daemon=True)
            t.start()

    def forget(self, conn: Connection) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def _reject(self, conn: Connection, message: str, request_id: Any, command: Any) -> None:
        self.counters.add(rejected=1)
        legacy = self.config.legacy
        conn.send(encode(response(command, "error", message, request_id, legacy=legacy)))

    def _read_loop(self, conn: Connection) -> None:
        lines = LineBuffer(self.config.max_line_bytes)
        try:
            while not self._stop.is_set() and conn.open:
                chunk = conn.sock.recv(1 << 16)
                if not chunk:
                    break
                recv_ns = time.perf_counter_ns()
                ready: list[Queued] = []
                for line in lines.feed(chunk):
                    self._handle_line(conn, line, recv_ns, ready)
                if ready:
                    self._deliver(ready)
        except OSError:
            pass
        finally:
            conn.close()
            conn.release()

    def _handle_line(self, conn: Connection, line: bytes | None, recv_ns: int, ready: list) -> None:
        if line is None:
            self.counters.add(received=1)
            self._reject(conn, f"line exceeds {self.config.max_line_bytes} bytes", None, None)
            return
        if not line.strip():
            return
        try:
            request = decode_request(line)
        except ProtocolError as exc:
            self.counters.add(received=1)
            self._reject(conn, str(exc), exc.request_id, exc.command)
            return
        if request.command in QUERY_COMMANDS:
            if self.config.legacy:  # the companion's own bridge knows no queries
                message = f"unknown command {request.command!r}"
                conn.send(encode(response(request.command, "error", message, legacy=True)))
                return
        else:
            self.counters.count_received()
        size = len(line) + 1  # as on the wire, with its newline
        queued, queued_bytes = conn.queued
        bound = self.config
        if queued and (
            queued >= bound.max_queued_requests or queued_bytes + size > bound.max_queued_bytes
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
        if self.config.legacy and request.command in LEGACY_EARLY_ACK:
            conn.send(encode(response(request.command, "success", "queued", legacy=True)))
        conn.queued_in += 1
        conn.queued_in_bytes += size
        ready.append((conn, request, recv_ns, size))

    def _refuse_queue_full(
        self, conn: Connection, request: Request, queued: int, queued_bytes: int
    ) -> None:
        c = self.config
        bound = f"{c.max_queued_requests} requests or {c.max_queued_bytes} bytes"
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


def listen(host: str, port: int) -> socket.socket:
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
