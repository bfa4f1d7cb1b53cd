"""The ipc phase's scenarios: the lab of peer processes, and what each scenario sends.

A scenario takes the trial's `Lab` and the run's parameters and yields one `Arm` per arm it
measured: its request (or frame) rows and, where the arm has one, its whole-sequence figures.

The processes a trial measures, spawned or attached, are its `Lab` (mateperf.phases.ipc.lab).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

from mateperf import progress
from mateperf.bridge.client import Ack, BridgeError, UnityBridge
from mateperf.bridge.process import start_peer
from mateperf.bridge.protocol import encode_request
from mateperf.phases.ipc.lab import CountersMismatch, Lab
from mateperf.phases.ipc.params import IpcParams, parse_loads, parse_sizes
from mateperf.phases.ipc.rows import (
    FRAME_COST_LOAD,
    FRAME_COST_NON_READING,
    FRAME_ROW,
    NON_READING_COMMANDS_PER_FRAME,
    PHASE,
    RECORD,
    REQUEST_ROW,
    TRIAL_ROW,
)
from mateperf.workloads import expression_sequence

_progress = progress.reporter(PHASE)


def _fps_mode(fps: float) -> str:
    return "bridge_unpaced" if fps == 0 else f"bridge_{fps:g}fps"


@dataclass
class Arm:
    """One arm of a scenario in one trial: its request rows and its per-trial figures."""

    mode: str
    fps: float
    requests: list[dict]
    per_trial: dict[str, float] = field(default_factory=dict)
    target_bytes: float = math.nan
    batch_size: float = math.nan
    commands_per_frame: float = math.nan
    record: str = REQUEST_ROW  # what `requests` holds: request rows, or frame rows

    def rows(self, scenario: str) -> list[dict]:
        """The arm's stored rows: its request (or frame) rows, then its trial row if it has one;
        each carries the arm's identity."""
        ident = {
            "scenario": scenario,
            "mode": self.mode,
            "fps": float(self.fps),
            "target_bytes": float(self.target_bytes),
            "batch_size": float(self.batch_size),
            "commands_per_frame": float(self.commands_per_frame),
        }
        out = [
            {"is_warmup": False, **row, RECORD: self.record, "seq": float(i), **ident}
            for i, row in enumerate(self.requests)
        ]
        if self.per_trial:
            out.append({**self.per_trial, RECORD: TRIAL_ROW, "is_warmup": False, **ident})
        return out


def _ack_row(ack: Ack, start_ns: int) -> dict:
    row = {
        "rtt_us": ack.rtt_ns / 1e3,
        "completion_ms": ack.rtt_ns / 1e6,
        "since_start_ms": (ack.acked_ns - start_ns) / 1e6,
        "frame": ack.frame,
    }
    if ack.recv_ns is not None and ack.apply_ns is not None:
        row["peer_queue_us"] = (ack.apply_ns - ack.recv_ns) / 1e3
    return row


def _simple(i: int) -> tuple[str, dict]:
    return "set_expression", {"name": "happy", "value": (i % 101) / 100}


def _floor_pingpong(lab: Lab, lines: Callable[[int], bytes], n: int) -> list[dict]:
    rows = []
    for i in range(n):
        line = lines(i)
        rtt_ns = lab.floor.pingpong_ns(line)
        rows.append(
            {"rtt_us": rtt_ns / 1e3, "completion_ms": rtt_ns / 1e6, "size_bytes": len(line)}
        )
    return rows


def _requests(bridge: UnityBridge, commands: list[tuple[str, dict]]) -> list[dict]:
    rows = []
    start_ns = time.perf_counter_ns()
    for command, data in commands:
        ack = bridge.request(command, data)
        row = _ack_row(ack, start_ns)
        row["command"] = command
        row["size_bytes"] = len(encode_request(command, data, ack.id))
        rows.append(row)
    return rows


def _mark_warmup(rows: list[dict], warmup: int) -> list[dict]:
    for i, row in enumerate(rows):
        row["is_warmup"] = i < warmup
    return rows


