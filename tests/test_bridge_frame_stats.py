"""`--frame-busy` and the `frame_stats` query, against both peers in their own processes.

No timing thresholds: a busy paced peer must keep producing frames, each with a positive
interval, the window must clear on reset (and only then), queries must stay uncounted, and a
bad share must be refused before anything starts.
"""

import subprocess
import sys
import time

import pytest

from mateperf.bridge.client import UnityBridge
from mateperf.bridge.process import start_peer

SET = ("set_expression", {"name": "happy", "value": 0.5})


@pytest.fixture(params=["python", pytest.param("csharp", marks=pytest.mark.mono)])
def kind(request) -> str:
    if request.param == "csharp":
        request.getfixturevalue("built_csharp")
    return request.param


def peer_command(kind: str, request) -> list[str]:
    if kind == "python":
        return [sys.executable, "-m", "mateperf.bridge.peer"]
    return ["mono", str(request.getfixturevalue("built_csharp"))]


def test_a_busy_paced_peer_logs_its_frames_and_reset_clears_them(kind):
    with start_peer(kind, fps=60, frame_busy=0.5) as peer, UnityBridge(port=peer.port) as bridge:
        bridge.frame_stats(reset=True)
        time.sleep(0.5)
        bridge.request(*SET)
        kept = bridge.frame_stats(reset=False)
        stats = bridge.frame_stats()  # reset=True by default
        after = bridge.frame_stats()
        counters = bridge.stats()["counters"]
        client = bridge.counters
        bridge.close()
        final = peer.stop()
    assert stats["fps"] == 60.0 and stats["frame_busy"] == 0.5
    assert stats["frames"] > 5
    assert stats["frames"] >= kept["frames"]  # not cleared by reset=False
    for name in ("frame_interval_us", "tick_us", "commands", "queue_depth"):
        assert len(stats[name]) == stats["frames"], name
        assert all(isinstance(v, int) and v >= 0 for v in stats[name]), name
    assert all(v > 0 for v in stats["frame_interval_us"])
    assert sum(stats["commands"]) == 1  # the one set_expression; queries are not commands
    # cleared after the reply: the next window holds only the frames since then
    assert after["frames"] < stats["frames"]
    # queries are never counted, on either side
    assert counters["received"] == counters["applied"] == 1 == client.sent == client.acked
    assert final["applied"] == 1


def test_unpaced_peer_reports_no_busy_share(kind):
    with start_peer(kind, fps=0, frame_busy=0.5) as peer, UnityBridge(port=peer.port) as bridge:
        for _ in range(5):
            bridge.request(*SET)
        stats = bridge.frame_stats()
    assert stats["fps"] == 0.0 and stats["frame_busy"] == 0.0  # busy-spin applies to fps > 0
    assert stats["frames"] >= 5 and sum(stats["commands"]) == 5


def test_frame_stats_reset_must_be_a_bool(kind):
    from mateperf.bridge.client import CommandRejected

    with start_peer(kind, fps=0) as peer, UnityBridge(port=peer.port) as bridge:
        with pytest.raises(CommandRejected, match="frame_stats.reset: expected bool"):
            bridge.request("frame_stats", {"reset": "yes"})


@pytest.mark.parametrize("share", ["1", "-0.1", "abc", "nan", "1.5"])
def test_a_bad_frame_busy_exits_2_with_one_line(kind, request, share):
    result = subprocess.run(
        [*peer_command(kind, request), "--fps", "60", "--frame-busy", share],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--frame-busy" in lines[0], result.stderr


@pytest.mark.parametrize("share", [1.0, -0.1, float("nan"), "x"])
def test_start_peer_refuses_a_bad_frame_busy(share):
    with pytest.raises(ValueError, match="frame_busy"):
        start_peer("python", frame_busy=share)
