"""`mateperf.live` in the companion's own call pattern, with the real model and a real avatar.

The companion's pattern, written here from its repository's documented signatures (the project
holds none of its code): `ModelManager.load_model` builds
`Llama(model_path, n_gpu_layers, n_ctx, n_batch, n_threads, use_mlock, verbose=False)` from
its GPU profile; `generate` calls `self.model(prompt, temperature=..., top_p=..., max_tokens=...,
stop=[...], echo=False)` and reads `response["choices"][0]["text"]`. The one line docs/live.md
gives wraps the constructor.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import llama_cpp
import pytest
from llama_cpp import Llama

from mateperf import explore, live, results
from mateperf.bridge.process import start_peer
from mateperf.companion import SYSTEM_PROMPT, USER_TURNS
from mateperf.errors import BadInput
from mateperf.gpu.companion_profiles import PROFILES
from mateperf.host import usable_cpus
from mateperf.journal import append_journal, journal_frame

pytestmark = pytest.mark.slow

BALANCED = PROFILES["balanced"]


def companion_prompt(history: list[str], user: str) -> str:
    """A prompt as the companion's chat engine hands `generate` one: persona, history, turn."""
    return "\n".join([SYSTEM_PROMPT, *history[-6:], f"User: {user}", "Mate:"])


def load_like_the_companion(model_path, avatar=None):
    # n_threads: the profile's 6 on a host with fewer CPUs would spin-wait against itself
    # (the companion's laptop has 14 cores); every other argument is the profile's own.
    return live.record(  # the one line (docs/live.md)
        Llama(
            model_path=str(model_path),
            n_gpu_layers=BALANCED.n_gpu_layers,
            n_ctx=BALANCED.n_ctx,
            n_batch=BALANCED.n_batch,
            n_threads=min(BALANCED.n_threads, usable_cpus()),
            use_mlock=BALANCED.use_mlock,
            verbose=False,
        ),
        avatar=avatar,
    )


def generate(model, prompt: str) -> tuple[str, dict]:
    """The companion's `generate`: no streaming, the whole reply at once."""
    response = model(
        prompt, temperature=0.7, top_p=0.9, max_tokens=16, stop=["User:", "\n\n"], echo=False
    )
    return response["choices"][0]["text"].strip(), response


def counters(model) -> tuple[float, float, int, int]:
    """llama.cpp's own counters, read here, independently of the recorder."""
    d = llama_cpp.llama_perf_context(model._ctx.ctx)
    return d.t_p_eval_ms, d.t_eval_ms, d.n_p_eval, d.n_eval


def test_ten_turns_recorded_with_llama_cpps_own_counters(default_model, results_root, cli):
    peer = start_peer("python", fps=60.0)
    try:
        model = load_like_the_companion(default_model, avatar=f"{peer.host}:{peer.port}")
        expected, history = [], []
        for user in USER_TURNS:
            before = counters(model)
            text, response = generate(model, companion_prompt(history, user))
            after = counters(model)
            history += [f"User: {user}", f"Mate: {text}"]
            expected.append(
                {
                    "prompt_eval_ms": after[0] - before[0],
                    "eval_ms": after[1] - before[1],
                    "prompt_eval_tokens": after[2] - before[2],
                    "eval_tokens": after[3] - before[3],
                    "prompt_tokens": response["usage"]["prompt_tokens"],
                    "completion_tokens": response["usage"]["completion_tokens"],
                }
            )
        run_dir = model.session.run.path
        model.close()
    finally:
        peer.stop()
    run = results.RunDir.open(run_dir)
    assert run.info["status"] == "ok" and run.frame_path().is_file()
    df = run.read_frame().sort_values("trial").reset_index(drop=True)
    assert list(df["trial"]) == list(range(10))
    for i, want in enumerate(expected):
        row = df.iloc[i]
        for column, value in want.items():
            assert row[column] == pytest.approx(value, abs=1e-6), (i, column)
        assert row["wall_ms"] >= row["prompt_eval_ms"] + row["eval_ms"]
        assert row["frame_status"] == "ok" and row["frames"] > 0, row
        assert 0 < row["frame_p99_ms"] < 1000
        assert row["rss_mb"] > 100 and row["overhead_us"] > 0
    assert (df["n_ctx"] == BALANCED.n_ctx).all() and (df["n_batch"] == BALANCED.n_batch).all()

    r = cli("report", str(run_dir))
    assert r.rc == 0, r.stderr
    text = (results_root / "FINAL_RESULTS.md").read_text(encoding="utf-8")
    assert "Phase 7 — live: a real companion session" in text
    assert "closed: 10 calls" in text and "### Summary" in text
    own = (run_dir / "live.md").read_text(encoding="utf-8")  # the session's own report
    assert "prompt eval ms (llama.cpp)" in own
    # call 3's own figure in the table (2 decimals; the table drops a trailing 0)
    assert f"{df['prompt_eval_ms'].iloc[3]:.2f}".rstrip("0") in own


