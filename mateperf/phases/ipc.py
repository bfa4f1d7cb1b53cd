"""Phase 3, ipc: how fast is Python -> Unity, and what does batching buy?

Every figure is the time from sending a command to the avatar having applied it (the peer's
completion ack), measured against a peer in its own process, as Unity is, and beside a raw
floor measured in the same run (mateperf.bridge.floor: two processes ping-ponging lines of the
same size, no JSON, no queue, no frame).

Scenarios (column `scenario`; `mode` says how it was driven):
  simple_commands      set_expression one at a time: floor, bridge_unpaced, bridge_<fps>fps
  message_sizes        an `echo` line of each size in `sizes`: floor, bridge_unpaced
  throughput           pipelined with `window` in flight: floor, bridge_unpaced, bridge_<fps>fps
  expression_commands  emotion sequences (ramps, resets, blinks, head movement) one at a time
  batching             `batch_commands` commands: one_by_one, batched (batches of `batch_size`),
                       pipelined; at `fps` and unpaced (column `fps`)
  original_method      the original study's loop against a legacy peer: time `sendall` only,
                       with and without `sleep(0.001)`; `applied_ms` is when the avatar really
                       had them all (a trailing load_model, acked after it is applied)

Scenarios run interleaved inside each trial (trial 0 runs them all, then trial 1 ...), so drift
hits every arm alike. Each arm's first `warmup` requests per trial are kept with
`is_warmup=True` and left out of every summary.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import numpy as np
import pandas as pd

from mateperf import stats
from mateperf.bridge.client import Ack, BridgeError, UnityBridge
from mateperf.bridge.floor import FloorClient
from mateperf.bridge.process import PEER_KINDS, PeerProcess, start_floor, start_peer
from mateperf.bridge.protocol import encode_request
from mateperf.errors import ParameterError

PHASE = "ipc"
SCENARIOS = (
    "simple_commands",
    "message_sizes",
    "throughput",
    "expression_commands",
    "batching",
    "original_method",
)
METRICS = (
    "rtt_us",
    "completion_ms",
    "since_start_ms",
    "total_ms",
    "throughput_cmd_per_s",
    "sendall_us",
    "applied_ms",
    "peer_queue_us",
)

DEFAULTS = {
    "peer": "python",
    "fps": 60,
    "trials": 5,
    "requests": 300,
    "paced_requests": 60,
    "sizes": "64,1024,16384,65536",
    "size_requests": 60,
    "throughput_requests": 1000,
    "window": 16,
    "batch_commands": 100,
    "batch_size": 10,
    "warmup": 20,
    "timeout_s": 5.0,
    "scenarios": ",".join(SCENARIOS),
    # -1: the scheduler places client, peers and floor. N: all of them on CPU N (children
    # inherit the affinity). On an idle VM every wake-up of a thread blocked on another vCPU
    # costs tens of µs, and the bridge's chain (client → I/O thread → frame loop → client) has
    # more of them than the floor's ping-pong; pinning shows the cost without them.
    "pin_cpu": -1,
}


class CountersMismatch(RuntimeError):
    """The peer's counters disagree with what the client saw: a request was lost or doubled."""


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ParameterError(f"parameter sizes={text!r}: expected comma-separated ints") from None
    if not sizes or min(sizes) < 48 or max(sizes) > (1 << 20) - 1:
        raise ParameterError(f"parameter sizes={text!r}: each size must be in 48..1048575 bytes")
    return sizes


