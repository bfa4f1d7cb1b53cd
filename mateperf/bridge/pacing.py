"""Frame pacing that holds its rate where the OS timer is coarse.

``time.sleep`` ends on the OS timer's next tick at the earliest. On Linux and macOS that is tens
of µs after the deadline; on Windows with Python 3.10 it is the system timer's 15.6 ms tick (3.11
and newer use a high-resolution waitable timer), so a 60 fps loop that sleeps until each frame
wakes up to a tick late and runs at 30-40 fps. A paced peer therefore measures, once at start,
how late a 1 ms sleep ends (``measure_sleep_overshoot``), and each frame sleeps only until
``spin_tail_ns`` before its deadline and yields (the GIL is released, other threads run) for the
rest. The tail is 1.25x the 90th percentile of the measured overshoots, a whole tick where the
timer is coarse; where it is fine (median overshoot under 1 ms) at most 1 ms, so that a probe
delayed by a busy host does not make every frame spin. On a coarse timer the main thread spins
most of each frame, the price of exact frames there; a process that raises the system timer
resolution (``timeBeginPeriod(1)``, as media players and browsers do) shortens it.

``MATEPERF_SIMULATE_COARSE_TIMER_MS`` (tests only) simulates Windows' default timer on any OS:
every sleep of the pacer ends on the next multiple of that period (15.625 ms on Windows) of the
monotonic clock, as a Windows wait ends on the next timer interrupt.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from functools import partial

SLEEP_PROBE_S = 0.001
SLEEP_PROBES = 15
TAIL_MARGIN = 1.25
FINE_TIMER_NS = 1_000_000
MAX_SPIN_TAIL_NS = 50_000_000  # a measurement this bad is a stalled host, not a timer


SIMULATED_TIMER_ENV = "MATEPERF_SIMULATE_COARSE_TIMER_MS"

# A yield that releases the GIL and arms no timer. time.sleep(0) is one on Windows (Sleep(0)), but
# on Linux since Python 3.11 it is a clock_nanosleep, which the timer slack delays like any sleep.
yield_cpu: Callable[[], None] = (
    os.sched_yield if hasattr(os, "sched_yield") else partial(time.sleep, 0)
)


def os_sleep() -> Callable[[float], None]:
    """``time.sleep``, or the simulated coarse timer when the environment asks for it."""
    period_ms = os.environ.get(SIMULATED_TIMER_ENV)
    if not period_ms:
        return time.sleep
    period_ns = int(float(period_ms) * 1e6)
    if period_ns <= 0:
        raise ValueError(f"{SIMULATED_TIMER_ENV} must be > 0 ms, got {period_ms!r}")

    def sleep_on_grid(seconds: float) -> None:
        target = time.perf_counter_ns() + int(seconds * 1e9)
        wake = -(-target // period_ns) * period_ns  # the next timer interrupt at or after it
        while (left := wake - time.perf_counter_ns()) > 0:
            time.sleep(left / 1e9)

    return sleep_on_grid


def measure_sleep_overshoot(
    probes: int = SLEEP_PROBES,
    sleep_s: float = SLEEP_PROBE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """How much later than asked each of ``probes`` sleeps of ``sleep_s`` ended, in ns."""
    asked_ns = int(sleep_s * 1e9)
    overshoots = []
    for _ in range(probes):
        start = time.perf_counter_ns()
        sleep(sleep_s)
        overshoots.append(max(0, time.perf_counter_ns() - start - asked_ns))
    return overshoots


def nearest_rank(samples: list[int], quantile: float) -> int:
    """The nearest-rank quantile: a value that was observed, no interpolation."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


def spin_tail_for(overshoots_ns: list[int]) -> int:
    """The tail to yield through before a deadline, from measured sleep overshoots."""
    if not overshoots_ns:
        return 0
    tail = int(TAIL_MARGIN * nearest_rank(overshoots_ns, 0.9))
    if nearest_rank(overshoots_ns, 0.5) < FINE_TIMER_NS:
        return min(tail, FINE_TIMER_NS)
    return min(tail, MAX_SPIN_TAIL_NS)


class FramePacer:
    """Waits until a deadline on ``time.perf_counter_ns``: a sleep, then a yielding tail.

    The sleep overshoot is measured at construction (``measure_sleep_overshoot``, about 15 ms
    where timers are fine, 15 ticks where they are coarse). ``spin_tail_ns`` None: the tail is
    chosen from it (``spin_tail_for``); an int: used as given (0 sleeps to the deadline, as a
    plain sleep loop does).
    """

    def __init__(self, spin_tail_ns: int | None = None):
        if spin_tail_ns is not None and spin_tail_ns < 0:
            raise ValueError(f"spin_tail_ns must be >= 0, got {spin_tail_ns}")
        self._sleep = os_sleep()
        overshoots = measure_sleep_overshoot(sleep=self._sleep)
        self.overshoot_median_ns = nearest_rank(overshoots, 0.5)
        self.spin_tail_ns = spin_tail_for(overshoots) if spin_tail_ns is None else spin_tail_ns

    def wait_until(self, deadline_ns: int) -> None:
        left = deadline_ns - time.perf_counter_ns()
        if left > self.spin_tail_ns:
            self._sleep((left - self.spin_tail_ns) / 1e9)
        while time.perf_counter_ns() < deadline_ns:
            yield_cpu()
