"""Phase 7 — live: a real companion session, recorded call by call (`mateperf.live`).

No notebook runs this phase: the companion's own process records it. One line around its
`Llama` (`self.model = live.record(Llama(...))`) appends a row per model call to a run
directory's journal (`live.jsonl`): prompt and completion tokens, llama.cpp's prompt-eval and
eval times from its performance counters, wall time, RSS, VRAM where NVML reads a GPU, and,
with an avatar attached, its frame p99 during the call. `report`, `compare` and the explore
notebook read the session like any run; a companion killed mid-session keeps every call
already written. docs/live.md.
"""

from __future__ import annotations

from mateperf.errors import PhaseError
from mateperf.phases.declaration import Phase
from mateperf.phases.live.analyse import (  # noqa: F401 - re-exported
    calls,
    overhead_share,
    summarize,
)
from mateperf.phases.live.params import LiveParams

RECORDED_BY = "mateperf.live (one line in the companion's process: docs/live.md)"


def run(**values):
    """A live session is recorded by the companion's process, never run by mateperf."""
    raise PhaseError(f"phase live has no notebook to run: it is recorded by {RECORDED_BY}")


DECLARATION = Phase(
    name="live",
    number=7,
    run=run,
    summarize=summarize,
    params=LiveParams,
    uses_model=False,
    reads_config=False,
    round_split=(),
    trial_table=None,
    sweep_metrics=None,
    representative=None,
    report="mateperf.reports.live",
    recorded_by=RECORDED_BY,
)
