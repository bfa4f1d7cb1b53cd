"""Every plot a report draws can be read: no label printed over another, no legend over data.

The phases' plots are drawn from each phase's shared stored run (a real `mateperf run` at tiny
parameters, tests/conftest.py) the way `mateperf report` draws them; every figure is checked as
matplotlib lays it out for saving (tests/legibility.py says what counts). The checker itself
is held to figures whose answer is known.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mateperf import phases, results  # noqa: E402
from mateperf.report import phase_section  # noqa: E402
from tests import legibility  # noqa: E402


def test_crowded_log_ticks_and_stacked_annotations_are_found():
    fig, (a, b) = plt.subplots(1, 2, figsize=(5, 3))
    a.set_xscale("log")
    a.plot([0.96, 0.99], [0, 1], "o")  # minor ticks labelled 9.6×10⁻¹, 9.7×10⁻¹, ...
    for name in ("after_chat", "after_chat_gc", "after_close"):
        b.annotate(name, (10.0, 1.0), rotation=90)
    b.plot([0, 10], [0, 2])
    found = [str(p) for p in legibility.problems(fig)]
    plt.close(fig)
    assert any("x tick" in p and "10^{-1}" in p for p in found), found
    assert any("'after_chat'" in p and "'after_chat_gc'" in p for p in found), found


def test_a_legend_over_a_point_is_found_and_one_beside_the_data_is_not():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [2, 0, 0], "o", label="data")
    ax.legend(loc="upper left")  # over the point at (0, 2)
    assert [p.kind for p in legibility.problems(fig)] == ["legend"]
    ax.legend(loc="upper right")  # nothing up there
    assert legibility.problems(fig) == []
    plt.close(fig)


@pytest.fixture()
def checked_figures(monkeypatch):
    """Every figure saved while the fixture is active, with what keeps it from being read."""
    checked: list[tuple[str, list[legibility.Problem]]] = []
    save = Figure.savefig

    def checking_save(fig, fname, *args, **kwargs):
        name = str(fname).rsplit("/", 1)[-1].lstrip(".").replace(".png.tmp", "")
        checked.append((name, legibility.problems(fig)))
        return save(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", checking_save)
    return checked


@pytest.mark.slow
@pytest.mark.parametrize("phase", phases.available_phases())
def test_every_plot_of_a_phase_report_can_be_read(phase, phase_runs, checked_figures, tmp_path):
    run = results.RunDir.open(phase_runs.get(phase).run_dir)
    phase_section(phase, run, tmp_path / "plots", tmp_path)
    assert checked_figures, f"the {phase} report drew no plot"
    unreadable = {name: [str(p) for p in found] for name, found in checked_figures if found}
    assert not unreadable, unreadable
