"""What the installed llama-cpp-python can do, asked in one place.

The companion's developers run their own build of llama-cpp-python (0.3.16, with CUDA, on
Windows); mateperf is developed against 0.3.36. Everything mateperf measures works with 0.3.16;
a few extras came later. Each feature is found by asking the installed build for the bindings
it needs (a function, a struct field, a constant, a `Llama()` argument), never by version
number alone, so a patched or newer build answers for itself. A missing feature is one line,
"unavailable with this build (llama-cpp-python X.Y.Z): <feature>", never a traceback.

A REQUIRED feature is one no phase can measure without: a build lacking one is refused, as is a
version older than MINIMUM_VERSION, with one line and exit code 2 (`check_supported`). The
others are optional: the phase that uses one records that it was unavailable and goes on.

Only the standard library is imported at the top, and asking calls nothing inside llama.cpp
(importing llama_cpp loads its libraries, it does not initialise a GPU): the projection's child
process and the GPU phase, which must not hold a CUDA context, can ask too.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mateperf.errors import BadInput

# The oldest llama-cpp-python mateperf runs with: the companion's own version. Stated once.
MINIMUM_VERSION = "0.3.16"
UNAVAILABLE = "unavailable with this build"
AVAILABLE = "available"


class LlamaBuildError(BadInput):
    """The installed llama-cpp-python cannot run mateperf (too old, missing, or lacking a
    required binding): exit code 2 with this one line."""


class FeatureUnavailable(BadInput):
    """A setting asks for a llama.cpp feature this build lacks: exit code 2, one line."""


@dataclass(frozen=True)
class Feature:
    """A llama.cpp feature mateperf uses, and the bindings it needs.

    A binding is written as mateperf uses it: `llama_memory_clear` (a function or constant of
    the llama_cpp module), `llama_model_params.no_alloc` (a ctypes struct field),
    `Llama(flash_attn)` (an argument of `llama_cpp.Llama`) or `library:llama-common` (llama.cpp's
    common library beside the installed llama_cpp; its symbol is looked up where it is loaded).
    """

    name: str
    title: str  # what it is, as the unavailable line names it
    used_by: str  # which phase or instrument uses it, for the docs and `mateperf info`
    bindings: tuple[str, ...]
    required: bool = False


FEATURES: tuple[Feature, ...] = (
    Feature(
        "load_settings",
        "model load settings (n_ctx, n_batch, n_ubatch, threads, n_gpu_layers, offload_kqv)",
        "every phase (mateperf.model.load)",
        (
            "Llama(n_ctx)",
            "Llama(n_batch)",
            "Llama(n_ubatch)",
            "Llama(n_threads)",
            "Llama(n_threads_batch)",
            "Llama(n_gpu_layers)",
            "Llama(offload_kqv)",
            "Llama(seed)",
        ),
        required=True,
    ),
    Feature(
        "token_counters",
        "llama.cpp's token counters and timings (llama_perf_context)",
        "llm, gpu, final: prompt/generated tokens and tokens/s",
        (
            "llama_perf_context",
            "llama_perf_context_reset",
            "llama_perf_context_data.n_p_eval",
            "llama_perf_context_data.n_eval",
            "llama_perf_context_data.t_p_eval_ms",
            "llama_perf_context_data.t_eval_ms",
        ),
        required=True,
    ),
    Feature(
        "raw_decode",
        "raw decode calls (llama_decode, llama_batch_get_one, llama_synchronize)",
        "llm, gpu: llama-bench style pp/tg throughput",
        ("llama_decode", "llama_batch_get_one", "llama_synchronize", "llama_token"),
        required=True,
    ),
    Feature(
        "kv_cache_clear",
        "clearing the KV cache (llama_get_memory, llama_memory_clear)",
        "llm, gpu: each pp/tg repetition starts from an empty cache",
        ("llama_get_memory", "llama_memory_clear"),
        required=True,
    ),
    Feature(
        "log_callback",
        "llama.cpp's log callback (llama_log_set)",
        "every phase: llama.cpp's lines kept off the console",
        ("llama_log_set", "llama_log_callback"),
        required=True,
    ),
    Feature(
        "build_query",
        "build queries (llama_supports_gpu_offload, llama_print_system_info)",
        "host fingerprint, gpu phase",
        ("llama_supports_gpu_offload", "llama_print_system_info"),
        required=True,
    ),
    Feature(
        "flash_attn",
        "flash attention (Llama(flash_attn=...))",
        "gpu phase's flash_attn setting",
        ("Llama(flash_attn)",),
    ),
    Feature(
        "kv_cache_types",
        "quantised KV cache types (Llama(type_k=..., type_v=...))",
        "gpu phase's type_k / type_v settings",
        ("Llama(type_k)", "Llama(type_v)"),
    ),
    Feature(
        "dry_run_projection",
        "llama.cpp's dry-run VRAM projection (common_fit_print in the llama-common library, "
        "llama_model_params.no_alloc)",
        "gpu phase: llama.cpp's own prediction beside the metadata one",
        (
            "llama_model_params.no_alloc",
            "llama_model_params.load_mode",
            "llama_model_params.lazy_mode",
            "llama_context_params.flash_attn_type",
            "LLAMA_LOAD_MODE_NONE",
            "LLAMA_LAZY_MODE_OFF",
            "LLAMA_FLASH_ATTN_TYPE_ENABLED",
            "LLAMA_FLASH_ATTN_TYPE_DISABLED",
            "library:llama-common",
        ),
    ),
)
BY_NAME = {f.name: f for f in FEATURES}


# --- versions ---------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, ...] | None:
    """The release numbers of a version string ("0.3.16", "0.3.16+cu121", "0.3.4.dev0"), or
    None when it has none ("not installed", "unknown")."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text or "")
    if not match:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def _padded(v: tuple[int, ...], n: int) -> tuple[int, ...]:
    return v + (0,) * (n - len(v))


