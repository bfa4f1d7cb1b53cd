"""What a phase notebook calls: open its run directory, save the tidy frame, show the results.

Under `mateperf run`/`sweep` the CLI has created the run directory and passes it as `run_dir`;
opened interactively (run_dir == ""), the notebook makes its own, so a JupyterLab session
stores its results exactly like a headless run does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mateperf import model, phases
from mateperf.avatar import RUN_INFO_KEY
from mateperf.errors import RunAborted
from mateperf.results import STATUS_OK, RunDir, tidy


@dataclass
class PhaseRun:
    phase: str
    run: RunDir
    params: dict
    interactive: bool
    opened_ns: int = field(default_factory=time.perf_counter_ns)

    @property
    def path(self) -> Path:
        return self.run.path

    def measure(self, run) -> pd.DataFrame:
        """`run(**params)` (the phase's measure.run); if the run is aborted (an attached avatar
        went away), the rows it measured are saved first, then the abort goes on (exit 1)."""
        try:
            return run(**self.params)
        except RunAborted as exc:
            kept = exc.frame if exc.frame is not None else pd.DataFrame(exc.rows)
            if len(kept):
                table = tidy(kept, self.run.run_id, self.phase, self.params)
                self.run.write_frame(table, self.phase)
            self.run.update(aborted=str(exc), rows_kept=len(kept))
            raise

    def save(self, df: pd.DataFrame) -> pd.DataFrame:
        """Write <phase>.parquet, <phase>.md and plots/ into the run directory."""
        # Time from opening the run to saving it: the measured work, as opposed to kernel
        # start-up and imports, so a sweep can report its own overhead.
        self.run.update(measure_s=round((time.perf_counter_ns() - self.opened_ns) / 1e9, 3))
        model.flush_llama_log()
        table = tidy(df, self.run.run_id, self.phase, self.params)
        self.run.write_frame(table, self.phase)
        self.run.write_text(f"{self.phase}.md", self.markdown(table))
        if self.interactive:
            self.run.finish(STATUS_OK)
        return table

    def markdown(self, table: pd.DataFrame) -> str:
        from mateperf.reports import declaration
        from mateperf.reports.header import run_header

        report = declaration.declared(self.phase)
        section = report.section(table, self.run.info, self.run.plots_dir, self.run.path)
        return run_header(self.run.info) + "\n" + section

    def show(self) -> None:
        """Display the phase's markdown and its plots inline (notebook only)."""
        from IPython.display import Image, Markdown, display

        md_path = self.path / f"{self.phase}.md"
        text = md_path.read_text(encoding="utf-8") if md_path.exists() else "(nothing saved yet)"
        display(Markdown("\n".join(ln for ln in text.splitlines() if not ln.startswith("!["))))
        for png in sorted(self.run.plots_dir.glob(f"{self.phase}_*.png")):
            display(Image(filename=str(png)))


def round_tables() -> None:
    """In a notebook, DataFrames display rounded to their unit's precision (metrics.rounded):
    a table of medians in ms shows 207.4, not 207.41873340000002."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from mateperf import metrics

    html = shell.display_formatter.formatters["text/html"]
    html.for_type(pd.DataFrame, lambda d: metrics.rounded(d).to_html(max_rows=60, max_cols=30))
    text = shell.display_formatter.formatters["text/plain"]
    text.for_type(
        pd.DataFrame, lambda d, p, cycle: p.text(metrics.rounded(d).to_string(max_rows=60))
    )


def open_phase(phase: str, run_dir: str, namespace: dict) -> PhaseRun:
    """Collect the parameters cell's values from the notebook's namespace and open the run."""
    round_tables()
    params = {name: namespace[name] for name in phases.defaults(phase)}
    phases.validate(phase, params)
    if run_dir:
        opened = PhaseRun(phase, RunDir.open(Path(run_dir)), params, interactive=False)
    else:
        run = RunDir.create(phase, params, kind="notebook", command=f"notebook {phase}")
        opened = PhaseRun(phase, run, params, interactive=True)
    # llama.cpp's own lines belong to the run, not to the notebook's outputs
    model.log_llama_to(opened.path / model.LLAMA_LOG_NAME)
    if params.get("avatar"):  # attached to a live avatar: record what it is
        from mateperf.bridge.attach import connect_avatar

        bridge, identity = connect_avatar(params["avatar"])
        bridge.close()
        opened.run.update(**{RUN_INFO_KEY: identity.as_dict()})
    return opened
