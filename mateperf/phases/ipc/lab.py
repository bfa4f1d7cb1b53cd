"""The processes of one ipc trial (`Lab`), spawned by mateperf or attached to a live avatar.

Attached to a live avatar (`avatar`, HOST:PORT), the lab spawns no peer: the paced arms go to
that avatar (at its own target frame rate), the floor is still measured here, and the arms that
need a peer of mateperf's own (unpaced, legacy-mode, non-reading client) or would send faster
than one frame's work (pipelined floods) are left out; `skipped(p, identity)` says which and why.
"""

from __future__ import annotations

from contextlib import ExitStack

from mateperf.avatar import AvatarIdentity
from mateperf.bridge.attach import connect_avatar, leave_as_found
from mateperf.bridge.client import UnityBridge
from mateperf.bridge.floor import FloorClient
from mateperf.bridge.process import PeerProcess, start_floor, start_peer
from mateperf.phases.ipc.params import IpcParams, parse_scenarios


class CountersMismatch(RuntimeError):
    """The peer's counters disagree with what the client saw: a request was lost or doubled."""


# what a live avatar cannot be asked, scenario by scenario (attached runs leave them out)
LIVE_SKIPS = {
    "throughput": "pipelines up to `window` requests per frame, and an unpaced peer's flood: "
    "more than a live avatar's frame budget is for",
    "original_method": "sends 100 commands without waiting for any (a flood) to a legacy-mode "
    "peer of mateperf's own",
    "frame_cost": "needs a peer of its own, flooded by a client that never reads",
}
LEGACY_SKIPS = {
    "message_sizes": "`echo` is a mateperf protocol command the legacy bridge does not know",
    "batching": "`batch` is a mateperf protocol command the legacy bridge does not know",
}


def skipped(p: IpcParams, identity: AvatarIdentity | None) -> dict[str, str]:
    """The chosen scenarios (and knobs) an attached run leaves out, with the reason."""
    if identity is None:
        return {}
    chosen = set(parse_scenarios(p.scenarios))
    out = {k: v for k, v in LIVE_SKIPS.items() if k in chosen}
    if not identity.frame_stats:
        out.update({k: v for k, v in LEGACY_SKIPS.items() if k in chosen})
    if p.apply_delay_ms:
        out["apply_delay_ms"] = (
            f"{p.apply_delay_ms:g} ms per command is a knob of mateperf's own peers (a known "
            "answer); a live avatar applies at its own speed"
        )
    if p.pin_cpu >= 0:
        out["pin_cpu"] = "a live avatar's process is not pinned by mateperf: only the client is"
    if "simple_commands" in chosen:
        out["simple_commands: bridge_unpaced"] = "a live avatar is paced by its own frame loop"
    return out


class Lab:
    """The processes of one trial: the floor, an unpaced peer, a paced peer, a legacy peer;
    or, attached (`p.avatar`), the floor and one connection to the live avatar."""

    def __init__(self, stack: ExitStack, p: IpcParams):
        self.peer_kind = p.peer
        self.fps = float(p.fps)
        self.timeout_s = p.timeout_s
        self.apply_delay_ms = p.apply_delay_ms
        self.floor_proc = stack.enter_context(start_floor())
        self.floor = stack.enter_context(FloorClient("127.0.0.1", self.floor_proc.port))
        self.peers: dict[float, PeerProcess] = {}
        self.bridges: dict[float, UnityBridge] = {}
        self.identity: AvatarIdentity | None = None
        self.legacy_peer = None
        # what the paced peer's timer did (avatar_pacing's columns), read before it stops;
        # a live avatar's own pacing is its business: left NaN
        self.pacing: dict = {"timer_overshoot_us": float("nan"), "timer_resolution": ""}
        if p.avatar:
            bridge, self.identity = connect_avatar(p.avatar, p.timeout_s)
            stack.callback(leave_as_found, bridge)  # its expressions reset, then closed
            self.fps = self.identity.frame_rate(self.fps)
            self.bridges[self.fps] = bridge
            return
        for f in dict.fromkeys((0.0, self.fps)):
            self.peers[f] = stack.enter_context(
                start_peer(p.peer, fps=f, apply_delay_ms=p.apply_delay_ms)
            )
            bridge = UnityBridge(port=self.peers[f].port, request_timeout_s=p.timeout_s)
            self.bridges[f] = stack.enter_context(bridge.connect())
        self.legacy_peer = stack.enter_context(
            start_peer(p.peer, fps=self.fps, legacy=True, apply_delay_ms=p.apply_delay_ms)
        )

    @property
    def attached(self) -> bool:
        return self.identity is not None

    def check_counters(self) -> None:
        """Stop the peers and compare their counters with the clients'; raise on a mismatch.
        A live avatar's counters count every client it has: not ours to check."""
        for fps, proc in self.peers.items():
            bridge = self.bridges[fps]
            if fps == self.fps:
                state = bridge.stats()["bridge"]
                overshoot = state.get("timer_overshoot_us")
                self.pacing = {
                    "timer_overshoot_us": float("nan") if overshoot is None else float(overshoot),
                    "timer_resolution": str(state.get("timer_resolution") or ""),
                }
            client = bridge.counters.as_dict()
            bridge.close()
            peer = proc.stop()
            lost = client["sent"] - client["acked"] - client["rejected"]
            counted = (peer.get("applied"), peer.get("received"))
            if counted != (client["acked"], client["sent"]) or lost:
                raise CountersMismatch(f"peer at fps={fps:g} counted {peer}, the client {client}")
