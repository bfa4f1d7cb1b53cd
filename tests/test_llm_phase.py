"""Phase 2 with the real model, in process and through the real CLI and papermill."""

import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from mateperf import companion, model, results, runner, workloads
from mateperf.phases import llm
from mateperf.phases.llm import measure
from tests.conftest import PHASE_RUN_PARAMS, SMALL_LLM, small_llm_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_run(phase_runs) -> pd.DataFrame:
    """The stored frame of the session's one real `mateperf run llm` (PHASE_RUN_PARAMS["llm"]:
    SMALL_LLM with 2 trials and 2 bench repetitions), read as a report reads it."""
    assert PHASE_RUN_PARAMS["llm"]["trials"] == 2 and PHASE_RUN_PARAMS["llm"]["bench_reps"] == 2
    return phase_runs.frame("llm")


def test_rows_and_interleaving(small_run):
    first = small_run[small_run["scenario"] == llm.SCENARIO_FIRST_REPLY]
    # one warm-up pair, then 2 pairs, in a balanced order: each arm first in half the pairs
    assert list(first["arm"]) == ["cold", "warm", "warm", "cold", "cold", "warm"]
    assert list(first["position_in_pair"]) == [0, 1] * 3
    assert list(first["is_warmup"]) == [True, True, False, False, False, False]
    assert (first["load_s"] > 0).all()
    assert first.loc[first["arm"] == "cold", "warmup_ms"].isna().all()
    assert (first.loc[first["arm"] == "warm", "warmup_ms"] > 0).all()
    # pairs share the user turn, so the arms see the same prompts
    assert (first.groupby("trial")["user_turn"].nunique() == 1).all()


def test_counters_come_from_llama_cpp(small_run):
    first = small_run[small_run["scenario"] == llm.SCENARIO_FIRST_REPLY]
    assert (first["gen_tokens"] <= SMALL_LLM["max_tokens"]).all()
    assert (first["gen_tokens"] >= 1).all()
    assert (first["ttft_ms"] < first["e2e_ms"]).all()
    cold = first[first["arm"] == "cold"]["prompt_tokens"]
    warm = first[first["arm"] == "warm"]["prompt_tokens"]
    # the warm-up leaves the system prompt in the KV cache: far fewer tokens to evaluate
    assert warm.max() < cold.min()


def test_llama_bench_style_rows(small_run):
    pp = small_run[small_run["scenario"] == llm.SCENARIO_PP]
    tg = small_run[small_run["scenario"] == llm.SCENARIO_TG]
    assert list(pp["is_warmup"]) == [True, False, False]
    assert (pp["bench_tokens"] == SMALL_LLM["pp_tokens"]).all()
    assert np.allclose(pp["pp_tps"], pp["bench_tokens"] / pp["bench_s"])
    assert (tg["tg_tps"] > 0).all()


def test_visits_interleave_pairs_and_repetitions_round_by_round():
    rows = runner.run_rounds(
        "llm",
        measure.streams(trials=2, bench_reps=3),
        lambda v: [{}] if v.item == measure.BENCH else {"ttft_ms": 1.0},
        lambda v, row: "",
        base=lambda v: {"item": v.item},
    )
    order = [(r["trial"], r["item"]) for r in rows]
    assert order == [
        (-1, "cold"), (-1, "warm"), (-1, "throughput"),
        (0, "warm"), (0, "cold"), (0, "throughput"),
        (1, "cold"), (1, "warm"), (1, "throughput"),
        (2, "throughput"),
    ]  # fmt: skip


