"""What a phase is, declared once: the one thing callers read instead of probing a module.

Each phase module ends with `DECLARATION = Phase(...)`. Every optional hook is named there,
`None` where the phase has none, so a caller asks `declared(phase).trial_table is None`
instead of `getattr(module, "trial_table", None)`, and a phase that forgets a hook fails at
import, not by silently dropping a row of the summary.

How its stored runs are formatted is declared beside the formatting, in the module that
`report` names (a `mateperf.reports.declaration.PhaseReport` called `REPORT`): the reports sit
above the phases, so the phase names its report module and never imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mateperf.params import Params

if TYPE_CHECKING:  # the CLI reads declarations before anything needs pandas
    from pandas import DataFrame as Frame


@dataclass(frozen=True)
class Phase:
    """One phase of the study: how it runs, how its frame is read, and where it is formatted.

    - `notebook`: the notebook `mateperf run` executes; `None` (the default) means
      `notebooks/NN_*.ipynb` with NN the phase's number.
    - `number`: its place in the study (1-7 for the built-in phases): the order of `phases.names()`,
      of FINAL_RESULTS.md's sections, and its notebook's `NN_` prefix.
    - `params`: the phase's `mateperf.params.Params` subclass, the one schema of what it
      accepts (types, defaults, ranges, help); building it is the validation.
    - `uses_model`: it loads the GGUF model (its parameter `model`): `--model` applies, the
      model file and llama-cpp-python are checked before it runs.
    - `reads_config`: it reads a recommended.json itself (its parameter `config`: the final
      phase's tuned arms) instead of taking the file's settings as parameters.
    - `run(**params)`: measures and returns the tidy frame.
    - `summarize(frame)`: the phase's summary table (per scenario, arm and metric: median, CI
      and the rest; the final phase's is each arm against the baseline).
    - `round_split`: the repetition parameters a sweep divides among its rounds, primary
      first; empty where every run is one replicate (memory) and each round runs it whole.
    - `trial_table(frame)`: the run-level metrics, one row per replicate (for phases whose
      metrics of level `run` are derived from the whole frame).
    - `sweep_metrics(frame)`: (label, rows, metric) the sweep report plots and ranks.
    - `representative(run_info)`: whether a run may stand for the phase in FINAL_RESULTS
      (the memory phase keeps its self-check runs out); `None` accepts every run.
    - `report`: the module that declares `REPORT`, how this phase's runs are formatted.
    - `recorded_by`: what records the phase where no notebook runs it (the live phase: the
      companion's own process, through `mateperf.live`); such a phase has no notebook
      (`notebook` None and no notebooks/NN_*.ipynb), `mateperf run` refuses it saying this,
      and its `run` raises the same. "" for a phase `mateperf run` executes.
    """

    name: str
    number: int
    params: type[Params]
    uses_model: bool
    reads_config: bool
    run: Callable[..., Frame]
    summarize: Callable[[Frame], Frame]
    round_split: tuple[str, ...]
    trial_table: Callable[[Frame], Frame] | None
    sweep_metrics: Callable[[Frame], list[tuple[str, Frame, str]]] | None
    representative: Callable[[dict], bool] | None
    report: str
    notebook: Path | None = None
    recorded_by: str = ""

    def __post_init__(self) -> None:
        # lowercase: the console keeps a phase's progress lines by progress.LINE
        if not (self.name.isidentifier() and self.name == self.name.lower()):
            raise ValueError(f"phase name {self.name!r} must be a lowercase identifier")
        if self.number < 1:
            raise ValueError(f"phase {self.name}: number {self.number} must be at least 1")
        object.__setattr__(self, "round_split", tuple(self.round_split))
        if self.recorded_by and self.notebook is not None:
            raise ValueError(f"phase {self.name}: a recorded phase has no notebook")
        names = self.params.defaults()
        for flag, param in ((self.uses_model, "model"), (self.reads_config, "config")):
            if flag != (param in names):
                raise ValueError(
                    f"phase {self.name}: declared {'with' if flag else 'without'} parameter "
                    f"{param!r}, but its params {'lack' if flag else 'have'} it"
                )


def measured_by(module: str) -> Callable[..., Frame]:
    """The `run(**params)` of a phase's measure module, imported on the first call.

    A phase package names its measuring code instead of importing it, so reading a stored run
    (its declaration, its analysis, its report) never loads the model, the bridge or the
    trackers; `tests/test_import_graph.py` holds the reports to that.
    """

    def run(**params) -> Frame:
        return importlib.import_module(module).run(**params)

    run.__doc__ = f"Measure the phase: `{module}.run`."
    return run
