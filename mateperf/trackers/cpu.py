"""What CPUs this process may use, and what the usual thread-count rules would pick from them.

An instrument: it reads the machine and says where each figure came from. Every source that
does not exist on this OS (affinity masks and load average on Windows, cgroups and /sys outside
Linux) is reported as "unavailable on this OS" instead of failing: the companion's developers
run Windows too.

The rules a thread sweep is judged against (the original plan's "cores − 2", llama.cpp's and
llama-cpp-python's defaults, ...) are computed from the detection in
mateperf/thread_rules.py; the detection records the OS and architecture they depend on.
"""

from __future__ import annotations

import os
import platform
import struct
import sys
from pathlib import Path

from mateperf.cpu_topology import CpuTopology

UNAVAILABLE = "unavailable on this OS"
SYS_CPU = Path("/sys/devices/system/cpu")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Where Linux lists the CPUs of each kind on a hybrid Intel CPU (performance / efficiency).
HYBRID_LISTS = {"performance": "cpu_core", "efficiency": "cpu_atom"}


def parse_cpu_list(text: str) -> list[int]:
    """Linux's CPU list format, e.g. "0-3,8,10-11" -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return sorted(set(cpus))


def affinity() -> tuple[list[int] | None, str]:
    """The CPUs the scheduler may run this process on, and where that came from."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0)), "sched_getaffinity"
    try:  # Windows and macOS: psutil knows the mask where the OS has one
        import psutil

        mask = psutil.Process().cpu_affinity()
        if mask:
            return sorted(mask), "psutil"
    except (AttributeError, NotImplementedError, OSError):
        pass
    return None, f"affinity mask {UNAVAILABLE}"


class AffinityUnavailable(RuntimeError):
    """This OS (or psutil build) cannot set a process's CPU affinity (macOS)."""


def set_affinity(cpus: list[int] | set[int]) -> None:
    """Restrict this process to `cpus`: sched_setaffinity on Linux, psutil on Windows."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
        return
    try:
        import psutil

        psutil.Process().cpu_affinity(sorted(cpus))
    except (AttributeError, NotImplementedError) as exc:
        raise AffinityUnavailable(f"setting the CPU affinity is {UNAVAILABLE}") from exc


def can_set_affinity() -> bool:
    if hasattr(os, "sched_setaffinity"):
        return True
    try:
        import psutil

        return hasattr(psutil.Process, "cpu_affinity")
    except ImportError:
        return False


# GetLogicalProcessorInformationEx(RelationProcessorCore): one record per physical core with
# its logical CPUs (group masks) and, from Windows 10, its EfficiencyClass: a higher class is a
# faster, less efficient core (the performance cores of a hybrid Intel CPU).
RELATION_PROCESSOR_CORE = 0
_CORE_GROUPCOUNT_AT = 30  # 8 bytes of header, then Flags, EfficiencyClass, Reserved[20]
_CORE_MASKS_AT = 32  # GROUP_AFFINITY[] (aligned on the pointer size)


def parse_processor_cores(buf: bytes, pointer_size: int = 8) -> list[tuple[int, list[int]]]:
    """(efficiency class, logical CPUs) per physical core from the buffer Windows fills.

    Logical CPUs are numbered group * 64 + bit, as Windows counts them on machines with one
    processor group (up to 64 logical CPUs, which covers every laptop the companion targets).
    """
    group_affinity_size = pointer_size + 8  # KAFFINITY Mask, WORD Group, WORD Reserved[3]
    mask_format = "<Q" if pointer_size == 8 else "<I"
    cores: list[tuple[int, list[int]]] = []
    offset = 0
    while offset + 8 <= len(buf):
        relationship, size = struct.unpack_from("<II", buf, offset)
        if size <= 0:
            break
        if relationship == RELATION_PROCESSOR_CORE:
            efficiency = buf[offset + 9]
            (group_count,) = struct.unpack_from("<H", buf, offset + _CORE_GROUPCOUNT_AT)
            cpus: list[int] = []
            for g in range(group_count):
                at = offset + _CORE_MASKS_AT + g * group_affinity_size
                (mask,) = struct.unpack_from(mask_format, buf, at)
                (group,) = struct.unpack_from("<H", buf, at + pointer_size)
                cpus += [group * 64 + bit for bit in range(pointer_size * 8) if mask >> bit & 1]
            cores.append((efficiency, sorted(cpus)))
        offset += size
    return cores


def windows_cores() -> tuple[list[tuple[int, list[int]]] | None, str]:
    """Physical cores and their efficiency classes from Windows (None elsewhere)."""
    source = "GetLogicalProcessorInformationEx"
    if os.name != "nt":
        return None, f"{source} {UNAVAILABLE}"
    import ctypes

    try:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        call = kernel32.GetLogicalProcessorInformationEx
    except (AttributeError, OSError):
        return None, f"{source} {UNAVAILABLE}"
    call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    call.restype = ctypes.c_int
    length = ctypes.c_uint32(0)
    call(RELATION_PROCESSOR_CORE, None, ctypes.byref(length))  # asks for the size
    buf = ctypes.create_string_buffer(length.value)
    if not length.value or not call(RELATION_PROCESSOR_CORE, buf, ctypes.byref(length)):
        return None, f"{source} failed (error {ctypes.get_last_error()})"
    return parse_processor_cores(buf.raw[: length.value], ctypes.sizeof(ctypes.c_void_p)), source


def _own_cgroups(proc_cgroup: str) -> tuple[str | None, dict[str, str]]:
    """This process's cgroup v2 path and v1 paths by controller, from /proc/self/cgroup."""
    v2, v1 = None, {}
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        for name in controllers.split(","):
            if name:
                v1[name] = path
    return v2, v1


