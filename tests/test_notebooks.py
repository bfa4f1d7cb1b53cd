"""The phase notebooks as papermill reads them: every parameter seen, no outputs committed."""

import json

import papermill as pm
import pytest

from mateperf import phases


@pytest.mark.parametrize("phase", phases.available_phases())
def test_papermill_reads_every_parameter_of_the_parameters_cell(phase):
    # papermill warns "Passed unknown parameter" for a line of the parameters cell it cannot
    # parse (a `;` in a comment was enough), so its view must match the schema mateperf reads
    seen = set(pm.inspect_notebook(str(phases.require_notebook(phase))))
    assert seen == set(phases.parameters(phase))


@pytest.mark.parametrize("phase", phases.available_phases())
def test_notebooks_are_committed_without_outputs(phase):
    nb = json.loads(phases.require_notebook(phase).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
