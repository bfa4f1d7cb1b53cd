"""The command line a newcomer reads: the phases, each phase's parameters, one-line errors."""

from __future__ import annotations

import pytest

from mateperf import phases


def test_run_help_lists_every_phase_with_one_line(cli):
    r = cli("run", "--help")
    assert r.rc == 0, r.stderr
    for phase in phases.names():
        line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(phase + " "))
        assert len(line.split(None, 1)[1]) > 10, line


@pytest.mark.parametrize("phase", phases.available_phases())
def test_run_phase_help_lists_its_parameters(cli, phase):
    r = cli("run", phase, "--help")
    assert r.rc == 0, r.stderr
    text = r.stdout
    for name, kind, default, _meaning in phases.parameter_help(phase):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(name + " "))
        assert kind in line and default in line, line
    assert "run_dir" not in text  # set by mateperf itself, not a user's parameter


def test_parameter_meanings_come_from_the_notebook_comments():
    rows = {name: meaning for name, _k, _d, meaning in phases.parameter_help("cpu")}
    assert "generation threads" in rows["n_threads"]
    assert rows["seed"]


def test_run_without_a_phase_is_one_line(cli):
    r = cli("run")
    assert r.rc == 2 and "which phase" in r.stderr and "Traceback" not in r.stderr
