"""The llama-cpp-python build mateperf runs with: the oldest supported version, each feature
asked of the installed build, the projection library by platform name.

The older build itself (0.3.16, the companion's) is proven by benchmarks/llama_cpp_compat.sh:
building it takes 5-10 minutes, too long for the default suite.
"""

import subprocess
import sys
import types

import pytest

from mateperf import llama_features as lf
from mateperf import model
from mateperf.cli import main
from mateperf.errors import BadInput
from mateperf.host import format_fingerprint, llama_info


def test_the_oldest_version_is_stated_once_and_is_the_companions():
    assert lf.MINIMUM_VERSION == "0.3.16"
    assert lf.parse_version(lf.MINIMUM_VERSION) == (0, 3, 16)


@pytest.mark.parametrize(
    "version, expected",
    [
        ("0.3.16", (0, 3, 16)),
        ("0.3.16+cu121", (0, 3, 16)),
        ("0.3.4.dev0", (0, 3, 4)),
        ("v0.3.36", (0, 3, 36)),
        ("unknown", None),
        ("", None),
    ],
)
def test_parse_version(version, expected):
    assert lf.parse_version(version) == expected


@pytest.mark.parametrize("version", ["0.3.16", "0.3.16+cu124", "0.3.36", "0.4", "1.0.0"])
def test_supported_versions_pass(version):
    assert lf.version_problem(version) is None


@pytest.mark.parametrize("version", ["0.3.15", "0.3.9", "0.2.90", "0.3"])
def test_an_older_version_is_one_clear_line(version):
    """Real releases before the companion's: numbers compare as numbers (0.3.9 < 0.3.16)."""
    problem = lf.version_problem(version)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"llama-cpp-python {version} is older than 0.3.16")
    with pytest.raises(lf.LlamaBuildError) as err:
        lf.check_supported(version=version)
    assert isinstance(err.value, BadInput)  # the CLI's exit code 2
    assert str(err.value) == problem


def test_not_installed_says_what_to_do():
    assert "not installed" in lf.version_problem("not installed")
    assert lf.version_problem("unknown") is None  # a build that does not say: bindings decide


def test_a_build_lacking_a_required_binding_is_refused_by_name():
    """A module without llama_memory_clear (as a real older build is: a module object with
    only the other bindings) is refused with the binding's name."""
    import llama_cpp

    stripped = types.ModuleType("llama_cpp")
    stripped.__dict__.update(
        {k: v for k, v in vars(llama_cpp).items() if k != "llama_memory_clear"}
    )
    with pytest.raises(lf.LlamaBuildError, match="llama_memory_clear"):
        lf.check_supported(version="0.3.36", module=stripped)
    assert lf.missing_bindings("kv_cache_clear", stripped) == ["llama_memory_clear"]


def test_the_installed_build_has_every_feature():
    """The build scripts/setup.sh installs (0.3.36, CPU) lacks nothing mateperf uses."""
    assert lf.parse_version(lf.installed_version()) >= (0, 3, 36)
    lf.check_supported()
    assert lf.statuses() == {f.name: lf.AVAILABLE for f in lf.FEATURES}
    assert lf.unavailable() == {}
    assert lf.common_library() is not None


def test_unavailable_line_names_the_build_and_the_feature():
    line = lf.unavailable_line("dry_run_projection", "no llama_model_params.no_alloc", "0.3.16")
    assert line.startswith("unavailable with this build (llama-cpp-python 0.3.16): ")
    assert "common_fit_print" in line and line.endswith("no llama_model_params.no_alloc")


def test_a_feature_missing_from_a_build_is_reported_not_raised():
    """Features are asked of the module, not of its version: a module that lacks the dry-run
    bindings (as 0.3.16 does: no no_alloc, load_mode, lazy_mode, flash_attn_type) says so."""
    import llama_cpp

    class OldModelParams(llama_cpp.llama_model_params.__base__):
        _fields_ = [f for f in llama_cpp.llama_model_params._fields_ if f[0] != "no_alloc"]

    old = types.ModuleType("llama_cpp")
    old.__dict__.update(vars(llama_cpp))
    old.llama_model_params = OldModelParams
    del old.LLAMA_LOAD_MODE_NONE
    status = lf.feature_status("dry_run_projection", old)
    assert status.startswith(f"{lf.UNAVAILABLE} (llama-cpp-python ")
    assert "llama_model_params.no_alloc" in status and "LLAMA_LOAD_MODE_NONE" in status
    assert lf.feature_status("token_counters", old) == lf.AVAILABLE


def test_a_setting_needing_a_missing_feature_is_exit_2(monkeypatch):
    """The installed build has flash attention; a stand-in status says it has not."""
    monkeypatch.setattr(lf, "feature_status", lambda f, module=None: lf.unavailable_line(f, "x"))
    with pytest.raises(lf.FeatureUnavailable, match=r"^parameter flash_attn=True: unavailable"):
        model.require_features({"flash_attn": True})
    model.require_features({"flash_attn": False})  # at its default a setting asks nothing