def version_problem(version: str, minimum: str = MINIMUM_VERSION) -> str | None:
    """Why `version` cannot run mateperf (one line), or None when it can. Pure."""
    if version == "not installed":
        return (
            f"llama-cpp-python is not installed; mateperf needs {minimum} or newer "
            "(scripts/setup.sh builds one, or install your own build first)"
        )
    have, need = parse_version(version), parse_version(minimum)
    if have is None:  # a build that does not say: its bindings are checked instead
        return None
    n = max(len(have), len(need))
    if _padded(have, n) < _padded(need, n):
        return (
            f"llama-cpp-python {version} is older than {minimum}, the oldest mateperf supports; "
            f"install {minimum} or newer (scripts/setup.sh builds one)"
        )
    return None


@lru_cache(maxsize=1)
def installed_version() -> str:
    """llama-cpp-python's version from its package metadata, else from llama_cpp's source;
    "not installed" when there is no llama_cpp. Never imports llama_cpp."""
    import importlib.util
    from importlib import metadata

    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return "not installed"
    try:
        source = Path(spec.origin).read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    match = re.search(r'__version__\s*=\s*"([^"]+)"', source)
    return match.group(1) if match else "unknown"


# --- bindings ---------------------------------------------------------------------------------


def _llama_cpp():
    """The llama_cpp module, or the reason it cannot be imported."""
    try:
        import llama_cpp
    except Exception as exc:  # a broken build (missing DLL, wrong CPU) is a reason, not a crash
        return None, f"llama_cpp cannot be imported: {type(exc).__name__}: {exc}"
    return llama_cpp, ""


def _has(module, binding: str) -> bool:
    if binding == "library:llama-common":
        return common_library() is not None
    if binding.startswith("Llama(") and binding.endswith(")"):
        import inspect

        try:
            params = inspect.signature(module.Llama.__init__).parameters
        except (AttributeError, TypeError, ValueError):
            return False
        return binding[6:-1] in params
    if "." in binding:
        struct_name, field = binding.split(".", 1)
        struct = getattr(module, struct_name, None)
        fields = getattr(struct, "_fields_", None) or ()
        return any(f[0] == field for f in fields)
    return hasattr(module, binding)


