"""How a phase's stored runs are formatted, declared once beside the formatting.

A phase's report module ends with `REPORT = PhaseReport(...)`; the phase's own declaration
(`mateperf.phases.declaration.Phase.report`) names that module. Every optional hook is named,
`None` where the phase has none, so FINAL_RESULTS.md never drops a phase's summary row because
a function was missing or misspelt.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mateperf import phases

if TYPE_CHECKING:
    from pandas import DataFrame as Frame


@dataclass(frozen=True)
class PhaseReport:
    """- `section(frame, info, plots_dir, md_dir)`: the phase's markdown section.
    - `summary_rows(frame, info)`: its rows of FINAL_RESULTS.md's summary table
      (`mateperf.reports.overview.summary_row` each).
    - `variant_row(frame, info)`: its columns in the table of a phase's variants.
    - `sweep_extra(frame, info, plots_dir, md_dir)`: what only this phase shows per point of a
      sweep, after the ranked metrics.
    """

    section: Callable[[Frame, dict, Path, Path], str]
    summary_rows: Callable[[Frame, dict], list[dict]] | None
    variant_row: Callable[[Frame, dict], dict] | None
    sweep_extra: Callable[[Frame, dict, Path, Path], str] | None


def declared(phase: str) -> PhaseReport:
    """The report declared by the module that the phase's declaration names."""
    return importlib.import_module(phases.declared(phase).report).REPORT
