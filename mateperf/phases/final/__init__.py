"""Phase 6 "final": a whole companion turn, the original settings against every optimisation.

A turn is what a user lives through: the app loads the model (and, when warm-up is on, runs
its tiny warm-up generation), the user's message goes in, the reply streams, and while it
streams the companion drives the avatar: an emotion beat (expression ramp, blink, head
movement) when the first words appear, another every `beat_chunks` pieces of text, and the
reply's emotion tag at the end, sent over the bridge to a frame-paced peer (the Python peer or
the C# core under Mono) whose main thread is busy for `frame_busy` of every frame, as Unity's.

Arms, each a fresh process state (model loaded afresh, peer started afresh):
- `baseline`: the original settings: n_threads 6 clamped to the CPUs this process may use, no
  warm-up, commands sent one by one (each waited for), the original `balanced` profile
  (n_gpu_layers 35);
- `threads`, `warmup`, `batching`, `profile`: the baseline with that one optimisation;
- `optimised`: all four: the cpu phase's recommended.json, warm-up, one `batch` per beat, the
  profile selected for this machine's free VRAM (cpu_fallback without a GPU).

Arms are visited in a seeded random order within each round, one round per trial
(`mateperf.runner`); the first turn is a warm-up of the process and page cache, kept and
marked `is_warmup`, and a failed turn is recorded with its error. Every arm is compared with
the baseline per trial (the replicate), and the single optimisations' ratios are multiplied to
show whether they add up to the combination.

`measure` runs the turns; `analyse` reads the frame.
"""

from __future__ import annotations

from mateperf import metrics
from mateperf.phases.declaration import Phase, measured_by
from mateperf.phases.final.analyse import ADD_UP_METRICS, add_up, against_baseline  # noqa: F401 - re-exported
from mateperf.phases.final.params import ARMS, BASELINE, OPTIMISED, FinalParams  # noqa: F401 - re-exported

run = measured_by("mateperf.phases.final.measure")

DECLARATION = Phase(
    name="final",
    number=6,
    run=run,
    summarize=against_baseline,
    params=FinalParams,
    uses_model=True,
    reads_config=True,
    round_split=("trials",),
    trial_table=metrics.completed,
    sweep_metrics=None,
    representative=None,
    report="mateperf.reports.final",
)
