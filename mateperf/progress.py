"""A phase's progress lines: `[phase] message`, one line each, on stdout.

stdout, not stderr: JupyterLab shows a cell's stderr on red, as if the cell had failed. The
same lines are what `mateperf run` shows by default: papermill relays the kernel's output and
mateperf.execute keeps only the lines that match `LINE`, so writer and filter share it here.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import partial

# A lowercase identifier (phase_7 too), which a kernel's own "[IPKernelApp] ..." log lines are not.
LINE = re.compile(r"^\[[a-z_][a-z0-9_]*\] ")


def say(phase: str, message: str) -> None:
    print(f"[{phase}] {message}", file=sys.stdout, flush=True)


def reporter(phase: str) -> Callable[[str], None]:
    """`say` for one phase: what its module calls `_progress`."""
    return partial(say, phase)
