"""UnityBridge: the Python side of the bridge, as Desktop-Mate uses it.

One socket (TCP_NODELAY) and a send lock so any thread may call it. There is no reader
thread: the thread that waits reads (a leader/follower scheme), because on a loaded two-core
host a wake-up handed from a reader thread to the waiter costs as much as the loopback round
trip itself. Whoever holds the read lock dispatches every response it reads to its request.

Every request ends in exactly one outcome: an ``Ack``, a ``CommandRejected`` (the peer's
error response), a ``BridgeTimeout`` or a ``BridgeDisconnected``. A request is never
re-sent: after a disconnect the caller decides.

Against a legacy peer (no ids in its responses) the client matches responses to requests of
the same command in the order they were sent, and says so through ``legacy``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mateperf.bridge.outcomes import (
    Ack,
    BridgeConnectError,
    BridgeDisconnected,
    BridgeError,
    BridgeTimeout,
    ClientCounters,
    CommandRejected,
    PendingRequest,
    Readable,
)
from mateperf.bridge.protocol import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_LINE_BYTES,
    LineBuffer,
    ProtocolError,
    decode_response,
    encode_request,
)

log = logging.getLogger(__name__)
# the outcomes are imported from here by callers: one place to import the client from
__all__ = [
    "Ack",
    "BridgeConnectError",
    "BridgeDisconnected",
    "BridgeError",
    "BridgeTimeout",
    "ClientCounters",
    "CommandRejected",
    "PendingRequest",
    "UnityBridge",
]


Command = tuple[str, dict] | dict


def _as_wire(command: Command) -> dict:
    if isinstance(command, dict):
        return {"command": command["command"], "data": command.get("data") or {}}
    name, data = command
    return {"command": name, "data": data or {}}


@dataclass
class UnityBridge:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    connect_timeout_s: float = 2.0
    connect_attempts: int = 3
    retry_delay_s: float = 0.2
    request_timeout_s: float = 5.0
    auto_reconnect: bool = True
    max_line_bytes: int = MAX_LINE_BYTES
    legacy: bool = field(default=False, init=False)
    counters: ClientCounters = field(default_factory=ClientCounters, init=False)

    def __post_init__(self) -> None:
        self._sock: socket.socket | None = None
        self._poller = Readable(None)
        self._lines = LineBuffer(self.max_line_bytes)
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._pending: dict[Any, PendingRequest] = {}
        self._legacy_fifo: dict[str, collections.deque[PendingRequest]] = {}
        self._ids = itertools.count(1)
        self._greeted = False

    # -- connection ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> UnityBridge:
        last: BaseException | None = None
        for attempt in range(1, self.connect_attempts + 1):
            try:
                sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
            except OSError as exc:
                last = exc
                if attempt < self.connect_attempts:
                    time.sleep(self.retry_delay_s)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
            with self._read_lock:
                self._greeted = False
                self._lines = LineBuffer(self.max_line_bytes)
                self._poller = Readable(sock)
                with self._state_lock:
                    self._sock = sock
                deadline = time.monotonic() + self.connect_timeout_s
                while not self._greeted and self._sock is sock:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._read_some(sock, remaining)
            if self._greeted and self._sock is sock:
                return self
            last = TimeoutError("no greeting from the peer")
            self._drop(sock, "no greeting")
            if attempt < self.connect_attempts:
                time.sleep(self.retry_delay_s)
        raise BridgeConnectError(self.host, self.port, self.connect_attempts, last)

    def reconnect(self) -> UnityBridge:
        self.close()
        self.counters.reconnects += 1
        return self.connect()

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            self._drop(sock, "closed by client")

    def __enter__(self) -> UnityBridge:
        return self.connect() if not self.connected else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self, sock: socket.socket, reason: str) -> None:
        """Close ``sock`` and fail everything pending on it (once)."""
        with self._state_lock:
            if self._sock is not sock:
                return
            self._sock = None
            pending = list(self._pending.values())
            self._pending.clear()
            for fifo in self._legacy_fifo.values():
                pending.extend(fifo)
            self._legacy_fifo.clear()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        for p in pending:
            if not p.abandoned:
                self.counters.disconnected += 1
                p.resolve(BridgeDisconnected(p.command, p.id, reason))

    def _read_some(self, sock: socket.socket, timeout_s: float) -> None:
        """Read what arrives within ``timeout_s`` and dispatch it (caller holds the read lock)."""
        try:
            if not self._poller.wait(timeout_s):
                return
            chunk = sock.recv(1 << 16)
        except (OSError, ValueError) as exc:
            self._drop(sock, f"{type(exc).__name__}: {exc}")
            return
        if not chunk:
            self._drop(sock, "peer closed the connection")
            return
        acked_ns = time.perf_counter_ns()
        for line in self._lines.feed(chunk):
            if line is not None and line.strip():
                self._dispatch(line, acked_ns)

    def _await(self, pending: PendingRequest, timeout_s: float) -> None:
        """Wait until ``pending`` has an outcome or ``timeout_s`` passes, reading if nobody is."""
        deadline = time.monotonic() + timeout_s
        while not pending.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._read_lock.acquire(blocking=False):
                try:
                    sock = self._sock
                    if sock is None:
                        return
                    if not pending.done:
                        self._read_some(sock, min(remaining, 0.05))
                finally:
                    self._read_lock.release()
            else:
                # another thread is reading and will resolve us; poll so we can take over
                if pending.event is None:
                    pending.event = threading.Event()
                if not pending.done:
                    pending.event.wait(min(remaining, 0.001))

    def _dispatch(self, line: bytes, acked_ns: int) -> None:
        try:
            msg = decode_response(line)
        except ProtocolError as exc:
            log.warning("ignoring a bad line from the peer: %s", exc)
            self.counters.unmatched += 1
            return
        if msg.get("status") == "connected":
            self.legacy = "protocol" not in msg
            if self.legacy:
                log.warning("peer speaks the legacy protocol: responses matched in order")
            self._greeted = True
            return
        with self._state_lock:
            if self.legacy or msg.get("id") is None:
                fifo = self._legacy_fifo.get(msg.get("command") or "")
                pending = fifo.popleft() if fifo else None
            else:
                pending = self._pending.pop(msg["id"], None)
        if pending is None:
            self.counters.unmatched += 1
            return
        if pending.abandoned:
            self.counters.late += 1
            return
        if msg.get("status") != "success":
            self.counters.rejected += 1
            pending.resolve(CommandRejected(msg))
            return
        self.counters.acked += 1
        ack = Ack(
            id=pending.id,
            command=pending.command,
            sent_ns=pending.sent_ns,
            acked_ns=acked_ns,
            frame=msg.get("frame"),
            recv_ns=msg.get("recv_ns"),
            apply_ns=msg.get("apply_ns"),
            count=msg.get("count", 1),
            data=msg.get("data"),
        )
        pending.resolve(ack)

    # -- requests --------------------------------------------------------------------------------

    def _ensure_connected(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            if not self.auto_reconnect:
                raise BridgeDisconnected(None, None, "not connected")
            self.counters.reconnects += 1
            self.connect()
            sock = self._sock
            if sock is None:
                raise BridgeDisconnected(None, None, "connection lost while connecting")
        return sock

    def _write(self, sock: socket.socket, payload: bytes, pending: list[PendingRequest]) -> None:
        try:
            with self._send_lock:
                sent_ns = time.perf_counter_ns()
                for p in pending:
                    p.sent_ns = sent_ns
                sock.sendall(payload)
        except OSError as exc:
            self._drop(sock, f"send failed: {exc}")

    def send(self, command: str, data: dict | None = None) -> None:
        """Fire-and-forget, as the original bridge did: no id, no wait (its response is dropped)."""
        sock = self._ensure_connected()
        placeholder = PendingRequest(None, command)
        placeholder.abandoned = True
        with self._state_lock:
            self._legacy_fifo.setdefault(command, collections.deque()).append(placeholder)
        self.counters.sent += 1
        self._write(sock, encode_request(command, data), [])
        # nobody waits for these responses: read what is there so the peer never blocks on us
        if self._read_lock.acquire(blocking=False):
            try:
                if self._sock is sock:
                    self._read_some(sock, 0.0)
            finally:
                self._read_lock.release()

    def submit(self, command: str, data: dict | None = None) -> PendingRequest:
        """Put one request on the wire and return at once; pass it to ``wait``."""
        return self.submit_many([(command, data or {})])[0]

    def submit_many(self, commands: Sequence[Command]) -> list[PendingRequest]:
        """Put several requests on the wire in one write (each keeps its own id and ack)."""
        sock = self._ensure_connected()
        wires = [_as_wire(c) for c in commands]
        out: list[PendingRequest] = []
        payload = []
        with self._state_lock:
            if self._sock is not sock:
                reason = "connection lost before sending"
                raise BridgeDisconnected(wires[0]["command"], None, reason)
            for wire in wires:
                command, data = wire["command"], wire["data"]
                if self.legacy:
                    pending = PendingRequest(None, command)
                    self._legacy_fifo.setdefault(command, collections.deque()).append(pending)
                    payload.append(encode_request(command, data))
                else:
                    pending = PendingRequest(next(self._ids), command)
                    self._pending[pending.id] = pending
                    payload.append(encode_request(command, data, pending.id))
                out.append(pending)
        self.counters.sent += len(out)
        self._write(sock, b"".join(payload), out)
        return out

    def wait(self, pending: PendingRequest, timeout_s: float | None = None) -> Ack:
        """The outcome of a submitted request: its Ack, or the BridgeError it ended with."""
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        self._await(pending, timeout_s)
        with self._state_lock:
            if pending.outcome is None:
                # stays registered so a late response is recognised, counted, never delivered
                pending.abandoned = True
                self.counters.timed_out += 1
                pending.outcome = BridgeTimeout(pending.command, pending.id, timeout_s)
        return pending.result()

    def request(
        self, command: str, data: dict | None = None, timeout_s: float | None = None
    ) -> Ack:
        """Send one command and wait for its completion ack."""
        return self.wait(self.submit(command, data), timeout_s)

    def send_batch(self, commands: Iterable[Command], timeout_s: float | None = None) -> Ack:
        """Send commands as one ``batch``: the peer applies them all in one frame."""
        return self.request("batch", {"commands": [_as_wire(c) for c in commands]}, timeout_s)

    def pipeline(
        self, commands: Sequence[Command], window: int = 16, timeout_s: float | None = None
    ) -> list[Ack | BridgeError]:
        """Send with at most ``window`` requests in flight; one outcome per command, in order.

        A lost connection ends the pipeline: what was in flight fails with BridgeDisconnected
        and the commands not yet sent get that same error (they are never sent later).

        ``timeout_s`` bounds the wait for each request once it is the oldest in flight.
        """
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        out: list[Ack | BridgeError] = []
        in_flight: collections.deque[PendingRequest] = collections.deque()

        aborted: list[BridgeError] = []

        def settle_oldest() -> None:
            try:
                out.append(self.wait(in_flight.popleft(), timeout_s))
            except BridgeDisconnected as exc:
                out.append(exc)
                aborted.append(exc)
            except BridgeError as exc:
                out.append(exc)

        i = 0
        while i < len(commands) or in_flight:
            free = window - len(in_flight)
            if free > 0 and i < len(commands) and not aborted:
                # refill every free slot in one write: fewer syscalls, same window
                chunk = commands[i : i + free]
                i += len(chunk)
                try:
                    in_flight.extend(self.submit_many(chunk))
                except BridgeError as exc:
                    while in_flight:
                        settle_oldest()
                    out.extend([exc] * len(chunk))
                    aborted.append(exc)
                    continue
            if in_flight:
                settle_oldest()
                while in_flight and in_flight[0].done:
                    settle_oldest()
            elif aborted:
                # the connection is gone: the rest is never sent, each gets that outcome
                out.extend([aborted[0]] * (len(commands) - i))
                i = len(commands)
        return out

    def stats(self, timeout_s: float | None = None) -> dict:
        """The peer's counters and avatar state (a mateperf peer only)."""
        if self.legacy:
            raise BridgeError("a legacy peer has no stats command")
        return self._query("stats", None, timeout_s)

    def frame_stats(self, reset: bool = True, timeout_s: float | None = None) -> dict:
        """The peer's frames since the last reset (a mateperf peer only), oldest first.

        ``frames`` (int), ``frame_interval_us`` and ``tick_us`` (lists of ints, µs: start of a
        frame to the start of the next; main-thread time in Tick without the frame's busy
        spin), ``commands`` and ``queue_depth`` (per frame: commands applied, requests left
        queued), ``fps`` and ``frame_busy`` (floats), ``first_frame`` and ``last_frame`` (the
        peer's running numbers of the oldest and newest frame, None without frames or from a
        peer older than them), ``frame_timing`` ("available", or "unavailable: <reason>") and,
        where available, ``cpu_main_us`` and ``gpu_us`` (Unity's FrameTimingManager).
        ``reset`` clears the peer's window after the reply; the peer keeps at most its last
        65536 frames.
        """
        if self.legacy:
            raise BridgeError("a legacy peer has no frame_stats command")
        return self._query("frame_stats", {"reset": bool(reset)}, timeout_s)

    def identity(self, timeout_s: float | None = None) -> dict:
        """What the peer is (protocol 2 peers that know it): ``peer``, ``peer_version``,
        ``unity_version``, ``graphics_device``, ``graphics_api``, ``target_fps``,
        ``vsync_count``, ``run_in_background``, ``frame_timing`` (None where the peer has no
        such thing). A peer older than the query rejects it (``CommandRejected``)."""
        if self.legacy:
            raise BridgeError("a legacy peer has no identity command")
        return self._query("identity", None, timeout_s)

    def _query(self, command: str, data: dict | None, timeout_s: float | None) -> dict:
        try:
            ack = self.request(command, data, timeout_s)
        except CommandRejected:
            self.counters.sent -= 1
            self.counters.rejected -= 1
            raise
        # peers never count queries; keep the client's counters comparable with theirs
        self.counters.sent -= 1
        self.counters.acked -= 1
        return ack.data or {}
