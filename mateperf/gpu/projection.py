"""llama.cpp's own VRAM projection: a no-allocation dry run, read from what llama.cpp prints.

llama-cpp-python 0.3.36 installs `lib/libllama-common.so`, whose `common_fit_print(path,
llama_model_params*, llama_context_params*)` loads the model with `no_alloc` (metadata only,
every allocation simulated), builds a context, and prints with C `printf`, one line per device
and one for the host: `<name> <model MiB> <context MiB> <compute MiB>` (truncated to whole
MiB). This is the measurement behind llama.cpp's `--fit`.

Why a child process: a dry run with the wrong load mode (mmap) or a broken build ends in a
GGML_ASSERT that aborts the whole process, and what it prints goes to the C stdout/stderr,
which Python's sys.stdout never sees. So the child runs with its file descriptors 1 and 2
redirected to files (subprocess does the dup2), writes a marker before and after each dry run
(after fflush, so C and Python output keep their order), and the parent parses the file. A
child that dies takes only the configuration it was running: the rest run in a new child.

Without the library, its symbol or the bindings a dry run needs (`no_alloc`, `load_mode`:
mateperf.llama_features, feature `dry_run_projection`), every configuration gets the one status
"unavailable with this build (llama-cpp-python X.Y.Z): llama.cpp's dry-run VRAM projection ...".
The library and the symbol have platform names (llama_features.common_library_names,
fit_print_symbols): Linux libllama-common.so, macOS libllama-common.dylib, Windows
llama-common.dll, whose export carries MSVC's decorated name of the C++ function.

The module imports only the standard library at the top: the child must start fast.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from mateperf import llama_features
from mateperf.gpu.child import run_module
from mateperf.params import GGML_TYPES

# this platform's name of llama.cpp's common library (Linux: libllama-common.so)
LIBRARY = (llama_features.common_library_names() or ("libllama-common.so",))[0]
LIBRARY_ENV = llama_features.COMMON_LIBRARY_ENV  # a llama-common library of the same llama.cpp
MARK = "@@mateperf-dryrun"
UNAVAILABLE = llama_features.UNAVAILABLE
FEATURE = "dry_run_projection"
OK = "ok"
_LINE = re.compile(r"^(\S+) (\d+) (\d+) (\d+)\s*$")


def candidate_libraries() -> list[Path]:
    """Where llama.cpp's common library may be, by this platform's name (see
    llama_features.common_library_candidates). No import of llama_cpp."""
    return llama_features.common_library_candidates()


def dry_run_config(
    n_gpu_layers: int,
    n_ctx: int,
    n_batch: int,
    n_ubatch: int,
    offload_kqv: bool = True,
    flash_attn: bool = False,
    type_k: str = "f16",
    type_v: str = "f16",
) -> dict:
    """The settings mateperf.model.load passes to llama-cpp-python, as a dry run takes them;
    type_k / type_v: the KV cache types (f16, q8_0, q4_0, ...)."""
    for name in (type_k, type_v):
        if name not in GGML_TYPES:
            raise ValueError(f"unknown KV cache type {name!r} ({', '.join(GGML_TYPES)})")
    return {
        "n_gpu_layers": int(n_gpu_layers),
        "n_ctx": int(n_ctx),
        "n_batch": int(n_batch),
        "n_ubatch": int(n_ubatch or n_batch),
        "offload_kqv": bool(offload_kqv),
        "flash_attn": bool(flash_attn),
        "type_k": type_k,
        "type_v": type_v,
    }


# Dry runs are deterministic for a file, a config and a library: a process that projects the
# same model again (a layer sweep run from Python) reuses them. Only successes are kept.
_MEMO: dict[tuple, dict] = {}


def _memo_key(model_path: Path, config: dict) -> tuple:
    st = model_path.stat()
    return (
        str(model_path.resolve()),
        st.st_size,
        st.st_mtime_ns,
        json.dumps(config, sort_keys=True),
        os.environ.get(LIBRARY_ENV, ""),
    )


def project(
    model_path: str | os.PathLike, configs: list[dict], timeout_s: float = 300.0
) -> tuple[list[dict], dict]:
    """Dry-run every config (see `_project`), reusing this process's earlier results."""
    path = Path(model_path)
    keys = [_memo_key(path, c) for c in configs] if path.is_file() else [None] * len(configs)
    missing = [i for i, k in enumerate(keys) if k is None or k not in _MEMO]
    if not missing and _MEMO.get(("facts", keys[0][0] if keys else "")):
        facts = dict(_MEMO[("facts", keys[0][0])], seconds=0.0)
        return [dict(_MEMO[k]) for k in keys], facts
    results, facts = _project(path, [configs[i] for i in missing], timeout_s)
    out: list[dict] = [dict(_MEMO[k]) if i not in missing else {} for i, k in enumerate(keys)]
    for i, result in zip(missing, results, strict=True):
        out[i] = result
        if keys[i] is not None and result["status"] == OK:
            _MEMO[keys[i]] = dict(result)
    if keys and keys[0] is not None and facts["status"] == OK:
        _MEMO[("facts", keys[0][0])] = dict(facts)
    return out, facts


