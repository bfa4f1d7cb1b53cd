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
  frame_cost           the peer's main-thread time in Tick per frame (`tick_us`, from its
                       frame log) at each of `frame_cost_loads` commands per frame (mode
                       `commands`), and with a client that stopped reading and whose socket is
                       full (mode `non_reading_client`); a peer of its own at `fps` (60 when
                       unpaced), `frame_cost_frames` frames per arm

Scenarios run interleaved inside each trial (trial 0 runs them all, then trial 1 ...), so drift
hits every arm alike, and each trial starts its own floor and peer processes, so a trial
replicates what a run would. Each arm's first `warmup` requests per trial are kept with
`is_warmup=True` and left out of every summary.

The frame holds three kinds of rows (column `record`):
  request  one per request (or per command of a batch): the request-level metrics of
           mateperf.metrics.IPC_METRICS (rtt_us, sendall_us, peer_queue_us) and what describes
           the request without being a metric (completion_ms: rtt_us in ms; since_start_ms,
           frame, size_bytes, command, seq);
  frame    one per peer frame (frame_cost): tick_us, and what describes the frame
           (frame_interval_us, frame_commands applied, queue_depth left, seq);
  trial    one per arm and trial, where the arm has a whole-sequence figure: the trial-level
           metrics (total_ms, throughput_cmd_per_s, applied_ms), stored once, never copied onto
           request rows.
Request and frame rows are many per trial (metric level REQUEST); both reduce per trial.
All carry the arm's identity (mateperf.metrics.IDENTITY["ipc"]): scenario, mode, fps,
target_bytes (message_sizes rows; NaN elsewhere), batch_size (batching rows; NaN elsewhere)
and commands_per_frame (frame_cost rows; NaN elsewhere).
A metric of the other kind is NaN on a row. Requests of one trial share its conditions, so
every comparison here is across trials: request metrics through their per-trial medians.

`apply_delay_ms` makes the peers spend that long on every command they apply (a slow avatar):
a known answer, since one command awaited alone, unpaced, must take that much longer.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mateperf import metrics, progress, stats
from mateperf.bridge.client import Ack, BridgeError, UnityBridge
from mateperf.bridge.floor import FloorClient
from mateperf.bridge.process import PeerProcess, start_floor, start_peer
from mateperf.bridge.protocol import encode_request
from mateperf.phases.declaration import Phase
from mateperf.phases.ipc.params import (
    SCENARIOS,  # noqa: F401 - the scenarios, read from the phase
    IpcParams,
    parse_loads,
    parse_scenarios,
    parse_sizes,
)
from mateperf.trackers import cpu as cpu_tracker

PHASE = "ipc"
ROUND_SPLIT = ("trials",)  # what a sweep's rounds divide among them (mateperf.sweep)
REQUEST_METRICS = tuple(m.name for m in metrics.IPC_METRICS if m.level == metrics.REQUEST)
TRIAL_METRICS = tuple(m.name for m in metrics.IPC_METRICS if m.level == metrics.TRIAL)
METRICS = REQUEST_METRICS + TRIAL_METRICS
IDENTITY = metrics.IDENTITY[PHASE]

# column `record`: what a row is
RECORD = "record"
REQUEST_ROW, FRAME_ROW, TRIAL_ROW = "request", "frame", "trial"
# describe a request without being metrics: rtt_us again in ms (one measurement, declared
# once), a timestamp, a frame number, bytes that depend on the digits of the request id, the
# arm's request counter; and a frame: its interval (pacing, not a cost the bridge adds), the
# commands it applied and the requests it left queued
REQUEST_FIELDS = (
    "completion_ms",
    "since_start_ms",
    "frame",
    "size_bytes",
    "seq",
    "frame_interval_us",
    "frame_commands",
    "queue_depth",
)
# frame_cost's modes: a steady load of commands per frame, or a client whose socket is full
FRAME_COST_LOAD, FRAME_COST_NON_READING = "commands", "non_reading_client"
NON_READING_COMMANDS_PER_FRAME = 10

DEFAULTS = IpcParams.defaults()


class CountersMismatch(RuntimeError):
    """The peer's counters disagree with what the client saw: a request was lost or doubled."""