def test_a_failed_trial_is_recorded_and_the_run_goes_on(default_model):
    """A real failure, no fake: n_ctx holds the conversation of user turn 1 (the run's round 0)
    but not the longer turns 0 and 2 (its warm-up round and round 1), so `stream_reply` refuses
    those with "does not fit the context window", and the pairs of round 0 and the throughput
    repetitions still run."""
    turns = companion.USER_TURNS[:3]
    llm_, _ = model.load(model.LlamaConfig(str(default_model), n_ctx=512))
    try:  # counted as stream_reply counts them: the messages' text, before the chat template
        sizes = [
            len(llm_.tokenize("\n".join(m["content"] for m in companion.chat_messages(u)).encode()))
            for u in turns
        ]
    finally:
        model.close(llm_)
    assert sizes[1] < min(sizes[0], sizes[2])
    max_tokens = 16  # above the chat template's own tokens, so the templated turn 1 fits
    df = llm.run(
        model=str(default_model),
        **{**SMALL_LLM, "trials": 2, "max_tokens": max_tokens, "n_ctx": sizes[1] + max_tokens},
    )
    first = df[df["scenario"] == llm.SCENARIO_FIRST_REPLY]
    failed = first[first["error"] != ""]
    assert list(failed["user_turn"]) == [0, 0, 2, 2] and list(failed["trial"]) == [-1, -1, 1, 1]
    assert failed["error"].str.startswith("ValueError: ").all()
    assert failed["error"].str.contains("does not fit the context window").all()
    assert failed["ttft_ms"].isna().all()
    ok = first[first["error"] == ""]
    assert list(ok["trial"]) == [0, 0] and (ok["gen_tokens"] >= 1).all()
    assert (df.loc[df["scenario"] != llm.SCENARIO_FIRST_REPLY, "error"] == "").all()
    summary = llm.summarize(df)  # failed trials are left out, like warm-ups
    ttft = summary[summary["metric"] == "ttft_ms"].set_index("arm")["n"]
    assert ttft["cold"] == 1 and ttft["warm"] == 1


def test_summaries(small_run):
    summary = llm.summarize(small_run)
    ttft = summary[(summary["metric"] == "ttft_ms") & (summary["arm"] == "warm")].iloc[0]
    assert ttft["n"] == 2
    ab = llm.cold_vs_warm(small_run)
    assert set(ab["metric"]) >= {"ttft_ms", "e2e_ms", "load_s", "tg_tps"}
    bound = llm.bandwidth_bound(small_run)
    assert bound["bound_tps"] > 0 and 0 < bound["fraction_of_bound"]
    assert bound["bytes_per_token_mb"] > 200  # the 270M Q4_K_M model's weights


@pytest.fixture(scope="module")
def cli_llm_run(phase_runs):
    """The session's one real `mateperf run llm` (tests/conftest.py, PHASE_RUN_PARAMS)."""
    run = phase_runs.get("llm")
    return run.root, run.run_dir, run.process


def test_cli_run_writes_a_complete_run_directory(cli_llm_run):
    results_root, run_dir, r = cli_llm_run
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["status"] == results.STATUS_OK
    assert info["params"]["trials"] == 2 and info["params"]["max_tokens"] == 8
    assert info["command"].startswith("mateperf run llm")
    df = pd.read_parquet(run_dir / "llm.parquet")
    assert {"run_id", "phase", "scenario", "trial", "ttft_ms", "tg_tps", "n_threads"} <= set(
        df.columns
    )
    assert (df["max_tokens"] == 8).all() and (df["run_id"] == info["run_id"]).all()
    assert (run_dir / "02_llm_cache.ipynb").is_file()
    md = (run_dir / "llm.md").read_text(encoding="utf-8")
    assert "Cold vs warm" in md and "plots/llm_ttft_cold_vs_warm.png" in md
    assert (run_dir / "plots" / "llm_throughput.png").stat().st_size > 1000
    # progress reached the terminal, one line per trial
    assert re.search(r"\[llm\] \d+/\d+ first reply cold \(warm-up\): load ", r.stderr)
    assert info["measure_s"] > 0 and info["execution_s"] >= info["measure_s"]


def test_report_is_regenerated_identically(cli_llm_run, cli, monkeypatch):
    results_root, run_dir, _ = cli_llm_run
    monkeypatch.setenv("MATEPERF_RESULTS", str(results_root))
    r = cli("--results", str(results_root), "report")
    assert r.rc == 0, r.stderr
    final = results_root / "FINAL_RESULTS.md"
    first_text = final.read_text(encoding="utf-8")
    first_png = (results_root / "plots" / run_dir.name / "llm_ttft_cold_vs_warm.png").read_bytes()
    assert cli("--results", str(results_root), "report").rc == 0
    assert final.read_text(encoding="utf-8") == first_text
    assert (
        results_root / "plots" / run_dir.name / "llm_ttft_cold_vs_warm.png"
    ).read_bytes() == first_png
    assert run_dir.name in first_text and "Phase 2" in first_text
    assert "mateperf run llm" in first_text  # the command that reproduces the run
    # named runs: the same selection, and the command that regenerates it is recorded
    assert cli("--results", str(results_root), "report", str(run_dir)).rc == 0
    named = final.read_text(encoding="utf-8")
    assert f"mateperf report {results_root.name}/{run_dir.name}" in named
    assert cli("--results", str(results_root), "report", str(run_dir)).rc == 0
    assert final.read_text(encoding="utf-8") == named


