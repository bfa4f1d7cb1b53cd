"""Run directories: atomic writes survive a real SIGKILL; runs never share a directory."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from mateperf import results

WRITER = textwrap.dedent(
    """
    import sys
    from mateperf.results import atomic_write_bytes
    target = sys.argv[1]
    big = 48 * 2**20
    i = 0
    print("ready", flush=True)
    while True:
        fill = b"A" if i % 2 == 0 else b"B"
        atomic_write_bytes(target, fill * big)
        i += 1
    """
)


def test_atomic_write_never_exposes_a_partial_file(tmp_path):
    """Kill a writer at arbitrary moments: the target is always one whole version."""
    target = tmp_path / "data.bin"
    size = 48 * 2**20
    for delay_s in (0.05, 0.13, 0.21, 0.34, 0.55):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            data = target.read_bytes()
            assert len(data) == size
            assert data == data[:1] * size
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "data.bin"]
    # a killed writer can leave its temp file behind, but never under the real name
    assert all(name.startswith(".data.bin.") and name.endswith(".tmp") for name in leftovers)


def test_runs_never_share_a_directory(tmp_path):
    runs = [results.RunDir.create("llm", {"trials": 1}, root=tmp_path) for _ in range(30)]
    assert len({r.path for r in runs}) == 30
    for r in runs:
        info = json.loads((r.path / "run.json").read_text(encoding="utf-8"))
        assert info["status"] == results.STATUS_RUNNING
        assert info["params"] == {"trials": 1}
        assert info["fingerprint"]["cores_logical"] >= 1


def test_parquet_roundtrip_and_latest(tmp_path):
    first = results.RunDir.create("llm", {"trials": 1}, root=tmp_path)
    df = results.tidy(
        pd.DataFrame({"scenario": ["x"], "trial": [0], "ttft_ms": [1.5]}),
        first.run_id,
        "llm",
        {"trials": 1},
    )
    first.write_frame(df)
    first.finish(results.STATUS_OK)
    second = results.RunDir.create("llm", {"trials": 2}, root=tmp_path)
    second.finish(results.STATUS_FAILED, "boom")
    assert results.latest_run("llm", tmp_path).path == first.path
    back = results.load_run(first.path)
    assert list(back.columns[:4]) == ["run_id", "phase", "scenario", "trial"]
    assert back.loc[0, "trials"] == 1 and back.loc[0, "ttft_ms"] == 1.5
    both = results.load_runs([first.path, first.path])
    assert len(both) == 2
    assert not any(p.name.endswith(".tmp") for p in first.path.iterdir())
    assert os.path.isfile(first.path / "run.json")


def test_latest_run_leaves_out_self_checks(tmp_path):
    from mateperf.phases import memory

    clean = results.RunDir.create("memory", {"leak_kb_per_message": 0}, root=tmp_path)
    leak = results.RunDir.create("memory", {"leak_kb_per_message": 50}, root=tmp_path)
    for run in (clean, leak):
        run.write_frame(pd.DataFrame({"rss_mb": [1.0]}))
        run.finish(results.STATUS_OK)
    assert results.latest_run("memory", tmp_path).path == leak.path
    chosen = results.latest_run("memory", tmp_path, accept=memory.representative)
    assert chosen.path == clean.path


def test_reproduce_command_names_parameters_whose_default_moved():
    from mateperf import phases
    from mateperf.report import reproduce_command

    defaults = phases.defaults("llm")
    info = {
        "phase": "llm",
        "command": "mateperf run llm -p trials=3",
        "params": {**defaults, "trials": 3, "max_tokens": defaults["max_tokens"] + 1},
    }
    assert reproduce_command(info) == (
        f"mateperf run llm -p trials=3 -p max_tokens={defaults['max_tokens'] + 1}"
    )
    same = {"phase": "llm", "command": "mateperf run llm", "params": dict(defaults)}
    assert reproduce_command(same) == "mateperf run llm"


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits unavailable on this OS")
@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask):
    """mkstemp's 0600 must not survive the rename: each atomic write ends with the mode a plain
    open() gives a new file under the same umask (0644 under 022, 0660 under 007)."""
    old = os.umask(umask)
    results.ordinary_file_mode.cache_clear()
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x", encoding="utf-8")
        results.atomic_write_text(tmp_path / "cpu.md", "# cpu\n")
        results.atomic_write_json(tmp_path / "run.json", {"a": 1})
        results.atomic_write_parquet(tmp_path / "cpu.parquet", pd.DataFrame({"x": [1]}))
    finally:
        os.umask(old)
        results.ordinary_file_mode.cache_clear()
    expected = 0o666 & ~umask
    assert plain.stat().st_mode & 0o777 == expected
    for name in ("cpu.md", "run.json", "cpu.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
    assert not list(tmp_path.glob(".*.tmp"))
