"""`--avatar HOST:PORT`: mateperf measures an avatar it did not start.

The avatar is the C# headless peer (the Unity package's core under Mono), started as its own
process before mateperf runs, as the companion's Unity app would be; the legacy avatar is that
peer in `--legacy` mode (the companion's own bridge protocol). Every frame figure mateperf
stores is checked against the peer's own frame log (`--frame-log`), read here independently.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from mateperf.avatar import LEGACY_FRAMES
from mateperf.bridge.attach import connect_avatar
from mateperf.bridge.client import UnityBridge
from mateperf.bridge.frames import read_frame_log
from mateperf.bridge.process import csharp_peer_command, start_peer
from tests.conftest import reap, sigterm

# a cpu phase run of two model loads (warm-up + one trial), the companion background only
SMALL_CPU = [
    *("-p", "n_threads=1", "-p", "backgrounds=companion", "-p", "trials=1"),
    *("-p", "precision_pct=0", "-p", "pp_tokens=16", "-p", "tg_tokens=4"),
    *("-p", "max_tokens=4", "-p", "n_ctx=256"),
]
SMALL_IPC = [
    *("-p", "trials=2", "-p", "requests=20", "-p", "paced_requests=10", "-p", "sizes=64"),
    *("-p", "size_requests=5", "-p", "batch_commands=20", "-p", "warmup=2"),
]


@pytest.fixture()
def avatar(built_csharp, tmp_path):
    """A running C# headless peer at 60 fps writing its own frame log; (process, log path)."""
    log = tmp_path / "avatar_frames.csv"
    with start_peer("csharp", fps=60, frame_log=log) as peer:
        yield peer, log


def _run_dir(root):
    (run_dir,) = [p.parent for p in root.glob("*/run.json")]
    return run_dir


def _expressions(port: int) -> dict:
    with UnityBridge(port=port) as bridge:
        return bridge.stats()["state"]["expressions"]


def _check_frames_against_log(df: pd.DataFrame, log_path) -> int:
    """Every stored window's frame count and p50/p99 equal those of the same frames in the
    peer's own log; returns how many windows were checked."""
    log = read_frame_log(log_path)
    windows = df.dropna(subset=["frame_first", "frame_last"])
    assert len(windows), "no window carries frame numbers"
    for row in windows.itertuples():
        first, last = int(row.frame_first), int(row.frame_last)
        assert last in log, f"frame {last} is not in the peer's log yet"
        intervals_ms = np.array([log[f][0] / 1e3 for f in range(first, last + 1)])
        assert row.frames == last - first + 1
        assert row.frame_p99_ms == pytest.approx(np.percentile(intervals_ms, 99), rel=1e-9)
        assert row.frame_p50_ms == pytest.approx(np.percentile(intervals_ms, 50), rel=1e-9)
    return len(windows)