def _project(model_path: Path, configs: list[dict], timeout_s: float) -> tuple[list[dict], dict]:
    """Dry-run every config; returns (one result per config, facts about the build).

    A result: status ("ok", "projection unavailable with this build: ...", or why the dry run
    failed), `devices` {name: [model, context, compute] MiB} as llama.cpp printed them, and the
    sums over GPU devices (`proj_device_*_mb`) and for the host (`proj_host_*_mb`).
    The facts: library path, gpu_offload of the build, seconds.
    """
    results: list[dict | None] = [None] * len(configs)
    facts: dict = {"library": "", "gpu_offload": None, "seconds": 0.0, "status": OK}
    start = time.perf_counter()
    index = 0
    while index < len(configs):
        done, child = _run_child(Path(model_path), configs, index, timeout_s, facts)
        for i, result in done.items():
            results[i] = result
        if facts["status"] != OK:  # the build cannot project at all
            for i in range(len(configs)):
                results[i] = results[i] or _empty(facts["status"])
            break
        if index not in done and index not in child["begun"]:
            # died before its first dry run (import, library): no config can run
            facts["status"] = child["why"]
            for i in range(len(configs)):
                results[i] = results[i] or _empty(child["why"], log_tail=child["log_tail"])
            break
        finished = [i for i in done if i >= index]
        next_index = max(finished) + 1 if finished else index
        if next_index < len(configs) and results[next_index] is None:
            # the child died inside this config: record why, go on with the next one
            results[next_index] = _empty(child["why"], log_tail=child["log_tail"])
            next_index += 1
        index = next_index
    facts["seconds"] = round(time.perf_counter() - start, 3)
    return [r or _empty("not run") for r in results], facts


def _empty(status: str, log_tail: str = "") -> dict:
    nan = float("nan")
    return {
        "status": status,
        "devices": {},
        "proj_device_model_mb": nan,
        "proj_device_context_mb": nan,
        "proj_device_compute_mb": nan,
        "proj_device_mb": nan,
        "proj_host_model_mb": nan,
        "proj_host_context_mb": nan,
        "proj_host_compute_mb": nan,
        "proj_host_mb": nan,
        "log_tail": log_tail,
    }


def _run_child(model_path: Path, configs: list[dict], start: int, timeout_s: float, facts: dict):
    with tempfile.TemporaryDirectory(prefix="mateperf-dryrun-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps({"model": str(model_path), "configs": configs, "start": start}),
            encoding="utf-8",
        )
        child = run_module("mateperf.gpu.projection", [str(spec)], Path(tmp), timeout_s)
    begun: set[int] = set()
    done = _parse(child.stdout, facts, begun)
    why = f"dry run {child.describe()}" if not child.ok else "dry run printed no projection"
    return done, {"why": why, "log_tail": child.stderr_tail, "begun": begun}


def _parse(text: str, facts: dict, begun: set[int]) -> dict[int, dict]:
    """Results by config index from the child's stdout (markers and llama.cpp's lines)."""
    done: dict[int, dict] = {}
    current: int | None = None
    devices: dict[str, list[int]] = {}
    for line in text.splitlines():
        if line.startswith(MARK):
            parts = line[len(MARK) :].strip().split(" ", 1)
            tag, rest = parts[0], parts[1] if len(parts) > 1 else ""
            if tag == "library":
                facts["library"] = rest
            elif tag == "offload":
                facts["gpu_offload"] = rest.strip() == "1"
            elif tag == "unavailable":  # the child sends the whole line
                facts["status"] = rest
            elif tag == "begin":
                current, devices = int(rest), {}
                begun.add(current)
            elif tag == "end" and current is not None:
                done[current] = _result(devices)
                current = None
            continue
        match = _LINE.match(line)
        if match and current is not None:
            name = match.group(1)
            values = [int(match.group(i)) for i in (2, 3, 4)]
            devices[name] = [
                a + b for a, b in zip(devices.get(name, [0, 0, 0]), values, strict=True)
            ]
    return done


