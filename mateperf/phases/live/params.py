"""The live phase's parameters: what a recorded session was told (`mateperf.live.record`)."""

from __future__ import annotations

from dataclasses import dataclass

from mateperf.params import Params, param


@dataclass(frozen=True)
class LiveParams(Params):
    avatar: str = param(
        "",
        "HOST:PORT of a running avatar whose frames are read per call; empty: $MATEPERF_AVATAR, "
        "else none",
    )
    label: str = param("", "what the session was (free text, shown in the report)")