def parse_scenarios(text: str) -> list[str]:
    chosen = [s.strip() for s in str(text).split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        raise ParameterError(f"parameter scenarios={text!r}: choose from {', '.join(SCENARIOS)}")
    return chosen


def validate(params: dict) -> None:
    """Impossible values, refused before anything starts (the CLI calls this)."""
    if params.get("peer", "python") not in PEER_KINDS:
        raise ParameterError(f"parameter peer={params['peer']!r}: expected python or csharp")
    if float(params.get("fps", 60)) < 0:
        raise ParameterError(f"parameter fps={params['fps']!r}: must be >= 0 (0 = unpaced)")
    for name in ("trials", "requests", "paced_requests", "size_requests", "throughput_requests"):
        if name in params and int(params[name]) < 1:
            raise ParameterError(f"parameter {name}={params[name]!r}: must be >= 1")
    for name in ("window", "batch_size", "batch_commands"):
        if name in params and int(params[name]) < 1:
            raise ParameterError(f"parameter {name}={params[name]!r}: must be >= 1")
    if int(params.get("warmup", 0)) < 0:
        raise ParameterError(f"parameter warmup={params['warmup']!r}: must be >= 0")
    if float(params.get("timeout_s", 5.0)) <= 0:
        raise ParameterError(f"parameter timeout_s={params['timeout_s']!r}: must be > 0")
    pin = int(params.get("pin_cpu", -1))
    if pin != -1 and pin not in os.sched_getaffinity(0):
        allowed = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        raise ParameterError(f"parameter pin_cpu={pin}: expected -1 or one of CPUs {allowed}")
    parse_sizes(params.get("sizes", DEFAULTS["sizes"]))
    parse_scenarios(params.get("scenarios", DEFAULTS["scenarios"]))


def _progress(message: str) -> None:
    print(f"[ipc] {message}", file=sys.stderr, flush=True)


def _fps_mode(fps: float) -> str:
    return "bridge_unpaced" if fps == 0 else f"bridge_{fps:g}fps"


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


def expression_sequence(step: int) -> Iterator[tuple[str, dict]]:
    """A realistic emotion beat: ramp one expression up, hold, blink, ramp down, reset."""
    names = ("happy", "sad", "angry", "surprised", "relaxed")
    name = names[step % len(names)]
    yield "set_transition_speed", {"speed": 2.0 + step % 3}
    for i in range(1, 6):
        yield "set_expression", {"name": name, "value": i / 5}
    yield "set_auto_blink", {"enabled": False}
    yield "set_auto_blink", {"enabled": True}
    yield (
        "set_auto_head_movement",
        {
            "enabled": True,
            "min_interval": 1.0,
            "max_interval": 3.0,
            "max_angle": 15.0,
        },
    )
    for i in range(4, -1, -1):
        yield "set_expression", {"name": name, "value": i / 5}
    yield "reset_expressions", {}


def _simple(i: int) -> tuple[str, dict]:
    return "set_expression", {"name": "happy", "value": (i % 101) / 100}


class _Lab:
    """The processes of one run: the floor, an unpaced peer, a paced peer, a legacy peer."""

    def __init__(self, stack: ExitStack, peer: str, fps: float, timeout_s: float):
        self.peer_kind = peer
        self.fps = fps
        self.timeout_s = timeout_s
        self.floor_proc = stack.enter_context(start_floor())
        self.floor = stack.enter_context(FloorClient("127.0.0.1", self.floor_proc.port))
        self.peers: dict[float, PeerProcess] = {}
        self.bridges: dict[float, UnityBridge] = {}
        for f in dict.fromkeys((0.0, float(fps))):
            self.peers[f] = stack.enter_context(start_peer(peer, fps=f))
            bridge = UnityBridge(port=self.peers[f].port, request_timeout_s=timeout_s)
            self.bridges[f] = stack.enter_context(bridge.connect())
        self.legacy_peer = stack.enter_context(start_peer(peer, fps=fps, legacy=True))


def _floor_pingpong(lab: _Lab, lines: Callable[[int], bytes], n: int) -> list[dict]:
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


def _scenario_simple(lab: _Lab, p: dict) -> Iterator[tuple[str, float, list[dict]]]:
    w = p["warmup"]
    n = p["requests"] + w
    line_len = len(encode_request(*_simple(0), 1000))
    floor_line = b"x" * (line_len - 1) + b"\n"
    yield "floor", 0.0, _mark_warmup(_floor_pingpong(lab, lambda i: floor_line, n), w)
    yield (
        "bridge_unpaced",
        0.0,
        _mark_warmup(_requests(lab.bridges[0.0], [_simple(i) for i in range(n)]), w),
    )
    if lab.fps:
        wp = min(w, 5)
        commands = [_simple(i) for i in range(p["paced_requests"] + wp)]
        rows = _requests(lab.bridges[lab.fps], commands)
        yield _fps_mode(lab.fps), lab.fps, _mark_warmup(rows, wp)


def _echo_for_size(size: int) -> tuple[str, dict]:
    base = len(encode_request("echo", {"payload": ""}, 1000))  # ids vary by a few bytes
    return "echo", {"payload": "x" * max(0, size - base)}


def _scenario_sizes(lab: _Lab, p: dict) -> Iterator[tuple[str, float, list[dict]]]:
    w = min(p["warmup"], 5)
    n = p["size_requests"] + w
    for size in parse_sizes(p["sizes"]):
        floor_line = b"x" * (size - 1) + b"\n"
        rows = _mark_warmup(_floor_pingpong(lab, lambda i, ln=floor_line: ln, n), w)
        for r in rows:
            r["target_bytes"] = size
        yield "floor", 0.0, rows
        rows = _mark_warmup(_requests(lab.bridges[0.0], [_echo_for_size(size)] * n), w)
        for r in rows:
            r["target_bytes"] = size
        yield "bridge_unpaced", 0.0, rows


def _throughput_rows(total_ns: int, count: int, acks: list | None) -> list[dict]:
    total_ms = total_ns / 1e6
    per_s = count / (total_ns / 1e9)
    rows = []
    for i in range(count):
        row = {"total_ms": total_ms, "throughput_cmd_per_s": per_s, "is_warmup": False}
        if acks is not None and isinstance(acks[i], Ack):
            row.update(_ack_row(acks[i], acks[0].sent_ns))
        rows.append(row)
    return rows


def _pipelined(bridge: UnityBridge, commands: list[tuple[str, dict]], window: int) -> list[dict]:
    t0 = time.perf_counter_ns()
    acks = bridge.pipeline(commands, window=window)
    total = time.perf_counter_ns() - t0
    failed = [a for a in acks if isinstance(a, BridgeError)]
    if failed:
        raise failed[0]
    rows = _throughput_rows(total, len(commands), acks)
    for r in rows:
        r["since_start_ms"] = r.get("since_start_ms", np.nan)
    return rows


def _scenario_throughput(lab: _Lab, p: dict) -> Iterator[tuple[str, float, list[dict]]]:
    n, window = p["throughput_requests"], p["window"]
    line = encode_request(*_simple(0), 1000)
    floor_line = b"x" * (len(line) - 1) + b"\n"
    lab.floor.pipelined_ns(floor_line, min(n, 100), window)  # warm-up, discarded
    yield "floor", 0.0, _throughput_rows(lab.floor.pipelined_ns(floor_line, n, window), n, None)
    lab.bridges[0.0].pipeline([_simple(i) for i in range(min(n, 100))], window)  # warm-up
    commands = [_simple(i) for i in range(n)]
    yield "bridge_unpaced", 0.0, _pipelined(lab.bridges[0.0], commands, window)
    if lab.fps:
        n_paced = min(n, window * 30)  # about half a second at 60 fps
        commands = [_simple(i) for i in range(n_paced)]
        yield _fps_mode(lab.fps), lab.fps, _pipelined(lab.bridges[lab.fps], commands, window)


def _scenario_expressions(lab: _Lab, p: dict) -> Iterator[tuple[str, float, list[dict]]]:
    for fps in lab.bridges:
        steps = 5 if fps == 0 else 1
        commands = [c for s in range(steps) for c in expression_sequence(s)]
        w = min(p["warmup"], 3)
        warm = list(expression_sequence(99))[:w]
        yield _fps_mode(fps), fps, _mark_warmup(_requests(lab.bridges[fps], warm + commands), w)


def _scenario_batching(lab: _Lab, p: dict) -> Iterator[tuple[str, float, list[dict]]]:
    n, size = p["batch_commands"], p["batch_size"]
    commands = [_simple(i) for i in range(n)]
    for fps, bridge in lab.bridges.items():
        bridge.request(*_simple(0))  # align with the frame loop as a real caller would be
        t0 = time.perf_counter_ns()
        rows = _requests(bridge, commands)
        total = (time.perf_counter_ns() - t0) / 1e6
        for r in rows:
            r["total_ms"] = total
        yield "one_by_one", fps, rows

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
        total = (time.perf_counter_ns() - t0) / 1e6
        for r in rows:
            r["total_ms"] = total
            r["batch_size"] = size
        yield "batched", fps, rows

        bridge.request(*_simple(0))
        t0 = time.perf_counter_ns()
        acks = bridge.pipeline(commands, window=size)
        total = (time.perf_counter_ns() - t0) / 1e6
        rows = []
        for ack in acks:
            if isinstance(ack, BridgeError):
                raise ack
            row = _ack_row(ack, t0)
            row["total_ms"] = total
            rows.append(row)
        yield "pipelined", fps, rows


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


def _scenario_original(lab: _Lab, p: dict) -> Iterator[tuple[str, float, list[dict]]]:
    """The original study's loop, reproduced: time sendall() only, one socket, no reply read."""
    n = p["batch_commands"]
    lines = [encode_request(*_simple(i)) for i in range(n)]
    for mode, pause in (("sendall", False), ("sendall_sleep_1ms", True)):
        with socket.create_connection(("127.0.0.1", lab.legacy_peer.port), p["timeout_s"]) as s:
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
            _read_until(s, "load_model", p["timeout_s"])
            applied = (time.perf_counter_ns() - t_start) / 1e6
        for r in rows:
            r.update(total_ms=total, applied_ms=applied, is_warmup=False)
        yield mode, lab.fps, rows


SCENARIO_RUNNERS = {
    "simple_commands": _scenario_simple,
    "message_sizes": _scenario_sizes,
    "throughput": _scenario_throughput,
    "expression_commands": _scenario_expressions,
    "batching": _scenario_batching,
    "original_method": _scenario_original,
}


def _check_counters(lab: _Lab) -> list[dict]:
    """Stop the peers and compare their counters with the clients'; raise on any mismatch."""
    rows = []
    for fps, proc in lab.peers.items():
        bridge = lab.bridges[fps]
        client = bridge.counters.as_dict()
        bridge.close()
        peer = proc.stop()
        rows.append({"fps": fps, **{f"client_{k}": v for k, v in client.items()}, **peer})
        lost = client["sent"] - client["acked"] - client["rejected"]
        if peer.get("applied") != client["acked"] or peer.get("received") != client["sent"] or lost:
            raise CountersMismatch(f"peer at fps={fps:g} counted {peer}, the client {client}")
    return rows


def run(**params) -> pd.DataFrame:
    """Measure every chosen scenario; one row per request (or per command in a batch)."""
    p = {**DEFAULTS, **params}
    validate(p)
    for name in DEFAULTS:
        if isinstance(DEFAULTS[name], int):
            p[name] = int(p[name])
    fps = float(p["fps"])
    chosen = parse_scenarios(p["scenarios"])
    frames = []
    with ExitStack() as stack:
        if p["pin_cpu"] >= 0:
            before = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {p["pin_cpu"]})
            stack.callback(os.sched_setaffinity, 0, before)
            _progress(f"client, peers and floor pinned to CPU {p['pin_cpu']}")
        _progress(f"starting floor and {p['peer']} peers (fps 0 and {fps:g})")
        lab = _Lab(stack, p["peer"], fps, float(p["timeout_s"]))
        for trial in range(p["trials"]):
            for scenario in chosen:
                _progress(f"{scenario} trial {trial + 1}/{p['trials']}")
                for mode, mode_fps, rows in SCENARIO_RUNNERS[scenario](lab, p):
                    frame = pd.DataFrame(rows)
                    frame.insert(0, "scenario", scenario)
                    frame.insert(1, "mode", mode)
                    frame.insert(2, "trial", trial)
                    frame.insert(3, "seq", range(len(frame)))
                    frame["fps"] = mode_fps
                    frames.append(frame)
        counters = _check_counters(lab)
        _progress(f"peer counters match the client's: {counters}")
    df = pd.concat(frames, ignore_index=True)
    df["peer"] = p["peer"]
    df["pin_cpu"] = p["pin_cpu"]
    df["is_warmup"] = df["is_warmup"].fillna(False).astype(bool)
    for col in (*METRICS, "size_bytes", "target_bytes", "batch_size", "frame"):
        if col not in df:
            df[col] = np.nan
        df[col] = df[col].astype(float)
    df["command"] = df.get("command", pd.Series(dtype=object)).fillna("")
    return df