@pytest.mark.parametrize(
    "system_info, offload, kind",
    [
        ("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | ", False, "CPU"),
        (
            "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : AVX2 = 1 | ",
            True,
            "CUDA",
        ),
        ("Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ARM_FMA = 1 | ", True, "Metal"),
        ("Vulkan : | CPU : AVX2 = 1 | ", True, "Vulkan"),
        ("", True, "GPU (unnamed backend)"),
    ],
)
def test_build_kind_from_llama_cpps_own_system_info(system_info, offload, kind):
    assert lf.build_kind(system_info, offload) == kind


def test_fingerprint_records_version_build_and_features():
    info = llama_info()
    assert info["version"] == lf.installed_version()
    assert info["minimum_version"] == lf.MINIMUM_VERSION and info["supported"] == "yes"
    assert info["build"] == lf.build_kind(info["system_info"], info["gpu_offload"])
    assert info["unavailable"] == {}
    lines = format_fingerprint(
        {
            "cpu_model": "x",
            "cores_physical": 1,
            "cores_logical": 1,
            "affinity": [0],
            "cgroup_cpu_quota": None,
            "ram_total_mb": 1024,
            "gpus": {},
            "os": "x",
            "python": "3.10.9",
            "llama_cpp": {
                **info,
                "version": "0.3.16",
                "unavailable": {"dry_run_projection": "unavailable with this build (…): p"},
            },
            "mateperf": "0",
            "git_commit": "x",
        }
    )
    assert "llama-cpp-python 0.3.16 (" in lines
    assert "unavailable with this build (…): p" in lines


@pytest.mark.parametrize(
    "platform, library, first_symbol",
    [
        ("linux", "libllama-common.so", lf.FIT_PRINT_ITANIUM),
        ("darwin", "libllama-common.dylib", lf.FIT_PRINT_ITANIUM),
        ("win32", "llama-common.dll", lf.FIT_PRINT_MSVC),
    ],
)
def test_projection_library_and_symbol_by_platform(platform, library, first_symbol):
    assert lf.common_library_names(platform)[0] == library
    assert lf.fit_print_symbols(platform)[0] == first_symbol
    assert all(
        p.name in lf.common_library_names(platform) for p in lf.common_library_candidates(platform)
    )


def test_windows_tries_mingws_names_too_and_an_unknown_os_has_none():
    assert "libllama-common.dll" in lf.common_library_names("win32")
    assert lf.FIT_PRINT_ITANIUM in lf.fit_print_symbols("win32")
    assert lf.common_library_names("emscripten") == lf.fit_print_symbols("sunos5") == ()


def test_msvc_name_is_the_decoration_of_fit_hs_declaration():
    """void common_fit_print(const char *, llama_model_params *, llama_context_params *):
    ?name@@ YA (free function, __cdecl) X (void) PEBD (const char * __ptr64)
    PEAU<struct>@@ (struct * __ptr64) twice, @ (end of arguments) Z (no throw spec)."""
    assert lf.FIT_PRINT_MSVC == (
        "?common_fit_print@@YA"
        + "X"
        + "PEBD"
        + "PEAUllama_model_params@@"
        + "PEAUllama_context_params@@"
        + "@Z"
    )


def test_the_itanium_name_is_what_the_installed_library_exports():
    import ctypes

    lib = ctypes.CDLL(str(lf.common_library("linux")))
    assert getattr(lib, lf.fit_print_symbols("linux")[0]) is not None


@pytest.fixture
def pretend_installed(monkeypatch):
    """Package metadata that names another llama-cpp-python version. A stand-in: building a
    real 0.3.15 takes ten minutes; the check reads only this string (and the real bindings)."""
    from importlib import metadata

    real = metadata.version

    def pretend(version: str) -> None:
        monkeypatch.setattr(
            metadata, "version", lambda n: version if n == "llama_cpp_python" else real(n)
        )
        monkeypatch.setattr(lf, "_SUPPORTED", [])
        lf.installed_version.cache_clear()

    yield pretend
    lf.installed_version.cache_clear()


def test_cli_refuses_an_older_build_with_one_line_exit_2(pretend_installed, capsys):
    """`mateperf run llm` with llama-cpp-python 0.3.15 installed: exit 2, one line."""
    pretend_installed("0.3.15")
    rc = main(["run", "llm", "-p", "trials=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        "mateperf: error: llama-cpp-python 0.3.15 is older than 0.3.16, the oldest mateperf "
        "supports; install 0.3.16 or newer (scripts/setup.sh builds one)"
    ]


def test_info_still_reports_an_older_build(pretend_installed, capsys):
    pretend_installed("0.3.15")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "llama-cpp-python 0.3.15 (" in out
    assert "llama-cpp-python: llama-cpp-python 0.3.15 is older than 0.3.16" in out


def test_ipc_needs_no_llama_and_is_not_refused(monkeypatch):
    from mateperf import cli

    monkeypatch.setattr(lf, "check_supported", lambda: pytest.fail("ipc asked for llama"))
    cli.check_llama("ipc")


def test_importing_the_module_imports_no_llama_cpp():
    code = (
        "import sys, mateperf.llama_features as f; f.installed_version(); "
        "print('llama_cpp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
