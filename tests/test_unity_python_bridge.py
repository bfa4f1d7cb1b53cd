"""unity/Runtime/PythonBridge/PythonBridge.cs compiled against a stub of the UnityEngine types
it uses and run under Mono, as Unity would run it (Awake, Update once per frame, OnDestroy): a
rename in the core breaks this build, not the user's editor, and a taken port disables the
component with one clear error instead of an exception on the main thread.
"""

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from mateperf.bridge.client import UnityBridge
from mateperf.bridge.process import (
    PYTHON_BRIDGE_CS,
    UNITY_DIR,
    csharp_core_sources,
    find_newtonsoft,
    start_program,
)

STUB_DIR = Path(__file__).parent / "unity_stub"

pytestmark = pytest.mark.mono


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    """PythonBridge.cs + the core + the UnityEngine stub and a harness, compiled with mcs."""
    if shutil.which("mcs") is None or shutil.which("mono") is None:
        pytest.fail("mono and mcs are required: apt-get install mono-mcs")
    out = tmp_path_factory.mktemp("unity-harness")
    newtonsoft = find_newtonsoft()
    sources = [*csharp_core_sources(), PYTHON_BRIDGE_CS, *sorted(STUB_DIR.glob("*.cs"))]
    exe = out / "PythonBridgeHarness.exe"
    cmd = ["mcs", "-nologo", "-warnaserror+", f"-r:{newtonsoft}", f"-out:{exe}", *map(str, sources)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.copy2(newtonsoft, out / "Newtonsoft.Json.dll")
    return exe


def test_the_stub_stays_out_of_the_unity_folder():
    # copied into a Unity project, a second UnityEngine would clash with the real one
    for source in UNITY_DIR.rglob("*.cs"):
        assert "namespace UnityEngine" not in source.read_text(encoding="utf-8"), source


def test_python_bridge_serves_through_update(harness):
    proc = start_program(["mono", str(harness), "0"], "unity", startup_timeout_s=30)
    with proc, UnityBridge(port=proc.port) as bridge:
        acks = bridge.pipeline(
            [("set_expression", {"name": "joy", "value": i / 10}) for i in range(10)]
        )
        state = bridge.stats()
        frames = bridge.frame_stats()
        bridge.close()
        counters = proc.stop()
    assert [a.id for a in acks] == list(range(1, 11))
    assert state["state"]["expressions"] == {"joy": 0.9}
    assert state["bridge"]["max_tick_us"] == 2000.0  # the component's default frame budget
    assert state["bridge"]["max_queued_requests"] == 4096  # and the core's inbound bound
    assert state["bridge"]["spin_tail_us"] is None  # Unity paces its own frames
    assert frames["frames"] > 0 and sum(frames["commands"]) == 10
    assert counters["applied"] == 10 and counters["rejected"] == 0
    logs = [json.loads(line) for line in proc.output if '"event":"log"' in line]
    assert any("listening on 127.0.0.1:" in entry["message"] for entry in logs)


def test_a_taken_port_disables_the_component_with_one_clear_error(harness):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            ["mono", str(harness), str(port)], input="", capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr  # nothing thrown out of Awake or Update
    events = [json.loads(line) for line in result.stdout.splitlines()]
    errors = [e for e in events if e.get("level") == "error"]
    assert len(errors) == 1
    message = errors[0]["message"]
    assert f"127.0.0.1:{port}" in message and "in use" in message.lower()
    assert "disabled" in message
    awake = next(e for e in events if e["event"] == "awake")
    assert awake["enabled"] is False
    assert not any(e["event"] == "listening" for e in events)
    assert events[-1] == {"event": "stopped", "enabled": False, "counters": {}, "frames": 0}