@pytest.mark.parametrize("kind", ["python", "csharp"])
def test_both_peers_answer_identity_and_number_their_frames(kind, request, tmp_path):
    """The wire additions both peers share: identity, frame numbers, the frame log file."""
    if kind == "csharp":
        request.getfixturevalue("built_csharp")
    log = tmp_path / "frames.csv"
    with start_peer(kind, fps=60, frame_log=log) as peer:
        bridge, identity = connect_avatar(f"127.0.0.1:{peer.port}")
        try:
            assert (
                identity.peer == {"python": "mateperf-python", "csharp": "mateperf-headless"}[kind]
            )
            assert identity.target_fps == 60.0 and identity.run_in_background is True
            assert identity.unity_version is None and identity.graphics_device is None
            assert identity.frame_timing.startswith("unavailable: headless peer")
            bridge.frame_stats(reset=True)
            time.sleep(0.5)
            reply = bridge.frame_stats(reset=True)
            later = bridge.frame_stats(reset=True)
        finally:
            bridge.close()
    first, last = reply["first_frame"], reply["last_frame"]
    assert last - first + 1 == reply["frames"] == len(reply["frame_interval_us"]) >= 10
    assert later["first_frame"] == last + 1  # never reset, never skipped
    assert "cpu_main_us" not in reply and reply["frame_timing"].startswith("unavailable")
    frames = read_frame_log(log)
    assert [frames[f][0] for f in range(first, last + 1)] == reply["frame_interval_us"]
    assert [frames[f][1] for f in range(first, last + 1)] == reply["tick_us"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM: unavailable on this OS")
@pytest.mark.parametrize("kind", ["python", "csharp"])
def test_a_peer_started_by_hand_in_the_background_runs_until_sigterm(kind, request):
    """Started as `peer &` is: stdin is /dev/null, so it is at its end from the start. The
    peer keeps running, is attached to and measured, and SIGTERM stops it with its line."""
    if kind == "python":
        cmd = [sys.executable, "-m", "mateperf.bridge.peer_main"]
    else:
        cmd = csharp_peer_command(request.getfixturevalue("built_csharp"))
    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--fps", "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        listening = json.loads(proc.stdout.readline())
        assert listening["event"] == "listening", listening
        time.sleep(0.5)  # a stdin watcher would have stopped it by now
        assert proc.poll() is None
        bridge, identity = connect_avatar(f"127.0.0.1:{listening['port']}")
        try:
            assert identity.target_fps == 60.0
            bridge.frame_stats(reset=True)
            time.sleep(0.3)
            reply = bridge.frame_stats(reset=True)
        finally:
            bridge.close()
        assert reply["frames"] >= 5
        out = sigterm(proc)
    finally:
        reap(proc)
    stopped = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 0 and stopped["event"] == "stopped", out
    assert stopped["frames"] >= reply["last_frame"]


def test_bad_avatar_address_and_nothing_listening_are_one_line_exit_2(cli):
    r = cli("run", "ipc", "--avatar", "localhost")
    assert r.rc == 2 and "expected HOST:PORT" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("run", "ipc", "--avatar", "127.0.0.1:1")
    assert r.rc == 2 and "nothing answers as a bridge" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("run", "memory", "--avatar", "127.0.0.1:5555")
    assert r.rc == 2 and "measures no avatar" in r.stderr


def test_ipc_attached_to_a_running_csharp_avatar(cli, results_root, avatar):
    peer, _log = avatar
    r = cli("run", "ipc", "--avatar", f"127.0.0.1:{peer.port}", *SMALL_IPC)
    assert r.rc == 0, r.stderr[-3000:]
    run_dir = _run_dir(results_root)
    identity = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["avatar"]
    assert identity["peer"] == "mateperf-headless" and identity["target_fps"] == 60.0
    md = (run_dir / "ipc.md").read_text(encoding="utf-8")
    assert "Measured on a live avatar: mateperf-headless" in md
    assert "left out on it: throughput" in md  # a flood is not sent to a live avatar
    df = pd.read_parquet(run_dir / "ipc.parquet")
    assert set(df["peer"]) == {"live"}
    assert "bridge_unpaced" not in set(df["mode"])
    paced = df[(df["mode"] == "bridge_60fps") & (df["record"] == "request")]
    assert len(paced) and paced["rtt_us"].median() > 1e3  # paced by the avatar's frames
    assert _expressions(peer.port) == {}  # left as it was found


def test_cpu_phase_frame_figures_equal_the_avatars_own_log(cli, results_root, avatar):
    peer, log = avatar
    r = cli("run", "cpu", "--avatar", f"127.0.0.1:{peer.port}", *SMALL_CPU)
    assert r.rc == 0, r.stderr[-3000:]
    df = pd.read_parquet(_run_dir(results_root) / "cpu.parquet")
    peer.stop()  # the log's last lines written
    assert _check_frames_against_log(df, log) == len(df)  # the warm-up's window too
    # a headless peer has no FrameTimingManager: NaN and the reason, never 0
    assert df["cpu_main_p99_ms"].isna().all() and df["gpu_p99_ms"].isna().all()
    assert df["frame_note"].str.contains("headless peer").all()
    assert set(df["peer"]) == {"live"}


def test_small_tune_attached_holds_the_avatars_frames(cli, results_root, avatar):
    peer, log = avatar
    r = cli(
        "tune",
        "--avatar",
        f"127.0.0.1:{peer.port}",
        # one profile: what is checked here (attach, the avatar's budget, frames against its
        # own log, expressions left as found) is the same for each; the race still gives the
        # frames check its three trials and more
        *("-p", "profiles=balanced"),
        *("-p", "n_batch=64", "-p", "kv_types=f16", "-p", "flash_attn=off"),
        *("-p", "max_rounds=2", "-p", "min_reps=2", "-p", "confirm_reps=2"),
        *("-p", "reply_tokens=4", "-p", "frame_slack_ms=1000"),
        timeout=1200,  # ~10 model loads: under a minute on an idle 2-core host, 4+ when shared
    )
    assert r.rc == 0, r.stderr[-3000:]
    run_dir = _run_dir(results_root)
    rec = json.loads((run_dir / "recommended.json").read_text(encoding="utf-8"))
    assert list(rec["profiles"]) == ["balanced"] and rec["default_profile"] == "balanced"
    assert rec["avatar"]["peer"] == "mateperf-headless"
    assert rec["constraint"] == "frame_p99_ms"  # no GPU frame time from a headless peer
    assert any("headless peer" in u for u in rec["avatar_unavailable"])
    md = (run_dir / "tune.md").read_text(encoding="utf-8")
    assert "Measured on a live avatar" in md
    assert "**Not tuned: performance, cpu_fallback**" in md
    assert "not tuned: performance, cpu_fallback" in r.stdout
    trials = pd.read_parquet(run_dir / "tune.parquet")
    assert _expressions(peer.port) == {}  # left as it was found
    peer.stop()
    assert _check_frames_against_log(trials, log) >= 3


def test_legacy_avatar_frame_figures_unavailable_the_rest_runs(cli, results_root, built_csharp):
    with start_peer("csharp", fps=60, legacy=True) as peer:
        r = cli("run", "cpu", "--avatar", f"127.0.0.1:{peer.port}", *SMALL_CPU)
    assert r.rc == 0, r.stderr[-3000:]
    run_dir = _run_dir(results_root)
    df = pd.read_parquet(run_dir / "cpu.parquet")
    assert df["frame_p99_ms"].isna().all()
    assert (df["frame_note"] == LEGACY_FRAMES).all()
    assert (df["tg_tps"] > 0).all() and (df["cmd_count"] > 0).any()  # what it answers
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["avatar"]["frame_stats"] is False
    assert LEGACY_FRAMES in (run_dir / "cpu.md").read_text(encoding="utf-8")


def test_avatar_killed_mid_run_ends_with_one_line_exit_1_rows_kept(results_root, built_csharp):
    """A real fault: the avatar's process is killed (SIGKILL) once the first trial is done."""
    with start_peer("csharp", fps=60) as peer:
        cmd = [sys.executable, "-m", "mateperf", "run", "ipc", "--avatar"]
        cmd += [f"127.0.0.1:{peer.port}", *SMALL_IPC, "-p", "trials=20"]
        env = {**os.environ, "MATEPERF_RESULTS": str(results_root)}
        proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "[ipc] 1/20 trial" in line:
                peer.kill()
                break
        out, err = proc.communicate(timeout=300)
    lines += err.splitlines(keepends=True)
    assert proc.returncode == 1, "".join(lines)[-3000:]
    failures = [ln for ln in lines if "AvatarLost" in ln]
    assert len(failures) == 1 and "dropped the connection" in failures[0], "".join(lines)
    assert not any("Traceback" in ln for ln in lines)
    run_dir = _run_dir(results_root)
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["status"] == "failed" and info["rows_kept"] > 0
    df = pd.read_parquet(run_dir / "ipc.parquet")
    done = df[df["error"] == ""]
    assert set(done["trial"]) >= {0} and len(done) > 0
    assert math.isfinite(done["rtt_us"].median())


def test_final_phase_turns_attached_to_the_avatar(cli, results_root, avatar):
    peer, log = avatar
    r = cli(
        "run",
        "final",
        "--avatar",
        f"127.0.0.1:{peer.port}",
        *("-p", "arms=baseline,batching", "-p", "trials=1", "-p", "max_tokens=8"),
        *("-p", "n_ctx=512", "-p", "beat_chunks=2"),
    )
    assert r.rc == 0, r.stderr[-3000:]
    run_dir = _run_dir(results_root)
    df = pd.read_parquet(run_dir / "final.parquet")
    assert set(df["peer"]) == {"live"}
    assert (df["beats"] > 0).all() and df["beat_ms"].notna().all()
    assert _expressions(peer.port) == {}  # the beats' expressions reset at the end
    peer.stop()
    assert _check_frames_against_log(df, log) == len(df)
    assert "Measured on a live avatar" in (run_dir / "final.md").read_text(encoding="utf-8")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM: unavailable on this OS")
def test_cpu_frame_budget_follows_the_attached_avatars_target_fps(cli, results_root):
    """A Python headless peer started by hand at 30 fps (stdin /dev/null, as `peer &` has it):
    the cpu phase judges its frames against 1000/30 + slack, not the -p fps=60 stand-in's."""
    cmd = [sys.executable, "-m", "mateperf.bridge.peer_main", "--port", "0", "--fps", "30"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(proc.stdout.readline())["port"]
        r = cli("run", "cpu", "--avatar", f"127.0.0.1:{port}", *SMALL_CPU, "-p", "fps=60")
        out = sigterm(proc)
    finally:
        reap(proc)
    assert r.rc == 0, r.stderr[-3000:]
    assert "frame budget at 30 fps (the attached avatar's target_fps)" in r.stderr
    assert json.loads(out.strip().splitlines()[-1])["event"] == "stopped"
    run_dir = _run_dir(results_root)
    df = pd.read_parquet(run_dir / "cpu.parquet")
    assert (df["frame_fps"] == 30.0).all() and (df["fps"] == 60.0).all()
    rec = json.loads((run_dir / "recommended.json").read_text(encoding="utf-8"))
    assert rec["frame_fps"] == 30.0
    assert rec["frame_fps_source"] == "the attached avatar's target_fps"
    assert rec["frame_budget_ms"] == pytest.approx(1000 / 30 + rec["frame_slack_ms"], abs=1e-3)
    assert rec["meets_frame_budget"] is not None
    md = (run_dir / "cpu.md").read_text(encoding="utf-8")
    assert "at 30 fps (the attached avatar's target_fps)" in md
