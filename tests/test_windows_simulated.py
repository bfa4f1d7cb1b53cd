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
import ctypes
import errno
import importlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from mateperf import llama_features, results
from mateperf.bridge import connection as connection_mod
from mateperf.bridge import peer as peer_mod
from mateperf.bridge import process
from mateperf.bridge.client import UnityBridge
from mateperf.errors import ParameterError
from mateperf.gpu import projection
from mateperf.phases import ipc
from mateperf.phases.cpu import analyse as cpu_analyse
from mateperf.thread_rules import heuristics
from mateperf.trackers import cpu, heap, process_memory
from mateperf.trackers.memory import MemorySampler

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20


# -- CPU topology: an i7-13700H (6 performance cores with SMT, 8 efficiency cores) -----------
#
# The buffer GetLogicalProcessorInformationEx(RelationProcessorCore, ...) fills on the companion's
# laptop, written from the Windows SDK's declarations (um/winnt.h), not from the parser's
# constants: ctypes lays the structures out as MSVC does for x64, and the offsets the parser
# relies on are asserted against the ones stated here.
#
#   typedef struct _GROUP_AFFINITY {          // 16 bytes on x64
#       KAFFINITY Mask;                       // +0, ULONG_PTR: 8 bytes on x64
#       WORD Group;                           // +8
#       WORD Reserved[3];                     // +10
#   } GROUP_AFFINITY;
#   typedef struct _PROCESSOR_RELATIONSHIP {  // 40 bytes with one group
#       BYTE Flags;                           // +0, LTP_PC_SMT (0x1): the core runs two threads
#       BYTE EfficiencyClass;                 // +1, higher = faster, less efficient (Win 10+)
#       BYTE Reserved[20];                    // +2
#       WORD GroupCount;                      // +22
#       GROUP_AFFINITY GroupMask[ANYSIZE_ARRAY];  // +24 (8-aligned: KAFFINITY)
#   } PROCESSOR_RELATIONSHIP;
#   typedef struct _SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX {
#       LOGICAL_PROCESSOR_RELATIONSHIP Relationship;  // +0, RelationProcessorCore = 0
#       DWORD Size;                                   // +4, this record's bytes: 48 here
#       union { PROCESSOR_RELATIONSHIP Processor; ... };  // +8
#   } SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX;
#
# So in a record: EfficiencyClass at 9, GroupCount at 30, the first Mask at 32, its Group at 40.

RELATION_PROCESSOR_CORE = 0  # winnt.h: LOGICAL_PROCESSOR_RELATIONSHIP
LTP_PC_SMT = 0x1
ERROR_INSUFFICIENT_BUFFER = 122


class GROUP_AFFINITY(ctypes.Structure):  # noqa: N801 - winnt.h's name
    _fields_ = [
        ("Mask", ctypes.c_uint64),
        ("Group", ctypes.c_uint16),
        ("Reserved", ctypes.c_uint16 * 3),
    ]


class PROCESSOR_RELATIONSHIP(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("Flags", ctypes.c_uint8),
        ("EfficiencyClass", ctypes.c_uint8),
        ("Reserved", ctypes.c_uint8 * 20),
        ("GroupCount", ctypes.c_uint16),
        ("GroupMask", GROUP_AFFINITY * 1),
    ]


class SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("Relationship", ctypes.c_uint32),
        ("Size", ctypes.c_uint32),
        ("Processor", PROCESSOR_RELATIONSHIP),
    ]


def _record(efficiency_class: int, cpus: list[int]) -> bytes:
    rec = SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX()
    rec.Relationship = RELATION_PROCESSOR_CORE
    rec.Size = ctypes.sizeof(rec)
    rec.Processor.Flags = LTP_PC_SMT if len(cpus) > 1 else 0
    rec.Processor.EfficiencyClass = efficiency_class
    rec.Processor.GroupCount = 1
    rec.Processor.GroupMask[0].Mask = sum(1 << c for c in cpus)
    rec.Processor.GroupMask[0].Group = 0
    return bytes(rec)


# Windows numbers the i7-13700H's logical CPUs as Linux does: the performance cores' two threads
# side by side (0-11, EfficiencyClass 1), then the efficiency cores (12-19, class 0).
I7_13700H_RECORDS = b"".join(
    [_record(1, [2 * i, 2 * i + 1]) for i in range(6)] + [_record(0, [12 + i]) for i in range(8)]
)