_progress = progress.reporter("ipc")


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

    def __init__(
        self, stack: ExitStack, peer: str, fps: float, timeout_s: float, apply_delay_ms: float
    ):
        self.peer_kind = peer
        self.fps = fps
        self.timeout_s = timeout_s
        self.apply_delay_ms = apply_delay_ms
        self.floor_proc = stack.enter_context(start_floor())
        self.floor = stack.enter_context(FloorClient("127.0.0.1", self.floor_proc.port))
        self.peers: dict[float, PeerProcess] = {}
        self.bridges: dict[float, UnityBridge] = {}
        for f in dict.fromkeys((0.0, float(fps))):
            self.peers[f] = stack.enter_context(
                start_peer(peer, fps=f, apply_delay_ms=apply_delay_ms)
            )
            bridge = UnityBridge(port=self.peers[f].port, request_timeout_s=timeout_s)
            self.bridges[f] = stack.enter_context(bridge.connect())
        self.legacy_peer = stack.enter_context(
            start_peer(peer, fps=fps, legacy=True, apply_delay_ms=apply_delay_ms)
        )


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


def _scenario_simple(lab: _Lab, p: dict) -> Iterator[Arm]:
    w = p["warmup"]
    n = p["requests"] + w
    line_len = len(encode_request(*_simple(0), 1000))
    floor_line = b"x" * (line_len - 1) + b"\n"
    yield Arm("floor", 0.0, _mark_warmup(_floor_pingpong(lab, lambda i: floor_line, n), w))
    rows = _requests(lab.bridges[0.0], [_simple(i) for i in range(n)])
    yield Arm("bridge_unpaced", 0.0, _mark_warmup(rows, w))
    if lab.fps:
        wp = min(w, 5)
        commands = [_simple(i) for i in range(p["paced_requests"] + wp)]
        rows = _requests(lab.bridges[lab.fps], commands)
        yield Arm(_fps_mode(lab.fps), lab.fps, _mark_warmup(rows, wp))


def _echo_for_size(size: int) -> tuple[str, dict]:
    base = len(encode_request("echo", {"payload": ""}, 1000))  # ids vary by a few bytes
    return "echo", {"payload": "x" * max(0, size - base)}


def _scenario_sizes(lab: _Lab, p: dict) -> Iterator[Arm]:
    w = min(p["warmup"], 5)
    n = p["size_requests"] + w
    for size in parse_sizes(p["sizes"]):
        floor_line = b"x" * (size - 1) + b"\n"
        rows = _mark_warmup(_floor_pingpong(lab, lambda i, ln=floor_line: ln, n), w)
        yield Arm("floor", 0.0, rows, target_bytes=size)
        rows = _mark_warmup(_requests(lab.bridges[0.0], [_echo_for_size(size)] * n), w)
        yield Arm("bridge_unpaced", 0.0, rows, target_bytes=size)


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


def _scenario_throughput(lab: _Lab, p: dict) -> Iterator[Arm]:
    n, window = p["throughput_requests"], p["window"]
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


def _scenario_expressions(lab: _Lab, p: dict) -> Iterator[Arm]:
    for fps in lab.bridges:
        steps = 5 if fps == 0 else 1
        commands = [c for s in range(steps) for c in expression_sequence(s)]
        w = min(p["warmup"], 3)
        warm = list(expression_sequence(99))[:w]
        rows = _requests(lab.bridges[fps], warm + commands)
        yield Arm(_fps_mode(fps), fps, _mark_warmup(rows, w))


def _scenario_batching(lab: _Lab, p: dict) -> Iterator[Arm]:
    """All three arms carry batch_size: they are one comparison, made at that batch size."""
    n, size = p["batch_commands"], p["batch_size"]
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


def _scenario_original(lab: _Lab, p: dict) -> Iterator[Arm]:
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


def _scenario_frame_cost(lab: _Lab, p: dict) -> Iterator[Arm]:
    """Tick time per frame at a steady load, then with a non-reading client: a peer of its own,
    so the client that never reads (and is counted only by the peer) leaves the others alone."""
    fps = lab.fps or 60.0
    period_s = 1.0 / fps
    n_frames, warmup = p["frame_cost_frames"], 2
    with ExitStack() as stack:
        proc = stack.enter_context(
            start_peer(lab.peer_kind, fps=fps, apply_delay_ms=lab.apply_delay_ms)
        )
        bridge = stack.enter_context(
            UnityBridge(port=proc.port, request_timeout_s=lab.timeout_s).connect()
        )
        for load in parse_loads(p["frame_cost_loads"]):
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


