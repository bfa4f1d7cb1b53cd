"""The Python client runs inside the companion, on Windows too: no POSIX-only calls on its path."""

from __future__ import annotations

import select

from mateperf.bridge.client import UnityBridge
from mateperf.bridge.process import start_peer


def test_client_works_without_select_poll(monkeypatch):
    """Windows has no select.poll; it cannot be removed for real on Linux, so it is deleted
    from the module for this test and the client must fall back to select.select."""
    monkeypatch.delattr(select, "poll")
    with start_peer("python", fps=0) as peer:
        bridge = UnityBridge(port=peer.port).connect()
        try:
            acks = [
                bridge.request("set_expression", {"name": "happy", "value": i / 10})
                for i in range(10)
            ]
            assert [a.command for a in acks] == ["set_expression"] * 10
            assert bridge.stats()["state"]["expressions"]["happy"] == 0.9
        finally:
            bridge.close()
