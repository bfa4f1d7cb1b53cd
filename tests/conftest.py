"""Shared fixtures: the real default model, an isolated results root, the real CLI."""

from __future__ import annotations

import os
import shutil
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


def run_phase_once(
    root: Path, phase: str, args: list[str]
) -> tuple[Path, subprocess.CompletedProcess]:
    """One real `mateperf run PHASE args` into `root`; its run directory and the process."""
    r = subprocess.run(
        [sys.executable, "-m", "mateperf", "run", phase, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MATEPERF_RESULTS": str(root)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = [p.parent for p in root.glob("*/run.json")]
    return run_dir, r


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
