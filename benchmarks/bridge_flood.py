"""A careless client floods a frame-paced peer: what happens to the peer's memory, what is the
flooding client told, and does a well-behaved client on another connection notice?

For each peer (the Python reference peer and the C# core under Mono), in its own process at
--fps with a frame budget of --budget commands per frame:
- a flooding client sends --requests `set_expression` lines as fast as the socket takes them
  (chunks of 1000 lines) and reads every response on its own thread;
- a well-behaved client on a second connection sends one request at a time, every
  --probe-interval-ms, for the whole flood, and records each round trip;
- the peer's RSS is sampled every 50 ms (psutil) from start to end.
The flood is 10x the budget or more: the budget takes fps x budget commands per second (6000 by
default), the socket takes tens of thousands. The run ends when every flooded request has an
outcome, the flooding client was disconnected, or --settle-s after the last send.

    .venv/bin/python benchmarks/bridge_flood.py            # both peers, defaults of issue 16
    .venv/bin/python benchmarks/bridge_flood.py --peers python --requests 100000

Against an older checkout (the figures before a change), run it from that tree with
PYTHONPATH=<tree> and MATEPERF_CSHARP_PEER=<a MatePeer.exe built from that tree's unity/>.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil

from mateperf import stats
from mateperf.bridge.client import BridgeError, UnityBridge
from mateperf.bridge.process import start_peer
from mateperf.bridge.protocol import encode_request


@dataclass
class FloodOutcome:
    sent: int = 0
    send_s: float = 0.0
    sent_bytes: int = 0
    success: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    disconnected: str = ""

    @property
    def answered(self) -> int:
        return self.success + sum(self.errors.values())


def _error_kind(message: str) -> str:
    return message.split(":", 1)[0] if ":" in message else message


def flood(port: int, requests: int, outcome: FloodOutcome, done: threading.Event) -> None:
    """Send `requests` lines as fast as sendall goes; a reader thread counts the responses."""
    sock = socket.create_connection(("127.0.0.1", port))
    reader = sock.makefile("rb")
    json.loads(reader.readline())  # the greeting

    def read() -> None:
        try:
            for line in reader:
                reply = json.loads(line)
                if reply.get("status") == "success":
                    outcome.success += 1
                else:
                    kind = _error_kind(str(reply.get("message")))
                    outcome.errors[kind] = outcome.errors.get(kind, 0) + 1
                if outcome.answered >= requests:
                    break
            else:
                outcome.disconnected = "EOF (closed by the peer)"
        except OSError as exc:
            outcome.disconnected = f"{type(exc).__name__}: {exc}"
        done.set()

    reading = threading.Thread(target=read, daemon=True)
    reading.start()
    start = time.perf_counter()
    try:
        for k in range(0, requests, 1000):
            chunk = b"".join(
                encode_request("set_expression", {"name": "joy", "value": (i % 100) / 100}, i)
                for i in range(k, min(requests, k + 1000))
            )
            sock.sendall(chunk)
            outcome.sent = min(requests, k + 1000)
            outcome.sent_bytes += len(chunk)
    except OSError as exc:
        outcome.disconnected = outcome.disconnected or f"send failed: {exc}"
    outcome.send_s = time.perf_counter() - start
    reading.join()
    sock.close()


def probe(port: int, interval_s: float, stop: threading.Event, rtts: list, failures: list):
    """One request at a time on its own connection, for as long as the flood lasts; each
    round trip as (sent_ns, rtt_ms)."""
    with UnityBridge(port=port, request_timeout_s=120.0) as bridge:
        while not stop.is_set():
            try:
                ack = bridge.request("set_expression", {"name": "calm", "value": 0.5})
                rtts.append((ack.sent_ns, ack.rtt_ns / 1e6))
            except BridgeError as exc:
                failures.append(str(exc))
            stop.wait(interval_s)


def sample_rss(pid: int, stop: threading.Event, samples: list) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        try:
            samples.append(process.memory_info().rss / 2**20)
        except psutil.Error:
            return
        stop.wait(0.05)


def run_one(kind: str, args: argparse.Namespace) -> dict:
    with start_peer(kind, fps=args.fps, max_commands_per_frame=args.budget) as peer:
        # settle: the first requests warm the peer (JIT, imports) before RSS is read
        with UnityBridge(port=peer.port) as warm:
            warm.pipeline([("set_expression", {"name": "joy", "value": 0.1})] * 200)
            warm.stats()
        time.sleep(0.5)
        process = psutil.Process(peer.proc.pid)
        rss_before = process.memory_info().rss / 2**20
        stop, done = threading.Event(), threading.Event()
        rss: list[float] = []
        rtts: list[tuple[int, float]] = []
        failures: list[str] = []
        outcome = FloodOutcome()
        threads = [
            threading.Thread(target=sample_rss, args=(peer.proc.pid, stop, rss)),
            threading.Thread(
                target=probe,
                args=(peer.port, args.probe_interval_ms / 1e3, stop, rtts, failures),
            ),
        ]
        for t in threads:
            t.start()
        time.sleep(0.3)  # a few undisturbed round trips first
        flooder = threading.Thread(target=flood, args=(peer.port, args.requests, outcome, done))
        flood_start_ns = time.perf_counter_ns()
        flooder.start()
        while outcome.send_s == 0 and flooder.is_alive():
            time.sleep(0.05)
        rss_after_send = process.memory_info().rss / 2**20
        done.wait(args.settle_s)
        settled = done.is_set()
        flood_end_ns = time.perf_counter_ns()
        stop.set()
        for t in threads:
            t.join(timeout=150)
        with UnityBridge(port=peer.port) as last:
            state = last.stats()
        rss_end = process.memory_info().rss / 2**20
        counters = peer.stop()
        logged = [line.strip() for line in peer.output if "queue full" in line]
    # the round trips begun while the flood was being sent or answered
    during = [rtt for sent, rtt in rtts if flood_start_ns <= sent <= flood_end_ns]
    latency = stats.summarize(during)
    return {
        "peer": kind,
        "fps": args.fps,
        "budget_cmd_per_frame": args.budget,
        "budget_cmd_per_s": args.fps * args.budget,
        "requests": args.requests,
        "sent": outcome.sent,
        "sent_mb": round(outcome.sent_bytes / 1e6, 1),
        "send_s": round(outcome.send_s, 2),
        "send_rate_per_s": round(outcome.sent / outcome.send_s) if outcome.send_s else None,
        "flood_success_acks": outcome.success,
        "flood_error_acks": outcome.errors,
        "flood_unanswered": outcome.sent - outcome.answered,
        "flood_disconnected": outcome.disconnected or None,
        "settled": settled,
        "rss_before_mb": round(rss_before, 1),
        "rss_after_send_mb": round(rss_after_send, 1),
        "rss_peak_mb": round(max(rss, default=rss_before), 1),
        "rss_end_mb": round(rss_end, 1),
        "flood_s": round((flood_end_ns - flood_start_ns) / 1e9, 1),
        "probe_n_during_flood": latency["n"],
        "probe_failures": len(failures),
        "probe_rtt_p50_ms": round(latency["median"], 2),
        "probe_rtt_p99_ms": round(latency["p99"], 2),
        "probe_rtt_max_ms": round(latency["max"], 2),
        "counters": counters,
        "bridge": state.get("bridge", {}),
        "log_lines": logged[:3],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="python,csharp", help="comma-separated: python, csharp")
    ap.add_argument("--requests", type=int, default=300_000, help="set_expression lines flooded")
    ap.add_argument("--fps", type=float, default=60.0)
    ap.add_argument("--budget", type=int, default=100, help="the peer's commands per frame")
    ap.add_argument("--probe-interval-ms", type=float, default=20.0)
    ap.add_argument("--settle-s", type=float, default=120.0, help="wait for outcomes this long")
    ap.add_argument("--json", action="store_true", help="one JSON object per peer")
    args = ap.parse_args(argv)
    for kind in [k.strip() for k in args.peers.split(",") if k.strip()]:
        row = run_one(kind, args)
        if args.json:
            print(json.dumps(row), flush=True)
            continue
        print(f"== {kind} peer, {args.fps:g} fps, budget {args.budget}/frame", flush=True)
        for key, value in row.items():
            if key not in ("peer", "counters", "bridge"):
                print(f"  {key}: {value}")
        print(f"  counters: {json.dumps(row['counters'])}")
        print(f"  bridge: {json.dumps(row['bridge'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
