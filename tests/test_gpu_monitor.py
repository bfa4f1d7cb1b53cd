"""The NVML GPU monitor: the no-GPU path for real; alerts and sampling with given VRAM readings.

A machine without an NVIDIA GPU cannot produce VRAM readings, so the alert and sampler logic is
driven by `FakeNvml`, a stand-in for the NVML binding that returns given memory figures: the
one fault here that cannot be caused for real. The real device is read in the `gpu` tests.
"""

import math
import time
from types import SimpleNamespace

import pytest

from mateperf.trackers.gpu import (
    ALERT_COLUMNS,
    CRITICAL,
    NO_GPU_PREFIX,
    OK,
    WARN,
    GpuMonitor,
    NvmlDevice,
    Thresholds,
    inventory,
    nvml_status,
)

MB = 2**20


def has_gpu() -> bool:
    monitor = GpuMonitor()
    try:
        return monitor.available
    finally:
        monitor.close()


class FakeNvml:
    """Stand-in for pynvml: one device whose used memory follows a script (MiB)."""

    NVML_TEMPERATURE_GPU, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2

    def __init__(self, used_mb, total_mb=6144.0):
        self.used = list(used_mb)
        self.total_mb = total_mb
        self.shutdowns = 0

    def _used(self):
        return self.used.pop(0) if len(self.used) > 1 else self.used[0]

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return "handle"

    def nvmlDeviceGetName(self, handle):
        return b"Fake RTX 4050 Laptop GPU"

    def nvmlDeviceGetMemoryInfo(self, handle):
        used = self._used()
        return SimpleNamespace(
            used=used * MB, free=(self.total_mb - used) * MB, total=self.total_mb * MB
        )

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return []

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=50, memory=20)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 61

    def nvmlDeviceGetPowerUsage(self, handle):
        return 35000

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 2100 if clock == self.NVML_CLOCK_SM else 8000

    def nvmlSystemGetDriverVersion(self):
        return "580.0"

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return 13000


def test_no_gpu_is_one_clear_status_and_never_raises():
    if has_gpu():
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU path cannot be taken for real")
    monitor = GpuMonitor(interval_ms=5)
    assert not monitor.available
    assert monitor.status.startswith(f"{NO_GPU_PREFIX}: ") and len(monitor.status) > 20
    assert nvml_status() == monitor.status
    device = monitor.device()
    assert device["status"] == monitor.status and device["name"] == ""
    # never invented numbers
    assert all(math.isnan(device[k]) for k in ("vram_used_mb", "vram_total_mb", "temp_c"))
    with monitor:
        assert not monitor.running  # nothing to sample: no thread at all
        time.sleep(0.03)
        marker = monitor.mark("loaded")
    assert math.isnan(marker["vram_used_mb"])
    assert monitor.samples().empty and monitor.alerts().empty
    assert math.isnan(monitor.peak_used_mb(0, 1e9))
    monitor.close()


def test_a_missing_device_index_is_a_status_too():
    monitor = GpuMonitor(device_index=7, nvml=FakeNvml([100.0]))
    assert not monitor.available
    assert monitor.status == f"{NO_GPU_PREFIX}: NVML reports 1 device(s), index 7 absent"


def test_device_facts_from_nvml():
    monitor = GpuMonitor(nvml=FakeNvml([1000.0]))
    d = monitor.device()
    assert d["available"] and d["name"] == "Fake RTX 4050 Laptop GPU"
    assert (d["driver_version"], d["cuda_driver_version"]) == ("580.0", "13.0")
    assert d["vram_used_mb"] == 1000.0 and d["vram_free_mb"] == 5144.0
    assert (d["power_w"], d["temp_c"], d["sm_clock_mhz"]) == (35.0, 61.0, 2100.0)
    assert d["vram_process_mb"] == 0.0  # not listed: this process has no CUDA context


