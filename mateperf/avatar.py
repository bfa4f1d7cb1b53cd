"""What a run measured when it attached to a live avatar (`--avatar HOST:PORT`): its address,
its identity as stored in run.json, and the one line every report prints about it.

Pure: no sockets (`mateperf.bridge.attach` connects and queries), so reports can read it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from mateperf.errors import BadInput

# every frame figure of an avatar that speaks only the companion's legacy protocol
LEGACY_FRAMES = "unavailable from this avatar: install the mateperf bridge package (unity/)"
# the avatar's identity in run.json
RUN_INFO_KEY = "avatar"
AVATAR_HELP = (
    "HOST:PORT of an avatar that is already running (the Unity package in the companion, or a "
    "headless peer started by hand) to measure instead of spawning a stand-in"
)


class AvatarAddressError(BadInput):
    """`--avatar` is not HOST:PORT."""


class AvatarUnreachable(BadInput):
    """Nothing answers as a bridge at the `--avatar` address."""


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` as (host, port); AvatarAddressError (one line) otherwise."""
    host, sep, port_text = str(text).strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise AvatarAddressError(f"--avatar {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5555")
    try:
        port = int(port_text)
    except ValueError:
        raise AvatarAddressError(f"--avatar {text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise AvatarAddressError(f"--avatar {text!r}: port {port} is not in 1..65535")
    return host, port


@dataclass(frozen=True)
class AvatarIdentity:
    """The identity query's answer (PROTOCOL: `identity`), or what a legacy avatar lets us say.

    `frame_stats` is False for an avatar that answers no `frame_stats` query: its frame figures
    are `LEGACY_FRAMES`. Fields the avatar has no value for are None.
    """

    address: str
    peer: str
    peer_version: str | None = None
    protocol: int = 2
    unity_version: str | None = None
    graphics_device: str | None = None
    graphics_api: str | None = None
    target_fps: float | None = None
    vsync_count: int | None = None
    run_in_background: bool | None = None
    frame_timing: str = "unavailable: not reported by this avatar"
    frame_stats: bool = True

    @classmethod
    def from_reply(cls, address: str, data: dict) -> AvatarIdentity:
        fps = data.get("target_fps")
        return cls(
            address=address,
            peer=str(data.get("peer") or "unknown"),
            peer_version=data.get("peer_version"),
            protocol=int(data.get("protocol") or 2),
            unity_version=data.get("unity_version"),
            graphics_device=data.get("graphics_device"),
            graphics_api=data.get("graphics_api"),
            target_fps=float(fps) if isinstance(fps, int | float) and fps > 0 else None,
            vsync_count=data.get("vsync_count"),
            run_in_background=data.get("run_in_background"),
            frame_timing=str(data.get("frame_timing") or "unavailable: not reported"),
        )

    @classmethod
    def legacy(cls, address: str) -> AvatarIdentity:
        """An avatar that speaks only the companion's legacy protocol: it says nothing of itself."""
        return cls(
            address, "legacy bridge", protocol=1, frame_stats=False, frame_timing=LEGACY_FRAMES
        )

    @classmethod
    def unnamed(cls, address: str) -> AvatarIdentity:
        """A protocol 2 peer older than the identity query: frame_stats, but no identity."""
        return cls(address, "mateperf peer without identity query")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def frames_unavailable(self) -> str:
        """Why this avatar gives no frame figures ("" when it gives them)."""
        return "" if self.frame_stats else LEGACY_FRAMES

    def frame_rate(self, default: float) -> float:
        """The avatar's own pacing target where it says one, else `default` (the run's fps)."""
        fps = self.target_fps
        return fps if fps is not None and math.isfinite(fps) and fps > 0 else default


def _word(value, yes: str = "on", no: str = "off") -> str:
    if value is None:
        return "—"
    return yes if value else no


def describe(info: dict | None) -> str:
    """The report line for a stored identity (run.json's `avatar`); "" for a spawned stand-in."""
    if not info:
        return ""
    version = f" {info['peer_version']}" if info.get("peer_version") else ""
    fps = info.get("target_fps")
    vsync = info.get("vsync_count")
    parts = [
        f"{info.get('peer', 'unknown')}{version} at {info.get('address', '?')}",
        f"Unity {info.get('unity_version') or '—'}",
        f"graphics device {info.get('graphics_device') or '—'}"
        + (f" ({info['graphics_api']})" if info.get("graphics_api") else ""),
        f"target {fps:g} fps" if isinstance(fps, int | float) else "target fps —",
        f"vSync {vsync}" if vsync is not None else "vSync —",
        f"runInBackground {_word(info.get('run_in_background'))}",
    ]
    line = "measured on a live avatar: " + ", ".join(parts)
    unavailable = []
    if not info.get("frame_stats", True):
        unavailable.append(f"frame figures {LEGACY_FRAMES}")
    elif info.get("frame_timing") != "available":
        unavailable.append(f"CPU main-thread / GPU frame times {info.get('frame_timing')}")
    if unavailable:
        line += "; " + "; ".join(unavailable)
    return line