def missing_bindings(feature: str | Feature, module=None) -> list[str]:
    """The bindings of `feature` the installed (or given) llama_cpp lacks; all of them when
    llama_cpp cannot be imported."""
    f = BY_NAME[feature] if isinstance(feature, str) else feature
    if module is None:
        module, _ = _llama_cpp()
        if module is None:
            return list(f.bindings)
    return [b for b in f.bindings if not _has(module, b)]


def unavailable_line(feature: str | Feature, detail: str = "", version: str = "") -> str:
    """The one line that says a feature is missing: "unavailable with this build
    (llama-cpp-python X.Y.Z): <feature>[: detail]"."""
    f = BY_NAME[feature] if isinstance(feature, str) else feature
    line = f"{UNAVAILABLE} (llama-cpp-python {version or installed_version()}): {f.title}"
    return f"{line}: {detail}" if detail else line


def feature_status(feature: str | Feature, module=None) -> str:
    """AVAILABLE, or the unavailable line naming the missing bindings."""
    f = BY_NAME[feature] if isinstance(feature, str) else feature
    if module is None:
        module, why = _llama_cpp()
        if module is None:
            return unavailable_line(f, why)
    missing = missing_bindings(f, module)
    if not missing:
        return AVAILABLE
    named = [_describe(b) for b in missing]
    if len(named) > 4:  # docs/compat.md lists them all
        named = [*named[:3], f"{len(named) - 3} more bindings"]
    return unavailable_line(f, "no " + ", ".join(named))


def _describe(binding: str) -> str:
    if binding == "library:llama-common":
        names = common_library_names()
        return f"{names[0]} beside llama_cpp" if names else "llama-common library on this OS"
    return binding


def available(feature: str) -> bool:
    return feature_status(feature) == AVAILABLE


def statuses(module=None) -> dict[str, str]:
    """Every feature's status, by name: what run.json and `mateperf info` record."""
    if module is None:
        module, why = _llama_cpp()
        if module is None:
            return {f.name: unavailable_line(f, why) for f in FEATURES}
    return {f.name: feature_status(f, module) for f in FEATURES}


def unavailable(module=None) -> dict[str, str]:
    """The features this build lacks, by name, each with its one line."""
    return {k: v for k, v in statuses(module).items() if v != AVAILABLE}


def require(feature: str, setting: str = "") -> None:
    """Raise FeatureUnavailable (exit code 2, one line) when a setting needs a missing feature;
    `setting` names it ("parameter flash_attn=True")."""
    status = feature_status(feature)
    if status != AVAILABLE:
        raise FeatureUnavailable(f"{setting}: {status}" if setting else status)


_SUPPORTED: list[bool] = []  # the installed build passed once: a process asks only once


def check_supported(version: str | None = None, module=None) -> None:
    """Refuse a llama-cpp-python mateperf cannot run with: LlamaBuildError, one line."""
    installed = version is None and module is None
    if installed and _SUPPORTED:
        return
    version = version or installed_version()
    problem = version_problem(version)
    if problem:
        raise LlamaBuildError(problem)
    if module is None:
        module, why = _llama_cpp()
        if module is None:
            raise LlamaBuildError(f"llama-cpp-python {version}: {why}")
    for f in FEATURES:
        missing = missing_bindings(f, module) if f.required else []
        if missing:
            raise LlamaBuildError(
                f"llama-cpp-python {version} lacks {f.title} ({', '.join(missing)}), "
                f"which mateperf needs; install {MINIMUM_VERSION} or newer"
            )
    if installed:
        _SUPPORTED.append(True)


# --- the build --------------------------------------------------------------------------------

# Backend names llama.cpp's system info starts its sections with, as the build is called.
_GPU_BACKENDS = {
    "CUDA": "CUDA",
    "Metal": "Metal",
    "MTL": "Metal",
    "Vulkan": "Vulkan",
    "ROCm": "HIP",
    "HIP": "HIP",
    "SYCL": "SYCL",
    "OpenCL": "OpenCL",
    "MUSA": "MUSA",
    "CANN": "CANN",
}