def _result(devices: dict[str, list[int]]) -> dict:
    host = devices.get("Host", [0, 0, 0])
    gpu = [0, 0, 0]
    for name, values in devices.items():
        if name != "Host":
            gpu = [a + b for a, b in zip(gpu, values, strict=True)]
    return {
        "status": OK if devices else "dry run printed no projection",
        "devices": devices,
        "proj_device_model_mb": float(gpu[0]),
        "proj_device_context_mb": float(gpu[1]),
        "proj_device_compute_mb": float(gpu[2]),
        "proj_device_mb": float(sum(gpu)),
        "proj_host_model_mb": float(host[0]),
        "proj_host_context_mb": float(host[1]),
        "proj_host_compute_mb": float(host[2]),
        "proj_host_mb": float(sum(host)),
        "log_tail": "",
    }


# --- the child --------------------------------------------------------------------------------


def _say(text: str) -> None:
    os.write(1, f"{MARK} {text}\n".encode())


def _load_fit_print(ctypes):
    """(library path, common_fit_print, "") or (path, None, why not), by this platform's names
    of the library and of the exported symbol (MSVC decorates C++ names: fit_print_symbols)."""
    lib_path = llama_features.common_library()
    if lib_path is None:
        return None, None, "no llama-common library"
    if os.name == "nt":  # its dependencies (llama.dll, ggml.dll) sit beside llama_cpp's
        for folder in {lib_path.parent, *(p.parent for p in candidate_libraries())}:
            if folder.is_dir():
                os.add_dll_directory(str(folder))
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as exc:
        return lib_path, None, f"{lib_path} cannot be loaded: {exc}"
    symbols = llama_features.fit_print_symbols()
    for symbol in symbols:
        try:
            return lib_path, getattr(lib, symbol), ""
        except AttributeError:
            continue
    return lib_path, None, f"{lib_path} exports no common_fit_print (tried {', '.join(symbols)})"


def _child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import llama_cpp

    _say(f"offload {int(bool(llama_cpp.llama_supports_gpu_offload()))}")
    status = llama_features.feature_status(FEATURE, llama_cpp)
    if status != llama_features.AVAILABLE:
        if llama_features.common_library() is None:
            folders = dict.fromkeys(str(p.parent) for p in candidate_libraries())
            status += f" (looked in {', '.join(folders) or 'nowhere'})"
        _say(f"unavailable {status}")
        return 0
    lib_path, fit_print, why = _load_fit_print(ctypes)
    if fit_print is None:
        _say(f"unavailable {llama_features.unavailable_line(FEATURE, why)}")
        return 0
    _say(f"library {lib_path}")
    fit_print.argtypes = [
        ctypes.c_char_p,
        ctypes.POINTER(llama_cpp.llama_model_params),
        ctypes.POINTER(llama_cpp.llama_context_params),
    ]
    fit_print.restype = None
    # C stdio of the library's runtime, flushed so its printf lines and our markers keep order
    libc = ctypes.CDLL("ucrtbase") if os.name == "nt" else ctypes.CDLL(None)
    path = spec["model"].encode()
    for i, cfg in enumerate(spec["configs"]):
        if i < spec["start"]:
            continue
        mp = llama_cpp.llama_model_default_params()
        ngl = cfg["n_gpu_layers"]
        mp.n_gpu_layers = 0x7FFFFFFF if ngl < 0 else ngl  # as llama-cpp-python passes -1
        # no_alloc needs the plain load mode and no lazy loading, else llama.cpp aborts
        # (a config may ask for lazy loading only to cause that abort in a test)
        mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        mp.lazy_mode = cfg.get("lazy_mode", llama_cpp.LLAMA_LAZY_MODE_OFF)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = cfg["n_ctx"]
        cp.n_batch = cfg["n_batch"]
        cp.n_ubatch = min(cfg["n_batch"], cfg["n_ubatch"])
        cp.n_threads = cp.n_threads_batch = 1
        cp.offload_kqv = cfg["offload_kqv"]
        cp.type_k = GGML_TYPES[cfg.get("type_k", "f16")]
        cp.type_v = GGML_TYPES[cfg.get("type_v", "f16")]
        cp.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if cfg["flash_attn"]
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        libc.fflush(None)
        _say(f"begin {i}")
        fit_print(path, ctypes.byref(mp), ctypes.byref(cp))
        libc.fflush(None)
        _say(f"end {i}")
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
