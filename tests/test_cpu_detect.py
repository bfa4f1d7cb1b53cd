"""CPU detection: affinity masks, cgroup quotas, SMT and hybrid cores, and the usual rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mateperf.thread_rules import heuristics
from mateperf.trackers import cpu


def test_cpu_list_format():
    assert cpu.parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert cpu.parse_cpu_list("5") == [5]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="affinity masks: Linux only")
def test_detection_follows_a_restricted_affinity_mask():
    """A child process pinned to one CPU detects one usable CPU, as `taskset -c` users see."""
    first = min(os.sched_getaffinity(0))
    code = (
        "import json, os\n"
        f"os.sched_setaffinity(0, {{{first}}})\n"
        "from mateperf.trackers.cpu import detect\n"
        "from mateperf.thread_rules import heuristics\n"
        "t = detect()\n"
        "print(json.dumps({'topo': t.as_dict(), "
        "'rules': {h.name: h.on(t.usable) for h in heuristics(t)}}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    got = json.loads(out)
    assert got["topo"]["affinity"] == [first]
    assert got["topo"]["usable"] == 1
    assert got["topo"]["physical_usable"] == 1
    assert got["topo"]["logical"] == os.cpu_count()  # the machine did not shrink, the mask did
    assert all(tuple(v) == (1, 1) for v in got["rules"].values())


def _cgroup(tmp_path, files: dict[str, str]):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_cgroup_v2_quota_of_the_own_group(tmp_path):
    root = _cgroup(tmp_path, {"cpu.max": "max 100000\n", "app/cpu.max": "150000 100000\n"})
    quota, note = cpu.cgroup_quota(root, "0::/app\n")
    assert quota == 1.5
    assert "app" in note


def test_cgroup_v2_smallest_quota_on_the_path_wins(tmp_path):
    root = _cgroup(
        tmp_path,
        {"a/cpu.max": "50000 100000\n", "a/b/cpu.max": "300000 100000\n", "cpu.max": "max"},
    )
    quota, _ = cpu.cgroup_quota(root, "0::/a/b\n")
    assert quota == 0.5
    topo = cpu.detect(root, "0::/a/b\n")
    assert topo.cgroup_quota_cpus == 0.5
    assert topo.usable == 1  # half a CPU still runs one thread


def test_cgroup_v2_unlimited(tmp_path):
    root = _cgroup(tmp_path, {"cpu.max": "max 100000\n"})
    assert cpu.cgroup_quota(root, "0::/\n") == (None, "cgroup: no CPU quota")


def test_cgroup_v1_quota(tmp_path):
    root = _cgroup(
        tmp_path,
        {
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/job/cpu.cfs_quota_us": "200000\n",
            "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
        },
    )
    quota, _ = cpu.cgroup_quota(root, "4:cpu,cpuacct:/job\n0::/\n")
    assert quota == 2.0


def test_no_cgroup_controller(tmp_path):
    quota, note = cpu.cgroup_quota(tmp_path, "")
    assert quota is None and "no CPU controller" in note


def _hybrid_laptop(**overrides) -> cpu.CpuTopology:
    """A 6P+4E laptop CPU: 6 performance cores with SMT (CPUs 0-11), 4 efficiency (12-15)."""
    fields = dict(
        logical=16,
        physical=10,
        affinity=list(range(16)),
        cgroup_quota_cpus=None,
        smt_groups=[[2 * i, 2 * i + 1] for i in range(6)] + [[c] for c in range(12, 16)],
        performance_cpus=list(range(12)),
        efficiency_cpus=list(range(12, 16)),
        os_platform="linux",
        arch="x86_64",
    )
    fields.update(overrides)
    return cpu.CpuTopology(**fields)


def test_rules_on_a_hybrid_laptop():
    topo = _hybrid_laptop()
    rules = {h.name: (h.n_threads, h.n_threads_batch) for h in heuristics(topo)}
    assert rules["original (hard-coded 6)"] == (6, 6)
    assert rules["cores − 2 (original plan)"] == (14, 14)
    assert rules["llama.cpp default"] == (6, 6)  # performance cores, SMT siblings counted once
    assert rules["llama-cpp-python default"] == (8, 16)
    assert rules["usable physical cores"] == (6, 6)
    assert topo.usable == 16 and topo.smt


def test_rules_follow_mask_and_quota_only_where_they_look():
    topo = _hybrid_laptop(affinity=[0, 1, 2, 3, 12], cgroup_quota_cpus=3.0)
    assert topo.usable == 3
    assert topo.physical_usable == 2  # cores {0,1} and {2,3}; the efficiency core left out
    by_name = {h.name: h for h in heuristics(topo)}
    # llama.cpp's rule ignores both the mask and the quota: 6, clamped to 3 on this process
    assert by_name["llama.cpp default"].n_threads == 6
    assert by_name["llama.cpp default"].on(topo.usable) == (3, 3)


def test_this_machine_is_described_with_sources():
    topo = cpu.detect()
    d = topo.as_dict()
    assert d["usable"] >= 1 and d["logical"] >= d["usable"]
    for key in ("affinity", "cgroup", "smt", "hybrid", "load_avg"):
        assert d["notes"][key], key
