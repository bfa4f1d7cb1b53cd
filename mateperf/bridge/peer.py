"""FramePacedPeer: a reference Unity side that applies commands once per frame.

Unity can touch the avatar only from its main thread, once per frame. The peer models that:
one I/O thread per connection reads, validates and queues; the main loop wakes every
``1/fps`` seconds (or as soon as work arrives when ``fps`` is 0), drains the queue, applies
each command to an in-memory ``AvatarState`` and then acks it. Bad input is answered from the
I/O thread and never reaches the main loop.

``apply_delay_ms`` (``--apply-delay-ms``) stands in for a slow avatar: the main thread sleeps
that long for every command it applies (each command of a batch too), before the ack. It is a
known answer for the benchmarks: a command awaited alone, unpaced, must take that much longer.

Run it in its own process, as Unity is: ``python -m mateperf.bridge.peer --fps 60 --port 0``
prints ``{"event": "listening", "port": N}``; closing its stdin (or SIGTERM) stops it and it
prints ``{"event": "stopped", "counters": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class PeerCounters:
    """received = applied + rejected (+ still queued); a batch counts once, its commands apart."""

    received: int = 0
    applied: int = 0
    applied_commands: int = 0
    rejected: int = 0
    connections: int = 0
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
            return {
                "received": self.received,
                "applied": self.applied,
                "applied_commands": self.applied_commands,
                "rejected": self.rejected,
                "connections": self.connections,
            }


class _Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.send_lock = threading.Lock()
        self.seen_ids: set[Any] = set()
        self.open = True

    def send(self, payload: bytes) -> None:
        if not self.open:
            return
        try:
            with self.send_lock:
                self.sock.sendall(payload)
        except OSError:
            self.open = False


class FramePacedPeer:
    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        fps: float = 60.0,
        legacy: bool = False,
        max_line_bytes: int = MAX_LINE_BYTES,
        apply_delay_ms: float = 0.0,
    ):
        if fps < 0:
            raise ValueError(f"fps must be >= 0, got {fps}")
        if apply_delay_ms < 0:
            raise ValueError(f"apply_delay_ms must be >= 0, got {apply_delay_ms}")
        self.fps = fps
        self.apply_delay_s = apply_delay_ms / 1e3
        self.legacy = legacy
        self.max_line_bytes = max_line_bytes
        self.avatar = AvatarState()
        self.counters = PeerCounters()
        self.frame = 0
        # one queue item per received chunk: a burst of lines wakes the main loop once
        self._queue: queue.SimpleQueue[list[tuple[_Connection, Request, int]]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._connections: list[_Connection] = []

    # -- I/O side --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock)
            self._connections.append(conn)
            self.counters.add(connections=1)
            conn.send(encode(greeting(legacy=self.legacy, peer="mateperf-python")))
            t = threading.Thread(target=self._read_loop, args=(conn,), daemon=True)
            t.start()

    def _reject(self, conn: _Connection, message: str, request_id: Any, command: Any) -> None:
        self.counters.add(rejected=1)
        conn.send(encode(response(command, "error", message, request_id, legacy=self.legacy)))

    def _read_loop(self, conn: _Connection) -> None:
        lines = LineBuffer(self.max_line_bytes)
        try:
            while not self._stop.is_set():
                chunk = conn.sock.recv(1 << 16)
                if not chunk:
                    break
                recv_ns = time.perf_counter_ns()
                ready: list[tuple[_Connection, Request, int]] = []
                for line in lines.feed(chunk):
                    self._handle_line(conn, line, recv_ns, ready)
                if ready:
                    self._queue.put(ready)
        except OSError:
            pass
        finally:
            conn.open = False
            conn.sock.close()

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
        if request.id is not None:
            if request.id in conn.seen_ids:
                message = f"duplicate id {request.id!r}"
                if request.command in QUERY_COMMANDS:  # answered, but queries are never counted
                    reply = response(request.command, "error", message, request.id)
                    conn.send(encode(reply))
                else:
                    self._reject(conn, message, request.id, request.command)
                return
            conn.seen_ids.add(request.id)
        if self.legacy and request.command in LEGACY_EARLY_ACK:
            conn.send(encode(response(request.command, "success", "queued", legacy=True)))
        ready.append((conn, request, recv_ns))

    # -- main thread -----------------------------------------------------------------------------

    def _apply_command(self, command: str, data: dict) -> None:
        self.avatar.apply(command, data)
        if self.apply_delay_s:
            time.sleep(self.apply_delay_s)

    def _apply(self, conn: _Connection, request: Request, recv_ns: int) -> bytes | None:
        extra: dict[str, Any] = {}
        if request.command == "stats":
            extra["data"] = {"counters": self.counters.as_dict(), "state": self.avatar.snapshot()}
        elif request.command == "batch":
            for sub in request.data["commands"]:
                self._apply_command(sub["command"], sub.get("data") or {})
            extra["count"] = len(request.data["commands"])
            self.counters.count_applied(extra["count"])
        else:
            self._apply_command(request.command, request.data)
            self.counters.count_applied(1)
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

    def tick(self, first: list[tuple[_Connection, Request, int]] | None = None) -> int:
        """One frame: drain what is queued, apply it, ack it; return how many were applied."""
        self.frame += 1
        acks: dict[_Connection, list[bytes]] = {}
        n = 0
        while True:
            if first is not None:
                items, first = first, None
            else:
                try:
                    items = self._queue.get_nowait()
                except queue.Empty:
                    break
            for conn, request, recv_ns in items:
                n += 1
                line = self._apply(conn, request, recv_ns)
                if line is not None:
                    acks.setdefault(conn, []).append(line)
        for conn, lines in acks.items():
            conn.send(b"".join(lines))
        return n

    def serve_forever(self) -> None:
        accept = threading.Thread(target=self._accept_loop, daemon=True)
        accept.start()
        self._threads.append(accept)
        if self.fps == 0:
            while not self._stop.is_set():
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                self.tick(first=item)
            return
        period_ns = int(1e9 / self.fps)
        next_frame = time.perf_counter_ns()
        while not self._stop.is_set():
            now = time.perf_counter_ns()
            if now < next_frame:
                time.sleep((next_frame - now) / 1e9)
            next_frame += period_ns
            if next_frame < now:  # fell behind: skip frames like a game loop, not a burst
                next_frame = now + period_ns
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        for conn in self._connections:
            conn.open = False
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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
    args = parser.parse_args(argv)
    if args.apply_delay_ms < 0:
        parser.error(f"--apply-delay-ms must be >= 0, got {args.apply_delay_ms:g}")
    peer = FramePacedPeer(
        args.host, args.port, args.fps, args.legacy, args.max_line_bytes, args.apply_delay_ms
    )

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
