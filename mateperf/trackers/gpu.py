"""NVIDIA GPU monitor: device facts, a background sampler and VRAM threshold alerts, from NVML.

`NvmlDevice` is the one NVML reader (device facts, memory, this process's memory, sensors);
the monitor, a trial's readings and `inventory` (every device, for a host fingerprint) read
through it.

An instrument only: it knows nothing about models, layers or profiles. Wrap it around work::

    monitor = GpuMonitor(interval_ms=100, budget_mb=6144)   # emulate a 6 GB card
    with monitor:
        monitor.mark("model loaded")
        ...
    monitor.samples(), monitor.alerts(), monitor.markers()

No NVIDIA driver, no GPU, no nvidia-ml-py: `available` is False and `status` says why in one
line ("no NVIDIA GPU: <reason>"); every reading is NaN, the sampler records nothing and
nothing raises. The monitor never creates a CUDA context (NVML does not), so it can watch a
process that has not touched the GPU yet and measure what a child process adds.

Alerts: the device's used memory as a share of a basis, the card's total or `budget_mb` (a
smaller card emulated on a larger one). Levels ok < warn (default 80%) < critical (90%); an
event is recorded, and passed to every callback, each time the level changes, so a long stay
above a threshold is one event, not one per sample. The level falls back only once use drops
`hysteresis_pct` below the threshold, so noise at a boundary does not flap.

Units: `_mb` columns are MiB (2**20 bytes), as nvidia-smi counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from mateperf.trackers.sampler import Sampler

MB = float(1 << 20)
NO_GPU_PREFIX = "no NVIDIA GPU"
OK, WARN, CRITICAL = "ok", "warn", "critical"
_LEVEL_RANK = {OK: 0, WARN: 1, CRITICAL: 2}

SAMPLE_COLUMNS = [
    "t_s",
    "vram_used_mb",
    "vram_free_mb",
    "vram_total_mb",
    "vram_process_mb",
    "gpu_util_pct",
    "mem_util_pct",
    "temp_c",
    "power_w",
    "sm_clock_mhz",
    "mem_clock_mhz",
]
ALERT_COLUMNS = [
    "t_s",
    "level",
    "previous_level",
    "vram_used_mb",
    "basis_mb",
    "basis",
    "used_pct",
    "threshold_pct",
]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nan() -> float:
    return float("nan")


@dataclass(frozen=True)
class Thresholds:
    """VRAM alert levels in percent of the basis (the card's total, or a budget)."""

    warn_pct: float = 80.0
    critical_pct: float = 90.0
    hysteresis_pct: float = 2.0

    def __post_init__(self):
        if not 0 < self.warn_pct <= self.critical_pct <= 100:
            raise ValueError(
                f"thresholds warn {self.warn_pct}% and critical {self.critical_pct}% must "
                "satisfy 0 < warn <= critical <= 100"
            )
        if self.hysteresis_pct < 0:
            raise ValueError(f"hysteresis_pct={self.hysteresis_pct} must not be negative")

    def level(self, used_pct: float, current: str) -> str:
        """The level for `used_pct`, falling only once below a threshold minus hysteresis."""
        if used_pct != used_pct:  # NaN: no reading, keep what we had
            return current
        rising = (
            CRITICAL if used_pct >= self.critical_pct else WARN if used_pct >= self.warn_pct else OK
        )
        if _LEVEL_RANK[rising] >= _LEVEL_RANK[current]:
            return rising
        h = self.hysteresis_pct
        if current == CRITICAL and used_pct >= self.critical_pct - h:
            return CRITICAL
        if used_pct >= self.warn_pct - h:
            return WARN
        return OK


class NvmlDevice:
    """The one NVML reader: one device's facts and readings, whatever asks for them.

    The monitor's samples, the device facts a run records, a trial's readings after load and
    after its work, and `inventory` all query NVML here. `nvml` is the binding (default:
    `pynvml` from nvidia-ml-py); tests pass a stand-in only to cause what cannot be caused on a
    machine without a GPU (a given free VRAM). Without NVML or the device, `available` is
    False, `status` says why in one line ("<prefix>: <reason>"; the memory sampler's runs say
    "no GPU") and every reading is NaN; nothing raises, and a query the driver does not
    support reads NaN.
    """

    def __init__(self, device_index: int = 0, nvml=None, prefix: str = NO_GPU_PREFIX):
        self.index = int(device_index)
        self.available = False
        self.status = ""
        self.count = 0  # devices NVML reports (0 where NVML is not there)
        self.name = ""
        self._pid = os.getpid()
        self._nvml = None
        self._handle = None
        self._open(nvml, prefix)

    def _open(self, nvml, prefix: str) -> None:
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                self.status = f"{prefix}: nvidia-ml-py (pynvml) not importable: {exc}"
                return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.status = f"{prefix}: NVML unavailable: {_reason(exc)}"
            return
        try:
            self.count = int(nvml.nvmlDeviceGetCount())
            if self.count <= self.index:
                self.status = (
                    f"{prefix}: NVML reports {self.count} device(s), index {self.index} absent"
                )
                _shutdown(nvml)
                return
            self._handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
            self.name = _text(nvml.nvmlDeviceGetName(self._handle))
        except Exception as exc:
            self.status = f"{prefix}: NVML error: {_reason(exc)}"
            _shutdown(nvml)
            return
        self._nvml = nvml
        self.available = True
        self.status = f"GPU {self.index}: {self.name}"

    def _call(self, name: str, *args, default=None):
        """One NVML query; `default` where the device or driver does not support it."""
        try:
            return getattr(self._nvml, name)(*args)
        except Exception:
            return default

    def facts(self) -> dict:
        """Name, UUID, driver, CUDA driver and NVML versions ('' where NVML has none)."""
        info = dict.fromkeys(
            ("name", "uuid", "driver_version", "cuda_driver_version", "nvml_version"), ""
        )
        if not self.available:
            return info
        info["name"] = self.name
        info["uuid"] = _text(self._call("nvmlDeviceGetUUID", self._handle, default=""))
        info["driver_version"] = _text(self._call("nvmlSystemGetDriverVersion", default=""))
        info["nvml_version"] = _text(self._call("nvmlSystemGetNVMLVersion", default=""))
        cuda = self._call("nvmlSystemGetCudaDriverVersion_v2", default=None)
        if cuda is None:
            cuda = self._call("nvmlSystemGetCudaDriverVersion", default=None)
        if isinstance(cuda, int) and cuda > 0:
            info["cuda_driver_version"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        return info

    def memory_mb(self) -> tuple[float, float, float]:
        """(used, free, total) device memory in MiB; NaN without a reading."""
        mem = self._call("nvmlDeviceGetMemoryInfo", self._handle) if self.available else None
        if mem is None:
            return _nan(), _nan(), _nan()
        return mem.used / MB, mem.free / MB, mem.total / MB

    def process_mb(self) -> float:
        """This process's device memory in MiB.

        Not listed = no CUDA context = 0. Listed with usedGpuMemory None = hidden by the
        driver (WDDM) = unknown. Inside a container NVML reports host PIDs, so this reads 0
        there: device-wide used memory is the figure to trust on a machine with nothing else.
        """
        procs = (
            self._call("nvmlDeviceGetComputeRunningProcesses", self._handle)
            if self.available
            else None
        )
        if procs is None:
            return _nan()
        total = 0.0
        for proc in procs:
            if proc.pid == self._pid:
                if proc.usedGpuMemory is None:
                    return _nan()
                total += proc.usedGpuMemory / MB
        return total

    def read(self) -> dict:
        """One reading (no timestamp): memory, this process's memory, utilisation, sensors."""
        out = {name: _nan() for name in SAMPLE_COLUMNS[1:]}
        if not self.available:
            return out
        nvml, h = self._nvml, self._handle
        out["vram_used_mb"], out["vram_free_mb"], out["vram_total_mb"] = self.memory_mb()
        out["vram_process_mb"] = self.process_mb()
        util = self._call("nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            out["gpu_util_pct"] = float(util.gpu)
            out["mem_util_pct"] = float(util.memory)
        temp = self._call("nvmlDeviceGetTemperature", h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        if temp is not None:
            out["temp_c"] = float(temp)
        power = self._call("nvmlDeviceGetPowerUsage", h)
        if power is not None:
            out["power_w"] = power / 1000.0
        sm = self._call("nvmlDeviceGetClockInfo", h, getattr(nvml, "NVML_CLOCK_SM", 1))
        if sm is not None:
            out["sm_clock_mhz"] = float(sm)
        memclk = self._call("nvmlDeviceGetClockInfo", h, getattr(nvml, "NVML_CLOCK_MEM", 2))
        if memclk is not None:
            out["mem_clock_mhz"] = float(memclk)
        return out

    def close(self) -> None:
        if self._nvml is not None:
            _shutdown(self._nvml)
            self._nvml = None
            self.available = False


def _shutdown(nvml) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # best effort at close: a driver that is gone has nothing left to free
        return


def inventory(nvml=None) -> dict:
    """Every device NVML sees, as a host fingerprint records it: count, devices (index, name,
    memory_total_mb), driver, and the reason where there are none."""
    first = NvmlDevice(0, nvml)
    readers = [first] + [NvmlDevice(i, nvml) for i in range(1, first.count)]
    try:
        devices = [
            {"index": r.index, "name": r.name, "memory_total_mb": r.memory_mb()[2]}
            for r in readers
            if r.available
        ]
        return {
            "count": len(devices),
            "devices": devices,
            "driver": first.facts()["driver_version"],
            "reason": "" if devices else first.status.partition(": ")[2],
        }
    finally:
        for r in readers:
            r.close()


class GpuMonitor(Sampler):
    """NVML readings of one device, sampled in a background thread, with VRAM alerts.

    It reads through `NvmlDevice` (`nvml` is passed on to it); the thread, schedule and rows
    are the sampler base's (mateperf.trackers.sampler). Without a GPU no thread starts.
    """

    thread_name = "gpu-monitor"

    def __init__(
        self,
        interval_ms: float = 100.0,
        device_index: int = 0,
        thresholds: Thresholds | None = None,
        budget_mb: float | None = None,
        callbacks: list[Callable[[dict], None]] | None = None,
        nvml=None,
        block_samples: int = 65536,
    ):
        super().__init__(interval_ms, SAMPLE_COLUMNS, block_samples)
        if budget_mb is not None and not budget_mb > 0:
            raise ValueError(f"budget_mb={budget_mb} must be positive (or None: the card)")
        self.device_index = int(device_index)
        self.thresholds = thresholds or Thresholds()
        self.budget_mb = float(budget_mb) if budget_mb else None
        self.callbacks = list(callbacks or [])
        self._alerts: list[dict] = []
        self._markers: list[dict] = []
        self._level = OK
        self.reader = NvmlDevice(device_index, nvml)
        self.now_s()  # the clock starts here: readings before the first start() have a time

    @property
    def available(self) -> bool:
        return self.reader.available

    @property
    def status(self) -> str:
        return self.reader.status

    def device(self) -> dict:
        """Name, driver and CUDA versions, memory, utilisation, temperature, power, clocks.

        One dict with the status; numbers are NaN where NVML has none (or there is no GPU).
        """
        return {
            "available": self.available,
            "status": self.status,
            "index": self.device_index,
            **self.reader.facts(),
            **self.read(),
        }

    def read(self) -> dict:
        """One reading (no timestamp): memory, this process's memory, utilisation, sensors."""
        return self.reader.read()

    # -- alerts --------------------------------------------------------------------------------
    @property
    def basis(self) -> str:
        return "budget" if self.budget_mb else "card"

    @property
    def level(self) -> str:
        return self._level

    def _basis_mb(self, reading: dict) -> float:
        return self.budget_mb if self.budget_mb else reading["vram_total_mb"]

    def check(self, reading: dict, t_s: float | None = None) -> dict | None:
        """Update the alert level from one reading; returns the event if the level changed."""
        basis_mb = self._basis_mb(reading)
        used = reading["vram_used_mb"]
        pct = 100.0 * used / basis_mb if basis_mb and basis_mb > 0 else _nan()
        new = self.thresholds.level(pct, self._level)
        if new == self._level:
            return None
        event = {
            "t_s": self.now_s() if t_s is None else t_s,
            "level": new,
            "previous_level": self._level,
            "vram_used_mb": used,
            "basis_mb": basis_mb,
            "basis": self.basis,
            "used_pct": pct,
            "threshold_pct": {
                CRITICAL: self.thresholds.critical_pct,
                WARN: self.thresholds.warn_pct,
                OK: self.thresholds.warn_pct - self.thresholds.hysteresis_pct,
            }[new],
        }
        self._level = new
        with self._lock:
            self._alerts.append(event)
        for callback in self.callbacks:
            try:
                callback(dict(event))
            except Exception:  # a callback's bug must not stop the sampler
                pass
        return event

    # -- sampling ------------------------------------------------------------------------------
    def can_sample(self) -> bool:
        return self.available

    def tick(self, now_ns: int) -> None:
        self.sample_now()

    def sample_now(self) -> dict:
        """One reading with its time, recorded and checked against the thresholds."""
        t_s = self.now_s()
        reading = self.read()
        if self.available:
            self.record([t_s, *(reading[c] for c in SAMPLE_COLUMNS[1:])])
            self.check(reading, t_s)
        return {"t_s": t_s, **reading}

    def mark(self, label: str, **extra) -> dict:
        """A labelled reading (recorded as a sample too), e.g. around a model load."""
        row = {"label": label, **self.sample_now(), **extra}
        with self._lock:
            self._markers.append(row)
        return row

    def close(self) -> None:
        self.stop()
        self.reader.close()

    # -- results -------------------------------------------------------------------------------
    def samples(self) -> pd.DataFrame:
        """Every recorded reading, oldest first (empty without a GPU)."""
        df = self.rows_frame()
        df["gpu_status"] = self.status
        return df

    def alerts(self) -> pd.DataFrame:
        with self._lock:
            rows = list(self._alerts)
        df = pd.DataFrame(rows, columns=ALERT_COLUMNS)
        df["gpu_status"] = self.status
        return df

    def markers(self) -> pd.DataFrame:
        with self._lock:
            rows = list(self._markers)
        return pd.DataFrame(rows, columns=None if rows else ["label", *SAMPLE_COLUMNS])

    def peak_used_mb(self, t_from: float, t_to: float) -> float:
        """Highest device-used reading between two times on this monitor's clock."""
        data = self.rows()
        if not len(data):
            return _nan()
        t, used = data[:, 0], data[:, 1]
        sel = used[(t >= t_from) & (t <= t_to)]
        return float(sel.max()) if len(sel) else _nan()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def nvml_status(device_index: int = 0) -> str:
    """One line: the device's name, or "no NVIDIA GPU: <reason>"."""
    monitor = GpuMonitor(device_index=device_index)
    try:
        return monitor.status
    finally:
        monitor.close()