# -- computing from a stored frame ---------------------------------------------------------------


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Percentiles and the median's CI per scenario, mode, fps (and size), warm-ups left out."""
    kept = df[~df["is_warmup"].astype(bool)].copy()
    kept["target_bytes"] = kept["target_bytes"].fillna(0).astype(int)
    by = ["scenario", "mode", "fps", "target_bytes"]
    table = stats.summary_table(kept, by=by, metrics=list(METRICS))
    return table[table["n"] > 0].reset_index(drop=True)


def _median(df: pd.DataFrame, scenario: str, mode: str, metric: str, **where) -> float:
    sel = df[(df["scenario"] == scenario) & (df["mode"] == mode) & ~df["is_warmup"].astype(bool)]
    for key, value in where.items():
        sel = sel[sel[key] == value]
    values = sel[metric].dropna()
    return float(values.median()) if len(values) else float("nan")


def _per_trial(df: pd.DataFrame, scenario: str, mode: str, metric: str, **where) -> list[float]:
    sel = df[(df["scenario"] == scenario) & (df["mode"] == mode) & ~df["is_warmup"].astype(bool)]
    for key, value in where.items():
        sel = sel[sel[key] == value]
    return [float(v) for v in sel.groupby("trial")[metric].first().dropna()]


def headline(df: pd.DataFrame) -> dict:
    """The figures the issue asks for, computed from a stored frame (NaN when not measured)."""
    live = df[~df["is_warmup"].astype(bool)]
    out: dict = {"peer": str(df["peer"].iloc[0]) if len(df) else ""}
    simple = live[live["scenario"] == "simple_commands"]
    floor = simple[simple["mode"] == "floor"]["rtt_us"].dropna()
    bridge = simple[simple["mode"] == "bridge_unpaced"]["rtt_us"].dropna()
    if len(floor) and len(bridge):
        out["floor_p50_us"] = float(floor.median())
        out["floor_p99_us"] = float(np.percentile(floor, 99))
        out["bridge_p50_us"] = float(bridge.median())
        out["bridge_p99_us"] = float(np.percentile(bridge, 99))
        ab = stats.compare(floor.to_numpy(), bridge.to_numpy())
        out["bridge_over_floor_p50"] = ab.ratio
        out["bridge_over_floor_ci"] = (ab.ci_low, ab.ci_high)
    tp_floor = _per_trial(df, "throughput", "floor", "throughput_cmd_per_s")
    tp_bridge = _per_trial(df, "throughput", "bridge_unpaced", "throughput_cmd_per_s")
    if tp_floor and tp_bridge:
        out["floor_throughput_cmd_per_s"] = float(np.median(tp_floor))
        out["bridge_throughput_cmd_per_s"] = float(np.median(tp_bridge))
        out["throughput_share_of_floor"] = out["bridge_throughput_cmd_per_s"] / float(
            np.median(tp_floor)
        )
    batching = live[live["scenario"] == "batching"]
    for fps in sorted(batching["fps"].unique()):
        tag = "unpaced" if fps == 0 else f"{fps:g}fps"
        for mode in ("one_by_one", "batched", "pipelined"):
            out[f"{tag}_{mode}_completion_p50_ms"] = _median(
                df, "batching", mode, "completion_ms", fps=fps
            )
            totals = _per_trial(df, "batching", mode, "total_ms", fps=fps)
            out[f"{tag}_{mode}_total_ms"] = float(np.median(totals)) if totals else float("nan")
        out[f"{tag}_frame_ms"] = 1000.0 / fps if fps else float("nan")
        if len(_per_trial(df, "batching", "batched", "total_ms", fps=fps)) >= 1:
            ab = stats.compare(
                _per_trial(df, "batching", "batched", "total_ms", fps=fps),
                _per_trial(df, "batching", "one_by_one", "total_ms", fps=fps),
            )
            out[f"{tag}_one_by_one_over_batched_total"] = ab.ratio
            out[f"{tag}_one_by_one_over_batched_ci"] = (ab.ci_low, ab.ci_high)
    for mode in ("sendall", "sendall_sleep_1ms"):
        out[f"original_{mode}_p50_us"] = _median(df, "original_method", mode, "sendall_us")
        totals = _per_trial(df, "original_method", mode, "total_ms")
        applied = _per_trial(df, "original_method", mode, "applied_ms")
        out[f"original_{mode}_total_ms"] = float(np.median(totals)) if totals else float("nan")
        out[f"original_{mode}_applied_ms"] = float(np.median(applied)) if applied else float("nan")
    return out
