"""A run killed before it finished is told apart from one still running: run.json records its
owner (pid, start time, host), `results.status_now` checks it without writing, `mateperf
report` lists the run as interrupted, and Ctrl+C records it so itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mateperf import results, run_owner
from tests.conftest import PHASE_RUN_PARAMS, cli_args


def made_run(root: Path, owner: dict | None = None) -> results.RunDir:
    run = results.RunDir.create("ipc", {"trials": 2}, root=root, command="mateperf run ipc")
    if owner is not None:
        run.update(owner=owner)
    results._OWNED.pop(run.path, None)  # made for the test, not a run of this process
    return run


def test_a_run_whose_process_is_alive_is_still_running(tmp_path):
    run = made_run(tmp_path)
    owner = run.info["owner"]
    assert owner["pid"] == os.getpid() and owner["host"] == run_owner.host_name()
    assert owner["started_at"] == pytest.approx(psutil.Process().create_time())
    assert results.status_now(results.RunDir.open(run.path).info) == results.STATUS_RUNNING


def test_a_reused_pid_is_another_process_and_the_run_interrupted(tmp_path):
    # the pid is alive (ours) but started long after the recorded owner: the OS reused it
    mine = run_owner.this_process()
    run = made_run(tmp_path, {**mine, "started_at": mine["started_at"] - 3600})
    assert results.status_now(run.info) == results.STATUS_INTERRUPTED


def test_a_process_that_is_gone_leaves_its_run_interrupted(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = {
            "pid": child.pid,
            "started_at": psutil.Process(child.pid).create_time(),
            "host": run_owner.host_name(),
        }
        run = made_run(tmp_path, owner)
        assert results.status_now(run.info) == results.STATUS_RUNNING
        child.kill()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert results.status_now(run.info) == results.STATUS_INTERRUPTED


def test_another_host_cannot_be_told_and_no_owner_cannot_either(tmp_path):
    elsewhere = {**run_owner.this_process(), "host": "not-" + run_owner.host_name()}
    assert results.status_now(made_run(tmp_path, elsewhere).info) == results.STATUS_ELSEWHERE
    old = made_run(tmp_path)
    del old.info["owner"]  # a run.json written before owners were recorded
    assert results.status_now(old.info) == results.STATUS_UNRECORDED
    finished = made_run(tmp_path, elsewhere)
    finished.finish(results.STATUS_OK)
    assert results.status_now(finished.info) == results.STATUS_OK


def test_ctrl_c_records_the_runs_this_process_owns_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "_OWNED", {})  # not the runs other tests left open
    mine = results.RunDir.create("ipc", {}, root=tmp_path)
    done = results.RunDir.create("ipc", {}, root=tmp_path)
    done.finish(results.STATUS_OK)
    mine.update(measure_s=1.5)
    (mine.path / results.RUN_JSON).write_text(  # as a notebook's kernel writes to it too
        json.dumps({**mine.info, "rows_kept": 3}), encoding="utf-8"
    )
    stopped = results.interrupt_owned_runs("stopped by Ctrl+C")
    assert [r.path for r in stopped] == [mine.path]
    info = results.RunDir.open(mine.path).info
    assert info["status"] == results.STATUS_INTERRUPTED and info["error"] == "stopped by Ctrl+C"
    assert info["rows_kept"] == 3 and info["ended_at"]
    assert results.RunDir.open(done.path).info["status"] == results.STATUS_OK
    assert results.interrupt_owned_runs("again") == []


# --- a real `mateperf run`, killed ------------------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(
    root: Path, own_group: bool = False
) -> tuple[subprocess.Popen, Path, list[psutil.Process]]:
    """`mateperf run ipc` in its own process, once its run directory exists and its notebook's
    kernel has started: the run is under way. `own_group`: in a process group of its own, as
    a command typed in a terminal is (Ctrl+C goes to the whole group)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mateperf", "run", "ipc", *cli_args(PHASE_RUN_PARAMS["ipc"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MATEPERF_RESULTS": str(root)},
        start_new_session=own_group,
        # a shell without job control starts background commands with SIGINT ignored, and a
        # Python started so never raises KeyboardInterrupt: a terminal's command has it
        preexec_fn=_default_sigint if own_group else None,
    )
    before = set(root.glob("*/run.json"))
    deadline = time.monotonic() + 120
    runs: list[Path] = []
    kernels: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None and not (runs and kernels):
        runs = [p.parent for p in set(root.glob("*-ipc-*/run.json")) - before]
        kernels = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "ipykernel" in " ".join(c.cmdline())
        ]
        time.sleep(0.1)
    assert proc.poll() is None and len(runs) == 1 and kernels, proc.communicate(timeout=60)
    return proc, runs[0], kernels


def stop_all(proc: subprocess.Popen, kernels: list[psutil.Process]) -> None:
    """The run's process and everything it started (its kernel, the kernel's avatar peer)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in [proc, *kernels, *family]:
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_run_killed_mid_run_is_reported_interrupted(results_root, cli, phase_runs):
    finished = phase_runs.get("ipc").run_dir  # the phase's representative: a finished run
    shutil.copytree(finished, results_root / finished.name)
    proc, killed, kernels = start_run(results_root)
    kernels = psutil.Process(proc.pid).children(recursive=True)  # all it started so far
    try:
        proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: nothing runs after it
        proc.wait(timeout=30)
    finally:
        stop_all(proc, kernels)
    stored = (killed / results.RUN_JSON).read_bytes()
    assert json.loads(stored)["status"] == results.STATUS_RUNNING  # as the file was left
    r = cli("report")
    assert r.rc == 0, r.stderr
    print(r.stdout)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(killed.name))
    assert line.startswith(f"{killed.name} (ipc): interrupted, started ")
    assert line.endswith("; not reported")
    text = (results_root / results.FINAL_NAME).read_text(encoding="utf-8")
    assert f"- {line}" in text
    reported = next(ln for ln in text.splitlines() if f"[`{finished.name}`]" in ln)
    assert reported.endswith("| ok |")  # the finished run is the phase's, the killed one listed
    named = cli("report", str(killed))  # nothing of it to report: one line, exit code 2
    assert named.rc == 2 and named.stderr.strip() == (
        f"mateperf: error: {killed} holds no rows to report (interrupted, no ipc.parquet)"
    )
    assert (killed / results.RUN_JSON).read_bytes() == stored  # readers never write


@pytest.mark.slow
@pytest.mark.skipif(
    os.name == "nt", reason="Ctrl+C to one child process: unavailable on this OS (console groups)"
)
def test_ctrl_c_in_mateperf_run_records_the_run_interrupted(results_root):
    proc, run_dir, kernels = start_run(results_root, own_group=True)
    try:
        # Ctrl+C in a terminal signals the foreground process group: mateperf and its kernel.
        # SIGINT to mateperf alone can land while nbclient's handler holds SIGINT (it only
        # shuts the kernel down), and the run then finishes normally.
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        stop_all(proc, kernels)
    assert proc.returncode == 130, err
    assert f"mateperf: {run_dir.name} recorded as interrupted" in err
    info = results.RunDir.open(run_dir).info
    assert info["status"] == results.STATUS_INTERRUPTED and "Ctrl+C" in info["error"]