def test_the_fixture_follows_winnt_h():
    record = SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX
    assert ctypes.sizeof(record) == 48 and len(I7_13700H_RECORDS) == 14 * 48
    assert record.Processor.offset == 8
    assert record.Processor.offset + PROCESSOR_RELATIONSHIP.EfficiencyClass.offset == 9
    assert record.Processor.offset + PROCESSOR_RELATIONSHIP.GroupCount.offset == 30
    assert record.Processor.offset + PROCESSOR_RELATIONSHIP.GroupMask.offset == 32
    assert GROUP_AFFINITY.Group.offset == 8 and ctypes.sizeof(GROUP_AFFINITY) == 16
    # the first efficiency core's record, byte by byte: Relationship 0, Size 48, Flags 0,
    # EfficiencyClass 0, GroupCount 1, Mask 1 << 12, Group 0
    first_e = I7_13700H_RECORDS[6 * 48 : 7 * 48]
    assert first_e[:10] == bytes([0, 0, 0, 0, 48, 0, 0, 0, 0, 0])
    assert first_e[30:32] == b"\x01\x00" and first_e[32:40] == (1 << 12).to_bytes(8, "little")


def test_core_records_of_a_hybrid_laptop_are_parsed():
    cores = cpu.parse_processor_cores(I7_13700H_RECORDS)
    assert cores == [(1, [2 * i, 2 * i + 1]) for i in range(6)] + [(0, [c]) for c in range(12, 20)]
    kinds = cpu.core_kinds(cores)
    assert kinds["performance"] == list(range(12))
    assert kinds["efficiency"] == list(range(12, 20))
    assert cpu.core_kinds([(0, [0]), (0, [1])]) == {}  # one class: not hybrid


def _kernel32_serving(buffer: bytes) -> tuple[types.SimpleNamespace, list]:
    """A stand-in kernel32 whose GetLogicalProcessorInformationEx answers as Windows does
    (the size first, ERROR_INSUFFICIENT_BUFFER; then the records): Windows' own cannot be
    called on Linux. It is a real C function pointer, so the code's ctypes call (argtypes,
    byref, the buffer it allocates) runs as on Windows."""
    calls: list[tuple[int, bool, int]] = []

    def get_logical_processor_information_ex(relationship, out, length):
        calls.append((relationship, bool(out), length[0]))
        if relationship != RELATION_PROCESSOR_CORE:
            return 0
        if not out or length[0] < len(buffer):
            length[0] = len(buffer)
            return 0  # GetLastError() then says ERROR_INSUFFICIENT_BUFFER (see _windows_machine)
        ctypes.memmove(out, buffer, len(buffer))
        length[0] = len(buffer)
        return 1

    prototype = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
    )
    call = prototype(get_logical_processor_information_ex)
    return types.SimpleNamespace(GetLogicalProcessorInformationEx=call), calls


def _machine(monkeypatch, logical: int = 20) -> None:
    """Twenty logical CPUs, all in this process's mask (psutil's answer on Windows)."""
    monkeypatch.setattr(os, "cpu_count", lambda: logical)
    monkeypatch.setattr(psutil.Process, "cpu_affinity", lambda self, *a: list(range(logical)))
    monkeypatch.setattr(
        platform, "machine", lambda: "AMD64" if sys.platform == "win32" else "x86_64"
    )


def _windows_machine(monkeypatch, tmp_path, records: bytes | None = I7_13700H_RECORDS):
    """No /sys, no /proc, no sched_*affinity, no load average, os.name "nt"; kernel32 serves
    the records (None: a Windows whose kernel32 has no such call). Returns the calls made."""
    no_sys = tmp_path / "no-sys"
    real_smt, real_hybrid = cpu.smt_groups, cpu.hybrid_cores
    monkeypatch.setattr(cpu, "smt_groups", lambda: real_smt(no_sys))
    monkeypatch.setattr(cpu, "hybrid_cores", lambda: real_hybrid(no_sys))
    monkeypatch.setattr(sys, "platform", "win32")
    for name in ("sched_getaffinity", "sched_setaffinity", "getloadavg"):
        monkeypatch.delattr(os, name, raising=False)
    _machine(monkeypatch)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 14 if not logical else 20)
    kernel32, calls = _kernel32_serving(records or b"")
    dlls = {"kernel32": kernel32 if records is not None else types.SimpleNamespace()}
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, **kw: dlls[name], raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: ERROR_INSUFFICIENT_BUFFER, raising=False)
    return calls


