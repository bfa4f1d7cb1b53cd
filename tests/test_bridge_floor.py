"""The raw floor's process: what stops it, and what does not.

Real processes and sockets: the floor started by hand in the background (stdin /dev/null, or
no stdin at all) keeps serving until its signal; started as the ipc phase starts it
(`start_floor`), it stops when its parent closes the pipe or dies, so it is never orphaned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from mateperf.bridge.floor import FloorClient
from mateperf.bridge.process import start_floor
from tests.conftest import reap, sigterm

FLOOR = [sys.executable, "-m", "mateperf.bridge.floor", "--port", "0"]


def _gone(pid: int, timeout_s: float) -> bool:
    """Whether the process has exited within `timeout_s` (a zombie not yet reaped counts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _no_stdin() -> None:  # runs in the child before exec: fd 0 closed, Python's sys.stdin None
    os.close(0)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM, fd 0 closed: unavailable on this OS")
@pytest.mark.parametrize("stdin", ["devnull", "closed"])
def test_a_floor_started_by_hand_keeps_serving_until_sigterm(stdin):
    """Started as `floor &`, under nohup or a process manager: its stdin is at its end from the
    start (or absent). It keeps serving, and SIGTERM stops it with its stopped line."""
    extra = (
        {"stdin": subprocess.DEVNULL}
        if stdin == "devnull"
        else {"stdin": None, "preexec_fn": _no_stdin}
    )
    proc = subprocess.Popen(FLOOR, stdout=subprocess.PIPE, text=True, encoding="utf-8", **extra)
    try:
        listening = json.loads(proc.stdout.readline())
        assert listening["event"] == "listening", listening
        time.sleep(0.5)  # a floor that stopped at stdin's end has stopped by now
        assert proc.poll() is None
        with FloorClient("127.0.0.1", listening["port"]) as client:
            for _ in range(3):
                assert client.pingpong_ns(b"ping\n") > 0
        out = sigterm(proc)
    finally:
        reap(proc)
    assert proc.returncode == 0
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped == {"event": "stopped", "counters": {"served": 3}}


def test_a_floor_started_as_the_ipc_phase_does_stops_when_it_is_stopped():
    with start_floor() as floor:
        with FloorClient(floor.host, floor.port) as client:
            client.pingpong_ns(b"ping\n")
        assert floor.stop(timeout_s=10.0) == {"served": 1}
        assert floor.proc.returncode == 0


PARENT = textwrap.dedent(
    """
    import json, time
    from mateperf.bridge.process import start_floor
    floor = start_floor()
    print(json.dumps({"pid": floor.proc.pid, "port": floor.port}), flush=True)
    time.sleep(600)
    """
)


def test_a_floor_started_as_the_ipc_phase_does_exits_when_its_parent_dies():
    """The parent (a process that called start_floor, as the ipc phase does) is killed, with no
    chance to stop anything: the floor's stdin pipe ends with it, and the floor exits."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, encoding="utf-8"
    )
    floor_pid = 0
    try:
        started = json.loads(parent.stdout.readline())
        floor_pid = started["pid"]
        with FloorClient("127.0.0.1", started["port"]) as client:
            assert client.pingpong_ns(b"ping\n") > 0  # serving while the parent lives
        assert not _gone(floor_pid, 0.5)
        parent.kill()
        parent.wait()
        assert _gone(floor_pid, 15.0), "the floor outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if floor_pid and not _gone(floor_pid, 0):
            psutil.Process(floor_pid).kill()
