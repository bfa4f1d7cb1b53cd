"""Which process owns a run directory, and whether it is still there.

A run records its owner in run.json when it starts: the pid, the process's start time and the
host name. A run whose status is still "running" is running only while that process exists:
killed (SIGKILL, a closed terminal, a crash, a power cut), it can no longer say so itself, and
a reader tells from here. The start time guards against pid reuse: the OS gives a freed pid to
a later process, which has another start time. The check needs the owner's host: on another
host nobody here can tell.

psutil reads a process's start time on every OS it supports (Linux, Windows, macOS).
"""

from __future__ import annotations

import os
import platform

import psutil

# What `check` answers.
ALIVE = "alive"
GONE = "gone"  # no such process, or the pid now belongs to a later process
ELSEWHERE = "elsewhere"  # owned on another host: cannot tell from here
UNRECORDED = "unrecorded"  # run.json written before owners were recorded

# psutil derives a start time from the boot time, which Linux recomputes from the wall clock
# (an NTP step moves it by up to a second or so); a reused pid started at least that much later.
START_TOLERANCE_S = 1.0


def host_name() -> str:
    """This host's name, as the fingerprint records it (`hostname`)."""
    return platform.node()


def this_process() -> dict:
    """run.json's `owner` for a run this process writes."""
    return {
        "pid": os.getpid(),
        "started_at": psutil.Process().create_time(),  # seconds since the epoch
        "host": host_name(),
    }


def check(owner: dict | None) -> str:
    """ALIVE, GONE, ELSEWHERE or UNRECORDED for a run's recorded owner."""
    if not owner or "pid" not in owner or "started_at" not in owner:
        return UNRECORDED
    if owner.get("host") != host_name():
        return ELSEWHERE
    try:
        process = psutil.Process(int(owner["pid"]))
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return GONE
    except psutil.NoSuchProcess:
        return GONE
    except psutil.AccessDenied:  # another user's process holds that pid: it exists
        return ALIVE
    return GONE if abs(started - float(owner["started_at"])) > START_TOLERANCE_S else ALIVE
