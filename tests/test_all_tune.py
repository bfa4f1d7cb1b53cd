"""`mateperf all`: tune after the cpu and gpu phases and before final, which takes its answer.

What each step measures is tested with the real model elsewhere (test_tune, the phase tests);
here the steps are replaced by recorders (the fault-free wiring cannot be observed otherwise
without an hour of measuring), so the test sees what `all` hands from tune to final.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from mateperf import cli, phases, results


def test_tune_comes_after_cpu_and_gpu_and_before_final():
    steps = cli.plan_all(["memory", "llm", "ipc", "cpu", "gpu", "final"], with_tune=True)
    assert steps == ["memory", "llm", "ipc", "cpu", "gpu", "tune", "final"]
    assert cli.plan_all(["llm", "cpu"], with_tune=True) == ["llm", "cpu", "tune"]
    assert "tune" not in cli.plan_all(["cpu", "final"], with_tune=False)


@dataclass
class Outcome:
    run: results.RunDir
    ok: bool = True
    seconds: float = 1.0
    error: dict | None = None


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """`all` over recorders: each phase and tune make a real (empty) run directory."""
    calls = []
    root = tmp_path / "results"
    # cli.main exports --results as MATEPERF_RESULTS for the kernels it starts; in this process
    # that would outlive the test and point later tests' default root here
    monkeypatch.setenv("MATEPERF_RESULTS", str(root))

    def run_phase(phase, overrides, root_, command):
        calls.append((phase, dict(overrides), command))
        return Outcome(results.RunDir.create(phase, {}, root=root_, command=command))

    def run_tune(values, root_, command):
        run = results.RunDir.create("tune", {}, root=root_, command=command)
        path = run.path / "recommended.json"
        path.write_text("{}", encoding="utf-8")
        calls.append(("tune", dict(values), command))
        return run, path

    monkeypatch.setattr(cli, "run_phase", run_phase)
    monkeypatch.setattr(cli.tune_cli, "run_tune", run_tune)
    monkeypatch.setattr(phases, "available_phases", lambda: ["cpu", "gpu", "final"])
    import mateperf.report as report

    monkeypatch.setattr(report, "write_final", lambda paths, root_: _final(root_))
    return calls, root


def _final(root: Path) -> Path:
    out = Path(root) / results.FINAL_NAME
    out.write_text("## Summary\n\nrecorded\n", encoding="utf-8")
    return out


def test_all_runs_tune_and_final_takes_its_recommended_json(recorded, capsys):
    calls, root = recorded
    assert cli.main(["--results", str(root), "all"]) == 0
    assert [c[0] for c in calls] == ["cpu", "gpu", "tune", "final"]
    final = calls[-1]
    tune_run = next(r for r in results.list_runs(root) if r.phase == "tune")
    assert Path(final[1]["config"]) == tune_run.path / "recommended.json"
    # the stored command names the file from the results root, never the machine's path
    assert final[2] == f"mateperf run final --config results/{tune_run.run_id}/recommended.json"
    out = capsys.readouterr()
    assert str(root) not in out.out
    assert "time per step: cpu 1 s, gpu 1 s, tune 0 s, final 1 s" in out.out


def test_no_tune_leaves_it_out(recorded):
    calls, root = recorded
    assert cli.main(["--results", str(root), "all", "--no-tune"]) == 0
    assert [c[0] for c in calls] == ["cpu", "gpu", "final"]
    assert "config" not in calls[-1][1]
