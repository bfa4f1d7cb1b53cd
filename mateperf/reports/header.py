"""The header of every run's and sweep's markdown: what ran, when, how to rerun it, on what host."""

from __future__ import annotations

import re
import shlex

from mateperf import phases
from mateperf.host import format_fingerprint


def reproduce_command(info: dict) -> str:
    """The command that re-runs this measurement with the same parameters.

    The stored command, plus `-p` for every parameter whose default has changed since, so the
    command stays true when the notebook's defaults move on.
    """
    command = info.get("command", "")
    phase = info.get("phase", "?")
    if not command.startswith("mateperf "):
        command = f"mateperf run {phase}"
    if info.get("kind") == "sweep":
        return command
    try:
        current = phases.defaults(phase)
    except Exception:  # a phase whose notebook is gone: the stored command is all we have
        return command
    params = info.get("params", {})
    given = set(re.findall(r"-p (\w+)=", command)) | {"model"}
    extra = [
        f"-p {shlex.quote(f'{k}={v}')}"
        for k, v in params.items()
        if k in current and k not in given and current[k] != v
    ]
    return " ".join([command, *extra])


def run_header(info: dict) -> str:
    fp = info.get("fingerprint", {})
    lines = [
        f"# {info.get('phase', '?')} — run `{info.get('run_id', '?')}`",
        "",
        f"Started {info.get('started_at', '?')}.",
        "",
        "Reproduce: `" + reproduce_command(info) + "`",
        "",
        "Host:",
        "",
        "```",
        format_fingerprint(fp) if fp else "(no fingerprint)",
        "```",
        "",
    ]
    return "\n".join(lines)
