"""Phases are declared, not probed: a new phase is picked up from its declaration alone.

The tiny phase below is declared here, in the test (its notebook in a temporary folder, its
report in this module); registering it is all it takes for `mateperf`'s parameter handling,
sweeps and FINAL_RESULTS.md to treat it as a phase.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from mateperf import phases, report, results
from mateperf.errors import ParameterError, PhaseError
from mateperf.params import Params, param
from mateperf.phases.declaration import Phase
from mateperf.reports.declaration import PhaseReport
from mateperf.reports.overview import summary_row

PACKAGE = Path(__file__).resolve().parent.parent / "mateperf"


def _tiny_run(n: int = 3, run_dir: str = "") -> pd.DataFrame:
    return pd.DataFrame({"scenario": "count", "trial": range(n), "tiny_ms": [1.0] * n})


def _tiny_summary(df: pd.DataFrame) -> pd.DataFrame:
    return df.groupby("scenario", as_index=False)["tiny_ms"].median()


@dataclass(frozen=True)
class TinyParams(Params):
    n: int = param(3, "trials", at_least=1)


def _tiny_section(df, info, plots_dir, md_dir) -> str:
    return f"## Phase 8 — tiny\n\nThe tiny phase counted {len(df)} trials.\n"


def _tiny_rows(df, info) -> list[dict]:
    return [summary_row("tiny", "— (declared in a test)", "tiny (ms)", "–", "1.0", "–", "–", "")]


REPORT = PhaseReport(
    section=_tiny_section, summary_rows=_tiny_rows, variant_row=None, sweep_extra=None
)


def _notebook(folder: Path) -> Path:
    path = folder / "08_tiny.ipynb"
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Phase 8 — tiny\n"]},
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "source": ["n = 3  # trials\n", 'run_dir = ""\n'],
            "outputs": [],
            "execution_count": None,
        },
    ]
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


@pytest.fixture()
def tiny(tmp_path, monkeypatch) -> Phase:
    monkeypatch.setattr(phases, "_REGISTERED", {})
    declaration = Phase(
        name="tiny",
        number=8,
        notebook=_notebook(tmp_path),
        params=TinyParams,
        uses_model=False,
        reads_config=False,
        run=_tiny_run,
        summarize=_tiny_summary,
        round_split=("n",),
        trial_table=None,
        sweep_metrics=None,
        representative=None,
        report=__name__,
    )
    phases.register(declaration)
    return declaration


def test_a_phase_is_picked_up_from_its_declaration_alone(tiny, tmp_path):
    assert phases.names()[-1] == "tiny" and "tiny" in phases.available_phases()
    assert phases.declared("tiny") is tiny
    assert phases.title("tiny") == "Phase 8 — tiny"
    assert phases.resolve_params("tiny", {"n": "5"}) == {"n": 5}
    with pytest.raises(ParameterError, match="n=0 must be at least 1"):
        phases.resolve_params("tiny", {"n": "0"})
    assert phases.round_split("tiny") == ("n",)

    root = tmp_path / "results"
    params = phases.resolve_params("tiny", {})
    run = results.RunDir.create("tiny", params, root=root, command="mateperf run tiny")
    run.write_frame(results.tidy(tiny.run(**params), run.run_id, "tiny", params))
    run.finish(results.STATUS_OK)
    text = report.write_final(root=root).read_text(encoding="utf-8")
    summary = report.summary_section(text)
    assert "— (declared in a test)" in summary and "tiny (ms)" in summary
    assert "The tiny phase counted 3 trials." in text


def test_every_phase_declares_every_hook():
    numbers = phases.numbers()
    assert sorted(numbers.values()) == list(range(1, len(numbers) + 1))  # one each, no gap
    for name in phases.names():
        d = phases.declared(name)
        assert (d.name, d.number) == (name, numbers[name])
        notebook = phases.notebook_path(name)
        assert notebook.name.startswith(f"{d.number:02d}_") if notebook else d.recorded_by
        assert d.report == f"mateperf.reports.{name}"
        assert d.round_split == tuple(d.round_split)


def test_a_declaration_states_its_abilities_and_they_are_checked(tiny):
    """What the CLI asks (does it load the model, does it read a recommended.json) is declared,
    and a declaration whose parameters contradict it fails when it is made."""
    assert [p for p in phases.names() if phases.declared(p).uses_model] == [
        "memory",
        "llm",
        "cpu",
        "gpu",
        "final",
    ]
    assert [p for p in phases.names() if phases.declared(p).reads_config] == ["final"]
    with pytest.raises(ValueError, match="declared with parameter 'model', but its params lack"):
        dataclasses.replace(tiny, uses_model=True)
    with pytest.raises(PhaseError, match="number 3 is phase 'ipc'"):
        phases.register(dataclasses.replace(tiny, name="clash", number=3))


def test_the_gpu_phase_has_summary_rows():
    """The bug a probe hid: FINAL_RESULTS.md dropped the gpu row when a GPU was measured."""
    from mateperf.reports import declaration

    assert declaration.declared("gpu").summary_rows is not None


def _modules() -> dict[str, Path]:
    return {str(p.relative_to(PACKAGE.parent)): p for p in sorted(PACKAGE.rglob("*.py"))}


def phase_probes() -> list[str]:
    """`getattr`/`hasattr` calls whose object is a phase module or a report module."""
    found = []
    for shown, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = _phase_module_names(tree)
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and node.args
            ):
                continue
            obj = ast.unparse(node.args[0])
            if (
                obj in aliases
                or "module(phase" in obj
                or "mateperf.reports" in obj
                or obj.startswith(("phases.", "mateperf.phases", "mateperf.reports"))
            ):
                found.append(f"{shown}:{node.lineno}: {ast.unparse(node)}")
    return found


def _phase_module_names(tree: ast.Module) -> set[str]:
    """Local names bound to a phase or report module (`from mateperf.phases import gpu`, ...)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            ("mateperf.phases", "mateperf.reports")
        ):
            names |= {a.asname or a.name for a in node.names}
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            call = ast.unparse(node.value)
            if any(m in call for m in ("module(phase", "mateperf.phases", "mateperf.reports")):
                names |= {ast.unparse(t) for t in node.targets}
    return names


def test_no_getattr_probe_on_a_phase_module():
    probes = phase_probes()
    assert not probes, "probes of phase modules (read the Phase declaration):\n" + "\n".join(probes)


def test_every_phase_prints_progress_through_the_one_helper(capsys):
    """stdout (JupyterLab shows stderr on red), in the form `mateperf run` keeps."""
    import importlib

    from mateperf import execute, progress

    for name in phases.available_phases():  # a recorded phase prints in no console of ours
        importlib.import_module(f"mateperf.phases.{name}.measure")._progress("step 1 of 2")
        out, err = capsys.readouterr()
        assert (out, err) == (f"[{name}] step 1 of 2\n", "")
        assert execute.PROGRESS_LINE.match(out) and progress.LINE is execute.PROGRESS_LINE
