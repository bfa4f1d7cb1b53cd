"""Bad input and failures, against both peers: neither side crashes, every request gets exactly
one outcome, nothing is applied twice, and the peer's counters match the client's."""

import json
import socket
import threading
import time

import pytest

from mateperf.bridge.client import (
    Ack,
    BridgeConnectError,
    BridgeDisconnected,
    BridgeError,
    BridgeTimeout,
    UnityBridge,
)
from mateperf.bridge.process import start_peer
from mateperf.bridge.protocol import MAX_LINE_BYTES, encode, encode_request, greeting


@pytest.fixture(params=["python", pytest.param("csharp", marks=pytest.mark.mono)])
def kind(request) -> str:
    if request.param == "csharp":
        request.getfixturevalue("built_csharp")
    return request.param


SET = ("set_expression", {"name": "happy", "value": 0.5})


class RawLine:
    """A plain socket to a peer, for input UnityBridge would never send."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")
        assert json.loads(self.reader.readline())["status"] == "connected"

    def ask(self, raw: bytes) -> dict:
        self.sock.sendall(raw)
        return json.loads(self.reader.readline())

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b'{"command": "set_expression", "data": {\n', "malformed JSON"),
        (b"\xff\xfe garbage\n", "malformed JSON"),
        (b"[1, 2, 3]\n", "expected object"),
        (b'{"command": "fly", "id": 3}\n', "unknown command"),
        (b'{"command": "set_expression", "id": 4, "data": {"name": 1, "value": 0}}\n', "string"),
        (b'{"command": "set_auto_blink", "id": 5, "data": "on"}\n', "expected object"),
    ],
)
def test_bad_lines_get_an_error_and_the_connection_survives(kind, raw, fragment):
    with start_peer(kind, fps=0) as peer:
        raw_line = RawLine(peer.port)
        reply = raw_line.ask(raw)
        assert reply["status"] == "error" and fragment in reply["message"]
        assert raw_line.ask(encode_request(*SET, request_id=99))["status"] == "success"
        raw_line.close()
        counters = peer.stop()
    assert counters["received"] == 2 and counters["rejected"] == 1 and counters["applied"] == 1


def test_oversized_line_is_refused_then_the_next_line_works(kind):
    with start_peer(kind, fps=0) as peer:
        raw_line = RawLine(peer.port)
        huge = encode_request("echo", {"payload": "x" * (MAX_LINE_BYTES + 10)}, 1)
        reply = raw_line.ask(huge)
        assert reply["status"] == "error" and "exceeds" in reply["message"]
        assert raw_line.ask(encode_request(*SET, request_id=2))["id"] == 2
        raw_line.close()
        counters = peer.stop()
    assert counters == {**counters, "received": 2, "rejected": 1, "applied": 1}


def test_half_a_message_then_disconnect(kind):
    with start_peer(kind, fps=0) as peer:
        raw_line = RawLine(peer.port)
        raw_line.sock.sendall(b'{"command": "set_expression", "data": {"na')
        raw_line.close()
        with UnityBridge(port=peer.port) as bridge:
            assert bridge.request(*SET).id == 1
            assert bridge.stats()["counters"]["received"] == 1  # the fragment never counted
        counters = peer.stop()
    assert counters["applied"] == 1 and counters["rejected"] == 0 and counters["connections"] == 2


def _outcomes_are_exact(out: list, n: int) -> tuple[int, int]:
    assert len(out) == n
    assert all(isinstance(o, Ack | BridgeError) for o in out)
    acks = [o for o in out if isinstance(o, Ack)]
    assert len({a.id for a in acks}) == len(acks)
    return len(acks), sum(isinstance(o, BridgeDisconnected) for o in out)


def test_peer_restarted_mid_run(kind):
    first = start_peer(kind, fps=0)
    port = first.port
    bridge = UnityBridge(port=port, connect_attempts=20, retry_delay_s=0.1).connect()
    out: list = []
    for i in range(40):
        if i == 20:
            counters_first = first.stop()
            second = start_peer(kind, fps=0, port=port)
        try:
            out.append(bridge.request(*SET, timeout_s=5))
        except BridgeError as exc:
            out.append(exc)
    acked, disconnected = _outcomes_are_exact(out, 40)
    counters_second = second.stop()
    assert disconnected >= 1 and bridge.counters.reconnects >= 1
    # each request applied at most once and never silently lost: applied == acked
    assert counters_first["applied"] + counters_second["applied"] == acked
    assert counters_first["applied"] == 20

    # a pipelined burst cut by a hard kill: what was in flight fails, nothing hangs
    third = start_peer(kind, fps=0, port=port)
    burst: list = []
    worker = threading.Thread(
        target=lambda: burst.extend(bridge.pipeline([SET] * 3000, window=8, timeout_s=5))
    )
    worker.start()
    time.sleep(0.05)
    third.kill()
    worker.join(timeout=30)
    assert not worker.is_alive()
    acked_burst, _ = _outcomes_are_exact(burst, 3000)
    bridge.close()
    assert bridge.counters.acked == acked + acked_burst
    assert bridge.counters.timed_out == 0


def test_peer_counters_match_the_client_after_a_mixed_run(kind):
    with start_peer(kind, fps=0) as peer:
        with UnityBridge(port=peer.port) as bridge:
            bridge.pipeline([SET] * 50, window=4)
            bridge.send_batch([SET] * 5)
            for bad in ({"name": "a", "value": 9}, {"name": 3, "value": 0}):
                with pytest.raises(BridgeError):
                    bridge.request("set_expression", bad)
            client = bridge.counters
        counters = peer.stop()
    assert counters["received"] == client.sent == 53
    assert counters["applied"] == client.acked == 51
    assert counters["rejected"] == client.rejected == 2
    assert counters["applied_commands"] == 55


def test_connect_retries_then_fails_clearly():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        bridge = UnityBridge(port=port, connect_attempts=3, retry_delay_s=0.01)
        with pytest.raises(BridgeConnectError, match="after 3 attempt"):
            bridge.connect()


def test_timeout_is_one_outcome_and_a_late_ack_is_never_delivered():
    # A fake peer, because a real one cannot be made to answer late on demand: it greets,
    # answers request 1 only after request 2 arrived, then answers request 2.
    listener = socket.create_server(("127.0.0.1", 0))

    def slow_peer() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as reader:
            conn.sendall(encode(greeting(legacy=False, peer="fake")))
            first = json.loads(reader.readline())
            second = json.loads(reader.readline())
            for req in (first, second):
                conn.sendall(encode({"type": "response", "status": "success", "id": req["id"]}))
            reader.readline()

    thread = threading.Thread(target=slow_peer, daemon=True)
    thread.start()
    with UnityBridge(port=listener.getsockname()[1]) as bridge:
        with pytest.raises(BridgeTimeout):
            bridge.request(*SET, timeout_s=0.2)
        assert bridge.request(*SET, timeout_s=5).id == 2
        assert bridge.counters.timed_out == 1 and bridge.counters.late == 1
        assert bridge.counters.acked == 1
    listener.close()
    thread.join(timeout=5)
