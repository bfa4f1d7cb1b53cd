"""The committed notebooks as papermill and JupyterLab read them: every parameter seen, no
outputs, nothing JupyterLab would change on opening them."""

import json
import re

import nbformat
import papermill as pm
import pytest
from ipykernel.ipkernel import IPythonKernel
from jupyter_client.kernelspec import KernelSpecManager

from mateperf import phases
from mateperf.host import REPO_ROOT


@pytest.mark.parametrize("phase", phases.available_phases())
def test_papermill_reads_every_parameter_of_the_parameters_cell(phase):
    # papermill warns "Passed unknown parameter" for a line of the parameters cell it cannot
    # parse (a `;` in a comment was enough), so its view must match the schema mateperf reads
    seen = set(pm.inspect_notebook(str(phases.require_notebook(phase))))
    assert seen == set(phases.parameters(phase))


@pytest.mark.parametrize("phase", phases.available_phases())
def test_notebooks_are_committed_without_outputs(phase):
    nb = json.loads(phases.require_notebook(phase).read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)


COMMITTED = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_jupyterlab_leaves_a_committed_notebook_unmodified(path):
    """Opened in JupyterLab and left alone, a notebook must not be marked modified.

    JupyterLab 4 marks a notebook modified when, on opening, it has to change the model: it adds
    an `id` to a cell without one (nbformat 4.5), and once the kernel connects it writes the
    kernel's `kernelspec` and full `language_info` into the metadata. A stub such as
    {"display_name": "Python 3"} and {"name": "python"} was enough to mark every notebook
    modified, and autosave would then rewrite the tracked file. The server saves with
    nbformat.write, so the committed bytes are what it writes.
    """
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    assert all(cell.get("id") for cell in nb.cells)
    assert text == nbformat.writes(nb) + "\n"  # as nbformat.write saves it

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert nb.metadata["kernelspec"] == {
        "display_name": spec.display_name,
        "language": spec.language,
        "name": "python3",
    }
    # The kernel's Python version is the one part that differs between machines (JupyterLab
    # records it on a Python other than the one the notebooks were committed with).
    info = dict(nb.metadata["language_info"])
    kernel = dict(IPythonKernel.language_info)
    assert re.fullmatch(r"3\.\d+\.\d+", info.pop("version"))
    kernel.pop("version")
    assert info == kernel


def test_explore_links_the_report_that_mateperf_report_writes():
    from mateperf import explore, report

    assert explore.FINAL_REPORT == report.FINAL_NAME


@pytest.mark.slow
def test_llama_cpp_lines_go_to_the_run_directory_not_the_notebook(
    default_model, results_root, capfd
):
    """What a phase notebook's kernel prints shows in the notebook; llama.cpp's own lines (such
    as "using full-size SWA cache", a warning) belong in the run's llama.log instead."""
    from mateperf import model
    from mateperf.notebook import open_phase

    namespace = {**phases.defaults("llm"), "model": str(default_model)}
    run = open_phase("llm", "", namespace)  # as opened in JupyterLab: its own run directory
    try:
        llm, _ = model.load(model.LlamaConfig(model_path=str(default_model), n_ctx=256))
        model.close(llm)
    finally:
        model.log_llama_to(None)
    log = (run.path / model.LLAMA_LOG_NAME).read_text(encoding="utf-8")
    assert "llama_model_loader" in log and "full-size SWA cache" in log
    out, err = capfd.readouterr()
    assert "llama" not in out + err


def test_executed_notebooks_open_on_their_results(tmp_path):
    """The parameters cells (the defaults and papermill's injected values) are collapsed."""
    import nbformat

    from mateperf.execute import collapse_parameters
    from mateperf.host import REPO_ROOT

    path = tmp_path / "executed.ipynb"
    nb = nbformat.read(str(REPO_ROOT / "notebooks" / "04_cpu_threads.ipynb"), as_version=4)
    injected = nbformat.v4.new_code_cell("n_threads = '1'")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(2, injected)
    nbformat.write(nb, str(path))
    collapse_parameters(path)
    cells = nbformat.read(str(path), as_version=4).cells
    hidden = [c.metadata.get("jupyter", {}).get("source_hidden", False) for c in cells]
    tagged = [
        bool({"parameters", "injected-parameters"} & set(c.metadata.get("tags", []))) for c in cells
    ]
    assert hidden == tagged and sum(hidden) == 2


def test_tables_round_to_their_units_precision():
    import pandas as pd

    from mateperf import metrics

    df = pd.DataFrame(
        {"ttft_ms": [207.41873340000002], "tg_tps": [44.5678], "p_value": [0.012345], "x": [1 / 3]}
    )
    out = metrics.rounded(df).iloc[0].to_dict()
    assert out == {"ttft_ms": 207.4, "tg_tps": 44.6, "p_value": 0.0123, "x": 0.333}
