"""The usual thread-count rules, each computed the way its source computes it on each OS.

Pure: a rule reads a detected `CpuTopology` (mateperf/cpu_topology.py) and nothing else, so a
stored run's report computes the same candidates from its fingerprint as the run saw.

llama.cpp's own default (`llama_cpp_default_threads`) follows `common/common.cpp`: read in
ggml-org/llama.cpp at commit 00758e06 and in the llama.cpp that llama-cpp-python 0.3.36 vendors
(`vendor/llama.cpp/common/common.cpp`, the same code), where `postprocess_cpu_params` sets
`n_threads = common_cpu_get_num_math()` when none is given (older llama.cpp names the two
functions `cpu_get_num_math` and `cpu_get_num_physical_cores`).

- `cpu_get_num_math`, x86-64 Linux only (`__x86_64__ && __linux__ && !__ANDROID__`): on a hybrid
  CPU (CPUID leaf 7, EDX bit 15) it pins itself to each online CPU 0..n-1 in turn; an efficiency
  core (CPUID leaf 0x1A core type 0x20, Intel Atom) is skipped, a performance core is counted and
  the next CPU number is skipped as its hyper-thread sibling ("hyperthreading isn't useful for
  linear algebra"). A pin that fails, or a count of 0, falls through to the physical cores.
  Every other OS and CPU: `cpu_get_num_physical_cores`.
- `cpu_get_num_physical_cores`: on Linux the number of distinct
  `/sys/devices/system/cpu/cpu*/topology/thread_siblings` masks (every core, efficiency ones
  included); on Windows 7 and later (MSVC builds) the `GroupCount`s of the
  `RelationProcessorCore` records from `GetLogicalProcessorInformationEx`, i.e. every physical
  core, performance and efficiency alike; on macOS `hw.perflevel0.physicalcpu` (the performance
  cores), else `hw.physicalcpu`; where none answers, `std::thread::hardware_concurrency()` n, or
  n / 2 when n > 4.

So on an i7-13700H (6 performance cores with SMT, 8 efficiency cores) llama.cpp defaults to 6
threads on Linux and to 14 on Windows, and it looks at neither the affinity mask nor a quota.
"""

from __future__ import annotations

from dataclasses import dataclass

from mateperf.cpu_topology import CpuTopology

ORIGINAL_HARD_CODED_THREADS = 6
X86_64 = {"x86_64", "amd64"}  # platform.machine() on Linux / on Windows


@dataclass(frozen=True)
class Heuristic:
    name: str
    n_threads: int  # what the rule says
    n_threads_batch: int
    reasoning: str

    def on(self, usable: int) -> tuple[int, int]:
        """What would really run here: a rule asking for more threads than usable is clamped."""
        return min(self.n_threads, usable), min(self.n_threads_batch, usable)


def _hardware_concurrency_fallback(logical: int) -> int:
    return logical if logical <= 4 else logical // 2


def _math_cpus_linux_hybrid(topo: CpuTopology) -> int:
    """`cpu_count_math_cpus`: walk the online CPU numbers, skip efficiency cores, count a
    performance core and skip the number after it as its sibling. The pins are taken to
    succeed: they do under a narrowed affinity mask (taskset), and only a cgroup cpuset that
    leaves CPUs out would make one fail, which the topology does not record."""
    efficiency = set(topo.efficiency_cpus)
    result, number = 0, 0
    while number < topo.logical:
        if number in efficiency:
            number += 1
            continue
        result += 1
        number += 2
    return result


def llama_cpp_default_threads(topo: CpuTopology) -> tuple[int, str]:
    """llama.cpp's `cpu_get_num_math()` for this topology's OS, and how it got there."""
    hybrid = bool(topo.performance_cpus and topo.efficiency_cpus)
    if topo.os_platform.startswith("linux") and topo.arch.lower() in X86_64 and hybrid:
        math_cpus = _math_cpus_linux_hybrid(topo)
        if math_cpus > 0:
            return math_cpus, (
                "cpu_get_num_math on hybrid x86-64 Linux: one thread per performance core "
                "(efficiency cores and SMT siblings skipped); ignores affinity and cgroup quota"
            )
    if topo.os_platform == "darwin" and topo.performance_cpus and topo.smt_groups:
        perf = set(topo.performance_cpus)
        cores = len({tuple(g) for g in topo.smt_groups if perf & set(g)})
        return cores, "cpu_get_num_physical_cores on macOS: hw.perflevel0.physicalcpu"
    if topo.physical:
        where = {
            "win32": "on Windows: every physical core (RelationProcessorCore records), "
            "efficiency cores included",
            "linux": "on Linux: distinct thread_siblings masks, efficiency cores included",
        }.get(topo.os_platform[:5], "physical cores of the whole machine")
        return topo.physical, (
            f"cpu_get_num_math = cpu_get_num_physical_cores {where}; "
            "ignores affinity and cgroup quota"
        )
    return _hardware_concurrency_fallback(topo.logical), (
        "cpu_get_num_physical_cores without a core list: hardware_concurrency, halved above 4"
    )


def heuristics(topo: CpuTopology) -> list[Heuristic]:
    """The candidate rules, each computed the way its source computes it."""
    llama_cpp, llama_cpp_why = llama_cpp_default_threads(topo)
    lcp = max(topo.logical // 2, 1)
    return [
        Heuristic(
            "original (hard-coded 6)",
            ORIGINAL_HARD_CODED_THREADS,
            ORIGINAL_HARD_CODED_THREADS,
            "the companion's first version: n_threads=6 whatever the machine",
        ),
        Heuristic(
            "cores − 2 (original plan)",
            max(1, topo.logical - 2),
            max(1, topo.logical - 2),
            "logical CPUs minus two left for the OS and Unity; ignores SMT, affinity and quota",
        ),
        Heuristic("llama.cpp default", llama_cpp, llama_cpp, llama_cpp_why),
        Heuristic(
            "llama-cpp-python default",
            lcp,
            topo.logical,
            "n_threads = cpu_count() // 2, n_threads_batch = cpu_count() (logical CPUs)",
        ),
        Heuristic(
            "usable physical cores",
            topo.physical_usable,
            topo.physical_usable,
            "distinct cores inside the affinity mask, efficiency cores left out, capped by "
            "the cgroup quota",
        ),
    ]
