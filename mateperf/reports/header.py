"""The header of every run's and sweep's markdown: what ran, when, how to rerun it, on what host."""

from __future__ import annotations

import re
import shlex

from mateperf import phases, results
from mateperf.avatar import RUN_INFO_KEY, describe
from mateperf.host import format_fingerprint


def reproduce_command(info: dict) -> str:
    """The command that re-runs this measurement with the same parameters.

    The stored command, plus `-p` for every parameter whose default has changed since, so the
    command stays true when the notebook's defaults move on.
    """
    command = info.get("command", "")
    phase = info.get("phase", "?")
    if phase in phases.names() and phases.recorded_by(phase):
        # a session the companion recorded: what ran it, not a mateperf command
        return command or f"a session recorded by {phases.recorded_by(phase)}"
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
    if "--avatar " in command:
        given.add("avatar")
    if " --config " in command:
        given.add("config")
    extra = [
        f"-p {shlex.quote(f'{k}={_shown(k, v)}')}"
        for k, v in params.items()
        if k in current and k not in given and current[k] != v
    ]
    return " ".join([command, *extra])


def avatar_line(info: dict) -> str:
    """ "measured on a live avatar: ..." for a run attached to one (its stored identity, or at
    least its address); "" for a run against a spawned stand-in."""
    if info.get(RUN_INFO_KEY):
        return describe(info[RUN_INFO_KEY])
    address = (info.get("params") or {}).get("avatar")
    return f"measured on a live avatar at {address}" if address else ""


def _shown(name: str, value):
    """A path parameter (stored absolute, for the kernel) as the results root names it."""
    if name in phases.PATH_PARAMS and isinstance(value, str) and value:
        return results.command_path(value)
    return value


UNREMARKED = (None, results.STATUS_OK, results.STATUS_PARTIAL, results.STATUS_RUNNING)


def run_header(info: dict) -> str:
    fp = info.get("fingerprint", {})
    live = avatar_line(info)
    status = info.get("status")
    # a run reported before it finished says so in its title (a killed session: interrupted)
    shown = "" if status in UNREMARKED else f" ({status})"
    lines = [
        f"# {info.get('phase', '?')} — run `{info.get('run_id', '?')}`{shown}",
        "",
        f"Started {info.get('started_at', '?')}.",
        "",
        *([f"**{live[0].upper()}{live[1:]}.**", ""] if live else []),
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
