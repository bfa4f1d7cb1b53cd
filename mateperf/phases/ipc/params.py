"""The ipc phase's parameters: the one schema (`mateperf.params`); the notebook repeats it.

The list-valued parameters are strings (a CLI `-p sizes=64,1024` and a notebook line read the
same); `sizes()`, `loads()` and `chosen()` parse them, and building the dataclass checks them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mateperf.avatar import AVATAR_HELP, parse_address
from mateperf.params import PEER_KINDS, Params, param, refuse

SCENARIOS = (
    "simple_commands",
    "message_sizes",
    "throughput",
    "expression_commands",
    "batching",
    "original_method",
    "frame_cost",
)
MIN_LINE_BYTES, MAX_LINE_BYTES = 48, (1 << 20) - 1
MAX_COMMANDS_PER_FRAME = 1000


def _ints(name: str, text: str) -> list[int]:
    try:
        values = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        refuse(name, text, "must be comma-separated whole numbers")
    if not values:
        refuse(name, text, "must name at least one value")
    return values


def parse_sizes(text: str) -> list[int]:
    sizes = _ints("sizes", text)
    if min(sizes) < MIN_LINE_BYTES or max(sizes) > MAX_LINE_BYTES:
        refuse("sizes", text, f"must be {MIN_LINE_BYTES}..{MAX_LINE_BYTES} bytes each")
    return sizes


def parse_loads(text: str) -> list[int]:
    loads = _ints("frame_cost_loads", text)
    if min(loads) < 0 or max(loads) > MAX_COMMANDS_PER_FRAME:
        refuse("frame_cost_loads", text, f"must be 0..{MAX_COMMANDS_PER_FRAME} commands per frame")
    return loads


def parse_scenarios(text: str) -> list[str]:
    chosen = [s.strip() for s in str(text).split(",") if s.strip()]
    if not chosen or any(s not in SCENARIOS for s in chosen):
        refuse("scenarios", text, f"must be chosen from {', '.join(SCENARIOS)}")
    return chosen


@dataclass(frozen=True)
class IpcParams(Params):
    peer: str = param(
        "python",
        '"python" (FramePacedPeer) or "csharp" (unity/ core under Mono)',
        choices=PEER_KINDS,
        variant=1,
    )
    avatar: str = param(
        "", AVATAR_HELP + ": the paced arms go to it, the arms it cannot take are left out"
    )
    fps: int = param(
        60, "the paced peer's frame rate; an unpaced peer (fps 0) always runs beside it", at_least=0
    )
    trials: int = param(5, "every scenario once per trial, interleaved", at_least=1)
    requests: int = param(
        300, "simple commands per trial, unpaced (and the floor's ping-pongs)", at_least=1
    )
    paced_requests: int = param(
        60, "simple commands per trial at `fps` (one frame each)", at_least=1
    )
    sizes: str = param("64,1024,16384,65536", "message_sizes: request line sizes in bytes")
    size_requests: int = param(60, "requests per size per trial", at_least=1)
    throughput_requests: int = param(1000, "pipelined requests per trial", at_least=1)
    window: int = param(16, "requests in flight when pipelining", at_least=1)
    batch_commands: int = param(
        100, "batching: commands per arm (the original study's 100)", at_least=1
    )
    batch_size: int = param(10, "batching: commands per batch", at_least=1)
    warmup: int = param(
        20, "requests per arm and trial kept but left out of the statistics", at_least=0
    )
    timeout_s: float = param(5.0, "per request", above=0)
    scenarios: str = param(",".join(SCENARIOS), "")
    # -1: the scheduler places client, peers and floor. N: all of them on CPU N (children
    # inherit the affinity). On an idle VM every wake-up of a thread blocked on another vCPU
    # costs tens of µs, and the bridge's chain (client → I/O thread → frame loop → client) has
    # more of them than the floor's ping-pong; pinning shows the cost without them.
    pin_cpu: int = param(
        -1,
        "-1 lets the scheduler place client and peers; N pins them all to CPU N",
        at_least=-1,
        variant=2,
    )
    # A known answer: 0 measures the bridge itself.
    apply_delay_ms: float = param(
        0.0,
        "ms the peers spend on every applied command (a slow avatar): a known answer",
        at_least=0,
        variant=3,
    )
    frame_cost_frames: int = param(60, "frame_cost: peer frames per arm and trial", at_least=1)
    frame_cost_loads: str = param("0,1,10,100", "frame_cost: commands per frame of its load arms")

    def check(self) -> None:
        import math

        if not math.isfinite(self.apply_delay_ms):
            refuse("apply_delay_ms", self.apply_delay_ms, "must be a finite number of ms")
        parse_sizes(self.sizes)
        parse_loads(self.frame_cost_loads)
        parse_scenarios(self.scenarios)
        if self.avatar:
            parse_address(self.avatar)
        if self.pin_cpu != -1:
            check_pin(self.pin_cpu)


def check_pin(pin: int) -> None:
    from mateperf.trackers import cpu as cpu_tracker

    mask, source = cpu_tracker.affinity()
    if mask is None or not cpu_tracker.can_set_affinity():
        refuse(
            "pin_cpu", pin, f": pinning to a CPU is {cpu_tracker.UNAVAILABLE} ({source}); use -1"
        )
    if pin not in mask:
        refuse("pin_cpu", pin, f"must be -1 or one of CPUs {','.join(map(str, mask))}")