def _detect_as_windows(monkeypatch) -> cpu.CpuTopology:
    with monkeypatch.context() as m:  # os.name only around the call: pathlib reads it too
        m.setattr(os, "name", "nt")
        return cpu.detect()


def test_windows_core_records_come_through_the_ctypes_call(monkeypatch, tmp_path):
    calls = _windows_machine(monkeypatch, tmp_path)
    topo = _detect_as_windows(monkeypatch)
    # asked for the size, then for the records, as the Windows SDK documents the call
    assert calls == [(RELATION_PROCESSOR_CORE, False, 0), (RELATION_PROCESSOR_CORE, True, 672)]
    assert topo.physical == 14
    assert topo.smt_groups == [[2 * i, 2 * i + 1] for i in range(6)] + [[c] for c in range(12, 20)]
    assert topo.performance_cpus == list(range(12))
    assert topo.efficiency_cpus == list(range(12, 20))
    assert topo.physical_usable == 6  # the six performance cores, not 20 logical CPUs
    assert (topo.os_platform, topo.arch) == ("win32", "AMD64")
    assert topo.notes["smt"] == topo.notes["hybrid"] == "GetLogicalProcessorInformationEx"
    assert topo.notes["affinity"] == "psutil"
    assert cpu.UNAVAILABLE in topo.notes["cgroup"]
    assert cpu.UNAVAILABLE in topo.notes["load_avg"]


def _linux_sys_tree(root: Path) -> tuple[Path, Path]:
    """/sys as Linux 6.x writes it on an i7-13700H: SMT siblings side by side, cpu_core and
    cpu_atom listing the performance and efficiency CPUs."""
    devices = root / "devices"
    for c in range(20):
        siblings = f"{c - c % 2}-{c - c % 2 + 1}" if c < 12 else str(c)
        topology = devices / "system" / "cpu" / f"cpu{c}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(siblings + "\n", encoding="utf-8")
    for kind, cpus in (("cpu_core", "0-11"), ("cpu_atom", "12-19")):
        (devices / kind).mkdir(parents=True)
        (devices / kind / "cpus").write_text(cpus + "\n", encoding="utf-8")
    return devices / "system" / "cpu", devices


def _linux_machine(monkeypatch, tmp_path) -> cpu.CpuTopology:
    sys_cpu, sys_devices = _linux_sys_tree(tmp_path / "sys")
    real_smt, real_hybrid = cpu.smt_groups, cpu.hybrid_cores
    monkeypatch.setattr(cpu, "smt_groups", lambda: real_smt(sys_cpu))
    monkeypatch.setattr(cpu, "hybrid_cores", lambda: real_hybrid(sys_devices))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(20)), raising=False)
    _machine(monkeypatch)
    return cpu.detect(cgroup_root=tmp_path / "no-cgroup", proc_cgroup="")


def test_llama_cpp_default_follows_each_os(monkeypatch, tmp_path):
    """llama.cpp's own default on the same i7-13700H: 14 threads on Windows (every physical
    core), 6 on Linux (one per performance core), as common/common.cpp computes it."""
    _windows_machine(monkeypatch, tmp_path)
    on_windows = _detect_as_windows(monkeypatch)
    monkeypatch.undo()
    on_linux = _linux_machine(monkeypatch, tmp_path)
    assert (on_linux.physical, on_linux.performance_cpus) == (14, list(range(12)))
    assert (on_linux.os_platform, on_linux.arch) == ("linux", "x86_64")
    found = {}
    for name, topo in (("windows", on_windows), ("linux", on_linux)):
        rules = {h.name: h for h in heuristics(topo)}
        found[name] = {n: h.on(topo.usable) for n, h in rules.items()}
        print(name, {n: h.n_threads for n, h in rules.items()})
    assert found["windows"]["llama.cpp default"] == (14, 14)
    assert found["linux"]["llama.cpp default"] == (6, 6)
    assert "efficiency cores included" in heuristics(on_windows)[2].reasoning
    for name in found:  # the rules that are not llama.cpp's read the same on both
        assert found[name]["usable physical cores"] == (6, 6)
        assert found[name]["llama-cpp-python default"] == (10, 20)
        assert found[name]["cores − 2 (original plan)"] == (18, 18)


