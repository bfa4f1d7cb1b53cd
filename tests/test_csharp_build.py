"""The C# core and headless host compile under Mono from source, and PythonBridge stays thin.

Shared by every test that runs the C# peer: the `built_csharp` fixture (copied in each C# test
module) compiles once per session into a temporary directory and points MATEPERF_CSHARP_PEER
at the result, so start_peer("csharp")
runs exactly the code in unity/ as it is now. Without Mono the tests fail (CI installs it).
"""

import re
import subprocess

import pytest

from mateperf.bridge.process import PYTHON_BRIDGE_CS, csharp_core_sources


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
    assert len(text.splitlines()) < 80
