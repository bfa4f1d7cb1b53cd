"""The phases, their notebooks, and their parameter schema.

A phase's notebook is `notebooks/NN_<name>.ipynb`. What the phase accepts is its `Params`
dataclass (`mateperf.params`), the one schema that `mateperf run`, `sweep` and the notebook
validate against; the notebook's cell tagged `parameters` repeats it, and a test holds the two
together for every phase.

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
import re
import tokenize
from pathlib import Path

from mateperf.errors import PhaseError
from mateperf.host import REPO_ROOT
from mateperf.params import Params
from mateperf.phases.declaration import Phase

# The phase packages under mateperf/phases. Each declares its number (`Phase.number`), the one
# source of the phases' order (`names()`) and of their notebooks' NN_ prefix.
BUILT_IN = ("memory", "llm", "ipc", "cpu", "gpu", "final", "live")
# Phases declared outside this package (`register`), by name.
_REGISTERED: dict[str, Phase] = {}
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
RUN_DIR_PARAM = "run_dir"
RUN_DIR_HELP = "set by `mateperf run`; empty makes a new run directory under results/"
NOQA = re.compile(r"\s*#\s*noqa.*$")
# Parameters that name a file. A kernel runs with the run directory as its working directory,
# so a relative path that was right where the command was typed is wrong there.
PATH_PARAMS = ("model", "config", "companion_model")


def check_phase(phase: str) -> str:
    if phase not in BUILT_IN and phase not in _REGISTERED:
        raise PhaseError(f"unknown phase {phase!r} (phases: {', '.join(names())})")
    return phase


def numbers() -> dict[str, int]:
    """Phase -> its number, as each declaration states it (built-in and registered)."""
    found = {name: declared(name).number for name in BUILT_IN}
    found.update((name, d.number) for name, d in _REGISTERED.items())
    return found


def names() -> tuple[str, ...]:
    """Every phase, in the order of their numbers."""
    found = numbers()
    return tuple(sorted(found, key=found.__getitem__))


def register(declaration: Phase) -> None:
    """Add a phase declared outside mateperf.phases; it is then a phase like the six."""
    if declaration.name in BUILT_IN:
        raise PhaseError(f"phase {declaration.name!r} is declared already")
    taken = {n: name for name, n in numbers().items() if name != declaration.name}
    if declaration.number in taken:
        raise PhaseError(
            f"phase {declaration.name!r}: number {declaration.number} is phase "
            f"{taken[declaration.number]!r}'s"
        )
    _REGISTERED[declaration.name] = declaration


def declared(phase: str) -> Phase:
    """The phase's declaration (importing its package: its parameters and its analysis, never
    its measuring code, which `run` imports when it is called)."""
    if check_phase(phase) in _REGISTERED:
        return _REGISTERED[phase]
    return importlib.import_module(f"mateperf.phases.{phase}").DECLARATION


def notebook_path(phase: str) -> Path | None:
    check_phase(phase)
    if phase in _REGISTERED and _REGISTERED[phase].notebook is not None:
        path = _REGISTERED[phase].notebook
        return path if path.is_file() else None
    found = sorted(NOTEBOOK_DIR.glob(f"{declared(phase).number:02d}_*.ipynb"))
    return found[0] if found else None


def require_notebook(phase: str) -> Path:
    path = notebook_path(phase)
    if path is None:
        by = recorded_by(phase)
        if by:
            raise PhaseError(f"phase {phase!r} has no notebook to run: it is recorded by {by}")
        raise PhaseError(f"phase {phase!r} is not built yet (no notebooks/0N_*.ipynb)")
    return path


def recorded_by(phase: str) -> str:
    """What records a phase that no notebook runs ("" for the phases `mateperf run` runs)."""
    return declared(phase).recorded_by


def available_phases() -> list[str]:
    """The phases `mateperf run` can run: those with a notebook."""
    return [p for p in names() if notebook_path(p) is not None]


def reported_phases() -> list[str]:
    """The phases whose stored runs reports read: those with a notebook, and those recorded
    by another process (the live phase)."""
    return [p for p in names() if notebook_path(p) is not None or recorded_by(p)]


def schema(phase: str) -> type[Params]:
    """The phase's parameters dataclass: the one schema (`mateperf.params`)."""
    return declared(phase).params


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
    """(name, type, default, meaning) of each parameter, from the phase's dataclass."""
    return schema(phase).help_rows()


def parameters_cell(phase: str) -> str:
    """The notebook's parameters cell as the dataclass states it (papermill injects below it)."""
    lines = []
    values = defaults(phase)
    for name, _kind, _default, meaning in parameter_help(phase):
        value = values[name]
        shown = json.dumps(value) if isinstance(value, str) else repr(value)
        line = f"{name} = {shown}"
        line += f"  # {meaning}" if meaning else ""
        lines.append(line + ("  # noqa: E501" if len(line) > 100 else ""))
    lines.append(f'{RUN_DIR_PARAM} = ""  # {RUN_DIR_HELP}')
    return "\n".join(lines)


def notebook_help(phase: str) -> list[tuple[str, str, str, str]]:
    """(name, type, default, meaning) as the notebook's parameters cell states them."""
    source = parameters_source(phase)
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = NOQA.sub("", tok.string).lstrip("#").strip()
    out = []
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if not isinstance(target, ast.Name) or target.id == RUN_DIR_PARAM:
            continue
        value = ast.literal_eval(node.value)
        out.append((target.id, type(value).__name__, repr(value), comments.get(node.lineno, "")))
    return out


def title(phase: str) -> str:
    """The first heading of the phase's notebook, e.g. "Phase 4 — CPU threads ..."; for a
    recorded phase, the first line of its declaring module's docstring."""
    path = notebook_path(phase)
    if path is None:
        if recorded_by(phase):
            if phase in _REGISTERED:
                return f"Phase {declared(phase).number} — {phase}"
            doc = importlib.import_module(f"mateperf.phases.{phase}").__doc__ or phase
            return doc.strip().splitlines()[0].rstrip(".")
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
    """Name -> default of every parameter (the dataclass's; run_dir is not a parameter)."""
    return schema(phase).defaults()


def resolve_params(phase: str, overrides: dict) -> dict:
    """Defaults with overrides applied, cast and validated; unknown names refused."""
    values = schema(phase).from_values(overrides, what=phase).as_dict()
    _check_model(phase, values)
    return absolute_paths(values)


def validate(phase: str, params: dict) -> None:
    """The phase's checks of impossible values, and the model file for phases with one."""
    _check_model(phase, schema(phase).from_values(params, what=phase))


def _check_model(phase: str, values) -> None:
    if declared(phase).uses_model:
        from mateperf.model import resolve_model

        resolve_model(values["model"] or None)
