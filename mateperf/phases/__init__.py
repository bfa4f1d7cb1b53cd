"""The phases, their notebooks, and their parameter schema.

A phase's notebook is `notebooks/NN_<name>.ipynb`; its cell tagged `parameters` is the schema
(names, and types from the default values) that `mateperf run` and `sweep` validate against,
so the notebook and the CLI can never disagree about what a phase accepts.

What each phase provides (run, summarize, its hooks, its report) is its declaration, a
`Phase` that the module `mateperf.phases.<name>` holds as `DECLARATION`; a phase declared
elsewhere joins through `register`. Callers read `declared(phase)`, never the module.
"""

from __future__ import annotations

import ast
import importlib
import io
import json
import os
import tokenize
from pathlib import Path

from mateperf.errors import ParameterError, PhaseError
from mateperf.host import REPO_ROOT
from mateperf.phases.declaration import Phase

PHASE_NUMBERS = {"memory": 1, "llm": 2, "ipc": 3, "cpu": 4, "gpu": 5, "final": 6}
PHASES = tuple(PHASE_NUMBERS)
# Phases declared outside this package (`register`), by name.
_REGISTERED: dict[str, Phase] = {}
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
RUN_DIR_PARAM = "run_dir"
# Parameters that name a file. A kernel runs with the run directory as its working directory,
# so a relative path that was right where the command was typed is wrong there.
PATH_PARAMS = ("model",)


def check_phase(phase: str) -> str:
    if phase not in PHASE_NUMBERS:
        raise PhaseError(f"unknown phase {phase!r} (phases: {', '.join(PHASES)})")
    return phase


def register(declaration: Phase) -> None:
    """Add a phase declared outside mateperf.phases; it is then a phase like the six."""
    global PHASES
    if declaration.name in PHASE_NUMBERS and declaration.name not in _REGISTERED:
        raise PhaseError(f"phase {declaration.name!r} is declared already")
    _REGISTERED[declaration.name] = declaration
    PHASE_NUMBERS[declaration.name] = declaration.number
    PHASES = tuple(sorted(PHASE_NUMBERS, key=PHASE_NUMBERS.__getitem__))


def declared(phase: str) -> Phase:
    """The phase's declaration (importing its module: only when it is about to be used)."""
    if check_phase(phase) in _REGISTERED:
        return _REGISTERED[phase]
    return importlib.import_module(f"mateperf.phases.{phase}").DECLARATION


def notebook_path(phase: str) -> Path | None:
    check_phase(phase)
    if phase in _REGISTERED and _REGISTERED[phase].notebook is not None:
        path = _REGISTERED[phase].notebook
        return path if path.is_file() else None
    found = sorted(NOTEBOOK_DIR.glob(f"{PHASE_NUMBERS[phase]:02d}_*.ipynb"))
    return found[0] if found else None


def require_notebook(phase: str) -> Path:
    path = notebook_path(phase)
    if path is None:
        raise PhaseError(f"phase {phase!r} is not built yet (no notebooks/0N_*.ipynb)")
    return path


def available_phases() -> list[str]:
    return [p for p in PHASES if notebook_path(p) is not None]


def parameters(phase: str) -> dict:
    """Name -> default of the notebook's `parameters` cell, in order (run_dir included)."""
    return _literal_assignments(parameters_source(phase))


def parameters_source(phase: str) -> str:
    nb = json.loads(require_notebook(phase).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return "".join(cell["source"])
    raise PhaseError(f"notebook of phase {phase!r} has no cell tagged 'parameters'")


def parameter_help(phase: str) -> list[tuple[str, str, str, str]]:
    """(name, type, default, meaning) of each parameter, the meaning from its line's comment."""
    source = parameters_source(phase)
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out = []
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if not isinstance(target, ast.Name) or target.id == RUN_DIR_PARAM:
            continue
        value = ast.literal_eval(node.value)
        out.append((target.id, type(value).__name__, repr(value), comments.get(node.lineno, "")))
    return out


def title(phase: str) -> str:
    """The first heading of the phase's notebook, e.g. "Phase 4 — CPU threads ..."."""
    path = notebook_path(phase)
    if path is None:
        return "not built yet"
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return phase


def _literal_assignments(source: str) -> dict:
    params = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name):
            params[target.id] = ast.literal_eval(node.value)
    return params


def round_split(phase: str) -> tuple[str, ...]:
    """The phase's repetition parameters that a sweep divides among its rounds, primary first.

    Declared as the phase's `round_split`; empty for a phase whose every run is one
    replicate (memory), where each round runs the whole point again.
    """
    return declared(phase).round_split


def absolute_paths(params: dict) -> dict:
    """`params` with every non-empty path parameter made absolute (against the caller's cwd)."""
    out = dict(params)
    for name in PATH_PARAMS:
        value = out.get(name)
        if isinstance(value, str) and value:
            out[name] = os.path.abspath(os.path.expanduser(value))
    return out


def defaults(phase: str) -> dict:
    """The parameters cell's values, without run_dir."""
    schema = parameters(phase)
    schema.pop(RUN_DIR_PARAM, None)
    return schema


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce_value(name: str, raw, default):
    """Cast raw (a CLI string or a numpy scalar from a grid) to the default's built-in type."""
    kind = type(default)
    text = str(raw).strip()
    try:
        if kind is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
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


def resolve_params(phase: str, overrides: dict) -> dict:
    """Defaults from the notebook with overrides applied and cast; unknown names refused."""
    schema = defaults(phase)
    unknown = [k for k in overrides if k not in schema]
    if unknown:
        raise ParameterError(
            f"unknown parameter {unknown[0]!r} for phase {phase} (known: {', '.join(schema)})"
        )
    params = dict(schema)
    for name, raw in overrides.items():
        params[name] = coerce_value(name, raw, schema[name])
    validate(phase, params)
    return absolute_paths(params)


def validate(phase: str, params: dict) -> None:
    """The phase's own checks of impossible values, and the model file for phases with one."""
    check = declared(phase).validate
    if check is not None:
        check(params)
    if "model" in params:
        from mateperf.model import resolve_model

        resolve_model(params["model"] or None)
