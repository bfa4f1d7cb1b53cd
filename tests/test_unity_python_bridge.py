"""unity/Runtime/PythonBridge/ (MatePerf.Unity.PythonBridge and UnityPeerInfo) compiled against
a stub of the UnityEngine types it uses and run under Mono, as Unity would run it (Awake, Start,
Update once per frame, OnDestroy): a rename in the core breaks this build, not the user's editor,
and a taken port disables the component with one clear error instead of an exception on the main
thread. Compiled as Unity 2022.1+ compiles it (UNITY_2022_1_OR_NEWER: FrameTimingManager's
main-thread time); tests/test_unity_package.py compiles the older path too. What the stub's
Application, SystemInfo and FrameTimingManager return is the stub's (tests/unity_stub/): these
tests follow those values into the identity and frame_stats replies; what a real Unity returns
is not checked here (no Unity on this machine).
"""

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mateperf.bridge.client import CommandRejected, UnityBridge
from mateperf.bridge.process import (
    PYTHON_BRIDGE_CS,
    UNITY_DIR,
    csharp_core_sources,
    find_newtonsoft,
    start_program,
)
from tests.conftest import mono_absent

STUB_DIR = Path(__file__).parent / "unity_stub"
BRIDGE_SOURCES = sorted(PYTHON_BRIDGE_CS.parent.glob("*.cs"))  # the MatePerf.Bridge.Unity assembly

