"""Sweeps through the real CLI and papermill: grid, rounds, failed point, kill and resume, paths.

The command line runs in its own process, from directories other than the repository and with
relative paths, as a user types them: the kernels run in their run directories, so any path
that reached one unresolved would fail there.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mateperf import phases
from mateperf.errors import ParameterError
from mateperf.execute import absolute_environment
from mateperf.host import REPO_ROOT
from mateperf.sweep import plan
from mateperf.sweep.manifest import FAILED, RUNNING, Sweep
from tests.conftest import small_llm_args

slow = pytest.mark.slow

# The installed console script, as the README runs it.
MATEPERF = Path(sys.executable).with_name("mateperf")


def command(*args):
    return (
        [str(MATEPERF), *args] if MATEPERF.exists() else [sys.executable, "-m", "mateperf", *args]
    )


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("MATEPERF_RESULTS", "MATEPERF_MODEL")}
    return {**env, **extra}


def mateperf(root, *args, cwd=None, env=None, timeout=900):
    """Run the CLI; `root` (absolute) is the results root unless `env` says otherwise."""
    full_env = clean_env(MATEPERF_RESULTS=str(root)) if env is None else env
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


def sweep_dirs(root):
    return sorted(p.parent for p in Path(root).glob("*-sweep-*/manifest.json"))


def manifest_of(sweep_dir):
    return json.loads((sweep_dir / "manifest.json").read_text(encoding="utf-8"))


def link_default_model(directory: Path, default_model: Path, name="relative.gguf") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / name
    link.symlink_to(default_model)
    return link


def _without(args, name):
    out = []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if not value.startswith(f"{name}="):
            out += [flag, value]
    return out


# -- planning: no kernel ------------------------------------------------------------------------


@pytest.mark.parametrize("total", range(1, 8))
def test_round_shares_add_up_and_never_drop_to_zero(total):
    for rounds in range(1, total + 1):
        params = {"trials": total, "bench_reps": 1}
        shares = [
            plan.round_shares(params, ("trials", "bench_reps"), rounds, r) for r in range(rounds)
        ]
        assert sum(s["trials"] for s in shares) == total
        assert min(s["trials"] for s in shares) >= 1
        assert max(s["trials"] for s in shares) - min(s["trials"] for s in shares) <= 1
        assert all(s["bench_reps"] == 1 for s in shares)  # secondary: at least one


def test_default_rounds_spread_the_trials():
    llm = phases.defaults("llm")
    assert phases.round_split("llm") == ("trials", "bench_reps")
    assert phases.round_split("ipc") == ("trials",)
    assert phases.round_split("memory") == ()
    assert plan.choose_rounds("llm", [llm], None) == min(llm["trials"], 3)
    assert plan.choose_rounds("llm", [{**llm, "trials": 2}], None) == 2
    assert plan.choose_rounds("llm", [{**llm, "trials": 1}, {**llm, "trials": 9}], None) == 1
    assert plan.choose_rounds("memory", [phases.defaults("memory")], None) == 1
    assert plan.choose_rounds("memory", [phases.defaults("memory")], 4) == 4  # replicates
    with pytest.raises(ParameterError, match="--rounds 3 is more than trials=2"):
        plan.choose_rounds("llm", [{**llm, "trials": 2}], 3)


def test_every_round_visits_every_point_in_a_seeded_order():
    orders = plan.visit_order(5, 4, seed=7)
    assert all(sorted(o) == list(range(5)) for o in orders)
    assert orders == plan.visit_order(5, 4, seed=7)
    assert orders != plan.visit_order(5, 4, seed=8)
    assert len({tuple(o) for o in orders}) > 1  # rounds are shuffled independently


def test_paths_are_made_absolute_before_a_kernel_sees_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MATEPERF_MODEL", "m/x.gguf")
    monkeypatch.setenv("MATEPERF_RESULTS", "r")
    absolute_environment()
    assert os.environ["MATEPERF_MODEL"] == str(tmp_path / "m" / "x.gguf")
    assert os.environ["MATEPERF_RESULTS"] == str(tmp_path / "r")
    params = phases.absolute_paths({"model": "./g.gguf", "trials": 2})
    assert params == {"model": str(tmp_path / "g.gguf"), "trials": 2}
    assert phases.absolute_paths({"model": ""}) == {"model": ""}  # empty: the default model


def test_resume_settles_every_state_a_kill_can_leave(tmp_path, monkeypatch):
    """The manifest and directories as a SIGKILL leaves them between any two steps.

    Built by hand because these instants (between a rename and the manifest write, say) are
    too short to hit by timing a real kill; the real kill is test_killed_sweep_...
    """
    monkeypatch.setenv("MATEPERF_RESULTS", str(tmp_path))
    grid = {"n_threads": [1, 2, 3, 4, 5]}
    sw = Sweep.create("llm", grid, {"trials": 2}, phases.defaults("llm"), "test", rounds=1)
    m = sw.manifest()
    finished, failed, cut, moved, never = m["point_rounds"]

    def started(unit, status, run_status=None, parquet=False, where=None):
        unit["status"] = status
        unit["attempts"].append(
            {"attempt": 1, "status": status, "error": None, "dir": f"points/{unit['name']}"}
        )
        d = where or sw.point_dir(unit)
        if run_status:
            d.mkdir(parents=True)
            info = {"status": run_status, "error": {"ename": "ValueError", "evalue": "x"}}
            (d / "run.json").write_text(json.dumps(info))
            if parquet:
                (d / "llm.parquet").write_bytes(b"")

    started(finished, RUNNING, "ok", parquet=True)  # done, manifest not yet told
    started(failed, RUNNING, "failed")  # failed, manifest not yet told
    started(cut, RUNNING, "running")  # the kernel was killed
    started(moved, FAILED, "failed", where=sw.attempt_dir(moved, 1))  # moved, not saved
    started(never, RUNNING)  # killed before its directory existed
    sw.save_manifest(m)

    for _ in range(2):  # a kill during recovery: recovering again gives the same state
        sw.recover(sw.manifest())
    after = {u["name"]: u for u in sw.manifest()["point_rounds"]}
    assert after[finished["name"]]["status"] == "ok"
    assert after[finished["name"]]["attempts"][0]["adopted"] is True
    for unit, was in ((failed, "failed"), (cut, "interrupted"), (moved, "failed")):
        u = after[unit["name"]]
        assert u["status"] == "pending" and u["attempts"][0]["status"] == was
        assert u["attempts"][0]["dir"] == f"attempts/{unit['name']}-a1"
        assert sw.attempt_dir(unit, 1).is_dir() and not sw.point_dir(unit).exists()
    assert after[never["name"]]["status"] == "pending"
    assert after[never["name"]]["attempts"][0]["status"] == "interrupted"
    assert after[never["name"]]["attempts"][0]["dir"] is None


# -- real sweeps ----------------------------------------------------------------------------------


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
    (sweep_dir,) = sweep_dirs(root)
    return root, sweep_dir, r


@slow
def test_2x2_sweep_combines_every_point(sweep_2x2):
    root, sweep_dir, r = sweep_2x2
    manifest = manifest_of(sweep_dir)
    assert manifest["rounds"] == 1  # trials=1: nothing to spread over rounds
    units = manifest["point_rounds"]
    assert [u["status"] for u in units] == ["ok"] * 4
    assert all(u["duration_s"] > 0 and u["measure_s"] > 0 for u in units)
    assert all(len(u["attempts"]) == 1 for u in units)
    df = pd.read_parquet(sweep_dir / "llm.parquet")
    combos = set(map(tuple, df[["n_threads", "n_batch"]].drop_duplicates().to_numpy()))
    assert combos == {(1, 32), (1, 512), (2, 32), (2, 512)}
    assert sorted(df["point"].unique()) == [0, 1, 2, 3]
    assert set(df["round"]) == {0}
    assert df["n_threads"].dtype.kind == "i"  # values were cast to built-in ints
    for unit in units:
        d = sweep_dir / "points" / unit["name"]
        assert (d / "02_llm_cache.ipynb").is_file() and (d / "llm.parquet").is_file()
    assert (sweep_dir / "plots" / "sweep_llm_0_tg_tps.png").is_file()
    md = (sweep_dir / "llm.md").read_text(encoding="utf-8")
    assert "n_threads" in md and "generation tokens/s" in md
    assert "4/4 point-rounds ok" in r.stdout and "ran 4 point-round(s)" in r.stdout
    assert "outside it" in r.stdout
    assert "sweep llm" in r.stderr  # the progress bar


@slow
def test_compare_two_real_runs(sweep_2x2):
    root, sweep_dir, _ = sweep_2x2
    points = sorted((sweep_dir / "points").iterdir())
    r = mateperf(root, "compare", str(points[0]), str(points[2]))
    assert r.returncode == 0, r.stderr
    assert "| scenario" in r.stdout and "verdict" in r.stdout and "tg_tps" in r.stdout
    assert "B/A [95% CI]" in r.stdout
    assert "different hosts" not in r.stderr  # same host, same build


@slow
def test_report_includes_the_sweep_and_is_deterministic(sweep_2x2):
    root, sweep_dir, _ = sweep_2x2
    assert mateperf(root, "report", str(sweep_dir)).returncode == 0
    first = (root / "FINAL_RESULTS.md").read_text(encoding="utf-8")
    assert mateperf(root, "report", str(sweep_dir)).returncode == 0
    assert (root / "FINAL_RESULTS.md").read_text(encoding="utf-8") == first
    assert "Sweep of phase llm" in first


@slow
def test_failed_point_is_recorded_and_retried_on_resume(tmp_path, default_model):
    # Relative MATEPERF_MODEL and MATEPERF_RESULTS, from a directory that is not the repository.
    link_default_model(tmp_path, default_model)
    env = clean_env(MATEPERF_MODEL="relative.gguf", MATEPERF_RESULTS="results")
    # n_ctx=64 cannot hold the companion prompt: every trial of that point fails, each is
    # recorded, and the run fails inside the notebook (runner.require_some) with the first error
    args = ["sweep", "llm", "--grid", "n_ctx=64,512", *_without(small_llm_args(), "n_ctx")]
    r = mateperf(None, *args, cwd=tmp_path, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    (sweep_dir,) = sweep_dirs(tmp_path / "results")
    failed, ok = sorted(manifest_of(sweep_dir)["point_rounds"], key=lambda u: u["point"])
    assert failed["status"] == "failed" and ok["status"] == "ok"
    assert failed["error"]["ename"] == "RuntimeError"
    assert "every first-reply trial failed" in failed["error"]["evalue"]
    assert (
        "ValueError" in failed["error"]["evalue"] and "context window" in failed["error"]["evalue"]
    )
    assert failed["error"]["cell"] is not None
    df = pd.read_parquet(sweep_dir / "llm.parquet")
    assert set(df["n_ctx"]) == {512}
    assert json.loads((sweep_dir / "run.json").read_text(encoding="utf-8"))["status"] == "partial"

    # A second invocation retries the failed point-round (it fails again: n_ctx is still 64)
    # and keeps the first attempt and its directory.
    rel = os.path.relpath(sweep_dir, tmp_path)
    r = mateperf(None, "sweep", "llm", "--resume", rel, cwd=tmp_path, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "ran 1 point-round(s)" in r.stdout
    failed2, ok2 = sorted(manifest_of(sweep_dir)["point_rounds"], key=lambda u: u["point"])
    assert [a["status"] for a in failed2["attempts"]] == ["failed", "failed"]
    first, second = failed2["attempts"]
    assert first["dir"] == f"attempts/{failed['name']}-a1"
    assert (sweep_dir / first["dir"] / "run.json").is_file()
    assert second["dir"] == f"points/{failed['name']}"
    assert all(a["started_at"] and a["duration_s"] > 0 for a in failed2["attempts"])
    assert "context window" in second["error"]["evalue"]
    assert ok2["attempts"] == ok["attempts"]  # the ok point-round was not run again


@slow
def test_killed_sweep_resumes_without_repeats_or_losses(tmp_path):
    """The README's form: a sweep in rounds killed mid-point, resumed with a relative path."""
    root = tmp_path / "results"
    # From the repository root, with --results relative to it.
    proc = subprocess.Popen(
        command(
            "--results",
            os.path.relpath(root, REPO_ROOT),
            "sweep",
            "llm",
            "--grid",
            "n_threads=1,2",
            "--rounds",
            "2",
            *small_llm_args(trials=2),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    before = []
    while time.monotonic() < deadline:
        dirs = sweep_dirs(root)
        if dirs:
            units = manifest_of(dirs[0])["point_rounds"]
            running = [u for u in units if u["status"] == "running"]
            before = [u for u in units if u["status"] == "ok"]
            if before and running and (dirs[0] / "points" / running[0]["name"]).exists():
                time.sleep(1.0)  # into the kernel's start-up or measuring
                break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its kernel, mid point-round
    proc.wait()
    (sweep_dir,) = sweep_dirs(root)
    assert len(before) == 1, before
    kept = {
        u["name"]: (sweep_dir / "points" / u["name"] / "run.json").read_text(encoding="utf-8")
        for u in before
    }

    # From the directory that makes `results/<sweep_id>` the sweep, no results root given.
    rel = f"results/{sweep_dir.name}"
    r = mateperf(None, "sweep", "llm", "--resume", rel, cwd=tmp_path, env=clean_env())
    assert r.returncode == 0, r.stderr[-3000:]
    ran = int(re.search(r"ran (\d+) point-round", r.stdout).group(1))
    assert ran in (2, 3)  # 3, or 2 if the point-round caught at the kill had finished
    assert "4/4 point-rounds ok" in r.stdout

    manifest = manifest_of(sweep_dir)
    info = json.loads((sweep_dir / "run.json").read_text(encoding="utf-8"))
    assert manifest["rounds"] == info["rounds"] == 2
    assert manifest["order_seed"] == info["order_seed"]
    units = manifest["point_rounds"]
    assert sorted((u["point"], u["round"]) for u in units) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [u["round"] for u in units] == [0, 0, 1, 1]  # round by round
    for u in units:  # every point-round ran exactly once to the end
        assert u["status"] == "ok"
        assert [a["status"] for a in u["attempts"]].count("ok") == 1
        assert u["shares"] == {"trials": 1, "bench_reps": 1}
    for name, run_json in kept.items():  # finished before the kill: untouched
        (u,) = [u for u in units if u["name"] == name]
        assert len(u["attempts"]) == 1
        assert (sweep_dir / "points" / name / "run.json").read_text(encoding="utf-8") == run_json
    retried = [u for u in units if len(u["attempts"]) > 1]
    assert len(retried) == ran - 2  # the point-round caught at the kill, unless adopted
    for u in retried:
        assert u["attempts"][0]["status"] == "interrupted"
        assert (sweep_dir / u["attempts"][0]["dir"]).is_dir()

    df = pd.read_parquet(sweep_dir / "llm.parquet")
    keys = df[["point", "round"]].drop_duplicates()
    assert sorted(map(tuple, keys.to_numpy())) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # each point-round's rows exactly once, from its own run, keeping its own trial numbers
    assert (df.groupby(["point", "round"])["point_run_id"].nunique() == 1).all()
    assert df.groupby(["point", "round"]).size().nunique() == 1
    for u in units:
        own = pd.read_parquet(sweep_dir / "points" / u["name"] / "llm.parquet")
        mine = df[(df["point"] == u["point"]) & (df["round"] == u["round"])]
        assert len(mine) == len(own)
        assert sorted(mine["trial"].tolist()) == sorted(own["trial"].tolist())
        assert set(own["trials"]) == {1}
    assert set(df["trials"]) == {2} and set(df["round_trials"]) == {1}  # total and share


@slow
def test_run_with_a_relative_model_from_another_directory(tmp_path, default_model):
    elsewhere = tmp_path / "elsewhere"
    link_default_model(elsewhere, default_model)
    env = clean_env(MATEPERF_RESULTS="results")  # relative too
    r = mateperf(
        None, "run", "llm", "--model", "./relative.gguf", *small_llm_args(), cwd=elsewhere, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run_json,) = (elsewhere / "results").glob("*/run.json")
    info = json.loads(run_json.read_text(encoding="utf-8"))
    assert info["status"] == "ok"
    stored = Path(os.path.realpath(elsewhere)) / "relative.gguf"
    assert info["params"]["model"] == str(stored)  # stored absolute


@slow
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--grid", "n_threads"], "expected key=v1,v2"),
        (["--grid", "n_threads=1,,2"], "no empty value"),
        (["--grid", "bogus=1,2"], "unknown parameter 'bogus'"),
        (["--grid", "n_threads=one,two"], "expected int"),
        (["--grid", "n_threads=1,2", "--rounds", "3", "-p", "trials=2"], "--rounds 3"),
        (["--grid", "n_threads=1,2", "--rounds", "0"], "--rounds 0"),
        (["--grid", "trials=1,4", "--rounds", "2"], "trials=1"),
        (["--grid", "n_threads=1,2", "--seed", "-1"], "--seed -1"),
        (["--resume", "nowhere", "--rounds", "2"], "--resume takes no --rounds"),
    ],
)
def test_bad_sweep_input_is_refused_before_anything_runs(tmp_path, args, needle):
    r = mateperf(tmp_path, "sweep", "llm", *args)
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not sweep_dirs(tmp_path)


def test_the_sweeps_analysis_names_the_points_tied_with_the_best():
    """compare.ties_with_best counts; the sweep's section only words it."""
    from mateperf import compare, stats
    from mateperf.reports import sweep as sweep_report

    ranked = pd.DataFrame(
        {
            "n_threads": [1, 2, 4, 8],
            "median": [10.0, 9.8, 6.0, 9.9],
            "verdict": ["best", stats.NO_DIFFERENCE, "slower", stats.NOT_TESTED],
        }
    )
    best, ties, n_tested, n_others = compare.ties_with_best(ranked)
    assert best["n_threads"] == 1 and list(ties["n_threads"]) == [2]
    assert (n_tested, n_others) == (2, 3)
    text = sweep_report._best_reading(ranked, ["n_threads"], "tg_tps")
    assert "Not distinguishable from it: n_threads=2." in text
    assert "Comparisons made: 2" in text and "too few trials are not tested" in text
