"""The Python reference peer's command line: `python -m mateperf.bridge.peer_main`, options to
`PeerConfig`, then the main loop (`mateperf.bridge.peer`).

It speaks the peer stdio contract of `mateperf.bridge.process`: one `listening` line with its
port, then it runs until Ctrl+C or SIGTERM (Ctrl+Break on Windows), or with
`--stop-on-stdin-eof` until its stdin ends (how mateperf's spawner stops it), and prints one
`stopped` line with its counters. Stopping on stdin's end is asked for, not the default: a peer
started by hand in the background (`&`, nohup, a service) has /dev/null or nothing as its stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from mateperf.bridge.floor import stop_on_signals
from mateperf.bridge.frames import check_frame_busy
from mateperf.bridge.peer import FramePacedPeer
from mateperf.bridge.peer_config import (
    DEFAULT_ID_WINDOW,
    DEFAULT_MAX_ACK_BUFFER_BYTES,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_MAX_QUEUED_REQUESTS,
    PEER_NAME,
    PeerConfig,
)
from mateperf.bridge.protocol import DEFAULT_HOST, MAX_LINE_BYTES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mateperf reference Unity peer")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fps", type=float, default=60.0)
    parser.add_argument("--legacy", action="store_true")
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="also stop when stdin ends (mateperf's own spawner stops its peers so)",
    )
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
        "--frame-log",
        default=None,
        metavar="PATH",
        help="write every frame to PATH as CSV frame,interval_us,tick_us (flushed twice a second)",
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
        config = PeerConfig(
            host=args.host,
            port=args.port,
            fps=args.fps,
            legacy=args.legacy,
            max_line_bytes=args.max_line_bytes,
            apply_delay_ms=args.apply_delay_ms,
            frame_busy=frame_busy,
            max_ack_buffer_bytes=args.max_ack_buffer_bytes,
            id_window=args.id_window,
            max_commands_per_frame=args.max_commands_per_frame,
            max_tick_us=args.max_tick_us,
            missing_blendshapes=frozenset(args.missing_blendshape),
            max_queued_requests=args.max_queued_requests,
            max_queued_bytes=args.max_queued_bytes,
            spin_tail_us=args.spin_tail_us,
            frame_log=args.frame_log,
        )
    except ValueError as exc:
        print(f"{PEER_NAME} peer: {exc}", file=sys.stderr)
        return 2
    try:
        peer = FramePacedPeer(config)
    except OSError as exc:
        if exc.filename is not None:  # the frame log's file
            print(f"{PEER_NAME} peer: cannot write --frame-log: {exc}", file=sys.stderr)
            return 2
        print(
            f"{PEER_NAME} peer: cannot listen on {args.host}:{args.port}: "
            f"{exc.strerror or exc} (is another bridge running?)",
            file=sys.stderr,
        )
        return 1

    if args.stop_on_stdin_eof:

        def watch_stdin() -> None:
            sys.stdin.buffer.read()
            peer.stop()

        threading.Thread(target=watch_stdin, daemon=True).start()
    stop_on_signals(peer.stop)  # the peer then prints its stopped line
    print(json.dumps({"event": "listening", "peer": "python", "port": peer.port}), flush=True)
    peer.serve_forever()
    stopped = {"event": "stopped", "counters": peer.counters.as_dict(), "frames": peer.frame}
    print(json.dumps(stopped), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
