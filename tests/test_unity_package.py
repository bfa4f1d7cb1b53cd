"""unity/ as a Unity package (UPM): its manifest, assembly definitions, .meta files and the .NET SDK
projects of the headless peer say what Unity and the SDK need, and every build compiles the same
core files. Neither Unity nor the .NET SDK runs here (see unity/README.md): what they would read
is checked as data, and the assemblies are compiled with Mono's mcs split as Unity splits them.
"""

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mateperf.bridge.process import (
    CORE_DIR,
    HEADLESS_DIR,
    HOST_DIR,
    PYTHON_BRIDGE_CS,
    UNITY_DIR,
    csharp_core_sources,
    csharp_host_sources,
    csharp_peer_command,
    find_newtonsoft,
)
from tests.conftest import mono_absent

STUB = Path(__file__).parent / "unity_stub" / "UnityEngine.cs"
COMPANION_STUB = Path(__file__).parent / "unity_stub" / "DesktopMateScripts.cs"
SAMPLE_DIR = UNITY_DIR / "Samples~" / "PythonBridgeOnAGameObject"
# compiles into the companion's Assembly-CSharp (no .asmdef): its scripts have no assembly
# definition of their own, and an assembly definition cannot reference Assembly-CSharp
DESKTOP_MATE_SAMPLE = UNITY_DIR / "Samples~" / "DesktopMateAvatar"
NEWTONSOFT_PACKAGE = "com.unity.nuget.newtonsoft-json"


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def asmdefs() -> dict[Path, dict]:
    return {p: load_json(p) for p in sorted(UNITY_DIR.rglob("*.asmdef"))}


