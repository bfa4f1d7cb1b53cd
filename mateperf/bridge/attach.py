"""Attach to an avatar that is already running: `connect_avatar("HOST:PORT")`.

The avatar is the Unity package inside the companion's app, a headless peer started by hand,
or the companion's own legacy bridge. mateperf did not start it and must leave it as it found
it: the connection never reconnects behind the caller's back (a drop ends the run:
`AvatarLost`), and `leave_as_found` resets its expressions before closing.

    bridge, identity = connect_avatar("127.0.0.1:5555")
    try:
        ...  # bridge.request(...), bridge.frame_stats() where identity.frame_stats
    finally:
        leave_as_found(bridge)
"""

from __future__ import annotations

from mateperf.avatar import AvatarIdentity, AvatarUnreachable, parse_address
from mateperf.bridge.client import (
    BridgeConnectError,
    BridgeDisconnected,
    BridgeError,
    CommandRejected,
    UnityBridge,
)
from mateperf.errors import RunAborted


class AvatarLost(RunAborted):
    """The attached avatar's connection dropped mid-run: the run ends, its rows so far kept."""

    def __init__(self, address: str, cause: BaseException | str):
        reason = cause.reason if isinstance(cause, BridgeDisconnected) else str(cause)
        super().__init__(f"the avatar at {address} dropped the connection ({reason})")
        self.address = address


def open_bridge(
    address: str, request_timeout_s: float = 5.0, connect_timeout_s: float = 2.0
) -> UnityBridge:
    """One more connection to the avatar at `address` (no automatic reconnect)."""
    host, port = parse_address(address)
    bridge = UnityBridge(
        host=host,
        port=port,
        connect_timeout_s=connect_timeout_s,
        connect_attempts=1,
        request_timeout_s=request_timeout_s,
        auto_reconnect=False,
    )
    try:
        return bridge.connect()
    except BridgeConnectError as exc:
        raise AvatarUnreachable(
            f"--avatar {address}: nothing answers as a bridge there ({exc.cause}); start the "
            "avatar (the companion's Unity app, or a headless peer) first"
        ) from None


def query_identity(bridge: UnityBridge, address: str) -> AvatarIdentity:
    """What the avatar says it is; a legacy one says nothing, an older peer no identity."""
    if bridge.legacy:
        return AvatarIdentity.legacy(address)
    try:
        return AvatarIdentity.from_reply(address, bridge.identity())
    except CommandRejected:
        return AvatarIdentity.unnamed(address)


def connect_avatar(
    address: str, request_timeout_s: float = 5.0
) -> tuple[UnityBridge, AvatarIdentity]:
    """Connect to a running avatar and ask what it is.

    Raises `AvatarAddressError` (not HOST:PORT) or `AvatarUnreachable` (nothing answers):
    both are bad input, one line. The bridge does not reconnect by itself.
    """
    bridge = open_bridge(address, request_timeout_s)
    try:
        identity = query_identity(bridge, _canonical(address))
    except BridgeError as exc:
        bridge.close()
        raise AvatarLost(address, exc) from exc
    return bridge, identity


def leave_as_found(bridge: UnityBridge | None) -> None:
    """Reset the avatar's expressions (what a measurement changed) and close; never raises."""
    if bridge is None:
        return
    try:
        if bridge.connected:
            bridge.request("reset_expressions", {}, timeout_s=2.0)
    except BridgeError:
        pass  # gone or refusing: nothing more to undo from here
    finally:
        bridge.close()


def _canonical(address: str) -> str:
    host, port = parse_address(address)
    return f"{host}:{port}"
