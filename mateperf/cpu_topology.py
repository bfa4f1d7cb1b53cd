"""What a CPU budget is: the detected topology as a plain record, no detection.

`mateperf.trackers.cpu.detect` fills a `CpuTopology` from the OS; a stored run's fingerprint
holds its fields, so a report rebuilds it (and the thread rules, mateperf/thread_rules.py)
without reading the machine again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class CpuTopology:
    """The detected CPU budget of this process. `notes` says where each figure came from."""

    logical: int
    physical: int | None  # distinct cores of the machine
    affinity: list[int] | None
    cgroup_quota_cpus: float | None
    smt_groups: list[list[int]] | None
    performance_cpus: list[int] = field(default_factory=list)
    efficiency_cpus: list[int] = field(default_factory=list)
    load_avg: list[float] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    # sys.platform and platform.machine() where it was detected ("" in runs stored before):
    # llama.cpp's default thread count depends on both (mateperf/thread_rules.py)
    os_platform: str = ""
    arch: str = ""

    @property
    def allowed(self) -> list[int]:
        return self.affinity if self.affinity is not None else list(range(self.logical))

    @property
    def usable(self) -> int:
        """Threads that can run at once: the affinity mask, capped by the cgroup quota."""
        n = len(self.allowed)
        if self.cgroup_quota_cpus is not None:
            n = min(n, max(1, math.floor(self.cgroup_quota_cpus)))
        return max(1, n)

    @property
    def physical_usable(self) -> int:
        """Distinct cores inside the affinity mask (efficiency cores left out), capped too."""
        allowed = set(self.allowed)
        if self.efficiency_cpus and self.performance_cpus:
            allowed -= set(self.efficiency_cpus)
        if self.smt_groups:
            cores = {tuple(g) for g in self.smt_groups if allowed & set(g)}
            n = len(cores) or len(allowed)
        elif self.physical:  # no per-core list: at most the machine's physical cores
            n = min(len(allowed), self.physical)
        else:
            n = len(allowed)
        return max(1, min(n, self.usable))

    @property
    def smt(self) -> bool:
        return bool(self.smt_groups) and any(len(g) > 1 for g in self.smt_groups)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(usable=self.usable, physical_usable=self.physical_usable, smt=self.smt)
        return out