def test_a_stored_run_reads_its_own_os(monkeypatch, tmp_path):
    """A report computes the candidates from the stored topology, so a Windows run read on
    Linux still says 14; runs stored before the topology recorded its OS read the fingerprint."""
    _windows_machine(monkeypatch, tmp_path)
    stored = _detect_as_windows(monkeypatch).as_dict()
    monkeypatch.undo()
    topo = cpu_analyse.topology_from({"fingerprint": {"cpu_topology": stored}})
    assert {h.name: h.n_threads for h in heuristics(topo)}["llama.cpp default"] == 14
    old = {k: v for k, v in stored.items() if k not in ("os_platform", "arch")}
    info = {"fingerprint": {"cpu_topology": old, "os": "Windows-10-10.0.22631-SP0"}}
    assert cpu_analyse.topology_from(info).os_platform == "win32"


def test_without_core_records_physical_cores_still_cap_the_threads(monkeypatch, tmp_path):
    """Where no per-core list exists (a kernel32 without the call, macOS), psutil's physical
    count caps the candidates instead of the 20 logical CPUs the issue saw."""
    _windows_machine(monkeypatch, tmp_path, records=None)
    topo = _detect_as_windows(monkeypatch)
    assert topo.physical == 14 and topo.notes["physical"] == "psutil"
    assert topo.physical_usable == 14
    assert cpu.UNAVAILABLE in topo.notes["smt"]
    assert {h.name: h.n_threads for h in heuristics(topo)}["llama.cpp default"] == 14


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


# The Windows process this fixture plays: stated numbers, not read from Linux. Its commit
# (private bytes) sits above its working set, as it does on Windows when pages are committed
# but not touched, so "rss - private" would be a negative, meaningless file-backed figure.
WINDOWS_WORKING_SET_MB = 250
WINDOWS_PRIVATE_MB = 300
ALLOCATED_MB = 96


class _WindowsCommit:
    """psutil's memory_info as Windows answers it, built from the stated numbers above plus the
    buffers the test says it committed (`commit`), never from this process's Linux figures."""

    def __init__(self, shape):
        self.shape = shape
        self.committed: list[np.ndarray] = []

    def commit(self, mib: int) -> None:
        self.committed.append(np.ones(mib * MB, dtype=np.uint8))

    def release(self) -> None:
        self.committed.clear()

    def memory_info(self, process=None):
        extra = sum(block.nbytes for block in self.committed)
        rss = WINDOWS_WORKING_SET_MB * MB + extra
        if self.shape is _MacMem:
            return _MacMem(rss, 4 * rss, 0, 0)
        private = WINDOWS_PRIVATE_MB * MB + extra
        return _WindowsMem(rss, private, 0, 0, rss, 0, 0, 0, 0, private, 0, private)


def _windows_memory(monkeypatch, tmp_path, shape=_WindowsMem) -> _WindowsCommit:
    """/proc taken away and psutil answering with Windows' fields and the stated numbers."""
    windows = _WindowsCommit(shape)
    monkeypatch.setattr(process_memory, "PROC_SELF", str(tmp_path / "no-proc"))
    monkeypatch.setattr(psutil.Process, "memory_info", lambda self: windows.memory_info(self))
    monkeypatch.setattr(heap, "_MALLINFO2", None)
    monkeypatch.setattr(heap, "HEAP_STATUS", heap.HEAP_UNAVAILABLE)
    return windows


