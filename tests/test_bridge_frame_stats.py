"""`--frame-busy` and the `frame_stats` query, against both peers in their own processes.

No timing thresholds: a busy paced peer must keep producing frames, each with a positive
interval, the window must clear on reset (and only then), queries must stay uncounted, and a
bad share must be refused before anything starts.
"""

import csv
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
        return [sys.executable, "-m", "mateperf.bridge.peer_main"]
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


def csharp_peer(built_csharp, *args: str):
    """The C# headless peer started by hand with its own options, as a user would."""
    from mateperf.bridge.process import csharp_peer_command, start_program

    cmd = [*csharp_peer_command(built_csharp), "--stop-on-stdin-eof", *args]
    return start_program(cmd, "csharp")


def read_frame_log(path) -> dict[int, tuple[int, int]]:
    """The peer's --frame-log CSV read on its own: frame -> (interval_us, tick_us)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "interval_us", "tick_us"]
    frames = [int(r[0]) for r in rows[1:]]
    assert frames == list(range(1, len(frames) + 1))  # every frame once, in order, from 1
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows[1:]}


@pytest.mark.mono
def test_the_frame_log_file_matches_frame_stats_for_the_same_frames(built_csharp, tmp_path):
    log_path = tmp_path / "frames.csv"
    windows = []
    with csharp_peer(
        built_csharp, "--fps", "60", "--frame-busy", "0.2", "--frame-log", str(log_path)
    ) as peer:
        with UnityBridge(port=peer.port) as bridge:
            for _ in range(3):
                time.sleep(0.25)
                bridge.pipeline([SET] * 5)
                windows.append(bridge.frame_stats())  # each reply resets the window
            time.sleep(0.2)  # frames after the last query
        peer.stop()  # the log is complete once the peer has stopped
    logged = read_frame_log(log_path)
    for window in windows:
        numbers = range(window["first_frame"], window["last_frame"] + 1)
        assert len(numbers) == window["frames"] > 5
        assert [logged[n][0] for n in numbers] == window["frame_interval_us"]
        assert [logged[n][1] for n in numbers] == window["tick_us"]
        # the headless peer has no renderer: no CPU/GPU lists, and it says why
        assert "cpu_main_us" not in window and "gpu_us" not in window
        assert window["frame_timing"] == "unavailable: headless peer (no renderer)"
    # windows follow each other without a gap: a reset empties the window, not the numbering
    for before, after in zip(windows, windows[1:], strict=False):
        assert after["first_frame"] == before["last_frame"] + 1
    assert max(logged) > windows[-1]["last_frame"]  # frames after the last query are logged too


@pytest.mark.mono
def test_an_empty_window_names_no_frames(built_csharp):
    # unpaced, the peer runs a frame only for work: the first query's frame is still running
    with csharp_peer(built_csharp, "--fps", "0") as peer, UnityBridge(port=peer.port) as bridge:
        empty = bridge.frame_stats()
        one = bridge.frame_stats()  # holds the frame of the first query, now complete
    assert empty["frames"] == 0 and empty["first_frame"] is None and empty["last_frame"] is None
    assert one["frames"] == 1 and one["first_frame"] == one["last_frame"] == 1


@pytest.mark.mono
@pytest.mark.parametrize("where", ["missing-dir/frames.csv", ""])
def test_an_unwritable_frame_log_exits_2_with_one_line(built_csharp, tmp_path, where):
    from mateperf.bridge.process import csharp_peer_command

    path = str(tmp_path / where) if where else ""
    result = subprocess.run(
        [*csharp_peer_command(built_csharp), "--frame-log", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--frame-log" in lines[0], result.stderr