def _scenario_simple(lab: Lab, p: IpcParams) -> Iterator[Arm]:
    w = p.warmup
    n = p.requests + w
    line_len = len(encode_request(*_simple(0), 1000))
    floor_line = b"x" * (line_len - 1) + b"\n"
    yield Arm("floor", 0.0, _mark_warmup(_floor_pingpong(lab, lambda i: floor_line, n), w))
    if 0.0 in lab.bridges:  # a live avatar has no unpaced twin
        rows = _requests(lab.bridges[0.0], [_simple(i) for i in range(n)])
        yield Arm("bridge_unpaced", 0.0, _mark_warmup(rows, w))
    if lab.fps:
        wp = min(w, 5)
        commands = [_simple(i) for i in range(p.paced_requests + wp)]
        rows = _requests(lab.bridges[lab.fps], commands)
        yield Arm(_fps_mode(lab.fps), lab.fps, _mark_warmup(rows, wp))


def _echo_for_size(size: int) -> tuple[str, dict]:
    base = len(encode_request("echo", {"payload": ""}, 1000))  # ids vary by a few bytes
    return "echo", {"payload": "x" * max(0, size - base)}


def _scenario_sizes(lab: Lab, p: IpcParams) -> Iterator[Arm]:
    w = min(p.warmup, 5)
    n = p.size_requests + w
    for size in parse_sizes(p.sizes):
        floor_line = b"x" * (size - 1) + b"\n"
        rows = _mark_warmup(_floor_pingpong(lab, lambda i, ln=floor_line: ln, n), w)
        yield Arm("floor", 0.0, rows, target_bytes=size)
        # attached: the live avatar's paced connection, one request awaited at a time
        fps = 0.0 if 0.0 in lab.bridges else lab.fps
        rows = _mark_warmup(_requests(lab.bridges[fps], [_echo_for_size(size)] * n), w)
        yield Arm(_fps_mode(fps), fps, rows, target_bytes=size)


def _sequence(total_ns: int, count: int) -> dict[str, float]:
    return {"total_ms": total_ns / 1e6, "throughput_cmd_per_s": count / (total_ns / 1e9)}


def _pipelined(bridge: UnityBridge, commands: list[tuple[str, dict]], window: int) -> Arm:
    t0 = time.perf_counter_ns()
    acks = bridge.pipeline(commands, window=window)
    total = time.perf_counter_ns() - t0
    failed = [a for a in acks if isinstance(a, BridgeError)]
    if failed:
        raise failed[0]
    rows = [{**_ack_row(a, acks[0].sent_ns), "is_warmup": False} for a in acks]
    return Arm("", 0.0, rows, _sequence(total, len(commands)))


def _scenario_throughput(lab: Lab, p: IpcParams) -> Iterator[Arm]:
    n, window = p.throughput_requests, p.window
    line = encode_request(*_simple(0), 1000)
    floor_line = b"x" * (len(line) - 1) + b"\n"
    lab.floor.pipelined_ns(floor_line, min(n, 100), window)  # warm-up, discarded
    # the floor has no per-request times when pipelined: a trial row only
    yield Arm("floor", 0.0, [], _sequence(lab.floor.pipelined_ns(floor_line, n, window), n))
    lab.bridges[0.0].pipeline([_simple(i) for i in range(min(n, 100))], window)  # warm-up
    arm = _pipelined(lab.bridges[0.0], [_simple(i) for i in range(n)], window)
    arm.mode = "bridge_unpaced"
    yield arm
    if lab.fps:
        n_paced = min(n, window * 30)  # about half a second at 60 fps
        arm = _pipelined(lab.bridges[lab.fps], [_simple(i) for i in range(n_paced)], window)
        arm.mode, arm.fps = _fps_mode(lab.fps), lab.fps
        yield arm


def _scenario_expressions(lab: Lab, p: IpcParams) -> Iterator[Arm]:
    for fps in lab.bridges:
        steps = 5 if fps == 0 else 1
        commands = [c for s in range(steps) for c in expression_sequence(s)]
        w = min(p.warmup, 3)
        warm = list(expression_sequence(99))[:w]
        rows = _requests(lab.bridges[fps], warm + commands)
        yield Arm(_fps_mode(fps), fps, _mark_warmup(rows, w))


