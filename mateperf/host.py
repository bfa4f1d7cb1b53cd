"""Host fingerprint: what machine, build and code produced a number.

Every run stores this in run.json, and every report prints it, because a figure means nothing
without the CPU, thread budget, GPU and build it came from.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import psutil

import mateperf

REPO_ROOT = Path(mateperf.__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_affinity() -> list[int]:
    return cpu_topology().allowed


def cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup (quota / period), or None when unlimited or unknown."""
    return cpu_topology().cgroup_quota_cpus


def usable_cpus() -> int:
    """The CPUs this process may really use: affinity, capped by the cgroup quota."""
    return cpu_topology().usable


def cpu_topology():
    from mateperf.trackers.cpu import detect

    return detect()


def gpus() -> dict:
    """NVIDIA GPUs via NVML (the one reader, mateperf.trackers.gpu), or count 0 and why not."""
    from mateperf.trackers.gpu import inventory

    return inventory()


def llama_info() -> dict:
    """The llama-cpp-python in use, whatever its build (mateperf's own or the companion's):
    version, where it is, build kind (CUDA, Metal, CPU, ...: llama.cpp's own system info),
    GPU offload, the flags scripts/setup.sh built it with (where it did), and which llama.cpp
    features mateperf uses it lacks (mateperf.llama_features)."""
    from mateperf import llama_features

    version = llama_features.installed_version()
    info: dict = {
        "version": version,
        "minimum_version": llama_features.MINIMUM_VERSION,
        "supported": llama_features.version_problem(version) or "yes",
        "location": "",
        "build": "unknown",
        "system_info": "",
        "gpu_offload": False,
        "unavailable": {},
    }
    try:
        import llama_cpp

        info["location"] = str(Path(llama_cpp.__file__).parent)
        info["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
        info["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        info["build"] = llama_features.build_kind(info["system_info"], info["gpu_offload"])
        info["unavailable"] = llama_features.unavailable(llama_cpp)
    except Exception as exc:  # a broken build must still let `mateperf info` report it
        info["system_info"] = f"unavailable: {exc}"
        info["unavailable"] = llama_features.unavailable()
    args_file = Path(sys.prefix) / "mateperf-llama-cmake-args.txt"
    info["cmake_args"] = (
        args_file.read_text(encoding="utf-8").strip()
        if args_file.exists()
        else "unknown (not built by scripts/setup.sh: your own build)"
    )
    return info


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_budget(topo=None) -> dict:
    """The CPU and the share of it this process may use: what a thread recommendation is valid
    for. Cheap (no git, no NVML), so a recommendation can be checked wherever it is loaded."""
    topo = topo or cpu_topology()
    return {
        "cpu_model": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "affinity": topo.allowed,
        "cgroup_cpu_quota": topo.cgroup_quota_cpus,
        "usable_cpus": topo.usable,
    }


def fingerprint() -> dict:
    vm = psutil.virtual_memory()
    topo = cpu_topology()
    return {
        "hostname": platform.node(),
        "cores_physical": psutil.cpu_count(logical=False),
        **cpu_budget(topo),
        "cpu_topology": topo.as_dict(),
        "ram_total_mb": round(vm.total / 2**20, 1),
        "gpus": gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp": llama_info(),
        "versions": {
            name: _version(name) for name in ("pandas", "numpy", "papermill", "nvidia-ml-py")
        },
        "mateperf": mateperf.__version__,
        "git_commit": git_commit(),
    }


def same_host(a: dict, b: dict) -> list[str]:
    """Fingerprint fields that differ in ways that make timings incomparable."""
    keys = ("hostname", "cpu_model", "cores_logical", "usable_cpus", "ram_total_mb")
    diffs = [k for k in keys if a.get(k) != b.get(k)]
    if a.get("gpus", {}).get("devices") != b.get("gpus", {}).get("devices"):
        diffs.append("gpus")
    if a.get("llama_cpp", {}).get("system_info") != b.get("llama_cpp", {}).get("system_info"):
        diffs.append("llama_cpp.system_info")
    return diffs


def format_llama(info: dict) -> list[str]:
    """The llama-cpp-python lines of a fingerprint (older run.json files lack the newer keys)."""
    lines = [
        f"llama-cpp-python {info['version']} ({info.get('build', 'build unknown')}), GPU offload "
        f"{'yes' if info['gpu_offload'] else 'no'}; build flags: "
        f"{info.get('cmake_args', 'unknown')}",
        f"llama.cpp system info: {info['system_info']}",
    ]
    if info.get("supported", "yes") != "yes":
        lines.append(f"llama-cpp-python: {info['supported']}")
    if "unavailable" in info:  # run.json files before mateperf.llama_features lack it
        lines += list(info["unavailable"].values()) or [
            f"llama.cpp features: every one mateperf uses is available "
            f"(oldest supported llama-cpp-python: {info.get('minimum_version', '?')})"
        ]
    return lines


def format_fingerprint(fp: dict) -> str:
    g = fp.get("gpus", {})
    gpu_text = (
        ", ".join(f"{d['name']} ({d['memory_total_mb']:.0f} MiB)" for d in g.get("devices", []))
        if g.get("count")
        else f"none ({g.get('reason', 'unknown')})"
    )
    quota = fp.get("cgroup_cpu_quota")
    lines = [
        f"CPU: {fp['cpu_model']}, {fp['cores_physical']} physical / {fp['cores_logical']} "
        f"logical cores, affinity {fp['affinity']}, cgroup quota "
        f"{'none' if quota is None else f'{quota:g} CPUs'}",
        f"RAM: {fp['ram_total_mb'] / 1024:.1f} GiB",
        f"GPU: {gpu_text}",
        f"OS: {fp['os']}; Python {fp['python']}",
        *format_llama(fp["llama_cpp"]),
        f"mateperf {fp['mateperf']}, git {fp['git_commit']}",
    ]
    return "\n".join(lines)
