"""Failures the bridge must survive without hurting the frame, against both peers (issue 11).

Each peer runs in its own process on real sockets; every fault is caused for real: a client
that never reads, an avatar that lacks a blendshape, a burst over the frame budget, 100,000 ids
on one connection, a taken port, a process out of file descriptors, a German locale. The tests
assert behaviour (frames keep coming, counts, order, bounds), never how fast.
"""

import json
import socket
import threading
import time

import psutil
import pytest

from mateperf.bridge.client import CommandRejected, UnityBridge
from mateperf.bridge.process import PeerStartError, start_peer
from mateperf.bridge.protocol import encode_request


@pytest.fixture(params=["python", pytest.param("csharp", marks=pytest.mark.mono)])
def kind(request) -> str:
    if request.param == "csharp":
        request.getfixturevalue("built_csharp")
    return request.param


def set_expr(value: float = 0.5, name: str = "happy") -> tuple[str, dict]:
    return "set_expression", {"name": name, "value": value}


def wait_for(predicate, timeout_s: float = 20.0, every_s: float = 0.05):
    """Poll until predicate() is truthy (returns it) or the deadline passes (returns the last)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


def test_a_client_that_never_reads_is_dropped_at_the_bound_and_frames_go_on(kind):
    bound = 16384
    with (
        start_peer(kind, fps=60, max_ack_buffer_bytes=bound) as peer,
        UnityBridge(port=peer.port) as good,
    ):
        silent = socket.socket()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        silent.connect(("127.0.0.1", peer.port))
        good.frame_stats(reset=True)
        request_id, good_acks, dropped = 0, [], 0
        deadline = time.monotonic() + 30
        while not dropped and time.monotonic() < deadline:
            lines = []
            for _ in range(2000):
                request_id += 1
                lines.append(encode_request("echo", {"payload": "x"}, request_id))
            try:
                silent.sendall(b"".join(lines))
            except OSError:
                pass  # the peer already closed it
            # the well-behaved client keeps being served meanwhile, in its own frames
            good_acks += good.pipeline([set_expr(i / 10) for i in range(5)], window=5)
            dropped = good.stats()["counters"]["dropped_clients"]
        frames = good.frame_stats()
        # the dropped socket is closed by the peer: reading it ends (EOF or reset), never hangs
        silent.settimeout(10)  # a peer that kept the socket open would time out here
        try:
            while silent.recv(1 << 16):
                pass
        except ConnectionResetError:
            pass
        silent.close()
        stats = good.stats()
        good.close()
        counters = peer.stop()
    assert dropped == 1 and stats["counters"]["dropped_clients"] == 1
    assert stats["bridge"]["open_connections"] == 1  # the dropped one pruned
    assert all(not isinstance(a, Exception) for a in good_acks) and good_acks
    assert frames["frames"] > 0 and all(v > 0 for v in frames["frame_interval_us"])
    assert sum(frames["commands"]) >= len(good_acks)  # frames kept applying commands
    # whatever the peer read from the silent client was applied: nothing lost, nothing twice
    assert counters["received"] == counters["applied"] + counters["rejected"]
    assert counters["rejected"] == 0
    logged = [line for line in peer.output if "dropped client" in line]
    assert len(logged) == 1 and f"bound of {bound}" in logged[0]
    print(
        f"{kind}: dropped after {request_id} requests; frames during the flood "
        f"{frames['frames']}, interval max {max(frames['frame_interval_us'])} µs, "
        f"tick max {max(frames['tick_us'])} µs"
    )


def test_an_avatar_exception_fails_only_its_command(kind):
    with (
        start_peer(kind, fps=60, missing_blendshapes=("wink",)) as peer,
        UnityBridge(port=peer.port) as bridge,
    ):
        # one write: the three land in one frame
        out = bridge.pipeline([set_expr(0.1, "happy"), set_expr(0.2, "wink"), set_expr(0.3, "sad")])
        batch = [set_expr(0.4, "joy"), set_expr(0.5, "wink"), set_expr(0.6, "calm")]
        with pytest.raises(CommandRejected, match=r"batch.commands\[1\]") as info:
            bridge.send_batch(batch)
        after = bridge.request(*set_expr(0.7, "angry"))
        stats = bridge.stats()
        bridge.close()
        counters = peer.stop()
    first, failed, third = out
    assert isinstance(failed, CommandRejected)
    message = failed.response["message"]
    assert "set_expression failed" in message and "no blendshape 'wink'" in message
    assert failed.response["id"] == 2
    assert first.frame == third.frame  # the rest of that frame was applied and acked
    assert "not applied" in info.value.response["message"]
    # all or nothing: joy (applied before the failure) was rolled back with the batch
    assert stats["state"]["expressions"] == {"happy": 0.1, "sad": 0.3, "angry": 0.7}
    assert after.frame > third.frame
    assert counters["apply_errors"] == 2 and counters["rejected"] == 2
    assert counters["applied"] == 3 and counters["received"] == 5


def test_a_burst_over_the_budget_is_applied_over_several_frames_in_order(kind):
    with (
        start_peer(kind, fps=60, max_commands_per_frame=10) as peer,
        UnityBridge(port=peer.port) as bridge,
    ):
        bridge.request(*set_expr())
        bridge.frame_stats(reset=True)
        burst = [set_expr(i / 100, f"e{i % 7}") for i in range(50)]
        pending = bridge.submit_many(burst)  # one write: all 50 queued in one frame
        acks = [bridge.wait(p) for p in pending]
        big = bridge.send_batch([set_expr(0.9, "big")] * 25)  # over the budget: never split
        frames = bridge.frame_stats()
        stats = bridge.stats()
        bridge.close()
        counters = peer.stop()
    per_frame: dict[int, int] = {}
    for ack in acks:
        per_frame[ack.frame] = per_frame.get(ack.frame, 0) + 1
    assert len(per_frame) >= 5 and max(per_frame.values()) <= 10
    assert [a.id for a in acks] == sorted(a.id for a in acks)
    assert [a.frame for a in acks] == sorted(a.frame for a in acks)  # in order, frame by frame
    assert big.count == 25
    # the last value per name is the last one sent: applied in order, each once
    expected = {f"e{i % 7}": i / 100 for i in range(50)}
    assert {k: v for k, v in stats["state"]["expressions"].items() if k != "big"} == {
        **{"happy": 0.5},
        **expected,
    }
    assert counters["applied"] == 1 + 50 + 1 and counters["applied_commands"] == 1 + 50 + 25
    assert counters["deferred"] == 40  # all but the first frame's 10, each counted once
    assert max(frames["queue_depth"]) >= 30
    assert max(frames["commands"]) == 25  # the batch, whole, in one frame


def test_the_time_budget_leaves_the_rest_for_the_next_frame(kind):
    # each command holds the main thread 2 ms; a 1 ms budget then allows one per frame
    with (
        start_peer(kind, fps=60, max_tick_us=1000, apply_delay_ms=2) as peer,
        UnityBridge(port=peer.port) as bridge,
    ):
        acks = [bridge.wait(p) for p in bridge.submit_many([set_expr(i / 10) for i in range(6)])]
        counters = bridge.stats()["counters"]
    frames = [a.frame for a in acks]
    assert len(set(frames)) == 6 and frames == sorted(frames)
    assert counters["deferred"] == 5


def _flood_ids(port: int, start: int, count: int, id_chars: int) -> tuple:
    """Send `count` requests with long distinct string ids on one raw connection, reading the
    acks as they come (never more than 2000 unanswered); return the socket, its reader and the
    error responses."""
    sock = socket.create_connection(("127.0.0.1", port))
    reader = sock.makefile("rb")
    assert json.loads(reader.readline())["status"] == "connected"
    errors: list[dict] = []
    got = [0]

    def read() -> None:
        while got[0] < count:
            reply = json.loads(reader.readline())
            got[0] += 1
            if reply["status"] != "success":
                errors.append(reply)

    thread = threading.Thread(target=read)
    thread.start()
    for k in range(start, start + count, 1000):
        while k - start - got[0] > 2000:
            time.sleep(0.001)
        lines = [
            encode_request("set_auto_blink", {"enabled": True}, f"{i:0{id_chars}d}")
            for i in range(k, min(start + count, k + 1000))
        ]
        sock.sendall(b"".join(lines))
    thread.join(timeout=120)
    assert not thread.is_alive()
    return sock, reader, errors


def test_100000_ids_on_one_connection_keep_memory_bounded(kind):
    # 200-character ids: remembering all of them would take 20+ MB in either peer
    with start_peer(kind, fps=0) as peer, UnityBridge(port=peer.port) as bridge:
        process = psutil.Process(peer.proc.pid)
        sock, reader, errors = _flood_ids(peer.port, 0, 25_000, 200)
        rss_after_25k = process.memory_info().rss
        sock.close()
        sock, reader, more_errors = _flood_ids(peer.port, 25_000, 75_000, 200)
        rss_after_100k = process.memory_info().rss
        bridge_state = bridge.stats()["bridge"]
        window = bridge_state["id_window"]
        # an id within the window is still caught; ids are per connection
        recent = encode_request("set_auto_blink", {"enabled": True}, f"{99_999:0200d}")
        sock.sendall(recent)
        duplicate = json.loads(reader.readline())
        sock.close()
        counters = bridge.stats()["counters"]
    assert errors == [] and more_errors == []
    assert window == 4096
    assert 0 < bridge_state["seen_ids"] <= window
    assert duplicate["status"] == "error" and "duplicate id" in duplicate["message"]
    growth_mb = (rss_after_100k - rss_after_25k) / 2**20
    print(f"{kind}: RSS growth over the last 75,000 ids {growth_mb:.1f} MiB")
    # Remembering every id grew RSS by 20.1 MiB (Python) and 44.9 MiB (C#) over these 75,000
    # ids on the old peers. Bounded, Python grows ~1 MiB; Mono's heap grows in chunks (-6 to
    # +14 MiB seen), so each peer's bound sits halfway below its unbounded growth.
    assert growth_mb < {"python": 12, "csharp": 24}[kind], growth_mb
    assert counters["applied"] == 100_000 and counters["dropped_clients"] == 0


def test_a_taken_port_is_refused_with_one_clear_line(kind):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(PeerStartError) as info:
            start_peer(kind, fps=60, port=port, startup_timeout_s=30)
    output = info.value.output
    assert "exited with 1" in str(info.value)
    assert f"cannot listen on 127.0.0.1:{port}" in output and "in use" in output.lower()
    assert "Traceback" not in output and "Unhandled" not in output
    assert len(output.strip().splitlines()) == 1


def test_closed_connections_are_pruned(kind):
    with start_peer(kind, fps=0) as peer, UnityBridge(port=peer.port) as bridge:
        for i in range(30):
            with UnityBridge(port=peer.port) as other:
                other.request(*set_expr(i / 30))
        raw = [socket.create_connection(("127.0.0.1", peer.port)) for _ in range(20)]
        for sock in raw:
            sock.close()

        def settled() -> dict | None:
            stats = bridge.stats()
            accepted_all = stats["counters"]["connections"] == 51
            return stats if accepted_all and stats["bridge"]["open_connections"] == 1 else None

        settled_stats = wait_for(settled)
        last = bridge.stats()
    assert settled_stats, last  # all 51 accepted, 50 closed and forgotten


def test_accept_errors_back_off_and_recover(kind):
    """Out of file descriptors (a real RLIMIT_NOFILE on the peer process): accept fails on
    every try; the peer must back off, not spin, and accept again once descriptors are free."""
    with start_peer(kind, fps=60) as peer, UnityBridge(port=peer.port) as bridge:
        process = psutil.Process(peer.proc.pid)
        soft, hard = process.rlimit(psutil.RLIMIT_NOFILE)
        process.rlimit(psutil.RLIMIT_NOFILE, (process.num_fds(), hard))
        waiting = []
        try:
            waiting.append(socket.create_connection(("127.0.0.1", peer.port)))
            failing = wait_for(lambda: bridge.stats()["counters"]["accept_errors"] >= 1)
            first = bridge.stats()["counters"]["accept_errors"]
            time.sleep(1.0)
            second = bridge.stats()["counters"]["accept_errors"]
        finally:
            process.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        # the connection that waited in the backlog is served once descriptors are free
        waiting[0].settimeout(10)
        greeting = json.loads(waiting[0].makefile("rb").readline())
        with UnityBridge(port=peer.port) as later:
            later.request(*set_expr())
        waiting[0].close()
        wait_for(lambda: any("accept works again" in line for line in peer.read_output()))
        output = peer.read_output()
    assert failing and greeting["status"] == "connected"
    # backing off from 10 ms to 1 s retries a few times a second; a spinning loop, millions
    assert second - first < 50, (first, second)
    assert sum("accept failed" in line for line in output) == 1
    assert any("accept works again" in line for line in output)


def test_numbers_are_formatted_the_same_under_a_german_locale(kind):
    german = {"LANG": "de_DE.UTF-8", "LC_ALL": "de_DE.UTF-8"}
    with (
        start_peer(kind, fps=60, frame_busy=0.25, env=german) as peer,
        UnityBridge(port=peer.port) as bridge,
    ):
        with pytest.raises(CommandRejected) as low:
            bridge.request("set_expression", {"name": "a", "value": 1.5})
        with pytest.raises(CommandRejected) as high:
            bridge.request("set_auto_head_movement", {"enabled": True, "max_angle": 180.25})
        bridge.request("set_transition_speed", {"speed": 2.5})
        state = bridge.stats()["state"]
        frames = bridge.frame_stats()
    assert low.value.response["message"] == "set_expression.value: 1.5 is above 1"
    assert high.value.response["message"] == "set_auto_head_movement.max_angle: 180.25 is above 180"
    assert state["transition_speed"] == 2.5
    assert frames["frame_busy"] == 0.25 and frames["fps"] == 60.0