pytestmark = pytest.mark.mono


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    """PythonBridge.cs + the core + the UnityEngine stub and a harness, compiled with mcs."""
    if shutil.which("mcs") is None or shutil.which("mono") is None:
        mono_absent("mono and mcs are required: apt-get install mono-mcs")
    out = tmp_path_factory.mktemp("unity-harness")
    newtonsoft = find_newtonsoft()
    sample = sorted((UNITY_DIR / "Samples~" / "DesktopMateAvatar").glob("*.cs"))
    sources = [*csharp_core_sources(), *BRIDGE_SOURCES, *sample, *sorted(STUB_DIR.glob("*.cs"))]
    exe = out / "PythonBridgeHarness.exe"
    cmd = ["mcs", "-nologo", "-warnaserror+", "-define:UNITY_2022_1_OR_NEWER", f"-r:{newtonsoft}"]
    cmd += [f"-out:{exe}", *map(str, sources)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.copy2(newtonsoft, out / "Newtonsoft.Json.dll")
    return exe


def test_the_stub_stays_out_of_the_unity_folder():
    # copied into a Unity project, a second UnityEngine would clash with the real one
    for source in UNITY_DIR.rglob("*.cs"):
        text = source.read_text(encoding="utf-8")
        assert "namespace UnityEngine" not in text, source
        # nor a second copy of the companion's own scripts (tests/unity_stub/DesktopMateScripts.cs)
        assert not re.search(r"class VRM\w+Controller\b|class VRMLoader\b", text), source


def test_python_bridge_is_namespaced_beside_the_companions_global_one():
    # the companion's Assets/Scripts/IPC/PythonBridge.cs is a global PythonBridge: two classes
    # of one name would not compile together (CS0436)
    for source in BRIDGE_SOURCES:
        text = source.read_text(encoding="utf-8")
        assert "namespace MatePerf.Unity" in text, source
    text = PYTHON_BRIDGE_CS.read_text(encoding="utf-8")
    assert '[AddComponentMenu("MatePerf/' in text  # not a second "Python Bridge" in the menu


def test_python_bridge_serves_through_update(harness):
    proc = start_program(["mono", str(harness), "0"], "unity", startup_timeout_s=30)
    with proc, UnityBridge(port=proc.port) as bridge:
        acks = bridge.pipeline(
            [("set_expression", {"name": "joy", "value": i / 10}) for i in range(10)]
        )
        identity = bridge.request("identity").data
        state = bridge.stats()
        time.sleep(0.2)
        frames = bridge.frame_stats()
        bridge.close()
        counters = proc.stop()
    # what the stub's Application, SystemInfo and QualitySettings said, read on the main thread
    assert identity == {
        "peer": "unity",
        "peer_version": json.loads((UNITY_DIR / "package.json").read_text("utf-8"))["version"],
        "protocol": 2,
        "unity_version": "2022.3.62f2",
        "graphics_device": "stub graphics device",
        "graphics_api": "Direct3D11",
        "target_fps": None,  # targetFrameRate -1: the platform's default
        "vsync_count": 1,
        "run_in_background": False,
        "frame_timing": "available",
    }
    # FrameTimingManager's figures, one entry per frame: µs, null where there was no new reading
    # or no GPU timer (the stub's gpuFrameTime 0), never 0
    n = frames["frames"]
    assert len(frames["cpu_main_us"]) == len(frames["gpu_us"]) == n
    assert set(frames["cpu_main_us"]) <= {2500, None} and 2500 in frames["cpu_main_us"]
    assert set(frames["gpu_us"]) == {4000, None}
    assert frames["frame_timing"] == "available"
    assert frames["last_frame"] - frames["first_frame"] + 1 == n
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


def test_frame_timing_stats_off_reports_why_and_no_figures(harness):
    # the companion's ProjectSettings.asset has enableFrameTimingStats: 0
    env = {"UNITY_STUB_FRAME_TIMING_STATS": "0"}
    proc = start_program(["mono", str(harness), "0"], "unity", startup_timeout_s=30, env=env)
    with proc, UnityBridge(port=proc.port) as bridge:
        identity = bridge.request("identity").data
        bridge.request("set_expression", {"name": "joy", "value": 1.0})
        frames = bridge.frame_stats()
    reason = "unavailable: Frame Timing Stats is off (Project Settings > Player > Other Settings)"
    assert identity["frame_timing"] == frames["frame_timing"] == reason
    assert "cpu_main_us" not in frames and "gpu_us" not in frames


def test_the_desktop_mate_sample_drives_the_companions_scripts(harness):
    # the companion's scripts are stubs here (signatures, no behaviour): what is checked is the
    # sample's own mapping and that every command reaches its script without an error
    cmd = ["mono", str(harness), "0", "avatar=desktop-mate"]
    proc = start_program(cmd, "unity", startup_timeout_s=30)
    head = {"enabled": True, "min_interval": 3.0, "max_interval": 7.0, "max_angle": 5.0}
    with proc, UnityBridge(port=proc.port) as bridge:
        acks = bridge.pipeline(
            [
                ("load_model", {"path": "Models/avatar.vrm"}),
                ("set_expression", {"name": "joy", "value": 0.5}),
                ("set_transition_speed", {"speed": 3.0}),
                ("set_auto_blink", {"enabled": True}),
                ("set_auto_head_movement", head),
            ]
        )
        before_reset = bridge.stats()["state"]
        bridge.request("reset_expressions")
        after_reset = bridge.stats()["state"]
    assert [a.command for a in acks] == [
        "load_model",
        "set_expression",
        "set_transition_speed",
        "set_auto_blink",
        "set_auto_head_movement",
    ]
    assert before_reset == {
        "model": "Models/avatar.vrm",
        "expressions": {"joy": 0.5},
        "transition_speed": 3.0,
        "auto_blink": True,
        "head_movement_enabled": True,
        "commands_applied": 5,
    }
    assert after_reset["expressions"] == {} and after_reset["commands_applied"] == 6


def test_the_desktop_mate_sample_names_a_missing_script(harness):
    cmd = ["mono", str(harness), "0", "avatar=desktop-mate-bare"]
    proc = start_program(cmd, "unity", startup_timeout_s=30)
    with proc, UnityBridge(port=proc.port) as bridge:
        with pytest.raises(
            CommandRejected, match="no VRMBlendshapeController set on DesktopMateAvatar"
        ):
            bridge.request("set_expression", {"name": "joy", "value": 0.5})
        with pytest.raises(CommandRejected, match="no VRMAutoBlinkController set"):
            bridge.request("set_auto_blink", {"enabled": False})
        state = bridge.stats()  # the frame went on: the bridge still answers
        counters = proc.stop()
    assert state["state"]["commands_applied"] == 0
    assert counters["apply_errors"] == 2
