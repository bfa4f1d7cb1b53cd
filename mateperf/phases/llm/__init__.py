"""Phase 2 "llm": model load, first reply, cold-vs-warm cache, steady-state throughput.

Scenarios (one tidy row per trial or repetition):
- `first_reply`: every trial loads the model afresh; the warm arm runs the warm-up (the system
  prompt plus a greeting, `warmup_tokens` generated) right after load, as the app's
  load_model(warm_cache=True) does; then one real companion turn is streamed. Arms are
  interleaved in a balanced order (cold-warm, warm-cold, cold-warm, ...: ABBA), so each arm
  runs first in half of the pairs and a drift or a carry-over from the previous trial hits both
  alike; each pair uses the same user turn, so prompt length cancels. The first pair is a
  warm-up of the process and disk cache and is kept in the table marked `is_warmup`.
- `pp` / `tg`: throughput the way llama-bench measures it (random tokens, KV cache cleared
  before each repetition, decode calls with no sampling), one repetition per fresh model load
  after llama-bench's own warm-up (a prompt of the measured size, then one generated token);
  the first repetition is a warm-up, left out.
- `membw`: memory-copy bandwidth with n_threads threads, measured in the same run, so the
  generation rate can be shown against the bound bandwidth / bytes read per token.

A failed trial is a row with its `error` set, and the run goes on; a run whose every
first-reply trial (or every throughput repetition) failed is a failure.

`measure` runs the trials; `analyse` reads a stored frame.
"""

from __future__ import annotations

from mateperf.phases.declaration import Phase, measured_by
from mateperf.phases.llm.analyse import (  # noqa: F401 - re-exported
    COLD,
    SCENARIO_FIRST_REPLY,
    SCENARIO_MEMBW,
    SCENARIO_PP,
    SCENARIO_TG,
    WARM,
    bandwidth_bound,
    cold_vs_warm,
    kept,
    summarize,
    sweep_metrics,
)
from mateperf.phases.llm.params import LlmParams

ROUND_SPLIT = ("trials", "bench_reps")  # what a sweep's rounds divide among them, primary first


run = measured_by("mateperf.phases.llm.measure")

DECLARATION = Phase(
    name="llm",
    number=2,
    run=run,
    summarize=summarize,
    params=LlmParams,
    uses_model=True,
    reads_config=False,
    round_split=ROUND_SPLIT,
    trial_table=None,
    sweep_metrics=sweep_metrics,
    representative=None,
    report="mateperf.reports.llm",
)
