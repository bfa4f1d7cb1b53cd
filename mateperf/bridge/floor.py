"""The raw floor: plain socket ping-pong of newline-terminated lines between two processes.

No JSON, no queue, no frame: the server answers each line from the thread that read it. It is
what the loopback and two Python processes cost at best, measured in the same run as the
bridge so the bridge's overhead can be read as a ratio.

The reply is the request line cut to ``reply_max_bytes`` (default 256): for small commands
that is the same line echoed (a symmetric ping-pong), and for a 64 KiB request it is a short
line, like the bridge's ack, so the floor never carries more bytes than the bridge does.

``python -m mateperf.bridge.floor`` follows the peer stdio contract (see process.py).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

from mateperf.bridge.protocol import DEFAULT_HOST, LineBuffer


def _serve_connection(sock: socket.socket, reply_max_bytes: int, served: list[int]) -> None:
    lines = LineBuffer(1 << 30)
    with sock:
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            out = [line[: reply_max_bytes - 1] + b"\n" for line in lines.feed(chunk) if line]
            if out:
                served[0] += len(out)
                try:
                    sock.sendall(b"".join(out))
                except OSError:
                    return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="raw socket ping-pong server")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply-max-bytes", type=int, default=256)
    args = parser.parse_args(argv)
    listener = socket.create_server((args.host, args.port))
    served = [0]

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=_serve_connection, args=(sock, args.reply_max_bytes, served), daemon=True
            ).start()

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    print(json.dumps({"event": "listening", "peer": "floor", "port": port}), flush=True)
    sys.stdin.buffer.read()
    listener.close()
    print(json.dumps({"event": "stopped", "counters": {"served": served[0]}}), flush=True)
    return 0


class FloorClient:
    """Client side of the floor: one connection, blocking ping-pong or a pipelined window."""

    def __init__(self, host: str, port: int, timeout_s: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lines = LineBuffer(1 << 30)
        self._ready: list[bytes | None] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> FloorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_line(self) -> None:
        while not self._ready:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("floor server closed the connection")
            self._ready.extend(self.lines.feed(chunk))
        self._ready.pop(0)

    def pingpong_ns(self, line: bytes) -> int:
        """One round trip of ``line`` (newline-terminated), in ns."""
        t0 = time.perf_counter_ns()
        self.sock.sendall(line)
        self._next_line()
        return time.perf_counter_ns() - t0

    def pipelined_ns(self, line: bytes, count: int, window: int) -> int:
        """Send ``count`` lines with at most ``window`` unanswered; total ns."""
        slots = threading.Semaphore(window)
        errors: list[BaseException] = []

        def receive() -> None:
            try:
                for _ in range(count):
                    self._next_line()
                    slots.release()
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                errors.append(exc)
                for _ in range(window):
                    slots.release()

        reader = threading.Thread(target=receive, daemon=True)
        t0 = time.perf_counter_ns()
        reader.start()
        sent = 0
        while sent < count and not errors:
            if not slots.acquire(timeout=self.sock.gettimeout() or 5.0):
                break
            k = 1  # refill every free slot in one write, as UnityBridge.pipeline does
            while sent + k < count and slots.acquire(blocking=False):
                k += 1
            self.sock.sendall(line * k)
            sent += k
        reader.join(timeout=30.0)
        elapsed = time.perf_counter_ns() - t0
        if errors or reader.is_alive():
            raise ConnectionError(f"floor pipeline failed: {errors or 'timeout'}")
        return elapsed


if __name__ == "__main__":
    sys.exit(main())