def build_kind(system_info: str, gpu_offload: bool) -> str:
    """ "CUDA", "Metal", "Vulkan", ... or "CPU" from llama.cpp's own system info (its sections
    are "<backend> : <features> | ..."), else "GPU (unnamed backend)" when the build offloads
    but names no known backend. Pure."""
    names = re.findall(r"(?:^|\|)\s*([A-Za-z][\w-]*)\s*:", system_info or "")
    kinds = []
    for name in names:
        kind = _GPU_BACKENDS.get(name)
        if kind and kind not in kinds:
            kinds.append(kind)
    if kinds:
        return "+".join(kinds)
    return "GPU (unnamed backend)" if gpu_offload else "CPU"


# --- the projection library -------------------------------------------------------------------

# llama.cpp's common library as CMake names it on each platform (MSVC drops the "lib" prefix;
# MinGW keeps it).
COMMON_LIBRARY_NAMES = {
    "linux": ("libllama-common.so",),
    "darwin": ("libllama-common.dylib", "libllama-common.so"),
    "win32": ("llama-common.dll", "libllama-common.dll"),
}
# `void common_fit_print(const char *, llama_model_params *, llama_context_params *)` (C++,
# common/fit.h) as each toolchain exports it: GCC/Clang's Itanium name (Linux, macOS, MinGW),
# and MSVC's x64 decorated name (llama-common.dll is built with WINDOWS_EXPORT_ALL_SYMBOLS,
# so the export carries the decorated name: ?name@@ YA(cdecl) X(void) PEBD(const char *)
# PEAU<struct>@@(struct *) ... @Z).
COMMON_LIBRARY_ENV = "MATEPERF_LLAMA_COMMON"  # a llama-common library of the same llama.cpp
FIT_PRINT_ITANIUM = "_Z16common_fit_printPKcP18llama_model_paramsP20llama_context_params"
FIT_PRINT_MSVC = "?common_fit_print@@YAXPEBDPEAUllama_model_params@@PEAUllama_context_params@@@Z"
FIT_PRINT_SYMBOLS = {
    "linux": (FIT_PRINT_ITANIUM,),
    "darwin": (FIT_PRINT_ITANIUM,),
    "win32": (FIT_PRINT_MSVC, FIT_PRINT_ITANIUM),
}


def _platform_key(platform: str | None) -> str | None:
    p = platform or sys.platform
    if p.startswith(("linux", "freebsd")):
        return "linux"
    if p in ("darwin", "win32"):
        return p
    return None


def common_library_names(platform: str | None = None) -> tuple[str, ...]:
    """File names of llama.cpp's common library on `platform` (sys.platform by default); empty
    on a platform llama-cpp-python does not build for."""
    key = _platform_key(platform)
    return COMMON_LIBRARY_NAMES[key] if key else ()


def common_library_candidates(platform: str | None = None) -> list[Path]:
    """Where llama.cpp's common library may be: $MATEPERF_LLAMA_COMMON, then beside llama_cpp's
    own libraries (llama_cpp/lib), then site-packages/lib (where the 0.3.36 wheel installs it on
    Linux and macOS) and site-packages/bin (where CMake installs a DLL on Windows).
    No import of llama_cpp."""
    import importlib.util
    import os

    out = []
    env = os.environ.get(COMMON_LIBRARY_ENV)
    if env:
        out.append(Path(env))
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        package = Path(spec.origin).parent
        for folder in (package / "lib", package.parent / "lib", package.parent / "bin"):
            out += [folder / name for name in common_library_names(platform)]
    return out


def common_library(platform: str | None = None) -> Path | None:
    """The first candidate that exists, or None."""
    return next((p for p in common_library_candidates(platform) if p.is_file()), None)


def fit_print_symbols(platform: str | None = None) -> tuple[str, ...]:
    """The exported names common_fit_print may have on `platform`, most likely first."""
    key = _platform_key(platform)
    return FIT_PRINT_SYMBOLS[key] if key else ()