def _arm_frame(scenario: str, trial: int, arm: Arm) -> pd.DataFrame:
    """An arm's request rows, then its trial row (when it has per-trial figures)."""
    parts = []
    if arm.requests:
        requests = pd.DataFrame(arm.requests)
        requests[RECORD] = arm.record
        requests["seq"] = np.arange(len(requests), dtype=float)
        if "is_warmup" not in requests:
            requests["is_warmup"] = False
        parts.append(requests)
    if arm.per_trial:
        parts.append(pd.DataFrame([{**arm.per_trial, RECORD: TRIAL_ROW, "is_warmup": False}]))
    frame = pd.concat(parts, ignore_index=True)
    frame["scenario"] = scenario
    frame["mode"] = arm.mode
    frame["trial"] = trial
    frame["fps"] = float(arm.fps)
    frame["target_bytes"] = float(arm.target_bytes)
    frame["batch_size"] = float(arm.batch_size)
    frame["commands_per_frame"] = float(arm.commands_per_frame)
    return frame


FRONT_COLUMNS = (*IDENTITY, "trial", RECORD, "is_warmup")


def run(**params) -> pd.DataFrame:
    """Measure every chosen scenario: request rows and one trial row per arm and trial."""
    p = IpcParams.from_values(params).as_dict()
    fps = float(p["fps"])
    chosen = parse_scenarios(p["scenarios"])
    frames = []
    with ExitStack() as stack:
        if p["pin_cpu"] >= 0:
            before, _ = cpu_tracker.affinity()
            cpu_tracker.set_affinity({p["pin_cpu"]})
            stack.callback(cpu_tracker.set_affinity, before)
            _progress(f"client, peers and floor pinned to CPU {p['pin_cpu']}")
        delay = f", {p['apply_delay_ms']:g} ms per applied command" if p["apply_delay_ms"] else ""
        for trial in range(p["trials"]):
            # Fresh processes and connections per trial: a trial then replicates what a run
            # would (where the scheduler puts each thread, the frame loop's phase, the JIT),
            # so variation between runs shows up between trials instead of as a difference.
            with ExitStack() as trial_stack:
                _progress(
                    f"trial {trial + 1}/{p['trials']}: starting floor and {p['peer']} peers "
                    f"(fps 0 and {fps:g}{delay})"
                )
                lab = _Lab(trial_stack, p["peer"], fps, float(p["timeout_s"]), p["apply_delay_ms"])
                for scenario in chosen:
                    _progress(f"{scenario} trial {trial + 1}/{p['trials']}")
                    for arm in SCENARIO_RUNNERS[scenario](lab, p):
                        frames.append(_arm_frame(scenario, trial, arm))
                counters = _check_counters(lab)
            _progress(f"peer counters match the client's: {counters}")
    df = pd.concat(frames, ignore_index=True)
    df["peer"] = p["peer"]
    df["pin_cpu"] = p["pin_cpu"]
    df["apply_delay_ms"] = p["apply_delay_ms"]
    df["is_warmup"] = df["is_warmup"].astype(bool)
    for col in (*METRICS, *REQUEST_FIELDS):
        if col not in df:
            df[col] = np.nan
        df[col] = df[col].astype(float)
    df["command"] = df.get("command", pd.Series(dtype=object)).fillna("")
    order = [*FRONT_COLUMNS, *METRICS, *REQUEST_FIELDS, "command"]
    return df[[*order, *[c for c in df.columns if c not in order]]]


# -- computing from a stored frame ---------------------------------------------------------------