def test_explore_notebook_executes_over_a_real_run(cli_llm_run, tmp_path):
    import papermill as pm

    from mateperf.host import REPO_ROOT

    _, run_dir, _ = cli_llm_run
    out = tmp_path / "explore.ipynb"
    pm.execute_notebook(
        str(REPO_ROOT / "notebooks" / "00_explore.ipynb"),
        str(out),
        parameters={"run_dirs": str(run_dir), "metric": "ttft_ms", "hue": "arm"},
        kernel_name="python3",
        progress_bar=False,
    )
    text = out.read_text(encoding="utf-8")
    assert "rows from 1 run(s)" in text and "image/png" in text


def test_compare_a_run_with_itself(cli_llm_run, cli):
    _, run_dir, _ = cli_llm_run
    r = cli("compare", str(run_dir), str(run_dir))
    assert r.rc == 0, r.stderr
    assert "ttft_ms" in r.stdout
    # two trials per arm: too few for a rank test, and nothing is called different (the
    # one-replicate verdict is checked on the one-trial runs of the threads comparison below)
    assert "too few trials to test: 2+2" in r.stdout
    assert "faster" not in r.stdout and "slower" not in r.stdout


def test_compare_calls_two_threads_faster_than_one(cli, results_root):
    """Known answer: on this 2-core host, generation with 2 threads beats 1 (idle machine).

    Five llama-bench repetitions per run are the replicates of the tg row.
    """
    from mateperf.compare import compare_runs

    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this known-answer check needs 2 usable CPUs")
    params = dict(trials=1, bench_reps=5, pp_tokens=64, tg_tokens=64, membw_mb=32)
    for threads in (1, 2):
        r = cli("run", "llm", *small_llm_args(n_threads=threads, **params))
        assert r.rc == 0, r.stderr[-2000:]
    one, two = results.list_runs(results_root, "llm")
    assert (one.info["params"]["n_threads"], two.info["params"]["n_threads"]) == (1, 2)
    table, _ = compare_runs(one.path, two.path)
    tg = table[(table["scenario"] == "tg") & (table["metric"] == "tg_tps")].iloc[0]
    assert tg["n"] == "5/5"
    assert tg["verdict"] == "faster", tg.to_dict()
    assert tg["B/A"] > 1.1
    # one trial per arm in each run: the first replies are reported, not tested
    r = cli("compare", str(one.path), str(two.path))
    assert r.rc == 0, r.stderr
    assert "not tested (one replicate)" in r.stdout


def test_failed_measurement_is_recorded(cli, results_root):
    # 64 tokens of context cannot hold the system prompt: every first reply fails, and a run
    # whose every first-reply trial failed is a failed run, with the first trial's error
    r = cli("run", "llm", *small_llm_args(n_ctx=64))
    assert r.rc == 1
    assert "first reply cold (warm-up): FAILED ValueError" in r.stderr
    (run_dir,) = [p.parent for p in results_root.glob("*/run.json")]
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["status"] == results.STATUS_FAILED
    assert info["error"]["ename"] == "RuntimeError"
    assert "every first-reply trial failed" in info["error"]["evalue"]
    assert "context window" in info["error"]["evalue"]
    assert (run_dir / "02_llm_cache.ipynb").is_file()


def test_gpu_layers_without_gpu_build_says_so(default_model, capsys):
    df = llm.run(model=str(default_model), **{**SMALL_LLM, "n_gpu_layers": 4})
    said = capsys.readouterr().out  # a progress line: stdout (the CLI shows it on stderr)
    if workloads.gpu_offload_available():
        assert (df["gpu_layers_effective"] == 4).all()
    else:
        assert "n_gpu_layers=4 asked for" in said and "every layer runs on the CPU" in said
        assert not df["gpu_offload"].any() and (df["gpu_layers_effective"] == 0).all()
        from mateperf.reports.llm import _gpu_note

        assert "No GPU offload" in _gpu_note(df, {"n_gpu_layers": 4})[0]
