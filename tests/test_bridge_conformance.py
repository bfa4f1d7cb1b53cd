"""The conformance suite: the same tests against the Python peer and the C# core under Mono.

Each peer runs in its own process on a real loopback socket, driven by the real UnityBridge.
"""

import json
import socket
import threading
import time

import psutil
import pytest

from mateperf.bridge.client import BridgeError, CommandRejected, UnityBridge
from mateperf.bridge.process import start_peer
from mateperf.bridge.protocol import encode_request


@pytest.fixture(params=["python", pytest.param("csharp", marks=pytest.mark.mono)])
def kind(request) -> str:
    if request.param == "csharp":
        request.getfixturevalue("built_csharp")
    return request.param


@pytest.fixture
def unpaced(kind):
    with start_peer(kind, fps=0) as peer:
        with UnityBridge(port=peer.port, request_timeout_s=5.0) as bridge:
            yield peer, bridge


def set_expr(value: float = 0.5, name: str = "happy") -> tuple[str, dict]:
    return "set_expression", {"name": name, "value": value}


def test_ack_carries_id_frame_and_peer_times_on_the_same_clock(unpaced):
    _, bridge = unpaced
    assert not bridge.legacy
    ack = bridge.request(*set_expr())
    assert ack.id == 1 and ack.command == "set_expression" and ack.frame >= 1
    assert ack.sent_ns <= ack.recv_ns <= ack.apply_ns <= ack.acked_ns


def test_every_command_applies_to_the_avatar(unpaced):
    _, bridge = unpaced
    bridge.request("load_model", {"path": "avatar.vrm"})
    bridge.request("set_expression", {"name": "joy", "value": 1})
    bridge.request("set_expression", {"name": "sad", "value": 0.25})
    bridge.request("set_transition_speed", {"speed": 4.5})
    bridge.request("set_auto_blink", {"enabled": False})
    bridge.request(
        "set_auto_head_movement",
        {"enabled": True, "min_interval": 1, "max_interval": 2, "max_angle": 30},
    )
    bridge.request("echo", {"payload": "x" * 100})
    state = bridge.stats()["state"]
    assert state["model"] == "avatar.vrm"
    assert state["expressions"] == {"joy": 1.0, "sad": 0.25}
    assert state["transition_speed"] == 4.5 and state["auto_blink"] is False
    assert state["head_movement_enabled"] is True and state["echo_bytes"] == 100
    bridge.request("reset_expressions")
    bridge.request("unload_model")
    state = bridge.stats()["state"]
    assert state["expressions"] == {} and state["model"] is None
    assert state["commands_applied"] == 9


@pytest.mark.parametrize(
    "command, data, fragment",
    [
        ("dance", {}, "unknown command"),
        ("set_expression", {"name": "joy", "value": "high"}, "expected number"),
        ("set_expression", {"name": "joy", "value": 2}, "above"),
        ("set_auto_blink", {"enabled": "yes"}, "expected bool"),
        ("set_expression", {"value": 1}, "missing"),
    ],
)
def test_invalid_commands_get_an_error_response_with_their_id(unpaced, command, data, fragment):
    _, bridge = unpaced
    with pytest.raises(CommandRejected) as info:
        bridge.request(command, data)
    assert info.value.response["id"] == 1 and fragment in info.value.response["message"]
    assert bridge.request(*set_expr()).id == 2  # the connection is still usable
    counters = bridge.stats()["counters"]
    assert counters == {**counters, "received": 2, "applied": 1, "rejected": 1}


def test_batch_is_atomic_and_applied_in_one_frame(unpaced):
    _, bridge = unpaced
    ack = bridge.send_batch([set_expr(i / 10, f"e{i}") for i in range(10)])
    assert ack.count == 10
    bad = [set_expr(0.1, "ok"), ("set_expression", {"name": "bad", "value": 7})]
    with pytest.raises(CommandRejected, match=r"batch.commands\[1\]"):
        bridge.send_batch(bad)
    stats = bridge.stats()
    assert sorted(stats["state"]["expressions"]) == [f"e{i}" for i in range(10)]
    assert stats["counters"]["applied_commands"] == 10 and stats["counters"]["rejected"] == 1