def test_package_manifest_names_the_package_and_unitys_newtonsoft():
    manifest = load_json(UNITY_DIR / "package.json")
    assert re.fullmatch(r"com\.[a-z0-9-]+\.[a-z0-9.-]+", manifest["name"])
    assert manifest["name"] == "com.desktopmate.mateperf-bridge"
    assert re.fullmatch(r"\d+\.\d+\.\d+", manifest["version"])
    assert re.fullmatch(r"\d{4}\.\d", manifest["unity"])
    assert manifest["displayName"] and manifest["description"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", manifest["dependencies"][NEWTONSOFT_PACKAGE])
    for sample in manifest["samples"]:
        assert sample["path"].startswith("Samples~/") and (UNITY_DIR / sample["path"]).is_dir()
    paths = [sample["path"] for sample in manifest["samples"]]
    assert "Samples~/DesktopMateAvatar" in paths and "Samples~/PythonBridgeOnAGameObject" in paths


def test_the_core_reports_the_package_version():
    # the identity query's peer_version is the package's version
    version = load_json(UNITY_DIR / "package.json")["version"]
    text = (CORE_DIR / "BridgeProtocol.cs").read_text(encoding="utf-8")
    assert f'PackageVersion = "{version}";' in text


def test_the_core_assembly_has_no_engine_and_only_unitys_newtonsoft():
    core = load_json(CORE_DIR / "MatePerf.Bridge.asmdef")
    assert core["name"] == "MatePerf.Bridge" and core["noEngineReferences"] is True
    assert core["references"] == []
    assert core["overrideReferences"] is True
    assert core["precompiledReferences"] == ["Newtonsoft.Json.dll"]


def test_python_bridge_has_its_own_assembly_over_the_core():
    bridge = load_json(PYTHON_BRIDGE_CS.parent / "MatePerf.Bridge.Unity.asmdef")
    assert bridge["references"] == ["MatePerf.Bridge"]
    assert bridge["noEngineReferences"] is False


def test_every_script_belongs_to_one_assembly_definition():
    definitions = asmdefs()
    names = [d["name"] for d in definitions.values()]
    assert len(names) == len(set(names)), names
    folders = {p.parent for p in definitions}
    assert not list(DESKTOP_MATE_SAMPLE.glob("*.asmdef"))
    for source in UNITY_DIR.rglob("*.cs"):
        if HEADLESS_DIR in source.parents or DESKTOP_MATE_SAMPLE in source.parents:
            continue  # Unity never sees Headless~; the Desktop-Mate sample joins Assembly-CSharp
        assert any(f == source.parent or f in source.parents for f in folders), source
    for definition in definitions.values():
        for reference in definition["references"]:
            assert reference in names, reference


def _unity_assets() -> list[Path]:
    """What Unity imports from the package: all but folders ending in ~ and dot-files."""
    out = []
    for path in sorted(UNITY_DIR.rglob("*")):
        rel = path.relative_to(UNITY_DIR)
        if any(part.endswith("~") or part.startswith(".") for part in rel.parts):
            continue
        if path.suffix != ".meta":
            out.append(path)
    return out


def test_every_asset_has_a_meta_file_with_a_unique_guid():
    # a git package is read-only to Unity: an asset without its .meta is ignored there
    guids: dict[str, Path] = {}
    for asset in _unity_assets():
        meta = asset.with_name(asset.name + ".meta")
        assert meta.exists(), f"{meta} missing: add it (Unity writes one for a package from disk)"
        match = re.search(r"^guid: ([0-9a-f]{32})$", meta.read_text(encoding="utf-8"), re.M)
        assert match, meta
        assert match.group(1) not in guids, (meta, guids.get(match.group(1)))
        guids[match.group(1)] = meta
        if asset.is_dir():
            assert "folderAsset: yes" in meta.read_text(encoding="utf-8"), meta
    for meta in UNITY_DIR.rglob("*.meta"):
        assert meta.with_name(meta.name[: -len(".meta")]).exists(), f"orphan {meta}"


def _csproj(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def _prop(project: ET.Element, name: str) -> str:
    values = [e.text for e in project.iter(name)]
    assert len(values) == 1, (name, values)
    return values[0] or ""


def test_dotnet_core_project_compiles_exactly_the_core_files():
    project_file = HEADLESS_DIR / "MatePerf.Bridge" / "MatePerf.Bridge.csproj"
    project = _csproj(project_file)
    assert project.get("Sdk") == "Microsoft.NET.Sdk"
    assert _prop(project, "TargetFramework") == "netstandard2.1"  # Unity's API level
    assert float(_prop(project, "LangVersion")) <= 9.0  # Unity's C# level
    assert _prop(project, "EnableDefaultCompileItems") == "false"
    globs = [e.get("Include") for e in project.iter("Compile")]
    compiled = sorted(p.resolve() for g in globs for p in project_file.parent.glob(g))
    # the same files as the Mono build and the Unity assembly (all of the folder, subfolders too)
    assert compiled == [p.resolve() for p in csharp_core_sources()]
    assert sorted(CORE_DIR.rglob("*.cs")) == csharp_core_sources()
    packages = {e.get("Include"): e.get("Version") for e in project.iter("PackageReference")}
    assert re.fullmatch(r"13\.\d+\.\d+", packages["Newtonsoft.Json"])


def test_dotnet_host_project_runs_the_host_over_the_core_project():
    project_file = HOST_DIR / "MatePeer.csproj"
    project = _csproj(project_file)
    assert _prop(project, "OutputType") == "Exe"
    assert re.fullmatch(r"net[68]\.0", _prop(project, "TargetFramework"))
    # without it, a machine with only a newer .NET runtime cannot start the peer
    assert _prop(project, "RollForward") == "LatestMajor"
    assert float(_prop(project, "LangVersion")) <= 9.0
    (reference,) = [e.get("Include") for e in project.iter("ProjectReference")]
    assert (project_file.parent / reference).resolve() == (
        HEADLESS_DIR / "MatePerf.Bridge" / "MatePerf.Bridge.csproj"
    ).resolve()
    # the SDK's default glob takes every .cs under the project folder: only the host's
    own = sorted(p for p in HOST_DIR.rglob("*.cs") if "build" not in p.parts)
    assert own == csharp_host_sources() and own
    props = (HEADLESS_DIR / "Directory.Build.props").read_text(encoding="utf-8")
    assert "build/obj/" in props and "build/bin/" in props  # outputs where git ignores them


def test_how_a_built_peer_is_started():
    assert csharp_peer_command(Path("MatePeer.dll")) == ["dotnet", "MatePeer.dll"]
    if shutil.which("mono"):
        assert csharp_peer_command(Path("MatePeer.exe"))[:1] == ["mono"]


@pytest.mark.mono
@pytest.mark.parametrize("unity_2022_1", [True, False], ids=["unity-2022.1+", "unity-2021.3"])
def test_assemblies_compile_apart_as_unity_splits_them(tmp_path, unity_2022_1):
    # MatePerf.Bridge alone; MatePerf.Bridge.Unity (PythonBridge) and the blendshape sample over
    # its public API; the Desktop-Mate sample in Assembly-CSharp beside stubs of the companion's
    # scripts. UnityEngine is the stub, an assembly of its own as in Unity. Both sides of the
    # FrameTimingManager version guard compile.
    if shutil.which("mcs") is None:
        mono_absent("mcs is required: apt-get install mono-mcs")
    newtonsoft = find_newtonsoft()
    engine, core = tmp_path / "UnityEngine.dll", tmp_path / "MatePerf.Bridge.dll"
    bridge = tmp_path / "MatePerf.Bridge.Unity.dll"
    define = ["-define:UNITY_2022_1_OR_NEWER"] if unity_2022_1 else []
    steps = [
        ["-target:library", f"-out:{engine}", str(STUB)],
        ["-target:library", f"-out:{core}", *map(str, csharp_core_sources())],
        [
            *define,
            "-target:library",
            f"-r:{core}",
            f"-r:{engine}",
            f"-out:{bridge}",
            *map(str, sorted(PYTHON_BRIDGE_CS.parent.glob("*.cs"))),
        ],
        [
            "-target:library",
            f"-r:{core}",
            f"-r:{engine}",
            f"-r:{bridge}",
            f"-out:{tmp_path / 'MatePerf.Bridge.Sample.dll'}",
            *map(str, sorted(SAMPLE_DIR.glob("*.cs"))),
        ],
        [
            "-target:library",
            f"-r:{core}",
            f"-r:{engine}",
            f"-r:{bridge}",
            f"-out:{tmp_path / 'Assembly-CSharp.dll'}",
            str(COMPANION_STUB),
            *map(str, sorted(DESKTOP_MATE_SAMPLE.glob("*.cs"))),
        ],
    ]
    for step in steps:
        cmd = ["mcs", "-nologo", "-warnaserror+", f"-r:{newtonsoft}", *step]
        result = subprocess.run(cmd, capture_output=True, encoding="utf-8", timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_desktop_mate_sample_calls_the_companions_scripts():
    text = (DESKTOP_MATE_SAMPLE / "DesktopMateAvatar.cs").read_text(encoding="utf-8")
    assert re.search(r"class DesktopMateAvatar\s*:\s*MonoBehaviour,\s*IAvatar", text)
    assert "namespace MatePerf.Unity.Samples" in text
    for call in (
        ".SetExpression(",
        ".ResetExpressions(",
        ".SetTransitionSpeed(",
        ".SetAutoBlinkEnabled(",
        ".SetAutoHeadMovement(",
        ".UpdateTimingParameters(",
        ".UpdateAmplitudeParameters(",
        ".LoadVRMFromPath(",
        ".UnloadModel(",
    ):
        assert call in text, call
