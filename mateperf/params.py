"""A phase's parameters: one frozen dataclass, the one schema of what the phase accepts.

Each phase declares `class Params(params.Params)` in `mateperf/phases/<name>/params.py`, every
field made with `param(default, help, ...)`: its type (from the default), its range, and the
line `mateperf run PHASE --help` prints. Building it is the only validation there is: `-p`
values at resolve, the notebook's namespace in `open_phase`, keyword arguments to `run()`
all go through `Params(**values)`, so a bad value gets the same one line wherever it comes
from. Rules between fields go in the subclass's `check()`.

The notebook's cell tagged `parameters` repeats the names, defaults and help (papermill
injects into it); `tests/test_phase_params.py` holds every phase's cell to its dataclass.

A Params is also a read-only mapping (`p["trials"]`, `**p`), so a frame's stored parameters
and a phase's code read it the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from mateperf.errors import ParameterError

# Values that phases' parameters and the instruments behind them share, stated once here
# (below both): a phase's schema is read without importing what measures.
DEFAULT_MODEL = "GGUF path; empty means $MATEPERF_MODEL, else the default Gemma 3 270M Q4_K_M"
PEER_KINDS = ("python", "csharp")  # the avatar stand-ins (mateperf.bridge.process)
BACKGROUNDS = ("idle", "companion")  # what runs beside the model (mateperf.companion_load)
# KV cache element types a load may ask for, by llama.cpp's name (ggml type names).
KV_CACHE_TYPES = ("f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
UNQUANTISED = ("f16", "bf16", "f32")
# llama.cpp's ggml_type numbers of the KV cache types (what Llama(type_k=...) takes)
GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def param(
    default: Any,
    help: str = "",  # noqa: A002 - the field's help line
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    choices: tuple | None = None,
    variant: int = 0,
) -> Any:
    """A parameter field: its default (which fixes its type), help and allowed range.

    `variant` (1, 2, ...: its place in a variant's label; 0: none): changing it makes a
    different test, not a resize (the C# peer instead of the Python one, an injected leak),
    and the report keeps the newest run of each variant apart.
    """
    limits = {"at_least": at_least, "above": above, "at_most": at_most, "choices": choices}
    return dataclasses.field(default=default, metadata={"help": help, "variant": variant, **limits})


def _kind(default: Any) -> type:
    return type(default)


def coerce(name: str, raw: Any, default: Any) -> Any:
    """`raw` (a CLI string, a numpy scalar from a grid) cast to the default's built-in type."""
    kind = _kind(default)
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    text = str(raw).strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
    except ValueError:
        raise ParameterError(
            f"parameter {name}={text!r}: expected {kind.__name__} (default {default!r})"
        ) from None
    raise ParameterError(f"parameter {name}: unsupported type {kind.__name__} in the schema")


@dataclasses.dataclass(frozen=True)
class Params(Mapping):
    """Base of every phase's parameters. Subclasses add fields with `param` and may `check`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = coerce(f.name, getattr(self, f.name), f.default)
            object.__setattr__(self, f.name, value)
            _check_range(f.name, value, f.metadata)
        self.check()

    def check(self) -> None:
        """Rules between fields (ParameterError, one line); none by default."""

    # --- the schema ---------------------------------------------------------------------------

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def variant_names(cls) -> tuple[str, ...]:
        """The parameters whose change makes a run a different test, in their label's order."""
        marked = [f for f in dataclasses.fields(cls) if f.metadata.get("variant")]
        return tuple(f.name for f in sorted(marked, key=lambda f: f.metadata["variant"]))

    @classmethod
    def help_rows(cls) -> list[tuple[str, str, str, str]]:
        """(name, type, default, meaning) of each parameter, for `run PHASE --help`."""
        return [
            (f.name, _kind(f.default).__name__, repr(f.default), f.metadata.get("help", ""))
            for f in dataclasses.fields(cls)
        ]

    @classmethod
    def help_text(cls) -> str:
        """The parameters as `--help` lists them: name, type and default, then the meaning."""
        rows = cls.help_rows()
        width = max(len(r[0]) for r in rows)
        lines = ["parameters (-p NAME=VALUE):"]
        for name, kind, default, meaning in rows:
            lines.append(f"  {name:<{width}}  {kind:<5} default {default}")
            if meaning:
                lines.append(f"  {'':<{width}}  {meaning}")
        return "\n".join(lines)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], what: str = "") -> Params:
        """Defaults with `values` applied; a name the schema lacks is refused by name."""
        known = cls.defaults()
        unknown = [k for k in values if k not in known]
        if unknown:
            where = f" for phase {what}" if what else ""
            raise ParameterError(
                f"unknown parameter {unknown[0]!r}{where} (known: {', '.join(known)})"
            )
        return cls(**values)

    # --- the mapping --------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        if name not in self._names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items())


def _check_range(name: str, value: Any, limits: Mapping[str, Any]) -> None:
    choices = limits.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join(str(c) for c in choices)
        raise ParameterError(f"parameter {name}={value!r} must be one of {shown}")
    bounds = (
        ("at_least", lambda v, b: v >= b, "must be at least"),
        ("above", lambda v, b: v > b, "must be above"),
        ("at_most", lambda v, b: v <= b, "must be at most"),
    )
    for key, ok, words in bounds:
        bound = limits.get(key)
        if bound is not None and not ok(value, bound):
            raise ParameterError(f"parameter {name}={value!r} {words} {bound:g}")


def refuse(name: str, value: Any, rule: str) -> None:
    """Raise the one-line error of a rule: `parameter name=value rule` (or `...value: rule`)."""
    gap = "" if rule.startswith(":") else " "
    raise ParameterError(f"parameter {name}={value!r}{gap}{rule}")


# --- the model's parameters, shared by the phases that load it -----------------------------------


def model_param(variant: int = 0) -> Any:
    """`model`: the GGUF file (empty: $MATEPERF_MODEL, else the default model)."""
    return param("", DEFAULT_MODEL, variant=variant)


def n_ctx_param(default: int = 2048, at_least: int = 1) -> Any:
    """`n_ctx`: the context window in tokens."""
    return param(default, "context window in tokens", at_least=at_least)


def n_threads_param(variant: int = 0) -> Any:
    """`n_threads`: generation threads, 0 for the CPUs this process may use."""
    return param(
        0,
        "0 means the CPUs this process may use (affinity and cgroup quota)",
        at_least=0,
        variant=variant,
    )


def n_gpu_layers_param(variant: int = 0) -> Any:
    """`n_gpu_layers`: layers offloaded to the GPU, -1 for all."""
    return param(0, "-1 means all layers", at_least=-1, variant=variant)