KILLED_SESSION = textwrap.dedent(
    """
    import sys
    from llama_cpp import Llama
    from mateperf import live

    model = live.record(
        Llama(model_path=sys.argv[1], n_gpu_layers=0, n_ctx=512, n_batch=128, n_threads=1,
              use_mlock=False, verbose=False),
        avatar="",
    )
    print(model.session.run.path, flush=True)
    for i in range(2):
        model("User: hello\\nMate:", temperature=0.7, top_p=0.9, max_tokens=4, stop=["User:"],
              echo=False)
    print("third call", flush=True)
    model("User: tell me a long story\\nMate:", max_tokens=400, temperature=0.7, echo=False)
    print("the third call ended before the kill", flush=True)
    """
)


def test_a_session_killed_mid_call_keeps_its_earlier_calls(default_model, results_root, cli):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SESSION, str(default_model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "MATEPERF_RESULTS": str(results_root)},
    )
    try:
        run_dir = proc.stdout.readline().strip()
        assert proc.stdout.readline().strip() == "third call"
        proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no atexit, no close
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = results.RunDir.open(run_dir)
    assert run.info["status"] == "running" and not run.frame_path().is_file()
    df = run.read_frame()
    assert sorted(df["trial"]) == [0, 1]
    # the second prompt is the first again: llama-cpp-python's prefix cache serves it, and
    # llama.cpp counts the one token it re-evaluates as eval, not prompt eval
    assert (df["completion_tokens"] > 0).all() and (df["eval_ms"] > 0).all()
    assert df["prompt_eval_tokens"].tolist()[1] == 0 < df["prompt_eval_tokens"].tolist()[0]
    assert explore.declared(explore.load([run_dir]))[:3] == ["wall_ms", "prompt_eval_ms", "eval_ms"]
    stored = (run.path / results.RUN_JSON).read_bytes()
    r = cli("report", run_dir)
    assert r.rc == 0, r.stderr
    text = (results_root / "FINAL_RESULTS.md").read_text(encoding="utf-8")
    assert "interrupted (the companion's process is gone: killed or crashed" in text
    own = (run.path / "live.md").read_text(encoding="utf-8")
    assert own.startswith(f"# live — run `{run.run_id}` (interrupted)")
    assert "## Phase 7 — live: a real companion session (interrupted)" in own
    # the default selection reports it too, from its journal, with its status now
    r = cli("report")
    assert r.rc == 0, r.stderr
    assert f"{run.run_id} (live): interrupted; reported from its journal" in r.stdout
    text = (results_root / "FINAL_RESULTS.md").read_text(encoding="utf-8")
    assert "## Phase 7 — live: a real companion session (interrupted)" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| live |"))
    assert row.endswith("| interrupted |")
    assert (run.path / results.RUN_JSON).read_bytes() == stored  # readers never write


def test_a_cut_line_is_left_out_and_a_later_line_completes_its_call(tmp_path):
    journal = tmp_path / "live.jsonl"
    append_journal(journal, {"trial": 0, "wall_ms": 5.0})
    append_journal(journal, {"trial": 1, "wall_ms": 7.0})
    append_journal(journal, {"trial": 0, "frame_p99_ms": 17.1})
    with open(journal, "ab") as fh:
        fh.write(b'{"trial": 2, "wall_')  # the machine stopped mid-write
    df = journal_frame(journal).set_index("trial")
    assert list(df.index) == [0, 1]
    assert df.loc[0, "frame_p99_ms"] == 17.1 and math.isnan(df.loc[1, "frame_p99_ms"])


def test_a_bad_avatar_address_is_one_clear_line():
    with pytest.raises(BadInput, match="'localhost': expected HOST:PORT"):
        live.record(object(), avatar="localhost")
    assert live.parse_address("127.0.0.1:5555") == ("127.0.0.1", 5555)


def test_mateperf_run_live_refuses_before_making_a_run(cli, results_root):
    for args in (("run", "live"), ("sweep", "live", "--grid", "label=a,b")):
        r = cli(*args)
        assert r.rc == 2 and "it is recorded by mateperf.live" in r.stderr, r.stderr
    assert not list(results_root.glob("*/run.json"))
