"""Did the avatar stand-in's pacing hold? One rule, read from stored rows by every phase that
runs a paced peer (ipc, cpu, final, tune) and by their reports.

The peers pace their frames with a sleep and a yielding tail as long as the timer's measured
overshoot (mateperf/bridge/pacing.py). Where a 1 ms sleep overshoots by a good part of the frame
(Windows' default 15.6 ms timer when the 1 ms resolution was refused), the frames still come
on time, but only because the main thread yields through almost all of each frame: the
stand-in then costs about a whole core instead of its `frame_busy` share, and whatever was
measured "under the avatar's load" had that much less CPU than the parameters say. The rows
carry what the peer reported (`timer_overshoot_us`, `timer_resolution`), the share of the time its
main thread was awake (`peer_awake_share`: not in an OS sleep, so working, spinning or yielding:
the core it asks for) and what its process got (`peer_busy_share`, CPU time over wall time, in
cores: less than the awake share where a loaded host hands a yielding thread's turns to
others); this module turns them into the verdict and the sentence a report prints beside the
frame figures.

Not metrics (mateperf/metrics.py): they describe the load a measurement ran under, they are
not compared between settings.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

OVERSHOOT = "timer_overshoot_us"
RESOLUTION = "timer_resolution"
BUSY_SHARE = "peer_busy_share"
AWAKE_SHARE = "peer_awake_share"
COLUMNS = (OVERSHOOT, RESOLUTION, BUSY_SHARE, AWAKE_SHARE)
# A tail this long keeps the main thread yielding for a quarter of the frame or more, on top of
# frame_busy: "comparable to the frame". Fine timers overshoot by tens of µs, a 1 ms Windows
# timer by at most about 1 ms (6% of a 60 fps frame), the default 15.6 ms one by up to 94%.
HOLDS_BELOW_SHARE = 0.25


def holds(timer_overshoot_us: float, fps: float) -> bool:
    """Whether a sleep overshoot this large leaves the frame's pacing to sleeping (True), or
    makes the peer yield through a good part of every frame (False). NaN or unpaced: True."""
    if not fps or not math.isfinite(timer_overshoot_us):
        return True
    return timer_overshoot_us < HOLDS_BELOW_SHARE * 1e6 / fps


def _median(rows: pd.DataFrame, column: str) -> float:
    if column not in rows.columns:
        return float("nan")
    values = pd.to_numeric(rows[column], errors="coerce").dropna()
    return float(np.median(values)) if len(values) else float("nan")


def _first_text(rows: pd.DataFrame, column: str) -> str:
    if column not in rows.columns:
        return ""
    values = [v for v in rows[column].dropna().astype(str) if v]
    return values[0] if values else ""


def summary(rows: pd.DataFrame, fps: float, frame_busy: float = float("nan")) -> dict:
    """The pacing of the rows' peer: median overshoot (µs), median busy share (cores), the
    timer resolution it got, and whether pacing held; NaNs where the rows have none."""
    overshoot = _median(rows, OVERSHOOT)
    return {
        OVERSHOOT: overshoot,
        BUSY_SHARE: _median(rows, BUSY_SHARE),
        AWAKE_SHARE: _median(rows, AWAKE_SHARE),
        RESOLUTION: _first_text(rows, RESOLUTION),
        "frame_busy": frame_busy,
        "fps": fps,
        "holds": holds(overshoot, fps),
    }


def sentence(s: dict) -> str:
    """One sentence for a report from ``summary``; "" where the rows carry no overshoot."""
    overshoot, fps = s[OVERSHOOT], s["fps"]
    if not fps or not math.isfinite(overshoot):
        return ""
    frame_ms = 1e3 / fps
    resolution = f" (timer resolution: {s[RESOLUTION]})" if s[RESOLUTION] else ""
    awake, busy = s.get(AWAKE_SHARE, float("nan")), s[BUSY_SHARE]
    used = f"; its main thread was awake {awake:.2f} of the time" if math.isfinite(awake) else ""
    if math.isfinite(busy):
        used += f"{' and' if used else '; '} its process used {busy:.2f} of a core"
    asked = f" for frame_busy={s['frame_busy']:g}" if math.isfinite(s["frame_busy"]) else ""
    if s["holds"]:
        return (
            f"Avatar stand-in's timer: a 1 ms sleep ended {overshoot:,.0f} µs late{resolution}, "
            f"well inside its {frame_ms:.1f} ms frame{used}{asked}."
        )
    return (
        f"**Pacing cannot hold here:** a 1 ms sleep of the avatar stand-in ended "
        f"{overshoot / 1e3:.1f} ms late{resolution}, comparable to its {frame_ms:.1f} ms frame, "
        f"so it had to yield through most of every frame to keep its rate{used}{asked}: "
        "measurements under the avatar's load had about one core less than the parameters say."
    )
