"""Shared fixtures: the real default model, an isolated results root, the real CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mateperf import model


@pytest.fixture(scope="session")
def default_model() -> Path:
    return model.resolve_model(None)


@pytest.fixture()
def results_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "results"
    monkeypatch.setenv("MATEPERF_RESULTS", str(root))
    return root


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str


@pytest.fixture()
def cli(results_root):
    """Run the installed `mateperf` command for real, in its own process."""

    def run(*args: str, timeout: float = 600, env: dict | None = None) -> CliResult:
        full_env = {**os.environ, "MATEPERF_RESULTS": str(results_root), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "mateperf", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


MONO_MISSING = (
    "mono and mcs are required for the C# bridge tests: "
    "apt-get install mono-mcs libnewtonsoft-json-cil-dev (see scripts/test-apt-packages.txt)"
)
# scripts/test.sh installs Mono and sets this: there a missing Mono is a failure, not a skip.
REQUIRE_MONO_ENV = "MATEPERF_REQUIRE_MONO"


def mono_absent(reason: str) -> None:
    """A C# test where Mono is missing (a Windows checkout): skipped with the reason, which
    `pytest -ra` prints; a failure where the test script promised Mono."""
    if os.environ.get(REQUIRE_MONO_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def built_csharp(tmp_path_factory) -> Path:
    """The C# bridge core and headless host compiled from unity/ with Mono's mcs."""
    from mateperf.bridge.process import use_fresh_csharp_build

    if shutil.which("mono") is None or shutil.which("mcs") is None:
        mono_absent(MONO_MISSING)
    try:
        return use_fresh_csharp_build(tmp_path_factory.getbasetemp() / "csharp-build")
    except FileNotFoundError as exc:
        mono_absent(f"{MONO_MISSING}: {exc}")
        raise  # unreachable: mono_absent skips or fails


# Parameters that keep a real llm phase run to a few seconds on 2 cores.
SMALL_LLM = {
    "trials": 1,
    "max_tokens": 8,
    "bench_reps": 1,
    "pp_tokens": 64,
    "tg_tokens": 8,
    "membw_mb": 32,
    "n_ctx": 512,
}


def small_llm_args(**overrides) -> list[str]:
    params = {**SMALL_LLM, **overrides}
    args: list[str] = []
    for key, value in params.items():
        args += ["-p", f"{key}={value}"]
    return args


def cli_args(params: dict) -> list[str]:
    args: list[str] = []
    for key, value in params.items():
        args += ["-p", f"{key}={value}"]
    return args


# One real run of each phase, through the CLI and papermill, with parameters that keep it to
# seconds or a minute on 2 cores; every test that reads a stored run of a phase (its files,
# its console output, its report, its plots) shares it, so the session pays for each once.
PHASE_RUN_PARAMS: dict[str, dict] = {
    "memory": {"messages": 12, "warmup_messages": 4, "max_tokens": 8, "n_threads": 1},
    # two trials and two bench repetitions: tests/test_llm_phase.py reads its interleaving,
    # counters and summaries from this run's stored frame instead of a second run of its own
    "llm": {**SMALL_LLM, "trials": 2, "bench_reps": 2},
    "ipc": {
        "peer": "python",
        "fps": 60,
        "trials": 2,
        "requests": 30,
        "paced_requests": 6,
        "sizes": "64,4096",
        "size_requests": 8,
        "throughput_requests": 100,
        "window": 8,
        "batch_commands": 20,
        "batch_size": 10,
        "warmup": 3,
        "frame_cost_frames": 20,
        "frame_cost_loads": "0,10",
    },
    "cpu": {"trials": 2, "pp_tokens": 32, "tg_tokens": 8, "max_tokens": 4, "n_ctx": 512},
    "gpu": {
        "n_threads": 1,
        "trials": 2,
        "max_tokens": 4,
        "pp_tokens": 32,
        "tg_tokens": 4,
        "n_ctx": 512,
    },
    "final": {"trials": 2, "max_tokens": 8, "n_ctx": 512, "beat_chunks": 2},
}


@dataclass(frozen=True)
class PhaseRun:
    """A finished `mateperf run PHASE ...`, typed in `folder` with MATEPERF_RESULTS=results."""

    folder: Path
    root: Path  # folder / "results"
    run_dir: Path
    process: subprocess.CompletedProcess


def run_as_typed(folder: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`mateperf ARGS` as a user types it in `folder`, its results in `folder/results`.

    `timeout` guards against a hang, not a slow run: a shared 2-core host has taken 11 minutes
    for the final phase's small run."""
    env = {**os.environ, "MATEPERF_RESULTS": str(folder / "results")}
    return subprocess.run(
        [sys.executable, "-m", "mateperf", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


class PhaseRuns:
    """Each phase's shared stored run, made on first use (`get(phase)`); `frame(phase)` is its
    stored table as a report reads it."""

    def __init__(self, factory: pytest.TempPathFactory):
        self._factory = factory
        self._runs: dict[str, PhaseRun] = {}

    def get(self, phase: str) -> PhaseRun:
        if phase not in self._runs:
            folder = self._factory.mktemp(f"{phase}-run")
            r = run_as_typed(folder, "run", phase, *cli_args(PHASE_RUN_PARAMS[phase]))
            assert r.returncode == 0, r.stderr[-3000:]
            (run_dir,) = [p.parent for p in (folder / "results").glob(f"*-{phase}-*/run.json")]
            self._runs[phase] = PhaseRun(folder, folder / "results", run_dir, r)
        return self._runs[phase]

    def frame(self, phase: str):
        from mateperf import results

        return results.RunDir.open(self.get(phase).run_dir).read_frame()


@pytest.fixture(scope="session")
def phase_runs(tmp_path_factory) -> PhaseRuns:
    return PhaseRuns(tmp_path_factory)


def sigterm(proc: subprocess.Popen) -> str:
    """Stop a peer started by hand as a service manager would (SIGTERM); its stdout."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)[0]


def reap(proc: subprocess.Popen) -> None:
    """A process a test started and did not stop (the test failed first): killed, waited for."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