def test_memory_sampler_on_windows_reads_private_bytes(monkeypatch, tmp_path):
    windows = _windows_memory(monkeypatch, tmp_path)
    assert process_memory.rss_status() == process_memory.RSS_FROM_PRIVATE
    assert "psutil private bytes" in process_memory.RSS_FROM_PRIVATE
    with MemorySampler(interval_ms=10, gpu=False) as sampler:
        sampler.mark("before")
        windows.commit(ALLOCATED_MB)  # a known answer: 96 MiB committed by this test
        sampler.mark("after")
        windows.release()
        sampler.mark("released")
    df = sampler.frame()
    marks = df[df["record"] == "marker"].set_index("label")
    # the anonymous figure is the private bytes, to the MiB, before, after and once released
    assert marks.loc["before", "rss_anon_mb"] == WINDOWS_PRIVATE_MB
    assert marks.loc["after", "rss_anon_mb"] == WINDOWS_PRIVATE_MB + ALLOCATED_MB
    assert marks.loc["released", "rss_anon_mb"] == WINDOWS_PRIVATE_MB
    assert marks.loc["after", "rss_mb"] == WINDOWS_WORKING_SET_MB + ALLOCATED_MB
    # every reading, sampled or marked, came from the fixture's figures (a garbage collection's
    # row carries none: it is no reading)
    samples = df[~df["record"].isin(["marker", "gc"])]
    assert len(samples) and set(samples["rss_anon_mb"]) <= {
        WINDOWS_PRIVATE_MB,
        WINDOWS_PRIVATE_MB + ALLOCATED_MB,
    }
    for rows in (marks, samples):  # commit above the working set, not clipped to it
        assert (rows["rss_anon_mb"] > rows["rss_mb"]).all()
    # working set minus commit is no figure: NaN, and the stored status names source and reason
    assert df["rss_file_mb"].isna().all()
    assert set(df["rss_status"]) == {process_memory.RSS_FROM_PRIVATE}
    assert "file-backed RSS unavailable on this OS" in process_memory.RSS_FROM_PRIVATE
    assert df["heap_used_mb"].isna().all()
    assert set(df["heap_status"]) == {heap.HEAP_UNAVAILABLE}
    assert "unavailable on this OS" in heap.HEAP_UNAVAILABLE


def test_memory_without_any_anonymous_source_says_so(monkeypatch, tmp_path):
    _windows_memory(monkeypatch, tmp_path, shape=_MacMem)
    assert process_memory.rss_status() == process_memory.RSS_ANON_UNAVAILABLE
    assert "unavailable on this OS" in process_memory.RSS_ANON_UNAVAILABLE
    rss, anon, file_backed = process_memory.read_rss()
    assert rss == WINDOWS_WORKING_SET_MB and np.isnan(anon) and np.isnan(file_backed)


# -- durable writes: fsync needs a handle opened for writing on Windows ---------------------


def test_atomic_writes_fsync_only_writable_handles(monkeypatch, tmp_path):
    """Windows' FlushFileBuffers refuses a read-only handle (EBADF); Linux accepts it, so
    os.fsync is wrapped to refuse as Windows does, with the real access mode of the fd."""
    real_fsync = os.fsync
    synced = []
    try:  # POSIX only: on Windows itself os.fsync is already FlushFileBuffers, used as is
        fcntl = importlib.import_module("fcntl")
    except ImportError:
        fcntl = None

    def windows_fsync(fd):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        synced.append(fd)
        real_fsync(fd)

    if fcntl is not None:
        monkeypatch.setattr(os, "fsync", windows_fsync)
    results.atomic_write_parquet(tmp_path / "t.parquet", pd.DataFrame({"ttft_ms": [1.0, 2.0]}))
    results.atomic_write_text(tmp_path / "t.md", "cores − 2 → 6 µs\n")
    assert pd.read_parquet(tmp_path / "t.parquet")["ttft_ms"].tolist() == [1.0, 2.0]
    assert (tmp_path / "t.md").read_text(encoding="utf-8") == "cores − 2 → 6 µs\n"
    assert len(synced) == (2 if fcntl is not None else 0)


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
    monkeypatch.setattr(connection_mod, "_DONTWAIT", 0)
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


# -- the test command itself: every module collects without fcntl, resource or Mono ----------


def test_the_whole_suite_collects_as_on_windows(tmp_path):
    """`python -m pytest` on Windows stops at the first module that cannot be imported: with
    the POSIX-only modules unimportable from this repository and no Mono on PATH
    (scripts/collect_as_windows.py), every test module must still collect."""
    no_tools = tmp_path / "bin"
    no_tools.mkdir()
    env = {**os.environ, "PATH": str(no_tools)}
    script = REPO / "scripts" / "collect_as_windows.py"
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    summary = result.stdout.strip().splitlines()[-1]
    print(result.stdout.splitlines()[0], "|", summary)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no Mono on PATH" in result.stdout
    assert re.fullmatch(r"\d+ tests collected in [\d.]+s", summary), summary
    assert int(summary.split()[0]) > 500


# -- os.name "nt": the Windows branches of the bridge and the GPU projection ------------------


