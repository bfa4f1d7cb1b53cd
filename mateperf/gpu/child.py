"""Run a module of this package in a child Python process, with its C output captured.

llama.cpp writes with C stdio and, on a CUDA error or a failed assertion, aborts the process.
A child keeps both away from the caller: its file descriptors 1 and 2 are files (subprocess
does the dup2 before exec), and an abort is a return code the caller turns into one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 15


@dataclass
class ChildResult:
    returncode: int | None  # None: timed out and killed
    stdout: str
    stderr_tail: str
    what: str  # the C++ exception or GGML assertion that ended it, if any
    timeout_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """One line: why the child did not finish normally ('' if it did)."""
        rc = self.returncode
        if rc is None:
            return f"timed out after {self.timeout_s:.0f} s"
        if rc < 0:
            text = f"killed by {signal_name(-rc)} (llama.cpp aborted the process"
            return f"{text}: {self.what})" if self.what else f"{text})"
        if rc != 0:
            return f"exited with status {rc}" + (f": {self.what}" if self.what else "")
        return ""


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_module(
    module: str, args: list[str], workdir: Path, timeout_s: float, env: dict | None = None
) -> ChildResult:
    """`python -m module args...` with stdout/stderr in files under workdir; `env` added."""
    out_path, err_path = workdir / "child.stdout", workdir / "child.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", module, *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                timeout=timeout_s,
                # an abort would otherwise attach gdb for a backtrace: seconds per failure
                env={**os.environ, "GGML_NO_BACKTRACE": "1", **(env or {})},
            )
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    lines = _lines(err_path)
    return ChildResult(
        returncode=rc,
        stdout=out_path.read_text("utf-8", "replace"),
        stderr_tail="\n".join(lines[-LOG_TAIL_LINES:]),
        what=_what(lines),
        timeout_s=timeout_s,
    )


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text("utf-8", "replace").splitlines()
    except OSError:
        return []


def _what(lines: list[str]) -> str:
    for line in reversed(lines):
        text = line.strip()
        if text.startswith("what():"):
            return text[len("what():") :].strip()
        if "GGML_ASSERT" in text or "GGML_ABORT" in text or "CUDA error" in text:
            return text
        if text.startswith(("ValueError:", "RuntimeError:", "MemoryError:")):
            return text
    return ""
