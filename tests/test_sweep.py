"""Sweeps through the real CLI and papermill: grid, failed point, kill and resume, compare."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import small_llm_args

pytestmark = pytest.mark.slow


def mateperf(root, *args, timeout=900):
    env = {**os.environ, "MATEPERF_RESULTS": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "mateperf", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def sweep_dirs(root):
    return sorted(p.parent for p in root.glob("*-sweep-*/manifest.json"))


@pytest.fixture(scope="module")
def sweep_2x2(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    r = mateperf(
        root,
        "sweep",
        "llm",
        "--grid",
        "n_threads=1,2",
        "--grid",
        "n_batch=32,512",
        *small_llm_args(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = sweep_dirs(root)
    return root, sweep, r


def test_2x2_sweep_combines_every_point(sweep_2x2):
    root, sweep, r = sweep_2x2
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert [p["status"] for p in manifest["points"]] == ["ok"] * 4
    assert all(p["duration_s"] > 0 and p["measure_s"] > 0 for p in manifest["points"])
    df = pd.read_parquet(sweep / "llm.parquet")
    combos = set(map(tuple, df[["n_threads", "n_batch"]].drop_duplicates().to_numpy()))
    assert combos == {(1, 32), (1, 512), (2, 32), (2, 512)}
    assert sorted(df["point"].unique()) == [0, 1, 2, 3]
    assert df["n_threads"].dtype.kind == "i"  # values were cast to built-in ints
    for point in manifest["points"]:
        d = sweep / "points" / point["name"]
        assert (d / "02_llm_cache.ipynb").is_file() and (d / "llm.parquet").is_file()
    assert (sweep / "plots" / "sweep_llm_0_tg_tps.png").is_file()
    md = (sweep / "llm.md").read_text()
    assert "n_threads" in md and "generation tokens/s" in md
    assert "4/4 points ok" in r.stdout and "ran 4 point(s)" in r.stdout and "outside it" in r.stdout
    assert "sweep llm" in r.stderr  # the progress bar


def test_compare_two_real_runs(sweep_2x2):
    root, sweep, _ = sweep_2x2
    points = sorted((sweep / "points").iterdir())
    r = mateperf(root, "compare", str(points[0]), str(points[2]))
    assert r.returncode == 0, r.stderr
    assert "| scenario" in r.stdout and "verdict" in r.stdout and "tg_tps" in r.stdout
    assert "B/A [95% CI]" in r.stdout
    assert "different hosts" not in r.stderr  # same host, same build


def test_report_includes_the_sweep_and_is_deterministic(sweep_2x2):
    root, sweep, _ = sweep_2x2
    assert mateperf(root, "report", str(sweep)).returncode == 0
    first = (root / "FINAL_RESULTS.md").read_text()
    assert mateperf(root, "report", str(sweep)).returncode == 0
    assert (root / "FINAL_RESULTS.md").read_text() == first
    assert "Sweep of phase llm" in first


def test_failed_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    # n_ctx=64 cannot hold the companion prompt: that point fails inside the notebook
    r = mateperf(
        tmp_path, "sweep", "llm", "--grid", "n_ctx=64,512", *_without(small_llm_args(), "n_ctx")
    )
    assert r.returncode == 1
    (sweep,) = sweep_dirs(tmp_path)
    manifest = json.loads((sweep / "manifest.json").read_text())
    failed, ok = manifest["points"]
    assert failed["status"] == "failed" and ok["status"] == "ok"
    assert failed["error"]["ename"] == "ValueError"
    assert "context window" in failed["error"]["evalue"]
    assert failed["error"]["cell"] is not None
    df = pd.read_parquet(sweep / "llm.parquet")
    assert set(df["n_ctx"]) == {512}
    assert json.loads((sweep / "run.json").read_text())["status"] == "partial"


def _without(args, name):
    out = []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if not value.startswith(f"{name}="):
            out += [flag, value]
    return out


def test_killed_sweep_resumes_without_repeats_or_losses(tmp_path):
    env = {**os.environ, "MATEPERF_RESULTS": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mateperf",
            "sweep",
            "llm",
            "--grid",
            "max_tokens=4,6,8",
            *_without(small_llm_args(), "max_tokens"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    before = []
    while time.monotonic() < deadline:
        dirs = sweep_dirs(tmp_path)
        if dirs:
            points = json.loads((dirs[0] / "manifest.json").read_text())["points"]
            before = [p for p in points if p["status"] == "ok"]
            if before and any(p["status"] == "running" for p in points):
                break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its kernel, mid-point
    proc.wait()
    (sweep,) = sweep_dirs(tmp_path)
    assert 1 <= len(before) < 3
    ids_before = {
        p["name"]: json.loads((sweep / "points" / p["name"] / "run.json").read_text())["run_id"]
        for p in before
    }

    r = mateperf(tmp_path, "sweep", "llm", "--resume", str(sweep))
    assert r.returncode == 0, r.stderr[-3000:]
    ran = int(re.search(r"ran (\d+) point", r.stdout).group(1))
    assert 1 <= ran <= 3 - len(before)  # the point caught mid-run may have been adopted
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert [p["status"] for p in manifest["points"]] == ["ok"] * 3
    for p in manifest["points"]:
        if p["name"] in ids_before:
            assert p["attempts"] == 1  # finished before the kill: not run again
    df = pd.read_parquet(sweep / "llm.parquet")
    assert sorted(df["point"].unique()) == [0, 1, 2]
    rows_per_point = df.groupby("point").size()
    assert rows_per_point.nunique() == 1  # every point exactly once
    assert sorted(df["max_tokens"].unique()) == [4, 6, 8]


@pytest.mark.parametrize(
    "grid, needle",
    [
        ("n_threads", "expected key=v1,v2"),
        ("n_threads=1,,2", "no empty value"),
        ("bogus=1,2", "unknown parameter 'bogus'"),
        ("n_threads=one,two", "expected int"),
    ],
)
def test_bad_grid_is_refused_before_anything_runs(tmp_path, grid, needle):
    r = mateperf(tmp_path, "sweep", "llm", "--grid", grid)
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not sweep_dirs(tmp_path)
