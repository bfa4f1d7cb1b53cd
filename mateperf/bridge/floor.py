"""The raw floor: plain socket ping-pong of newline-terminated lines between two processes.

No JSON, no queue, no frame: the server answers each line from the thread that read it. It is
what the loopback and two Python processes cost at best, measured in the same run as the
bridge so the bridge's overhead can be read as a ratio.

The reply is the request line cut to ``reply_max_bytes`` (default 256): for small commands
that is the same line echoed (a symmetric ping-pong), and for a 64 KiB request it is a short
line, like the bridge's ack, so the floor never carries more bytes than the bridge does.

``python -m mateperf.bridge.floor`` follows the peer stdio contract (see process.py), as the
headless peer does (`peer_main`): one `listening` line, then it serves until Ctrl+C or SIGTERM
(Ctrl+Break on Windows), or with ``--stop-on-stdin-eof`` until its stdin ends, and prints one
`stopped` line. Stopping on stdin's end is asked for, not the default: a floor started by hand
in the background (`&`, nohup, a service) has /dev/null or no stdin at all, which would stop it
at once. `start_floor` asks for it: its pipe is the floor's tie to the parent, whose death ends
the pipe and so the floor, and closing it is how `PeerProcess.stop` stops it.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

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
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="also stop when stdin ends (mateperf's own spawner stops its peers so)",
    )
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
    stop = threading.Event()
    if args.stop_on_stdin_eof:
        threading.Thread(target=_stop_at_stdin_end, args=(stop,), daemon=True).start()
    stop_on_signals(stop.set)
    port = listener.getsockname()[1]
    print(json.dumps({"event": "listening", "peer": "floor", "port": port}), flush=True)
    # a bounded wait: Windows delivers Ctrl+C to Python code only between waits
    while not stop.wait(0.5):
        pass
    listener.close()
    print(json.dumps({"event": "stopped", "counters": {"served": served[0]}}), flush=True)
    return 0


def _stop_at_stdin_end(stop: threading.Event) -> None:
    if sys.stdin is not None:  # None: started with no stdin at all, which has ended already
        sys.stdin.buffer.read()
    stop.set()


def stop_on_signals(stop: Callable[[], object]) -> None:
    """Ctrl+C, SIGTERM and (Windows) Ctrl+Break call `stop` (the floor's, and the Python peer's).
    The handler hands `stop` to a thread: it runs on the main thread between two bytecodes of
    the program's wait or loop, which may hold a lock `stop` takes."""

    def request_stop(*_: object) -> None:
        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    if sys.platform == "win32":  # Ctrl+Break: a signal of its own, on Windows only
        signal.signal(signal.SIGBREAK, request_stop)


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
