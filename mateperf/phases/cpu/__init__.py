"""Phase 4 "cpu": how many threads, measured under the load the companion really runs beside.

Every trial loads the model afresh with one setting (n_threads for generation, n_threads_batch
for prompts, n_batch/n_ubatch) under one background:
- `idle`: nothing else runs;
- `companion`: a frame-paced peer process at `fps`, its main thread busy for `frame_busy` of
  every frame (a stand-in for Unity's per-frame work), while emotion commands stream to it over
  the bridge at `command_hz`, as during a reply (mateperf.companion_load).
After llama-bench's warm-up (a prompt of the measured size and one generated token), in the
trial's window: prompt processing of `pp_tokens` random tokens (llama-bench's pp), then
generation of `tg_tokens` (tg) with the process's CPU time, then one real companion reply
streamed (time to first token, whole reply). The peer reports the frame intervals it achieved
meanwhile (does the model's threading make the avatar stutter?).

Settings and backgrounds are visited in a seeded random order inside each round, one round per
trial (`mateperf.runner`), so a drift of the host hits every setting alike; the first trial is
a warm-up of the process and page cache, kept in the table marked `is_warmup`, and a failed
trial is recorded with its error.

`measure` runs the trials; `analyse` reads the frame (summaries, the recommendation).
"""

from __future__ import annotations

from mateperf import metrics
from mateperf.phases.cpu.analyse import (  # noqa: F401 - re-exported
    per_condition,
    recommendation,
    summarize,
    sweep_metrics,
    write_recommendation,
)
from mateperf.phases.cpu.params import CpuParams
from mateperf.phases.declaration import Phase, measured_by

run = measured_by("mateperf.phases.cpu.measure")

DECLARATION = Phase(
    name="cpu",
    number=4,
    run=run,
    summarize=summarize,
    params=CpuParams,
    uses_model=True,
    reads_config=False,
    round_split=("trials",),
    trial_table=metrics.completed,
    sweep_metrics=sweep_metrics,
    representative=None,
    report="mateperf.reports.cpu",
)
