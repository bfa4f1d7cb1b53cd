"""Paced frames hold 60 fps where the OS timer is coarse: the peers measure how late a sleep ends
and yield through that tail before each frame instead of sleeping into it.

Two coarse timers, one real and one simulated:
- Linux timer slack (prctl PR_SET_TIMERSLACK, inherited across exec): every sleep of the peer
  process ends up to 15.6 ms late, a real coarse timer, for both peers;
- Windows' default timer, simulated for the Python peer (MATEPERF_SIMULATE_COARSE_TIMER_MS):
  a sleep ends on the next 15.625 ms timer interrupt, so frames land on that grid (intervals of
  15.6 and 31.2 ms) unless the tail is yielded through.
"""

import ctypes
import statistics
import sys
import time

import pytest

from mateperf.bridge.client import UnityBridge
from mateperf.bridge.pacing import SIMULATED_TIMER_ENV, spin_tail_for
from mateperf.bridge.process import csharp_peer_command, start_program

WINDOWS_TICK_MS = 15.625
PERIOD_US = 1e6 / 60
PR_SET_TIMERSLACK = 29

# runs the rest of argv with a 15.6 ms timer slack (the kernel keeps it across exec)
SLACKED = (
    "import ctypes, os, sys; "
    f"ctypes.CDLL(None, use_errno=True).prctl({PR_SET_TIMERSLACK}, 15_625_000, 0, 0, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


@pytest.fixture(params=["python", pytest.param("csharp", marks=pytest.mark.mono)])
def peer_cmd(request) -> list[str]:
    args = ["--port", "0", "--fps", "60"]
    if request.param == "csharp":
        return [*csharp_peer_command(request.getfixturevalue("built_csharp")), *args]
    return [sys.executable, "-m", "mateperf.bridge.peer_main", *args]


def frames_for(cmd: list[str], seconds: float = 2.0, env: dict | None = None) -> tuple:
    with start_program(cmd, "paced", env=env) as proc, UnityBridge(port=proc.port) as bridge:
        bridge.frame_stats(reset=True)
        time.sleep(seconds)
        frames = bridge.frame_stats(reset=True)
        bridge_state = bridge.stats()["bridge"]
    intervals = frames["frame_interval_us"][1:]  # the first ends at the reset query
    return intervals, bridge_state


def test_the_tail_follows_the_measured_overshoot():
    ms = 1_000_000
    fine = [60_000] * 13 + [90_000, 3 * ms]  # a busy host delayed one probe
    assert spin_tail_for(fine) == int(1.25 * 90_000)
    assert spin_tail_for([60_000] * 10 + [5 * ms] * 5) == ms  # fine median: at most 1 ms
    windows = [i * ms for i in range(15)]  # 1 ms sleeps ending anywhere within a 15.6 ms tick
    assert spin_tail_for(windows) == int(1.25 * 13 * ms)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timer slack is Linux's")
def test_frames_hold_60_fps_under_a_real_coarse_timer(peer_cmd):
    libc = ctypes.CDLL(None)
    assert hasattr(libc, "prctl")
    intervals, state = frames_for([sys.executable, "-c", SLACKED, *peer_cmd])
    median_us = statistics.median(intervals)
    late = sum(i > PERIOD_US + 3000 for i in intervals) / len(intervals)
    print(
        f"{peer_cmd[0]}: sleep overshoot {state['timer_overshoot_us']:.0f} µs, tail "
        f"{state['spin_tail_us']:.0f} µs; {len(intervals)} frames, median {median_us:.0f} µs, "
        f"{late:.1%} over 19.7 ms"
    )
    # the peer saw the coarse timer for real and chose a tail to cover it
    assert state["timer_overshoot_us"] > 5000
    assert state["spin_tail_us"] >= state["timer_overshoot_us"]
    # Sleeping alone on this timer gives frames of one or two 15.6 ms ticks (median far from
    # 16.7 ms); a preempted main thread on a loaded 2-vCPU host moves the median by up to
    # ~0.6 ms (seen), hence 1 ms.
    assert abs(median_us - PERIOD_US) < 1000, intervals
    # a share of frames is late where the 2-vCPU host preempts the yielding main thread
    assert late < 0.25, intervals


def test_frames_hold_60_fps_on_a_simulated_windows_timer():
    peer = [sys.executable, "-m", "mateperf.bridge.peer_main", "--port", "0", "--fps", "60"]
    env = {SIMULATED_TIMER_ENV: str(WINDOWS_TICK_MS)}
    intervals, state = frames_for(peer, env=env)
    # the same timer with the tail turned off: the loop that only sleeps, as before
    plain, plain_state = frames_for([*peer, "--spin-tail-us", "0"], env=env)
    median_us, plain_median_us = statistics.median(intervals), statistics.median(plain)
    print(
        f"simulated Windows timer: overshoot {state['timer_overshoot_us']:.0f} µs, tail "
        f"{state['spin_tail_us']:.0f} µs, median interval {median_us:.0f} µs "
        f"(sleep only: {plain_median_us:.0f} µs, max {max(plain):.0f} µs)"
    )
    assert state["timer_overshoot_us"] > 2000 and state["spin_tail_us"] > 10_000
    assert abs(median_us - PERIOD_US) < 500, intervals
    assert sum(i > PERIOD_US + 3000 for i in intervals) / len(intervals) < 0.1, intervals
    # sleeping into the deadline lands frames on the 15.625 ms grid: the test can tell
    assert plain_state["spin_tail_us"] == 0
    assert abs(plain_median_us - WINDOWS_TICK_MS * 1000) < 500, plain
    assert max(plain) > 2 * WINDOWS_TICK_MS * 1000 - 1500, plain