def _scenario_batching(lab: Lab, p: IpcParams) -> Iterator[Arm]:
    """All three arms carry batch_size: they are one comparison, made at that batch size."""
    n, size = p.batch_commands, p.batch_size
    commands = [_simple(i) for i in range(n)]
    for fps, bridge in lab.bridges.items():
        bridge.request(*_simple(0))  # align with the frame loop as a real caller would be
        t0 = time.perf_counter_ns()
        rows = _requests(bridge, commands)
        total = time.perf_counter_ns() - t0
        yield Arm("one_by_one", fps, rows, {"total_ms": total / 1e6}, batch_size=size)

        bridge.request(*_simple(0))
        rows = []
        t0 = time.perf_counter_ns()
        for k in range(0, n, size):
            chunk = commands[k : k + size]
            ack = bridge.send_batch(chunk)
            for command, _ in chunk:
                row = _ack_row(ack, t0)
                row["command"] = command
                rows.append(row)
        total = time.perf_counter_ns() - t0
        yield Arm("batched", fps, rows, {"total_ms": total / 1e6}, batch_size=size)

        bridge.request(*_simple(0))
        t0 = time.perf_counter_ns()
        acks = bridge.pipeline(commands, window=size)
        total = time.perf_counter_ns() - t0
        rows = []
        for ack in acks:
            if isinstance(ack, BridgeError):
                raise ack
            rows.append(_ack_row(ack, t0))
        yield Arm("pipelined", fps, rows, {"total_ms": total / 1e6}, batch_size=size)


