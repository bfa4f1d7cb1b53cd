"""Files as Windows treats them: report links with forward slashes, a rename another program
refuses.

Nothing here ran on Windows itself. The links are made with Windows' own path flavour
(PureWindowsPath, ntpath), which works on any OS. The refused rename is injected: on Windows
`os.replace` fails with PermissionError while an antivirus scan, a sync client or a reader holds
the target open, but on Linux a rename over an open file succeeds, and as root no permission can
make it fail, so the fault cannot be caused for real here and `os.replace` is wrapped to raise it.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath, PureWindowsPath

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from mateperf import results
from mateperf.reports.format import link_target, save_figure


def test_report_links_use_forward_slashes_with_windows_paths():
    run = PureWindowsPath(r"C:\Users\mate\mateperf\results\20260101-cpu")
    assert link_target(run / "plots" / "threads.png", run) == "plots/threads.png"
    # FINAL_RESULTS.md in the results root links into a run's plots folder
    assert link_target(run / "plots" / "x.png", run.parent) == "20260101-cpu/plots/x.png"
    # a report beside another run's folder reaches it through ..
    other = run.parent / "20260102-final"
    assert link_target(run / "plots" / "x.png", other) == "../20260101-cpu/plots/x.png"
    assert "\\" not in link_target(PureWindowsPath(r"D:\r\plots\a b.png"), PureWindowsPath("D:\\r"))


def test_report_links_on_posix_are_unchanged():
    run = PurePosixPath("/srv/results/20260101-cpu")
    assert link_target(run / "plots" / "x.png", run) == "plots/x.png"
    assert link_target(run / "plots" / "x.png", run.parent) == "20260101-cpu/plots/x.png"


def test_a_saved_figure_links_with_forward_slashes(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    link = save_figure(fig, tmp_path / "run" / "plots", "x", tmp_path / "run", "a line")
    assert link == "![a line](plots/x.png)"
    assert (tmp_path / "run" / "plots" / "x.png").stat().st_size > 0


def _refusing_replace(monkeypatch, refusals: int) -> list[str]:
    """os.replace refuses as Windows does while another program holds the target (see the
    module docstring: injected, it cannot be caused for real here), `refusals` times."""
    real_replace = os.replace
    calls: list[str] = []

    def windows_replace(src, dst):
        calls.append(str(dst))
        if len(calls) <= refusals:
            raise PermissionError(13, "Access is denied", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", windows_replace)
    monkeypatch.setattr(results, "REPLACE_BACKOFF_S", (0.001, 0.002, 0.004, 0.008, 0.016))
    return calls


def test_a_briefly_held_file_is_replaced_after_retries(monkeypatch, tmp_path):
    target = tmp_path / "cpu.parquet"
    results.atomic_write_parquet(target, pd.DataFrame({"tg_tps": [1.0]}))
    calls = _refusing_replace(monkeypatch, refusals=3)
    results.atomic_write_parquet(target, pd.DataFrame({"tg_tps": [2.0, 3.0]}))
    assert len(calls) == 4  # three refusals, then the rename
    assert pd.read_parquet(target)["tg_tps"].tolist() == [2.0, 3.0]
    assert [p.name for p in tmp_path.iterdir()] == ["cpu.parquet"]  # no temp file left


def test_a_file_held_open_fails_with_one_line_naming_it(monkeypatch, tmp_path):
    target = tmp_path / "cpu.md"
    results.atomic_write_text(target, "before\n")
    calls = _refusing_replace(monkeypatch, refusals=100)
    with pytest.raises(results.FileHeldOpen) as info:
        results.atomic_write_text(target, "after\n")
    message = str(info.value)
    assert len(calls) == len(results.REPLACE_BACKOFF_S) + 1
    assert "\n" not in message
    assert message.startswith(f"cannot replace {target}: still refused after 6 tries")
    assert "an editor or markdown preview, an antivirus scan or a sync client" in message
    assert isinstance(info.value, PermissionError)
    assert target.read_text(encoding="utf-8") == "before\n"  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["cpu.md"]
    assert re.search(
        r"held open by a program reading the table",
        str(
            results.FileHeldOpen(tmp_path / "x.parquet", 6, PermissionError(13, "Access is denied"))
        ),
    )


def test_other_errors_are_not_retried(monkeypatch, tmp_path):
    calls = []

    def missing_folder(src, dst):
        calls.append(dst)
        raise FileNotFoundError(2, "No such file or directory", str(dst))

    monkeypatch.setattr(os, "replace", missing_folder)
    with pytest.raises(FileNotFoundError):
        results.atomic_write_text(tmp_path / "x.md", "x\n")
    assert len(calls) == 1
