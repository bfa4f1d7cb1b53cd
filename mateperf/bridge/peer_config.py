"""`PeerConfig`: every setting of the Python reference peer, checked once.

The peer's command line (`mateperf.bridge.peer_main`), its main loop (`mateperf.bridge.peer`)
and its connection I/O (`mateperf.bridge.connection`) all read this one dataclass; the C# core
(`BridgeServer`) has the same settings and the same defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mateperf import __version__
from mateperf.bridge.frames import check_frame_busy
from mateperf.bridge.protocol import DEFAULT_HOST, MAX_LINE_BYTES, PROTOCOL_VERSION

# Defaults shared with the C# core (BridgeServer): a frame_stats reply of a full frame log is
# about 0.8 MB, and a buffer holding one is always accepted whatever the bound (see AckWriter).
DEFAULT_MAX_ACK_BUFFER_BYTES = 1 << 20
DEFAULT_ID_WINDOW = 4096
# the incoming bound per connection (the C# core's defaults too): 4096 requests is about 40
# frames of a 100-command budget and far above any pipelining window the client uses; the byte
# bound keeps large lines (up to MAX_LINE_BYTES each) from multiplying it
DEFAULT_MAX_QUEUED_REQUESTS = 4096
DEFAULT_MAX_QUEUED_BYTES = 4 << 20

PEER_NAME = "mateperf-python"
# what a peer without a renderer says of FrameTimingManager's CPU/GPU frame times
NO_FRAME_TIMING = "unavailable: headless peer (no renderer)"


@dataclass(frozen=True)
class PeerConfig:
    """The peer's settings; building one checks them (ValueError naming the bad one)."""

    host: str = DEFAULT_HOST
    port: int = 0
    fps: float = 60.0
    legacy: bool = False
    max_line_bytes: int = MAX_LINE_BYTES
    apply_delay_ms: float = 0.0  # main-thread time per applied command: a slow avatar
    frame_busy: float = 0.0  # share of each paced frame busy-spun after its tick
    max_ack_buffer_bytes: int = DEFAULT_MAX_ACK_BUFFER_BYTES
    id_window: int = DEFAULT_ID_WINDOW
    max_commands_per_frame: int = 0  # the frame budget (0: no limit)
    max_tick_us: float = 0.0  # the frame budget in µs (0: no limit)
    missing_blendshapes: frozenset[str] = field(default_factory=frozenset)
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    spin_tail_us: float | None = None  # None: measured from the sleep overshoot at start
    frame_log: str | None = None  # a CSV of every frame (frame,interval_us,tick_us)

    def __post_init__(self) -> None:
        if not self.fps >= 0:
            raise ValueError(f"fps must be >= 0, got {self.fps}")
        if not (self.apply_delay_ms >= 0 and math.isfinite(self.apply_delay_ms)):
            raise ValueError(f"apply_delay_ms must be >= 0, got {self.apply_delay_ms}")
        if self.max_ack_buffer_bytes < 1 or self.id_window < 1:
            raise ValueError("max_ack_buffer_bytes and id_window must be >= 1")
        if self.max_commands_per_frame < 0 or self.max_tick_us < 0:
            raise ValueError("max_commands_per_frame and max_tick_us must be >= 0 (0: no limit)")
        if self.max_queued_requests < 1 or self.max_queued_bytes < 1:
            raise ValueError("max_queued_requests and max_queued_bytes must be >= 1")
        if self.spin_tail_us is not None and not self.spin_tail_us >= 0:
            raise ValueError(f"spin_tail_us must be >= 0, got {self.spin_tail_us}")
        object.__setattr__(self, "frame_busy", check_frame_busy(self.frame_busy))
        object.__setattr__(self, "missing_blendshapes", frozenset(self.missing_blendshapes))

    def identity(self) -> dict:
        """The `identity` reply: what this peer is (a headless peer has no Unity, no GPU)."""
        return {
            "peer": PEER_NAME,
            "peer_version": __version__,
            "protocol": PROTOCOL_VERSION,
            "unity_version": None,
            "graphics_device": None,
            "graphics_api": None,
            "target_fps": float(self.fps) if self.fps else None,
            "vsync_count": None,
            "run_in_background": True,
            "frame_timing": NO_FRAME_TIMING,
        }
