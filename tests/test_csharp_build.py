"""The C# core and headless host compile under Mono from source, and PythonBridge stays thin.

Shared by every test that runs the C# peer: the `built_csharp` fixture (copied in each C# test
module) compiles once per session into a temporary directory and points MATEPERF_CSHARP_PEER
at the result, so start_peer("csharp")
runs exactly the code in unity/ as it is now. Without Mono the tests fail (CI installs it).
"""

import json
import re
import socket
import subprocess

import pytest

from mateperf.bridge.process import (
    PYTHON_BRIDGE_CS,
    UNITY_DIR,
    csharp_core_sources,
    csharp_peer_command,
    start_program,
)


@pytest.mark.mono
def test_core_and_host_compile_and_print_usage_errors(built_csharp):
    assert built_csharp.exists()
    assert (built_csharp.parent / "Newtonsoft.Json.dll").exists()
    result = subprocess.run(
        ["mono", str(built_csharp), "--bogus"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "unknown argument --bogus" in result.stderr


def test_core_has_no_unityengine_dependency():
    sources = csharp_core_sources()
    assert sources
    for source in sources:
        assert not re.search(r"using\s+UnityEngine", source.read_text(encoding="utf-8")), source


def test_python_bridge_is_a_thin_monobehaviour_over_the_core():
    # compiled and run against a UnityEngine stub in tests/test_unity_python_bridge.py
    text = PYTHON_BRIDGE_CS.read_text(encoding="utf-8")
    assert re.search(r"class PythonBridge\s*:\s*MonoBehaviour", text)
    assert "server.Tick()" in text and "new BridgeServer(" in text
    assert '"127.0.0.1"' in text
    assert len(text.splitlines()) < 100
    # what it asks Unity (identity, FrameTimingManager) lives beside it, in UnityPeerInfo.cs
    assert "UnityPeerInfo.Read(" in text and "FrameTimingManager." not in text


class LineClient:
    """A bare newline-JSON client on a real socket, independent of mateperf's UnityBridge."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rw", encoding="utf-8", newline="\n")
        self.greeting = json.loads(self.file.readline())

    def ask(self, message: dict) -> dict:
        self.file.write(json.dumps(message) + "\n")
        self.file.flush()
        return json.loads(self.file.readline())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def headless(built_csharp, *args: str):
    cmd = [*csharp_peer_command(built_csharp), "--stop-on-stdin-eof", *args]
    return start_program(cmd, "csharp")


@pytest.mark.mono
def test_the_headless_peer_says_who_it_is(built_csharp):
    with headless(built_csharp, "--fps", "30") as peer:
        client = LineClient(peer.port)
        reply = client.ask({"command": "identity", "id": 7})
        again = client.ask({"command": "identity", "id": 7})
        client.close()
        counters = peer.stop()
    print("identity reply of the headless peer:", json.dumps(reply))
    assert reply["status"] == "success" and reply["id"] == 7 and reply["command"] == "identity"
    assert isinstance(reply["frame"], int) and reply["apply_ns"] >= reply["recv_ns"] > 0
    version = json.loads((UNITY_DIR / "package.json").read_text(encoding="utf-8"))["version"]
    assert reply["data"] == {
        "peer": "mateperf-headless",
        "peer_version": version,
        "protocol": 2,
        "unity_version": None,
        "graphics_device": None,
        "graphics_api": None,
        "target_fps": 30.0,
        "vsync_count": None,
        "run_in_background": True,
        "frame_timing": "unavailable: headless peer (no renderer)",
    }
    assert again["status"] == "error" and again["message"] == "duplicate id 7"
    assert counters["received"] == 0 and counters["rejected"] == 0  # a query is never counted


@pytest.mark.mono
def test_an_unpaced_headless_peer_has_no_frame_rate_target(built_csharp):
    with headless(built_csharp, "--fps", "0") as peer:
        client = LineClient(peer.port)
        data = client.ask({"command": "identity", "id": 1})["data"]
        client.close()
    assert data["target_fps"] is None


@pytest.mark.mono
def test_the_legacy_mode_answers_no_query_as_the_companions_bridge(built_csharp):
    # the companion's Assets/Scripts/IPC/PythonBridge.cs knows only the avatar commands
    with headless(built_csharp, "--fps", "60", "--legacy") as peer:
        client = LineClient(peer.port)
        replies = {
            command: client.ask({"command": command, "id": 1})
            for command in ("identity", "stats", "frame_stats")
        }
        applied = client.ask({"command": "set_expression", "data": {"name": "joy", "value": 1}})
        client.close()
    assert "protocol" not in client.greeting
    for command, reply in replies.items():
        assert reply == {
            "type": "response",
            "command": command,
            "status": "error",
            "message": f"unknown command '{command}'",
        }
    assert applied["status"] == "success" and "id" not in applied