def _read_until(sock: socket.socket, command: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    buf = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("legacy peer closed the connection")
        buf += chunk
        if f'"command":"{command}"'.encode() in buf:
            return
    raise TimeoutError(f"no {command} response within {timeout_s} s")


def _scenario_original(lab: Lab, p: IpcParams) -> Iterator[Arm]:
    """The original study's loop, reproduced: time sendall() only, one socket, no reply read."""
    n = p.batch_commands
    lines = [encode_request(*_simple(i)) for i in range(n)]
    for mode, pause in (("sendall", False), ("sendall_sleep_1ms", True)):
        with socket.create_connection(("127.0.0.1", lab.legacy_peer.port), p.timeout_s) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.recv(1 << 16)  # the greeting
            rows = []
            t_start = time.perf_counter_ns()
            for line in lines:
                t0 = time.perf_counter_ns()
                s.sendall(line)
                rows.append({"sendall_us": (time.perf_counter_ns() - t0) / 1e3})
                if pause:
                    time.sleep(0.001)
            total = (time.perf_counter_ns() - t_start) / 1e6
            # what the original never looked at: when had the avatar applied them all?
            s.sendall(encode_request("load_model", {"path": "sentinel"}))
            _read_until(s, "load_model", p.timeout_s)
            applied = (time.perf_counter_ns() - t_start) / 1e6
        for r in rows:
            r["is_warmup"] = False
        yield Arm(mode, lab.fps, rows, {"total_ms": total, "applied_ms": applied})


def _frame_rows(stats: dict, warmup: int) -> list[dict]:
    """One row per frame of a frame_stats reply; the first `warmup` frames are warm-ups (the
    frame that answered the reset query before them is one)."""
    rows = []
    for i, (interval, tick, commands, depth) in enumerate(
        zip(
            stats["frame_interval_us"],
            stats["tick_us"],
            stats["commands"],
            stats["queue_depth"],
            strict=True,
        )
    ):
        rows.append(
            {
                "tick_us": float(tick),
                "frame_interval_us": float(interval),
                "frame_commands": float(commands),
                "queue_depth": float(depth),
                "is_warmup": i < warmup,
            }
        )
    return rows


def _fill_socket(port: int, probe: UnityBridge, timeout_s: float) -> tuple[socket.socket, int]:
    """A client that sends and never reads, flooding until the peer holds some of its acks
    unsent (its socket is full): the state in which a blocking send would stall the frame."""
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    silent.connect(("127.0.0.1", port))
    deadline = time.monotonic() + timeout_s
    request_id = 0
    while probe.stats()["bridge"]["ack_buffer_bytes"] == 0:
        if time.monotonic() > deadline:
            silent.close()
            raise TimeoutError("frame_cost: the non-reading client's socket never filled")
        lines = [encode_request("echo", {"payload": "x"}, request_id + i) for i in range(500)]
        request_id += len(lines)
        silent.sendall(b"".join(lines))
    return silent, request_id


def _scenario_frame_cost(lab: Lab, p: IpcParams) -> Iterator[Arm]:
    """Tick time per frame at a steady load, then with a non-reading client: a peer of its own,
    so the client that never reads (and is counted only by the peer) leaves the others alone."""
    fps = lab.fps or 60.0
    period_s = 1.0 / fps
    n_frames, warmup = p.frame_cost_frames, 2
    with ExitStack() as stack:
        proc = stack.enter_context(
            start_peer(lab.peer_kind, fps=fps, apply_delay_ms=lab.apply_delay_ms)
        )
        bridge = stack.enter_context(
            UnityBridge(port=proc.port, request_timeout_s=lab.timeout_s).connect()
        )
        for load in parse_loads(p.frame_cost_loads):
            commands = [_simple(i) for i in range(load)]
            bridge.frame_stats(reset=True)
            end = time.monotonic() + (n_frames + warmup) * period_s
            while time.monotonic() < end:
                if load:
                    # sent right after the previous ack: one frame applies all `load` of them
                    for pending in bridge.submit_many(commands):
                        bridge.wait(pending)
                else:
                    time.sleep(period_s)
            rows = _frame_rows(bridge.frame_stats(reset=True), warmup)
            yield Arm(FRAME_COST_LOAD, fps, rows, commands_per_frame=load, record=FRAME_ROW)

        silent, request_id = _fill_socket(proc.port, bridge, lab.timeout_s * 4)
        bridge.frame_stats(reset=True)
        end = time.monotonic() + (n_frames + warmup) * period_s
        next_at = time.monotonic()
        while time.monotonic() < end:
            lines = [
                encode_request(*_simple(i), request_id + i)
                for i in range(NON_READING_COMMANDS_PER_FRAME)
            ]
            request_id += len(lines)
            try:
                silent.sendall(b"".join(lines))
            except OSError:
                break  # dropped by the peer at its bound: the frames so far are the arm
            next_at += period_s
            time.sleep(max(0.0, next_at - time.monotonic()))
        stats = bridge.frame_stats(reset=True)
        state = bridge.stats()
        silent.close()
        rows = _frame_rows(stats, warmup)
        yield Arm(
            FRAME_COST_NON_READING,
            fps,
            rows,
            commands_per_frame=NON_READING_COMMANDS_PER_FRAME,
            record=FRAME_ROW,
        )
        # The silent client's last requests may still wait in the peer's queue (applied in
        # later frames, served in turn with the others): let the peer's books settle first.
        settle_by = time.monotonic() + lab.timeout_s
        while time.monotonic() < settle_by:
            books = bridge.stats()["counters"]
            if books["received"] == books["applied"] + books["rejected"]:
                break
            time.sleep(period_s)
        client = bridge.counters.as_dict()
        bridge.close()
        counters = proc.stop()
        # the peer counts the silent client too: check its own books and the client's acks
        if (
            counters.get("received") != counters.get("applied", 0) + counters.get("rejected", 0)
            or client["sent"] != client["acked"]
        ):
            raise CountersMismatch(f"frame_cost peer counted {counters}, the client {client}")
        _progress(
            f"frame_cost: non-reading client held {state['bridge']['ack_buffer_bytes']} bytes "
            f"of acks unsent, dropped clients {state['counters']['dropped_clients']}"
        )


SCENARIO_RUNNERS = {
    "simple_commands": _scenario_simple,
    "message_sizes": _scenario_sizes,
    "throughput": _scenario_throughput,
    "expression_commands": _scenario_expressions,
    "batching": _scenario_batching,
    "original_method": _scenario_original,
    "frame_cost": _scenario_frame_cost,
}
