"""Windows, simulated on Linux: what the companion's developers meet, minus Windows itself.

CI has no Windows machine, so each test takes away one thing Windows does not have (/proc,
fcntl, glibc's mallinfo2, sched_*affinity, MSG_DONTWAIT, psutil's `shared`) or gives what only
Windows gives (psutil's `private`, GetLogicalProcessorInformationEx's core records), then runs
the real code on top and checks that each instrument either measures or says what it could not.
Every stand-in is named as such where it is made; nothing here ran on Windows itself.
"""

from __future__ import annotations

import ast
import collections
import errno
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from mateperf import results
from mateperf.bridge import peer as peer_mod
from mateperf.bridge.client import UnityBridge
from mateperf.errors import ParameterError
from mateperf.phases import ipc
from mateperf.trackers import cpu
from mateperf.trackers import memory as mem

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20


# -- CPU topology: an i7-13700H (6 performance cores with SMT, 8 efficiency cores) -----------


def _core_record(efficiency: int, cpus: list[int]) -> bytes:
    """One RelationProcessorCore record as 64-bit Windows lays it out (48 bytes, one group)."""
    mask = sum(1 << c for c in cpus)
    smt_flag = 1 if len(cpus) > 1 else 0
    body = struct.pack("<BB20xH", smt_flag, efficiency, 1) + struct.pack("<QH6x", mask, 0)
    return struct.pack("<II", cpu.RELATION_PROCESSOR_CORE, 8 + len(body)) + body


def _i7_13700h_buffer() -> bytes:
    p_cores = [_core_record(1, [2 * i, 2 * i + 1]) for i in range(6)]  # logical 0-11
    e_cores = [_core_record(0, [12 + i]) for i in range(8)]  # logical 12-19
    return b"".join(p_cores + e_cores)


def test_core_records_of_a_hybrid_laptop_are_parsed():
    cores = cpu.parse_processor_cores(_i7_13700h_buffer())
    assert len(cores) == 14
    kinds = cpu.core_kinds(cores)
    assert kinds["performance"] == list(range(12))
    assert kinds["efficiency"] == list(range(12, 20))
    assert cpu.core_kinds([(0, [0]), (0, [1])]) == {}  # one class: not hybrid


def _windows_machine(monkeypatch, tmp_path, cores=None, logical=20):
    """No /sys, no /proc, no sched_*affinity, no load average; psutil and (stand-in) Windows'
    core records instead. The core list is what GetLogicalProcessorInformationEx would return
    on the companion's laptop: it cannot be called on Linux."""
    no_sys = tmp_path / "no-sys"
    real_smt, real_hybrid = cpu.smt_groups, cpu.hybrid_cores
    monkeypatch.setattr(cpu, "smt_groups", lambda: real_smt(no_sys))
    monkeypatch.setattr(cpu, "hybrid_cores", lambda: real_hybrid(no_sys))
    monkeypatch.setattr(sys, "platform", "win32")
    for name in ("sched_getaffinity", "sched_setaffinity", "getloadavg"):
        monkeypatch.delattr(os, name, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: logical)
    monkeypatch.setattr(psutil.Process, "cpu_affinity", lambda self, *a: list(range(logical)))
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 14 if not logical else 20)
    found = (cores, "GetLogicalProcessorInformationEx") if cores else (None, "unavailable")
    monkeypatch.setattr(cpu, "windows_cores", lambda: found)


def test_thread_candidates_use_performance_cores_on_windows(monkeypatch, tmp_path):
    _windows_machine(monkeypatch, tmp_path, cores=cpu.parse_processor_cores(_i7_13700h_buffer()))
    topo = cpu.detect()
    assert topo.physical == 14
    assert topo.performance_cpus == list(range(12))
    assert topo.efficiency_cpus == list(range(12, 20))
    assert topo.physical_usable == 6  # the six performance cores, not 20 logical CPUs
    rules = {h.name: h.on(topo.usable) for h in cpu.heuristics(topo)}
    assert rules["usable physical cores"] == (6, 6)
    assert rules["llama.cpp default"] == (6, 6)
    assert topo.notes["smt"] == topo.notes["hybrid"] == "GetLogicalProcessorInformationEx"
    assert topo.notes["affinity"] == "psutil"
    assert cpu.UNAVAILABLE in topo.notes["cgroup"]
    assert cpu.UNAVAILABLE in topo.notes["load_avg"]


def test_without_core_records_physical_cores_still_cap_the_threads(monkeypatch, tmp_path):
    """Where no per-core list exists (an older Windows, macOS), psutil's physical count caps
    the candidates instead of the 20 logical CPUs the issue saw."""
    _windows_machine(monkeypatch, tmp_path, cores=None)
    topo = cpu.detect()
    assert topo.physical == 14 and topo.notes["physical"] == "psutil"
    assert topo.physical_usable == 14
    assert cpu.UNAVAILABLE in topo.notes["smt"]


# -- affinity: pin_cpu through psutil, or one line where the OS cannot -----------------------


