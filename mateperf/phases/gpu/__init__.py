"""Phase 5 "gpu": how many layers fit on the GPU, and how to avoid VRAM crashes.

Scenarios (one tidy frame; `scenario` says what a row is):
- `prediction`: one row per n_gpu_layers from 0 to all (n_layer + 1): the VRAM predicted from
  the GGUF metadata (mateperf.gpu.estimate; weights, KV cache, compute buffers, the measured
  device overhead) and llama.cpp's own projection from a no-allocation dry run
  (mateperf.gpu.projection), both labelled, never mixed.
- `cpu_check`: the metadata method's prediction for a CPU-only build against llama.cpp's host
  projection on this build: the one check of the method a machine without a GPU can make.
- `kv_check`: the same comparison (on a CUDA build: the device at all layers) for every KV
  cache type pair and flash attention setting (estimate.kv_variants).
- `fit` / `target`: the target card (`vram_budget_mb`, else the free VRAM, else the companion's
  6 GB): every n_ctx × KV cache type × n_gpu_layers predicted, and the companion's own profiles
  (COMPANION_PROFILES) with what each costs; the overhead is this device's where measured, else
  the H200 reference, labelled.
- `selection`: each profile with its prediction, what is available (free VRAM, or an emulated
  `vram_budget_mb`), whether it fits with `margin_mb`, and which one was chosen.
- `attempt`: the fallback chain walked from the chosen profile, every step with its
  prediction and the reason it was skipped unloaded (predicted not to fit), left (failed, or
  measured over the limit), or that it loaded.
- `layers`: measured trials of the run's own n_gpu_layers (what a sweep varies): load,
  time to first token of a companion reply, pp and tg tokens/s, and NVML's device VRAM
  before/after/peak. `profile`: the same for every profile that fits, when a GPU is present.
  Round 0 is a warm-up, left out; each round visits the arms in a seeded random order.
- `sample` / `alert`: the GPU monitor's timeline and its threshold events.

Without an NVIDIA GPU the phase still predicts (both ways), selects (which ends at
cpu_fallback), walks the chain and measures the CPU, and every row says why no GPU was measured.
On a CUDA build each trial runs in a fresh child process (mateperf.gpu.trial explains why).

`measure` measures (run), `predict` makes the predictions before anything loads, `analyse`
reads a stored frame (summaries, measured against predicted, the sweep's metrics); below
are the names the notebook, the tests and the device check use.
"""

from __future__ import annotations

from mateperf.phases.declaration import Phase, measured_by
from mateperf.phases.gpu.analyse import (  # noqa: F401 - re-exported
    MEASURED_SCENARIOS,
    SCENARIO_ALERT,
    SCENARIO_ATTEMPT,
    SCENARIO_CPU_CHECK,
    SCENARIO_FIT,
    SCENARIO_KV_CHECK,
    SCENARIO_LAYERS,
    SCENARIO_PROFILE,
    SCENARIO_SAMPLE,
    SCENARIO_SELECTION,
    SCENARIO_TARGET,
    check,
    fit_frames,
    measured,
    measured_at_base,
    measured_vs_predicted,
    prediction_table,
    profile_comparison,
    summarize,
    sweep_metrics,
)
from mateperf.phases.gpu.params import GpuParams

ROUND_SPLIT = ("trials",)  # what a sweep's rounds divide among them


run = measured_by("mateperf.phases.gpu.measure")

DECLARATION = Phase(
    name="gpu",
    number=5,
    run=run,
    summarize=summarize,
    params=GpuParams,
    uses_model=True,
    reads_config=False,
    round_split=ROUND_SPLIT,
    trial_table=None,
    sweep_metrics=sweep_metrics,
    representative=None,
    report="mateperf.reports.gpu",
)