def test_pipeline_returns_one_outcome_per_command_in_order(unpaced):
    _, bridge = unpaced
    commands = [set_expr((i % 10) / 10) for i in range(200)]
    commands[50] = ("set_expression", {"name": "x", "value": -1})
    out = bridge.pipeline(commands, window=8)
    assert len(out) == 200
    assert isinstance(out[50], CommandRejected)
    ids = [a.id for i, a in enumerate(out) if i != 50]
    assert ids == sorted(ids) and len(set(ids)) == 199
    assert bridge.stats()["counters"]["applied"] == 199


def test_concurrent_callers_are_all_answered(unpaced):
    _, bridge = unpaced
    results: dict[int, list] = {}

    def caller(t: int) -> None:
        results[t] = [bridge.request(*set_expr(i / 50, f"t{t}")).id for i in range(50)]

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    ids = [i for r in results.values() for i in r]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert bridge.counters.acked == 200
    assert bridge.stats()["counters"]["applied"] == 200


def test_duplicate_id_is_rejected_and_applied_once(kind):
    with start_peer(kind, fps=0) as peer, socket.create_connection(("127.0.0.1", peer.port)) as s:
        reader = s.makefile("rb")
        assert json.loads(reader.readline())["status"] == "connected"
        line = encode_request("set_expression", {"name": "a", "value": 0.5}, 42)
        s.sendall(line)
        assert json.loads(reader.readline())["status"] == "success"
        s.sendall(line)
        dup = json.loads(reader.readline())
        assert dup["status"] == "error" and "duplicate" in dup["message"] and dup["id"] == 42
        s.close()
        counters = peer.stop()
    assert counters["applied"] == 1 and counters["rejected"] == 1


def test_at_60_fps_a_batch_completes_in_fewer_frames_than_one_by_one(kind):
    with start_peer(kind, fps=60) as peer, UnityBridge(port=peer.port) as bridge:
        bridge.request(*set_expr())
        singles = [bridge.request(*set_expr(i / 10)) for i in range(6)]
        batch = bridge.send_batch([set_expr(i / 10) for i in range(6)])
        frames_single = singles[-1].frame - singles[0].frame + 1
        assert frames_single >= 6  # one frame each: Unity applies once per frame
        assert batch.count == 6  # one ack: all six applied in one frame
        pipelined = bridge.pipeline([set_expr(i / 10) for i in range(6)], window=6)
        assert pipelined[-1].frame - pipelined[0].frame <= 1


def test_legacy_peer_is_matched_in_order(kind):
    with start_peer(kind, fps=60, legacy=True) as peer, UnityBridge(port=peer.port) as bridge:
        assert bridge.legacy
        early = bridge.request(*set_expr())  # acked by the socket thread, before the frame
        assert early.id is None and early.frame is None
        loaded = bridge.submit("load_model", {"path": "a.vrm"})
        fast = [bridge.submit(*set_expr(i / 5)) for i in range(5)]
        assert all(bridge.wait(p).command == "set_expression" for p in fast)
        assert bridge.wait(loaded).command == "load_model"
        with pytest.raises(CommandRejected):
            bridge.request("set_expression", {"name": "a", "value": "x"})
        with pytest.raises(BridgeError, match="legacy"):
            bridge.stats()
        # acked only once applied, after everything sent before it: the peer's counters are
        # final when it stops (early-acked commands may otherwise still wait for their frame)
        assert bridge.request("load_model", {"path": "b.vrm"}).command == "load_model"
        bridge.close()
        counters = peer.stop()
    assert counters["applied"] == 8 and counters["rejected"] == 1
    assert bridge.counters.acked == 8 and bridge.counters.unmatched == 0


def test_fire_and_forget_send_still_works(unpaced):
    peer, bridge = unpaced
    for i in range(20):
        bridge.send(*set_expr(i / 20))
    deadline = time.monotonic() + 5
    while bridge.stats()["counters"]["applied"] < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bridge.stats()["counters"]["applied"] == 20


def test_peer_binds_loopback_by_default(kind):
    with start_peer(kind, fps=0) as peer:
        proc = psutil.Process(peer.proc.pid)
        listen = [c for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert [(c.laddr.ip, c.laddr.port) for c in listen] == [("127.0.0.1", peer.port)]