def test_pin_cpu_goes_through_psutil_without_sched_affinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.delattr(os, "sched_setaffinity")
    before = psutil.Process().cpu_affinity()
    ipc.IpcParams(pin_cpu=before[0])
    try:
        cpu.set_affinity({before[0]})  # real: psutil sets the mask on this Linux process
        assert psutil.Process().cpu_affinity() == [before[0]]
    finally:
        cpu.set_affinity(before)
    assert psutil.Process().cpu_affinity() == before


def test_pin_cpu_where_the_os_cannot_pin_is_bad_input(monkeypatch):
    """macOS: no sched_setaffinity and psutil without cpu_affinity."""
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.delattr(os, "sched_setaffinity")
    monkeypatch.delattr(psutil.Process, "cpu_affinity")
    with pytest.raises(ParameterError, match="pin_cpu=0: pinning to a CPU is unavailable on"):
        ipc.IpcParams(pin_cpu=0)
    ipc.IpcParams(pin_cpu=-1)  # not pinning needs nothing
    with pytest.raises(cpu.AffinityUnavailable):
        cpu.set_affinity({0})


# -- memory: private bytes instead of NaN; no heap figure, said so --------------------------

_WindowsMem = collections.namedtuple(
    "pmem",
    "rss vms num_page_faults peak_wset wset peak_paged_pool paged_pool peak_nonpaged_pool "
    "nonpaged_pool pagefile peak_pagefile private",
)
_MacMem = collections.namedtuple("pmem", "rss vms pfaults pageins")


def _windows_memory(monkeypatch, tmp_path, shape=_WindowsMem):
    """/proc taken away and psutil answering with Windows' fields. The numbers are this
    process's real ones (private = rss - shared, what Linux can tell), only the shape is
    Windows', so a real allocation must show in them."""
    real = psutil.Process.memory_info

    def windows_memory_info(self):
        info = real(self)
        if shape is _WindowsMem:
            private = info.rss - info.shared
            return _WindowsMem(info.rss, info.vms, 0, 0, info.rss, 0, 0, 0, 0, private, 0, private)
        return _MacMem(info.rss, info.vms, 0, 0)

    monkeypatch.setattr(mem, "PROC_SELF", str(tmp_path / "no-proc"))
    monkeypatch.setattr(psutil.Process, "memory_info", windows_memory_info)
    monkeypatch.setattr(mem, "_MALLINFO2", None)
    monkeypatch.setattr(mem, "HEAP_STATUS", mem.HEAP_UNAVAILABLE)


def test_memory_sampler_on_windows_reads_private_bytes(monkeypatch, tmp_path):
    _windows_memory(monkeypatch, tmp_path)
    assert mem.rss_status() == mem.RSS_FROM_PRIVATE
    with mem.MemorySampler(interval_ms=10, gpu=False) as sampler:
        sampler.mark("before")
        block = np.ones(96 * MB, dtype=np.uint8)  # a known answer: 96 MiB of private pages
        sampler.mark("after")
        del block
    df = sampler.frame()
    marks = df[df["record"] == "marker"].set_index("label")
    grew = marks.loc["after", "rss_anon_mb"] - marks.loc["before", "rss_anon_mb"]
    assert 90 <= grew <= 110, grew
    assert df["rss_anon_mb"].notna().all()
    assert df["heap_used_mb"].isna().all()
    assert set(df["rss_status"]) == {mem.RSS_FROM_PRIVATE}
    assert set(df["heap_status"]) == {mem.HEAP_UNAVAILABLE}
    assert "unavailable on this OS" in mem.HEAP_UNAVAILABLE


def test_memory_without_any_anonymous_source_says_so(monkeypatch, tmp_path):
    _windows_memory(monkeypatch, tmp_path, shape=_MacMem)
    assert mem.rss_status() == mem.RSS_ANON_UNAVAILABLE
    assert "unavailable on this OS" in mem.RSS_ANON_UNAVAILABLE
    rss, anon, file_backed = mem.read_rss()
    assert rss > 0 and np.isnan(anon) and np.isnan(file_backed)


# -- durable writes: fsync needs a handle opened for writing on Windows ---------------------


def test_atomic_writes_fsync_only_writable_handles(monkeypatch, tmp_path):
    """Windows' FlushFileBuffers refuses a read-only handle (EBADF); Linux accepts it, so
    os.fsync is wrapped to refuse as Windows does, with the real access mode of the fd."""
    real_fsync = os.fsync
    synced = []

    def windows_fsync(fd):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", windows_fsync)
    results.atomic_write_parquet(tmp_path / "t.parquet", pd.DataFrame({"ttft_ms": [1.0, 2.0]}))
    results.atomic_write_text(tmp_path / "t.md", "cores − 2 → 6 µs\n")
    assert pd.read_parquet(tmp_path / "t.parquet")["ttft_ms"].tolist() == [1.0, 2.0]
    assert (tmp_path / "t.md").read_text(encoding="utf-8") == "cores − 2 → 6 µs\n"
    assert len(synced) == 2


# -- the measurement lock without fcntl ------------------------------------------------------

