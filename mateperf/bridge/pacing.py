"""Frame pacing that holds its rate where the OS timer is coarse.

``time.sleep`` ends on the OS timer's next tick at the earliest. On Linux and macOS that is tens
of µs after the deadline; on Windows with Python 3.10 it is the system timer's 15.6 ms tick (3.11
and newer use a high-resolution waitable timer), so a 60 fps loop that sleeps until each frame
wakes up to a tick late and runs at 30-40 fps.

Two remedies, in this order:
- ``TimerResolution`` asks Windows for a 1 ms timer while a paced peer runs
  (``timeBeginPeriod(1)`` from winmm, undone by ``timeEndPeriod(1)``, as media players and
  browsers do): sleeps then end within about a millisecond. Where Windows refuses
  (``TIMERR_NOCANDO``) or winmm cannot be loaded, the peer says so in one line on stderr and
  falls back to the next remedy. Other OSes need nothing.
- ``FramePacer`` measures, once at start and after the resolution was asked for, how late a
  1 ms sleep ends (``measure_sleep_overshoot``), and each frame sleeps only until
  ``spin_tail_ns`` before its deadline and yields (the GIL is released, other threads run) for
  the rest. The tail is 1.25x the 90th percentile of the measured overshoots, a whole tick where
  the timer is coarse; where it is fine (median overshoot under 1 ms) at most 1 ms, so that a
  probe delayed by a busy host does not make every frame spin. On a coarse timer the main
  thread spins most of each frame: a ``frame_busy`` of 0.25 then costs about a whole core, which
  is why the overshoot is reported beside every frame figure (``timer_overshoot_us``).

``MATEPERF_SIMULATE_COARSE_TIMER_MS`` (tests only) replaces the OS timer with
``SimulatedWindowsTimer``, a test double of Windows' timer on any OS: every sleep of the pacer
ends on the next multiple of that period (15.625 ms on Windows) of the monotonic clock, as a
Windows wait ends on the next timer interrupt, and ``timeBeginPeriod(1)`` shortens the period to
1 ms unless ``MATEPERF_SIMULATE_TIMER_FIXED=1`` makes it refuse, as Windows can.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from functools import partial

SLEEP_PROBE_S = 0.001
SLEEP_PROBES = 15
TAIL_MARGIN = 1.25
FINE_TIMER_NS = 1_000_000
MAX_SPIN_TAIL_NS = 50_000_000  # a measurement this bad is a stalled host, not a timer
TIMER_PERIOD_MS = 1  # what the peers ask Windows for
TIMERR_NOERROR, TIMERR_NOCANDO = 0, 97  # timeBeginPeriod's answers (mmsystem.h)

SIMULATED_TIMER_ENV = "MATEPERF_SIMULATE_COARSE_TIMER_MS"
SIMULATED_TIMER_FIXED_ENV = "MATEPERF_SIMULATE_TIMER_FIXED"

RESOLUTION_NOT_NEEDED = "not needed on this OS (sleeps end within µs)"
RESOLUTION_SET = f"{TIMER_PERIOD_MS} ms (timeBeginPeriod)"

# A yield that releases the GIL and arms no timer. time.sleep(0) is one on Windows (Sleep(0)), but
# on Linux since Python 3.11 it is a clock_nanosleep, which the timer slack delays like any sleep.
yield_cpu: Callable[[], None] = (
    os.sched_yield if hasattr(os, "sched_yield") else partial(time.sleep, 0)
)


class SimulatedWindowsTimer:
    """A test double of Windows' system timer (tests only; see the module docstring): sleeps end
    on the next interrupt of ``period_ms``; ``timeBeginPeriod``/``timeEndPeriod`` as winmm's."""

    def __init__(self, period_ms: float, fixed: bool = False):
        if not period_ms > 0:
            raise ValueError(f"{SIMULATED_TIMER_ENV} must be > 0 ms, got {period_ms!r}")
        self.default_ns = self.period_ns = int(period_ms * 1e6)
        self.fixed = fixed

    def sleep(self, seconds: float) -> None:
        target = time.perf_counter_ns() + int(seconds * 1e9)
        wake = -(-target // self.period_ns) * self.period_ns  # the next interrupt at or after it
        while (left := wake - time.perf_counter_ns()) > 0:
            time.sleep(left / 1e9)

    def timeBeginPeriod(self, ms: int) -> int:  # noqa: N802 - winmm's name
        if self.fixed:
            return TIMERR_NOCANDO
        self.period_ns = min(self.period_ns, int(ms * 1e6))
        return TIMERR_NOERROR

    def timeEndPeriod(self, ms: int) -> int:  # noqa: N802 - winmm's name
        self.period_ns = self.default_ns
        return TIMERR_NOERROR


def simulated_timer() -> SimulatedWindowsTimer | None:
    """The simulated timer where the environment asks for one (tests), else None."""
    period_ms = os.environ.get(SIMULATED_TIMER_ENV)
    if not period_ms:
        return None
    try:
        period = float(period_ms)
    except ValueError:
        raise ValueError(f"{SIMULATED_TIMER_ENV} must be > 0 ms, got {period_ms!r}") from None
    return SimulatedWindowsTimer(period, os.environ.get(SIMULATED_TIMER_FIXED_ENV) == "1")


def _winmm():
    """winmm's timeBeginPeriod/timeEndPeriod through ctypes (Windows only), or why not."""
    import ctypes

    try:
        winmm = ctypes.WinDLL("winmm")  # type: ignore[attr-defined]
        for name in ("timeBeginPeriod", "timeEndPeriod"):
            fn = getattr(winmm, name)
            fn.argtypes, fn.restype = [ctypes.c_uint], ctypes.c_uint
    except (AttributeError, OSError) as exc:
        return None, f"winmm cannot be loaded ({exc})"
    return winmm, ""


class TimerResolution:
    """Asks for a ``TIMER_PERIOD_MS`` timer while the ``with`` body runs (Windows, or the
    simulated timer); ``status`` says what was got, ``refused`` whether the ask failed."""

    def __init__(self, timer: SimulatedWindowsTimer | None = None, is_windows: bool | None = None):
        self._timer = timer
        self._is_windows = os.name == "nt" if is_windows is None else is_windows
        self._api = None
        self.status = RESOLUTION_NOT_NEEDED
        self.refused = False

    def __enter__(self) -> TimerResolution:
        if self._timer is not None:
            api, why = self._timer, ""
        elif self._is_windows:
            api, why = _winmm()
        else:
            return self
        answer = api.timeBeginPeriod(TIMER_PERIOD_MS) if api is not None else None
        if answer == TIMERR_NOERROR:
            self._api, self.status = api, RESOLUTION_SET
        else:
            why = why or f"timeBeginPeriod({TIMER_PERIOD_MS}) answered {answer}"
            self.refused, self.status = True, f"unavailable: {why}"
        return self

    def __exit__(self, *exc) -> None:
        if self._api is not None:
            self._api.timeEndPeriod(TIMER_PERIOD_MS)
            self._api = None


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

    A context manager: entering asks for a fine timer (``TimerResolution``), then measures the
    sleep overshoot (``measure_sleep_overshoot``, about 15 ms where timers are fine, 15 ticks
    where they are coarse); leaving gives the timer back. ``spin_tail_ns`` None: the tail is
    chosen from the overshoot (``spin_tail_for``); an int: used as given (0 sleeps to the
    deadline, as a plain sleep loop does). ``who`` names the process in the fallback line.
    """

    def __init__(self, spin_tail_ns: int | None = None, who: str = "mateperf"):
        if spin_tail_ns is not None and spin_tail_ns < 0:
            raise ValueError(f"spin_tail_ns must be >= 0, got {spin_tail_ns}")
        self._asked_tail_ns = spin_tail_ns
        self._who = who
        timer = simulated_timer()
        self._sleep = timer.sleep if timer is not None else time.sleep
        self.resolution = TimerResolution(timer)
        self.overshoot_median_ns = 0
        self.spin_tail_ns = spin_tail_ns or 0
        # time the caller spent inside OS sleeps: the rest of its time it was awake (working,
        # spinning or yielding), the core it asks for whatever the host gives it
        self.slept_ns = 0

    def __enter__(self) -> FramePacer:
        self.resolution.__enter__()
        overshoots = measure_sleep_overshoot(sleep=self._sleep)
        self.overshoot_median_ns = nearest_rank(overshoots, 0.5)
        asked = self._asked_tail_ns
        self.spin_tail_ns = spin_tail_for(overshoots) if asked is None else asked
        if self.resolution.refused:
            print(
                f"{self._who}: timer resolution {self.resolution.status}; paced frames fall "
                f"back to yielding through the last {self.spin_tail_ns / 1e6:.1f} ms of each "
                f"frame (a 1 ms sleep overshoots by {self.overshoot_median_ns / 1e6:.1f} ms "
                "here), which keeps the main thread busy for most of every frame",
                file=sys.stderr,
                flush=True,
            )
        return self

    def __exit__(self, *exc) -> None:
        self.resolution.__exit__(*exc)

    def wait_until(self, deadline_ns: int) -> None:
        now = time.perf_counter_ns()
        left = deadline_ns - now
        if left > self.spin_tail_ns:
            self._sleep((left - self.spin_tail_ns) / 1e9)
            self.slept_ns += time.perf_counter_ns() - now
        while time.perf_counter_ns() < deadline_ns:
            yield_cpu()

    def hold(self, seconds: float) -> None:
        """Occupy the calling thread for ``seconds`` as exactly as a frame deadline."""
        self.wait_until(time.perf_counter_ns() + int(seconds * 1e9))
