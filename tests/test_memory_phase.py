"""Phase 1 on the real model: the leak detector catches an injected leak and passes a clean run.

Short runs (24 messages, tiny replies) with gc.collect() after every message, the arm in which
the workload itself does not grow (see docs/memory.md: without it llama-cpp-python's per-reply
sampler chains wait for CPython's cyclic GC). Whole file: about a minute on 2 idle cores.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from mateperf import results
from mateperf.errors import ParameterError
from mateperf.phases import memory
from mateperf.reports import memory as memory_report

pytestmark = pytest.mark.slow

SHORT = dict(
    messages=24,
    warmup_messages=8,
    max_tokens=12,
    gc_every_message=True,
    n_threads=1,  # one thread: no spin-waiting barriers when the shared host is oversubscribed
    settle_s=0.2,
    progress=False,
)


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    return memory.run(**SHORT)


@pytest.fixture(scope="module")
def leaky() -> pd.DataFrame:
    return memory.run(**SHORT, leak_kb_per_message=50)


def test_frame_holds_samples_markers_and_messages(clean):
    assert set(clean["record"]) == {"sample", "marker", "message"}
    assert list(clean["scenario"].drop_duplicates()) == list(memory.SCENARIOS)
    msgs = memory.message_rows(clean)
    assert list(msgs["message"]) == list(range(1, 25))
    assert msgs["completion_tokens"].between(1, 12).all()
    assert msgs["history_len"].max() == 11  # system excluded: 10 kept messages + the new one
    cp = memory.checkpoints(clean)
    assert set(memory.CHECKPOINTS) <= set(cp["checkpoint"])
    by = cp.set_index("checkpoint")
    assert by.loc["after_load", "rss_mb"] > by.loc["baseline", "rss_mb"] + 100
    assert by.loc["after_load", "model_mapped_mb"] > 50  # the mmap'd model is resident
    assert by.loc["after_trim", "rss_mb"] < by.loc["after_chat", "rss_mb"] - 100
    assert by.loc["after_trim", "model_mapped_mb"] == 0
    notes = clean["malloc_trim_note"].dropna()
    assert len(notes) == 1 and notes.iloc[0]
    for name in ("warmup_messages", "leak_threshold_mb_per_msg", "gc_every_message"):
        assert name in clean.columns  # the frame describes itself


def test_clean_run_is_not_flagged(clean):
    leak = memory.summarize(clean)
    assert memory.overall_verdict(leak) != memory.LEAK
    verdicts = dict(zip(leak["metric"], leak["verdict"], strict=True))
    assert verdicts["rss_mb"] == memory.NO_LEAK, leak.to_string()
    assert verdicts["heap_used_mb"] == memory.NO_LEAK, leak.to_string()


def test_injected_leak_of_50_kb_per_message_is_caught(leaky):
    leak = memory.summarize(leaky)
    assert memory.overall_verdict(leak) == memory.LEAK, leak.to_string()
    heap = leak[leak["metric"] == "heap_used_mb"].iloc[0]
    assert heap["verdict"] == memory.LEAK
    assert 40 < heap["slope_kb_per_msg"] < 65, heap.to_dict()
    # released again at the end of memory_cleanup
    assert "injected leak released" in set(leaky["label"])


def test_no_gpu_is_stated_not_silent(clean):
    status = clean["gpu_status"].iloc[0]
    if status.startswith("no GPU: "):
        assert clean["vram_device_used_mb"].isna().all()
    else:
        assert clean["vram_device_used_mb"].notna().any()


def test_report_section_is_deterministic(clean, tmp_path):
    table = results.tidy(clean, "test-run", "memory", {})
    info = {"params": {}}
    first = memory_report.section(table, info, tmp_path / "plots", tmp_path)
    pngs = {p.name: p.read_bytes() for p in (tmp_path / "plots").glob("*.png")}
    second = memory_report.section(table, info, tmp_path / "plots", tmp_path)
    assert first == second
    assert pngs == {p.name: p.read_bytes() for p in (tmp_path / "plots").glob("*.png")}
    assert first.startswith("## Phase 1 — Memory")
    assert set(pngs) == {"memory_timeline.png", "memory_per_message.png"}
    assert "](plots/memory_timeline.png)" in first
    assert "no leak" in first and "### Leak test" in first


def test_parquet_round_trip_keeps_the_verdict(clean, tmp_path):
    path = tmp_path / "memory.parquet"
    results.atomic_write_parquet(path, results.tidy(clean, "r1", "memory", {}))
    back = pd.read_parquet(path)
    a = memory.summarize(back).drop(columns="run_id")
    b = memory.summarize(clean).drop(columns="run_id")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"messages": 0}, "messages=0"),
        ({"messages": 10, "warmup_messages": 9}, "need at least 3"),
        ({"history_messages": 3}, "history_messages=3"),
        ({"leak_kb_per_message": -1}, "leak_kb_per_message=-1"),
        ({"sample_interval_ms": 0.0}, "sample_interval_ms=0.0"),
    ],
)
def test_impossible_parameters_are_refused(bad, needle):
    with pytest.raises(ParameterError, match=needle):
        memory.validate(bad)


def test_cli_refuses_a_bad_value_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "mateperf.cli", "run", "memory", "-p", "messages=0"],
        capture_output=True,
        text=True,
        env={**os.environ, "MATEPERF_RESULTS": "/nonexistent-not-used"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "messages=0" in proc.stderr and "Traceback" not in proc.stderr