_HOLD = textwrap.dedent(
    """
    import sys, time
    sys.modules["fcntl"] = None  # as on Windows: importing fcntl fails
    from pathlib import Path
    from mateperf.runner.lock import measurement_lock
    import warnings
    warnings.simplefilter("ignore")  # filelock warns that only its soft lock is left
    with measurement_lock(Path(sys.argv[1])):
        print("holding", time.monotonic(), flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", time.monotonic(), flush=True)
    """
)


def test_measurement_lock_works_without_fcntl(tmp_path):
    """Two real processes with fcntl unimportable: the second waits for the first and says so
    (filelock then takes its portable lock; on Windows it takes msvcrt's, not run here)."""
    cmd = [sys.executable, "-c", _HOLD, str(tmp_path)]
    first = subprocess.Popen([*cmd, "8"], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().startswith("holding")
    second = subprocess.run([*cmd, "0"], capture_output=True, text=True, timeout=60)
    first_out, _ = first.communicate(timeout=60)
    released_first = float(first_out.split()[1])
    took_second = float(second.stdout.split()[1])
    assert first.returncode == second.returncode == 0, second.stderr
    assert took_second >= released_first
    assert "waiting for another measurement (pid" in second.stderr


# -- the bridge peer without MSG_DONTWAIT ----------------------------------------------------


def test_peer_never_blocks_its_main_thread_without_msg_dontwait(monkeypatch):
    """Windows has no MSG_DONTWAIT: every ack then goes through the writer thread. A client
    that stops reading is still dropped, the frame loop keeps ticking, another client is
    answered."""
    monkeypatch.setattr(peer_mod, "_DONTWAIT", 0)
    peer = peer_mod.FramePacedPeer(fps=60, max_ack_buffer_bytes=64 * 1024)
    loop = threading.Thread(target=peer.serve_forever, daemon=True)
    loop.start()
    try:
        silent = socket.create_connection((peer.host, peer.port))
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        line = json.dumps({"command": "set_expression", "data": {"name": "happy", "value": 1}})
        chunk = (line + "\n").encode() * 5000  # ~0.4 MB of requests, acks never read
        silent.settimeout(10)
        # Keep sending until the peer drops this client: the kernel's loopback buffers take
        # megabytes of unread acks first, how many depends on the host's TCP autotuning.
        deadline = time.monotonic() + 60
        while peer.counters.as_dict().get("dropped_clients", 0) < 1:
            assert time.monotonic() < deadline, peer.counters.as_dict()
            try:
                silent.sendall(chunk)
            except OSError:
                time.sleep(0.05)  # dropped mid-send: what the bound is for
        frame_before = peer.frame
        bridge = UnityBridge(port=peer.port).connect()
        try:
            acks = [bridge.request("set_expression", {"name": "sad", "value": 0.5})]
            acks += [bridge.request("reset_expressions", {}) for _ in range(5)]
            assert [a.command for a in acks][:1] == ["set_expression"]
        finally:
            bridge.close()
        assert peer.frame > frame_before
        silent.close()
    finally:
        peer.stop()
        loop.join(timeout=10)


# -- text: UTF-8 files whatever the code page, a console that never fails on "−" -------------


def _text_io_without_encoding(tree: ast.AST) -> list[int]:
    """Lines of read_text()/write_text(x)/open(path[, text mode]) calls with no encoding."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        kwargs = {k.arg for k in node.keywords}
        if "encoding" in kwargs:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "read_text" and not node.args:
            lines.append(node.lineno)
        elif name == "write_text" and len(node.args) == 1 and isinstance(func, ast.Attribute):
            lines.append(node.lineno)
        elif name == "open" and isinstance(func, ast.Name):
            mode = node.args[1] if len(node.args) > 1 else None
            mode_kw = [k.value for k in node.keywords if k.arg == "mode"]
            mode = mode or (mode_kw[0] if mode_kw else None)
            text = mode is None or (isinstance(mode, ast.Constant) and "b" not in mode.value)
            if text:
                lines.append(node.lineno)
    return lines


def test_text_files_are_read_and_written_as_utf8():
    """On a cp1252/cp932 code page, text I/O without an encoding garbles or fails."""
    offenders = []
    for path in sorted((REPO / "mateperf").rglob("*.py")) + sorted(
        (REPO / "benchmarks").rglob("*.py")
    ):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{path.relative_to(REPO)}:{n}" for n in _text_io_without_encoding(tree)]
    assert not offenders, offenders


def test_console_on_a_legacy_code_page_does_not_fail(tmp_path):
    """Output redirected on Windows is encoded with the ANSI code page: simulated with
    PYTHONIOENCODING=cp1252, the real `mateperf` entry point must not raise on "−"."""
    code = (
        "import sys\nfrom mateperf import cli\ncli._console_never_fails_on_unicode()\n"
        "print('cores \\u2212 2 \\u2192 6 threads')\n"
    )
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == b"cores ? 2 ? 6 threads"
    cli = subprocess.run(
        [sys.executable, "-m", "mateperf", "run", "cpu", "--help"],
        capture_output=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr
