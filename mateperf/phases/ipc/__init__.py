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
`is_warmup=True` and left out of every summary. A trial that fails is one row with its `error`
(no record) and the run goes on (mateperf.runner); a run whose every trial failed raises.

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

Modules: `params` (the schema), `rows` (the frame's columns and record kinds), `scenarios` (the
lab of peers and what each scenario sends), `measure` (`run` and the trial loop), `analyse`
(everything read from a stored frame).
"""

from mateperf.phases.declaration import Phase, measured_by
from mateperf.phases.ipc.analyse import (  # noqa: F401 - re-exported
    failed_trials,
    frame_cost_table,
    headline,
    summarize,
)
from mateperf.phases.ipc.params import SCENARIOS, IpcParams  # noqa: F401 - re-exported
from mateperf.phases.ipc.rows import (  # noqa: F401 - re-exported
    FRAME_COST_LOAD,
    FRAME_COST_NON_READING,
    IDENTITY,
    METRICS,
    REQUEST_METRICS,
    TRIAL_METRICS,
)

run = measured_by("mateperf.phases.ipc.measure")

DECLARATION = Phase(
    name="ipc",
    number=3,
    run=run,
    summarize=summarize,
    params=IpcParams,
    uses_model=False,
    reads_config=False,
    round_split=("trials",),  # what a sweep's rounds divide among them (mateperf.sweep)
    trial_table=None,
    sweep_metrics=None,
    representative=None,
    report="mateperf.reports.ipc",
)