def test_the_one_reader_and_the_inventory():
    """The monitor reads through NvmlDevice; the inventory (a host fingerprint's `gpus`) too."""
    reader = NvmlDevice(nvml=FakeNvml([1000.0]))
    assert reader.available and reader.count == 1
    assert reader.memory_mb() == (1000.0, 5144.0, 6144.0) and reader.process_mb() == 0.0
    assert reader.facts()["driver_version"] == "580.0"
    reader.close()
    assert not reader.available and math.isnan(reader.memory_mb()[0])  # closed: no readings
    fake = FakeNvml([1000.0])
    assert inventory(fake) == {
        "count": 1,
        "devices": [{"index": 0, "name": "Fake RTX 4050 Laptop GPU", "memory_total_mb": 6144.0}],
        "driver": "580.0",
        "reason": "",
    }
    assert fake.shutdowns == 1  # every reader it opened is closed
    if not has_gpu():
        found = inventory()
        assert (found["count"], found["devices"]) == (0, [])
        assert f"{NO_GPU_PREFIX}: {found['reason']}" == nvml_status()


def test_alerts_fire_on_level_changes_of_the_card():
    events = []
    script = [1000, 5000, 5100, 5600, 5650, 5500, 4800, 4700, 1000]  # of 6144 MiB
    monitor = GpuMonitor(nvml=FakeNvml(script), callbacks=[events.append])
    for _ in script:
        monitor.sample_now()
    levels = [(e["previous_level"], e["level"]) for e in events]
    # 81% warn, 91% critical, 89.5% stays critical (hysteresis 2), 78% stays warn at 80-2=78,
    # 76.5% back to ok
    assert levels == [(OK, WARN), (WARN, CRITICAL), (CRITICAL, WARN), (WARN, OK)]
    alerts = monitor.alerts()
    assert list(alerts.columns[: len(ALERT_COLUMNS)]) == ALERT_COLUMNS
    assert (alerts["basis"] == "card").all() and (alerts["basis_mb"] == 6144).all()
    assert alerts["used_pct"].iloc[1] == pytest.approx(5600 / 6144 * 100)
    assert len(monitor.samples()) == len(script)


def test_budget_emulates_a_smaller_card():
    """vram_budget_mb: 3000 MiB used is 37% of an 8 GB card but 94% of a 3.2 GB budget."""
    card = GpuMonitor(nvml=FakeNvml([3000.0], total_mb=8192))
    budget = GpuMonitor(nvml=FakeNvml([3000.0], total_mb=8192), budget_mb=3200)
    card.sample_now()
    budget.sample_now()
    assert card.alerts().empty
    (event,) = budget.alerts().to_dict("records")
    assert event["level"] == CRITICAL and event["basis"] == "budget" and event["basis_mb"] == 3200


def test_sampler_thread_and_a_failing_callback():
    def broken(event):
        raise RuntimeError("a callback bug")

    monitor = GpuMonitor(interval_ms=2, nvml=FakeNvml([100.0, 5800.0]), callbacks=[broken])
    with monitor:
        assert monitor.running
        deadline = time.monotonic() + 2
        while monitor.n_samples < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert not monitor.running
    s = monitor.samples()
    assert len(s) >= 10 and s["t_s"].is_monotonic_increasing
    assert monitor.level == CRITICAL and len(monitor.alerts()) == 1
    assert monitor.peak_used_mb(0, 1e9) == 5800.0
    monitor.close()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="budget_mb"):
        GpuMonitor(budget_mb=-5, nvml=FakeNvml([1.0]))
    with pytest.raises(ValueError, match="warn 95"):
        Thresholds(warn_pct=95, critical_pct=90)
    with pytest.raises(ValueError, match="interval_ms"):
        GpuMonitor(interval_ms=0)


@pytest.mark.gpu
def test_real_device_is_read():
    monitor = GpuMonitor(interval_ms=10)
    if not monitor.available:
        pytest.skip(f"needs an NVIDIA GPU: {monitor.status}")
    d = monitor.device()
    assert d["name"] and d["vram_total_mb"] > 1000 and d["driver_version"]
    with monitor:
        time.sleep(0.1)
    s = monitor.samples()
    assert len(s) >= 3 and (s["vram_used_mb"] > 0).all()
    monitor.close()