def _ancestors(root: Path, rel: str) -> list[Path]:
    """root/rel and every directory above it up to root: a quota on any of them applies."""
    rel_parts = [p for p in Path(rel or "/").parts if p not in ("/", "")]
    dirs = [root.joinpath(*rel_parts[:i]) for i in range(len(rel_parts), -1, -1)]
    return list(dict.fromkeys(dirs))


def _read_v2(directory: Path) -> float | None | str:
    """CPUs allowed by directory/cpu.max; None when "max"; "absent" when no such file."""
    path = directory / "cpu.max"
    if not path.is_file():
        return "absent"
    quota, period = path.read_text(encoding="utf-8").split()[:2]
    return None if quota == "max" else int(quota) / int(period)


def _read_v1(directory: Path) -> float | None | str:
    quota_path, period_path = directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us"
    if not quota_path.is_file():
        return "absent"
    quota = int(quota_path.read_text(encoding="utf-8"))
    return None if quota < 0 else quota / int(period_path.read_text(encoding="utf-8"))


def cgroup_quota(
    root: Path = CGROUP_ROOT, proc_cgroup: str | None = None
) -> tuple[float | None, str]:
    """CPUs allowed by a cgroup CPU quota (the smallest on the path), or None, and the source.

    Looks in the process's own cgroup and every parent (a container often sees its cgroup
    mounted at the root), for cgroup v2 `cpu.max`, then v1 `cpu.cfs_quota_us`.
    `root` and `proc_cgroup` are parameters so a test can point them at synthetic files.
    """
    if not sys.platform.startswith("linux") and root == CGROUP_ROOT:
        return None, f"cgroup quota {UNAVAILABLE}"
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text(encoding="utf-8")
        except OSError:
            proc_cgroup = ""
    v2, v1 = _own_cgroups(proc_cgroup)
    candidates: list[tuple[Path, object]] = []
    if v2 is not None or (root / "cpu.max").is_file():
        candidates += [(d, _read_v2) for d in _ancestors(root, v2 or "/")]
    for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
        base = root / mount
        if base.is_dir():
            candidates += [(d, _read_v1) for d in _ancestors(base, v1.get("cpu", "/"))]
            break
    found: list[tuple[float, Path]] = []
    seen_file = False
    for directory, reader in candidates:
        try:
            value = reader(directory)
        except (OSError, ValueError):
            continue
        if value == "absent":
            continue
        seen_file = True
        if value is not None:
            found.append((float(value), directory))
    if found:
        cpus, where = min(found)
        return cpus, f"cgroup quota {cpus:g} CPUs ({where})"
    if seen_file:
        return None, "cgroup: no CPU quota"
    return None, "cgroup: no CPU controller found"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def smt_groups(sys_cpu: Path = SYS_CPU) -> tuple[list[list[int]] | None, str]:
    """Groups of logical CPUs that share one physical core (SMT siblings), machine-wide."""
    if not sys_cpu.is_dir():
        return None, f"SMT siblings {UNAVAILABLE}"
    groups: set[tuple[int, ...]] = set()
    for topo in sorted(sys_cpu.glob("cpu[0-9]*/topology")):
        text = _read(topo / "thread_siblings_list") or _read(topo / "core_cpus_list")
        if text:
            groups.add(tuple(parse_cpu_list(text)))
    if not groups:
        return None, "SMT siblings: no topology files"
    return sorted(list(g) for g in groups), "/sys/devices/system/cpu/cpu*/topology"