class _ExclusiveOnlySocket(socket.socket):
    """Linux has no SO_EXCLUSIVEADDRUSE: this socket records the option and does not pass it
    to the kernel, where a listening socket without SO_REUSEADDR is already exclusive. Every
    other call is the real socket's."""

    options: list[tuple[int, int, int]] = []

    def setsockopt(self, level, option, value, *rest):
        if option == _SO_EXCLUSIVEADDRUSE:
            self.options.append((level, option, value))
            return None
        return super().setsockopt(level, option, value, *rest)


_SO_EXCLUSIVEADDRUSE = ~socket.SO_REUSEADDR  # winsock2.h: ((int)(~SO_REUSEADDR)), i.e. -5


def test_the_peer_listens_exclusively_on_windows(monkeypatch):
    _ExclusiveOnlySocket.options = []
    with monkeypatch.context() as m:
        m.setattr(os, "name", "nt")
        m.setattr(socket, "SO_EXCLUSIVEADDRUSE", _SO_EXCLUSIVEADDRUSE, raising=False)
        m.setattr(socket, "socket", _ExclusiveOnlySocket)
        first = connection_mod.listen("127.0.0.1", 0)
        port = first.getsockname()[1]
        with pytest.raises(OSError) as taken:  # a second peer on the same port is refused
            connection_mod.listen("127.0.0.1", port)
    try:
        assert _ExclusiveOnlySocket.options == [(socket.SOL_SOCKET, _SO_EXCLUSIVEADDRUSE, 1)] * 2
        assert taken.value.errno == errno.EADDRINUSE
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        client = socket.create_connection(("127.0.0.1", port), timeout=5)  # it does listen
        accepted, _ = first.accept()
        accepted.close()
        client.close()
    finally:
        first.close()


def test_a_built_peer_starts_as_windows_starts_it(monkeypatch):
    exe, dll = Path("C:/mateperf/MatePeer.exe"), Path("C:/mateperf/MatePeer.dll")
    with monkeypatch.context() as m:
        m.setattr(os, "name", "nt")
        assert process.csharp_peer_command(exe) == [str(exe)]  # an .exe runs as itself
        assert process.csharp_peer_command(dll) == ["dotnet", str(dll)]
    assert process.csharp_peer_command(exe)[0] == "mono"


def test_the_projection_library_loads_with_windows_dll_folders(monkeypatch):
    """On Windows the common library's dependencies (llama.dll, ggml*.dll) are found only in
    folders added with os.add_dll_directory, which Linux does not have: recorded here; then
    the real library is loaded (by this OS's loader: LoadLibrary cannot run here) and its
    common_fit_print looked up."""
    pytest.importorskip("llama_cpp")  # loads llama and ggml first, as the projection's child does
    library = llama_features.common_library()
    if library is None:
        pytest.skip("no llama-common library in this llama-cpp-python build")
    candidates = projection.candidate_libraries()
    added: list[str] = []
    monkeypatch.setattr(llama_features, "common_library", lambda: library)
    monkeypatch.setattr(projection, "candidate_libraries", lambda: candidates)
    monkeypatch.setattr(os, "add_dll_directory", added.append, raising=False)
    real_os_name = os.name

    def load_with_this_os_loader(name):  # LoadLibrary cannot run here: dlopen loads it
        with monkeypatch.context() as loader:
            loader.setattr(os, "name", real_os_name)
            return ctypes.CDLL(name)

    windows_ctypes = types.SimpleNamespace(CDLL=load_with_this_os_loader)
    with monkeypatch.context() as m:
        m.setattr(os, "name", "nt")
        lib_path, fit_print, why = projection._load_fit_print(windows_ctypes)
    assert (lib_path, why) == (library, "")
    assert callable(fit_print)
    folders = {str(p.parent) for p in [library, *candidates] if p.parent.is_dir()}
    assert sorted(added) == sorted(folders) and str(library.parent) in added


# -- the measurement lock through filelock's Windows class ----------------------------------


def test_the_lock_on_windows_is_filelocks_windows_class(tmp_path):
    """On Windows filelock's FileLock is its WindowsFileLock (LockFileEx on the handle msvcrt
    gives it), which measurement_lock takes; two real processes then wait for each other.
    Only where msvcrt imports: the class is not defined elsewhere (not run on Linux)."""
    pytest.importorskip("msvcrt", reason="filelock's Windows lock needs msvcrt: Windows only")
    import filelock

    assert filelock.FileLock is filelock.WindowsFileLock
    test_measurement_lock_works_without_fcntl(tmp_path)
