"""What a row of the ipc frame is: the names that measure writes and analyse reads.

A row is a request, a peer frame or a trial (column `record`); it carries its arm's identity,
the declared metrics of its level (NaN for the others) and the columns that describe it.
"""

from __future__ import annotations

from mateperf import metrics

PHASE = "ipc"
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

FRONT_COLUMNS = (*IDENTITY, "trial", RECORD, "is_warmup")
# the stored order: identity first, then metrics, what describes a row, and the run's settings;
# `error` (a failed trial's "Type: message", "" on every other row) last
COLUMNS = (
    *FRONT_COLUMNS,
    *METRICS,
    *REQUEST_FIELDS,
    "command",
    "peer",
    "pin_cpu",
    "apply_delay_ms",
    "skipped",  # an attached run: the scenarios it left out and why ("" otherwise)
    "timer_overshoot_us",  # the paced peer's 1 ms sleep overshoot and timer (avatar_pacing)
    "timer_resolution",
    "error",
)
