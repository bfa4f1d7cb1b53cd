"""What the avatar stand-in costs on Windows' 15.6 ms timer, with and without a 1 ms timer.

The Python peer at 60 fps with `frame_busy` 0.25, on the simulated Windows timer
(MATEPERF_SIMULATE_COARSE_TIMER_MS=15.625, mateperf/bridge/pacing.py's test double of the OS
sleep and of timeBeginPeriod: Windows' timer cannot be had on Linux), measured through
CompanionLoad's window as the cpu phase and tune measure it, in interleaved rounds:

- before: timeBeginPeriod(1) refused (MATEPERF_SIMULATE_TIMER_FIXED=1): the peer falls back to
  yielding through the last ~19 ms before each frame, i.e. the whole frame;
- after: the 1 ms timer granted: the peer sleeps to ~1 ms before each frame.

Prints, per round and as median (min, max): the overshoot, the share of the window the peer's
main thread was awake (the core it asks for), the CPU its process got, and its frame p50/p99.

    .venv/bin/python benchmarks/pacing_busy_share.py [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from mateperf.bridge.pacing import SIMULATED_TIMER_ENV, SIMULATED_TIMER_FIXED_ENV
from mateperf.companion_load import CompanionLoad

ARMS = (("before (1 ms refused)", "1"), ("after (1 ms granted)", "0"))
FIGURES = ("timer_overshoot_us", "peer_awake_share", "peer_busy_share", "frame_p50_ms")


def window(fixed: str, frame_busy: float, seconds: float) -> dict:
    os.environ[SIMULATED_TIMER_FIXED_ENV] = fixed
    with CompanionLoad("python", fps=60, frame_busy=frame_busy, command_hz=10) as load:
        time.sleep(0.5)  # the pacer's start-up probes are not measured
        with load.window() as result:
            time.sleep(seconds)
    return result.figures()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--frame-busy", type=float, default=0.25)
    args = parser.parse_args()
    os.environ[SIMULATED_TIMER_ENV] = "15.625"
    found: dict[str, list[dict]] = {name: [] for name, _ in ARMS}
    for r in range(args.rounds):
        for name, fixed in ARMS if r % 2 == 0 else ARMS[::-1]:  # ABBA: drift cancels
            f = window(fixed, args.frame_busy, args.seconds)
            found[name].append(f)
            print(
                f"round {r + 1} {name}: {f['timer_resolution']}; overshoot "
                f"{f['timer_overshoot_us']:.0f} µs; main thread awake {f['peer_awake_share']:.2f}; "
                f"CPU {f['peer_busy_share']:.2f} of a core; frame p50 {f['frame_p50_ms']:.2f} ms, "
                f"p99 {f['frame_p99_ms']:.2f} ms",
                flush=True,
            )
    print(f"\nframe_busy {args.frame_busy:g}, {args.rounds} windows of {args.seconds:g} s per arm:")
    for name, rows in found.items():
        parts = []
        for key in FIGURES:
            values = [row[key] for row in rows]
            parts.append(
                f"{key} {statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"
            )
        print(f"{name}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
