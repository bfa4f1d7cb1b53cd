"""Phase 1, memory: does RAM/VRAM leak over a long chat?

Scenarios, in one process and one sampler timeline:
  baseline        after the imports, before the model
  load_model      the model loaded (mmap'd) and its context created
  chat_session    N messages of a multi-turn companion conversation, the history trimmed to the
                  last `history_messages` messages as Desktop-Mate does; it starts right after a
                  full garbage collection and one more closes it (checkpoint after_chat_gc)
  memory_cleanup  close the model, gc.collect(), malloc_trim(0); each step marked

`measure.run` measures and returns one tidy frame; `analyse` (the live heap, the fits,
`summarize`, `checkpoints`, `cleanup_effects`) and `verdict` (`verdict_table`, `trial_table`)
compute from a stored frame. The frame's `record` column says what a row is:
  "sample"   a background sample of the MemorySampler (every ~20 ms)
  "marker"   an event with a full reading (baseline, model loaded, model closed, ...); the
             scenario's key moments carry a `checkpoint` name
  "message"  the reading right after message k of the chat (the series the leak test fits)
  "gc"       one garbage collection CPython ran (gc.callbacks): generation, objects collected,
             for full collections the heap in use they returned (`gc_freed_heap_mb`);
             `gc_replies_done` is the number of replies finished when it ran
Memory columns ending in `_mb` are MiB, `_kb` KiB.

The leak test (see docs/memory.md) reads the live heap: heap in use after each reply less the
reply garbage that a later collection returned, placed with the gc events (`freed_by` models
which collection frees which reply's garbage; `pending_garbage` shares each collection's
returned heap among those replies). Its slope per message after `warmup_messages` gets a CI
robust to autocorrelation (mateperf.stats.slope_hac), and the run is called
  leak          the live heap's CI lies wholly above `leak_threshold_mb_per_msg`
  inconclusive  the CI straddles the threshold
  bounded       the live heap's CI lies below it, but memory rose: automatic full collections
                returned heap at a rate at or above the threshold, or a raw series (heap in
                use, RSS, anonymous RSS) grew above it: growth that collections return or that
                plateaus (the report gives the peak and the collection period)
  flat          none of that
The detector is checked against itself by `leak_kb_per_message`, which keeps that many KiB alive
per message: a real leak of known size.
"""

from __future__ import annotations

from mateperf.phases.declaration import Phase, measured_by
from mateperf.phases.memory.analyse import (  # noqa: F401 - re-exported
    ABOVE,
    CHECKPOINTS,
    LIVE,
    SCENARIOS,
    checkpoints,
    cleanup_effects,
    collections,
    freed_by,
    garbage_unit_mb,
    live_heap,
    message_rows,
    representative,
    series,
    summarize,
)
from mateperf.phases.memory.params import MemoryParams
from mateperf.phases.memory.verdict import (  # noqa: F401 - re-exported
    BOUNDED,
    FLAT,
    INCONCLUSIVE,
    LEAK,
    gc_summary,
    overall_verdict,
    trial_table,
    verdict_table,
)

run = measured_by("mateperf.phases.memory.measure")

DECLARATION = Phase(
    name="memory",
    number=1,
    run=run,
    summarize=summarize,
    params=MemoryParams,
    uses_model=True,
    reads_config=False,
    # A sweep's rounds each run the whole session again: no repetition parameter to divide.
    round_split=(),
    trial_table=trial_table,
    sweep_metrics=None,
    representative=representative,
    report="mateperf.reports.memory",
)
