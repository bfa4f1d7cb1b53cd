"""Execute a phase notebook headless with papermill into a run directory.

The notebook does the measuring through the library; this module only injects parameters,
runs the kernel, and records in run.json whether it worked and, if not, which cell failed
with what. The executed notebook is kept beside the parquet either way.

The kernel runs with the run directory as its working directory, so every path that reaches
it (the run directory, path parameters such as `model`, and the MATEPERF_* variables it
inherits) is made absolute here first: a relative path would name another file there.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mateperf import phases, progress, results
from mateperf.model import LLAMA_LOG_NAME
from mateperf.runner.lock import measurement_lock

# Environment variables holding paths, inherited by every kernel.
PATH_ENV = ("MATEPERF_RESULTS", "MATEPERF_MODEL")
# `mateperf -v` sets it: papermill's per-cell log, the kernel's own warnings, library logs.
VERBOSE_ENV = "MATEPERF_VERBOSE"
# The kernel's own log is not ours: start-up warnings ("running over TCP without
# encryption"), and ipykernel 7.3 (the newest on Python 3.10) logs "KeyboardInterrupt caught in
# kernel" at ERROR when papermill shuts it down. A failing cell is reported by papermill.
QUIET_KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
# What the console shows by default: the phases' own progress lines, "[phase] ...".
PROGRESS_LINE = progress.LINE


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def absolute_environment() -> None:
    """Make the path-valued MATEPERF_* variables absolute, against the current directory."""
    for name in PATH_ENV:
        value = os.environ.get(name)
        if value:
            os.environ[name] = os.path.abspath(os.path.expanduser(value))


@dataclass
class ExecutionResult:
    run: results.RunDir
    ok: bool
    seconds: float
    error: dict | None


def builtin(value):
    """Papermill translates only built-in types: numpy ints and floats become int/float."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    return value


def papermill_error(exc: BaseException) -> dict:
    """The facts of a failed execution: cell index, exception name and value."""
    return {
        "cell": getattr(exc, "exec_count", None),
        "cell_index": getattr(exc, "cell_index", None),
        "ename": getattr(exc, "ename", type(exc).__name__),
        "evalue": _last_line(str(getattr(exc, "evalue", exc))) or type(exc).__name__,
    }


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def execute_phase(
    phase: str,
    params: dict,
    run: results.RunDir,
    show_progress: bool = True,
    output_name: str | None = None,
    lock_root: Path | None = None,
) -> ExecutionResult:
    """Run the phase notebook into run.path; marks run.json ok or failed.

    `lock_root` is the results root whose measurement lock is held (default: the default
    root); a sweep passes its own root, wherever it was resumed from.
    """
    import papermill as pm

    notebook = phases.require_notebook(phase)
    absolute_environment()
    run.path = run.path.resolve()
    output = run.path / (output_name or notebook.name)
    injected = {k: builtin(v) for k, v in phases.absolute_paths(params).items()}
    injected[phases.RUN_DIR_PARAM] = str(run.path)
    loud = verbose()
    if show_progress:
        _route_kernel_output(loud)
    start = time.perf_counter()
    error = None
    try:
        with measurement_lock(lock_root or results.default_root()):
            start = time.perf_counter()
            pm.execute_notebook(
                str(notebook),
                str(output),
                parameters=injected,
                kernel_name="python3",
                progress_bar=show_progress and loud,
                log_output=show_progress,
                cwd=str(run.path),
                extra_arguments=[] if loud else QUIET_KERNEL_ARGS,
            )
    except pm.PapermillExecutionError as exc:
        error = papermill_error(exc)
    except Exception as exc:  # kernel died, notebook unreadable: still a recorded failure
        error = {
            "cell": None,
            "cell_index": None,
            "ename": type(exc).__name__,
            "evalue": str(exc)[:500],
        }
    seconds = time.perf_counter() - start
    collapse_parameters(output)
    if show_progress and loud:
        _echo_llama_log(run.path / LLAMA_LOG_NAME)
    if error is None and not run.frame_path(phase).is_file():
        error = {
            "cell": None,
            "cell_index": None,
            "ename": "MissingResults",
            "evalue": f"the notebook finished without writing {phase}.parquet",
        }
    # The notebook wrote to run.json too (measure_s): start from the file, not our copy.
    run.info = results.RunDir.open(run.path).info
    run.info["execution_s"] = round(seconds, 3)
    run.finish(results.STATUS_FAILED if error else results.STATUS_OK, error)
    return ExecutionResult(run, error is None, seconds, error)


PARAMETER_TAGS = ("parameters", "injected-parameters")


def collapse_parameters(path: Path) -> None:
    """The executed notebook opens on its results: the parameters cells (the defaults and
    papermill's injected values, ~40 lines) collapsed, as JupyterLab hides a cell's input."""
    import nbformat

    if not path.is_file():
        return
    nb = nbformat.read(str(path), as_version=4)
    changed = False
    for cell in nb.cells:
        if set(cell.get("metadata", {}).get("tags", [])) & set(PARAMETER_TAGS):
            cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
            changed = True
    if changed:
        results.atomic_write_text(path, nbformat.writes(nb))


def _echo_llama_log(path: Path) -> None:
    """`mateperf -v`: llama.cpp's own lines, kept out of the executed notebook, on the console."""
    if path.is_file():
        print(f"llama.cpp log ({results.shown_path(path)}):", file=sys.stderr)
        print(path.read_text(encoding="utf-8", errors="replace"), end="", file=sys.stderr)


class _ProgressOnly(logging.Filter):
    """Keep the phases' progress lines of the kernel's output; drop cell logs and tables."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = [ln for ln in str(record.getMessage()).splitlines() if PROGRESS_LINE.match(ln)]
        if not lines:
            return False
        record.msg, record.args = "\n".join(lines), None
        return True


def _route_kernel_output(loud: bool = False) -> None:
    """Papermill logs the kernel's stdout/stderr (our progress lines) and its cell markers."""
    logger = logging.getLogger("papermill")
    for h in [h for h in logger.handlers if getattr(h, "_mateperf", False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._mateperf = True
    if not loud:
        handler.addFilter(_ProgressOnly())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