def split_records(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(request and frame rows, trial rows) of a stored frame, warm-ups left out: the rows
    that are many per trial, and the rows that are one per trial.

    Frames stored before trial rows existed carry each per-trial value copied onto every
    request row of its arm and trial; one trial row per arm and trial is rebuilt from them,
    and the copies are blanked on the request rows.
    """
    df = metrics.without_warmup(df)
    if RECORD in df.columns:
        return df[df[RECORD].isin((REQUEST_ROW, FRAME_ROW))], df[df[RECORD] == TRIAL_ROW]
    copied = [c for c in TRIAL_METRICS if c in df.columns]
    requests = df.assign(**{c: np.nan for c in copied})
    if not copied:
        return requests, df.iloc[:0]
    keys = [c for c in (*IDENTITY, *metrics.replicate_keys(df)) if c in df.columns]
    with_values = df[df[copied].notna().any(axis=1)]
    trials = with_values.groupby(keys, sort=False, dropna=False)[copied].first().reset_index()
    return requests, trials


def per_trial(rows: pd.DataFrame, metric: str, percentile: float = 50) -> np.ndarray:
    """One value of `metric` per trial (sorted by trial): a percentile of the trial's requests,
    or the trial row's own value. Trials, not requests, are what repeat independently."""
    if metric not in rows.columns:
        return np.array([], float)
    keys = metrics.replicate_keys(rows)
    values = rows[[*keys, metric]].dropna(subset=[metric])
    if values.empty:
        return np.array([], float)
    if not keys:
        return np.array([np.percentile(values[metric], percentile)])
    grouped = values.groupby(keys, sort=True)[metric]
    return grouped.quantile(percentile / 100).to_numpy(float)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per arm (its identity columns) and declared metric, warm-ups left out.

    A request-level metric: `median` is the median of the per-trial medians and its 95% CI is
    bootstrapped over those trials; n, mean, std, p5/p95/p99, min and max describe the pooled
    requests (the distribution a caller sees). A trial-level metric: one value per trial, so n
    counts trials. `trials` counts the trials in every row.
    """
    requests, trials = split_records(df)
    keys = [c for c in IDENTITY if c in df.columns]
    rows = []
    for frame, level in ((requests, metrics.REQUEST), (trials, metrics.TRIAL)):
        names = [m.name for m in metrics.IPC_METRICS if m.level == level]
        if frame.empty:
            continue
        for key, group in frame.groupby(keys, sort=False, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            for metric in names:
                if metric not in group or group[metric].isna().all():
                    continue
                medians = per_trial(group, metric)
                row = {**dict(zip(keys, key, strict=True)), "metric": metric, "level": level}
                row["trials"] = len(medians)
                row.update(stats.summarize(group[metric]))
                if level == metrics.REQUEST:
                    across = stats.summarize(medians)
                    row.update({k: across[k] for k in ("median", "ci_low", "ci_high")})
                rows.append(row)
    columns = [*keys, "metric", "level", "trials", *stats.SUMMARY_KEYS]
    return pd.DataFrame(rows, columns=columns)


def frame_cost_table(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """frame_cost per arm: Tick time per frame (µs) and as a share of the frame period (%).

    p50 is the median across trials of each trial's median frame (with its 95% CI); p99 and
    max describe all frames of all trials, the frames a player sees.
    """
    summary = summarize(df) if summary is None else summary
    sel = summary[(summary["scenario"] == "frame_cost") & (summary["metric"] == "tick_us")]
    rows = []
    for _, r in sel.iterrows():
        frame_us = 1e6 / float(r["fps"])
        row = {
            "mode": r["mode"],
            "commands_per_frame": float(r["commands_per_frame"]),
            "fps": float(r["fps"]),
            "frame_us": frame_us,
            "trials": int(r["trials"]),
            "frames": int(r["n"]),
        }
        for stat, key in (("p50", "median"), ("p99", "p99"), ("max", "max")):
            row[f"tick_{stat}_us"] = float(r[key])
            row[f"tick_{stat}_share_pct"] = float(r[key]) / frame_us * 100
        row["tick_p50_ci_us"] = (float(r["ci_low"]), float(r["ci_high"]))
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        order = {FRAME_COST_LOAD: 0, FRAME_COST_NON_READING: 1}
        out = out.sort_values(
            ["mode", "commands_per_frame"], key=lambda c: c.map(order) if c.name == "mode" else c
        ).reset_index(drop=True)
    return out


def _arm(rows: pd.DataFrame, scenario: str, mode: str, **where) -> pd.DataFrame:
    sel = rows[(rows["scenario"] == scenario) & (rows["mode"] == mode)]
    for key, value in where.items():
        sel = sel[sel[key] == value]
    return sel


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def headline(df: pd.DataFrame) -> dict:
    """The figures the issue asks for, computed from a stored frame (NaN when not measured).

    Every centre is a median across trials of one value per trial (a trial's median request,
    or its whole-sequence figure), and every ratio is `stats.compare` of those per-trial values.
    """
    requests, trials = split_records(df)
    out: dict = {"peer": str(df["peer"].iloc[0]) if len(df) else ""}
    if "apply_delay_ms" in df.columns and len(df):
        out["apply_delay_ms"] = float(df["apply_delay_ms"].iloc[0])
    floor = _arm(requests, "simple_commands", "floor")
    bridge = _arm(requests, "simple_commands", "bridge_unpaced")
    if floor["rtt_us"].notna().any() and bridge["rtt_us"].notna().any():
        ab = stats.compare(per_trial(floor, "rtt_us"), per_trial(bridge, "rtt_us"))
        out["simple_trials"] = min(ab.n_a, ab.n_b)
        out["floor_p50_us"] = ab.median_a
        out["bridge_p50_us"] = ab.median_b
        out["floor_p99_us"] = _median(per_trial(floor, "rtt_us", 99))
        out["bridge_p99_us"] = _median(per_trial(bridge, "rtt_us", 99))
        out["bridge_over_floor_p50"] = ab.ratio
        out["bridge_over_floor_ci"] = (ab.ci_low, ab.ci_high)
        out["bridge_over_floor_verdict"] = ab.verdict
        out["bridge_completion_p50_ms"] = ab.median_b / 1e3
    tp_floor = per_trial(_arm(trials, "throughput", "floor"), "throughput_cmd_per_s")
    tp_bridge = per_trial(_arm(trials, "throughput", "bridge_unpaced"), "throughput_cmd_per_s")
    if len(tp_floor) and len(tp_bridge):
        ab = stats.compare(tp_floor, tp_bridge, higher_is_better=True)
        out["floor_throughput_cmd_per_s"] = ab.median_a
        out["bridge_throughput_cmd_per_s"] = ab.median_b
        out["throughput_share_of_floor"] = ab.ratio
        out["throughput_share_ci"] = (ab.ci_low, ab.ci_high)
    batching_fps = {
        float(f) for rows in (requests, trials) for f in rows[rows["scenario"] == "batching"]["fps"]
    }
    for fps in sorted(batching_fps):
        tag = "unpaced" if fps == 0 else f"{fps:g}fps"
        totals = {}
        for mode in ("one_by_one", "batched", "pipelined"):
            rtt = per_trial(_arm(requests, "batching", mode, fps=fps), "rtt_us")
            out[f"{tag}_{mode}_completion_p50_ms"] = _median(rtt) / 1e3
            totals[mode] = per_trial(_arm(trials, "batching", mode, fps=fps), "total_ms")
            out[f"{tag}_{mode}_total_ms"] = _median(totals[mode])
        out[f"{tag}_frame_ms"] = 1000.0 / fps if fps else float("nan")
        if len(totals["batched"]) and len(totals["one_by_one"]):
            ab = stats.compare(totals["batched"], totals["one_by_one"])
            out[f"{tag}_one_by_one_over_batched_total"] = ab.ratio
            out[f"{tag}_one_by_one_over_batched_ci"] = (ab.ci_low, ab.ci_high)
    cost = frame_cost_table(df)
    for _, r in cost.iterrows():
        tag = (
            "non_reading" if r["mode"] == FRAME_COST_NON_READING else f"{r['commands_per_frame']:g}"
        )
        for stat in ("p50", "p99", "max"):
            out[f"frame_cost_{tag}_{stat}_us"] = r[f"tick_{stat}_us"]
            out[f"frame_cost_{tag}_{stat}_share_pct"] = r[f"tick_{stat}_share_pct"]
        out["frame_cost_frame_us"] = r["frame_us"]
    for mode in ("sendall", "sendall_sleep_1ms"):
        sent = per_trial(_arm(requests, "original_method", mode), "sendall_us")
        out[f"original_{mode}_p50_us"] = _median(sent)
        sequence = _arm(trials, "original_method", mode)
        out[f"original_{mode}_total_ms"] = _median(per_trial(sequence, "total_ms"))
        out[f"original_{mode}_applied_ms"] = _median(per_trial(sequence, "applied_ms"))
    return out


DECLARATION = Phase(
    name="ipc",
    number=3,
    notebook=None,
    run=run,
    summarize=summarize,
    params=IpcParams,
    round_split=ROUND_SPLIT,
    trial_table=None,
    sweep_metrics=None,
    representative=None,
    report="mateperf.reports.ipc",
)