def hybrid_cores(sys_devices: Path = SYS_CPU.parents[1]) -> tuple[dict[str, list[int]], str]:
    """Performance and efficiency CPUs where Linux lists them (Intel hybrid); else {}."""
    if not sys_devices.is_dir():
        return {}, f"core types {UNAVAILABLE}"
    kinds = {}
    for kind, name in HYBRID_LISTS.items():
        text = _read(sys_devices / name / "cpus")
        if text:
            kinds[kind] = parse_cpu_list(text)
    if not kinds:
        return {}, "not a hybrid CPU (no cpu_core/cpu_atom lists)"
    return kinds, "/sys/devices/cpu_core, /sys/devices/cpu_atom"


def load_average() -> tuple[list[float] | None, str]:
    try:
        return [round(x, 2) for x in os.getloadavg()], "os.getloadavg"
    except (AttributeError, OSError):
        return None, f"load average {UNAVAILABLE}"


def core_kinds(cores: list[tuple[int, list[int]]]) -> dict[str, list[int]]:
    """Performance and efficiency CPUs from per-core efficiency classes; {} if all alike."""
    classes = {efficiency for efficiency, _ in cores}
    if len(classes) < 2:
        return {}
    top = max(classes)
    return {
        "performance": sorted(c for e, cpus in cores if e == top for c in cpus),
        "efficiency": sorted(c for e, cpus in cores if e != top for c in cpus),
    }


def detect(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> CpuTopology:
    notes = {}
    logical = os.cpu_count() or 1
    mask, notes["affinity"] = affinity()
    quota, notes["cgroup"] = cgroup_quota(cgroup_root, proc_cgroup)
    groups, notes["smt"] = smt_groups()
    kinds, notes["hybrid"] = hybrid_cores()
    if groups is None:  # no /sys: Windows lists its cores, with their efficiency classes
        cores, source = windows_cores()
        if cores:
            groups, notes["smt"] = sorted(cpus for _, cpus in cores), source
            kinds, notes["hybrid"] = core_kinds(cores), source
    load, notes["load_avg"] = load_average()
    physical = len(groups) if groups else None
    if physical is None:
        try:
            import psutil

            physical = psutil.cpu_count(logical=False)
            notes["physical"] = "psutil"
        except ImportError:
            notes["physical"] = f"physical cores {UNAVAILABLE}"
    return CpuTopology(
        logical=logical,
        physical=physical,
        affinity=mask,
        cgroup_quota_cpus=quota,
        smt_groups=groups,
        performance_cpus=kinds.get("performance", []),
        efficiency_cpus=kinds.get("efficiency", []),
        load_avg=load,
        notes=notes,
        os_platform=sys.platform,
        arch=platform.machine(),
    )
