"""`mateperf tune`: what it never loads, the companion's own profile, and the file it writes.

The race itself is tested in tests/test_race.py (simulated trials, known answers); the run
of the command on the real model is the slow test at the end.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from mateperf import recommended_file
from mateperf.errors import ParameterError
from mateperf.gpu import estimate, profiles
from mateperf.model import LlamaConfig, resolve_model
from mateperf.tune import space
from mateperf.tune.params import TuneParams
from mateperf.tune.tuner import companion_setting, default_profile

BALANCED = next(r for r in space.RULES if r.name == profiles.BALANCED)
FALLBACK = next(r for r in space.RULES if r.name == profiles.CPU_FALLBACK)


@pytest.fixture(scope="module")
def layout():
    return estimate.read_layout(resolve_model(None))


def _plan(layout, rule, budget_mb, offload, margin_mb=0):
    return space.candidates(
        rule, layout, 2, budget_mb, margin_mb, offload, estimate.REFERENCE_OVERHEAD, space.Axes()
    )


def test_a_setting_predicted_over_the_card_is_never_loaded(layout):
    """Known answer: balanced may use half of a 2048 MiB card, 1024 MiB. The default model's
    prediction is about 1000 MiB with 15 layers at n_batch 128 and flash attention (it fits),
    and about 1400-1500 MiB at n_batch 512 (it does not: the logits of a 512-token batch)."""
    plan = {c.setting.label: c for c in _plan(layout, BALANCED, 2048, offload=True)}
    small = plan["t1/1 b128 ngl15 ctx2048 kv f16 fa on"]
    big = plan["t1/1 b512 ngl15 ctx2048 kv f16 fa on"]
    assert small.predicted_vram_mb <= 1024 and not small.pruned
    assert big.predicted_vram_mb > 1024 and big.pruned.startswith("predicted ")
    assert "> 1024 MiB (50% of 2048)" in big.pruned
    assert all(not c.pruned for c in plan.values() if c.setting.n_gpu_layers == 0)


def test_without_gpu_offload_layer_settings_are_pruned_with_their_prediction(layout):
    plan = _plan(layout, BALANCED, 6144, offload=False)
    on_gpu = [c for c in plan if c.setting.n_gpu_layers != 0]
    assert on_gpu and all("no GPU offload" in c.pruned for c in on_gpu)
    assert all(math.isfinite(c.predicted_vram_mb) for c in on_gpu)
    assert all(
        "uses no GPU" in c.pruned
        for c in _plan(layout, FALLBACK, 6144, True)
        if c.setting.n_gpu_layers != 0
    )


def test_every_candidate_is_a_loadable_config(layout):
    for c in _plan(layout, BALANCED, 6144, offload=True):
        cfg = c.setting.config("model.gguf")
        assert isinstance(cfg, LlamaConfig) and cfg.ubatch == c.setting.n_batch
    with pytest.raises(ParameterError, match="needs flash_attn"):
        space.Setting(1, 1, 128, 0, 2048, "q8_0", "q8_0", False).config("model.gguf")


def test_a_trial_reads_the_vram_it_added_where_a_gpu_is_read():
    """The real model and the real avatar load; NVML's readings come from FakeNvml (before the
    load, after it, after the reply), since this machine has no GPU to cause them."""
    from mateperf.trackers.gpu import NvmlDevice
    from mateperf.tune.trial import Bench
    from tests.test_gpu_monitor import FakeNvml

    setting = space.Setting(1, 1, 128, 0, 2048)
    vram = NvmlDevice(nvml=FakeNvml([1000.0, 1400.0, 1450.0]))
    with Bench(str(resolve_model(None)), "python", 60.0, 0.5, 10.0, 4, 1, vram) as bench:
        row = bench.measure(setting)
    assert (row["vram_loaded_delta_mb"], row["vram_delta_mb"]) == (400.0, 450.0)
    assert row["reply_ms"] > 0 and row["frame_p99_ms"] > 0
    with Bench(str(resolve_model(None)), "python", 60.0, 0.5, 10.0, 4, 1) as bench:
        assert math.isnan(bench.measure(setting)["vram_delta_mb"])  # no GPU read: no figure


def test_the_picks_vram_is_measured_where_read_else_predicted():
    import pandas as pd

    from mateperf.tune.tuner import _vram

    gpu = space.Setting(1, 1, 128, 20, 2048)
    read = _vram(pd.DataFrame({"vram_delta_mb": [900.0, 950.0, 1000.0]}), gpu, 1024.0)
    assert read["vram_mb"] == 950.0 and read["vram_basis"].startswith("measured: NVML")
    assert read["vram_predicted_mb"] == 1024.0
    unread = _vram(pd.DataFrame({"vram_delta_mb": [math.nan] * 3}), gpu, 1024.0)
    assert unread["vram_mb"] == 1024.0 and unread["vram_basis"].startswith("predicted")
    cpu = _vram(pd.DataFrame({"vram_delta_mb": [math.nan]}), space.Setting(1, 1, 128, 0, 2048), 0)
    assert cpu["vram_mb"] is None and cpu["vram_basis"] == "no layers on the GPU"


def test_the_companion_profile_is_clamped_to_this_host_and_says_how():
    setting, note = companion_setting(BALANCED, usable=2, offload=False)
    assert (setting.n_threads, setting.n_gpu_layers, setting.n_batch) == (2, 0, 256)
    assert "n_threads 6 → 2" in note and "n_gpu_layers 35 → 0" in note
    setting, _ = companion_setting(BALANCED, usable=16, offload=True)
    assert (setting.n_threads, setting.n_gpu_layers, setting.n_ctx) == (6, 35, 2048)


def test_tune_parameters_are_checked_in_one_place():
    assert TuneParams().axes().kv[-1] == ("q8_0", "q8_0", True)
    with pytest.raises(ParameterError, match="need flash_attn on"):
        TuneParams(kv_types="q8_0", flash_attn="off")
    with pytest.raises(ParameterError, match="parameter fps=0.0 must be above 0"):
        TuneParams(fps=0)
    with pytest.raises(ParameterError, match="n_batch='x'"):
        TuneParams(n_batch="x")
    with pytest.raises(ParameterError, match="frame_slack_ms"):
        TuneParams(frame_slack_ms=-1)
    with pytest.raises(ParameterError, match="eta"):
        TuneParams(eta=1)


def test_profiles_names_what_is_tuned_in_the_companions_order():
    assert [r.name for r in TuneParams().rules()] == ["performance", "balanced", "cpu_fallback"]
    picked = TuneParams(profiles="cpu_fallback, Balanced").rules()
    assert [r.name for r in picked] == ["balanced", "cpu_fallback"]
    assert default_profile(["balanced", "cpu_fallback"]) == "balanced"
    assert default_profile(["performance", "cpu_fallback"]) == "performance"


def test_an_unknown_profile_is_refused_in_one_line_with_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mateperf", "--results", str(tmp_path), "tune"]
        + ["-p", "profiles=balanced,fast"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "mateperf: error: parameter profiles='balanced,fast': no companion profile 'fast' "
        "(choose from performance, balanced, cpu_fallback)"
    ]
    assert not list(tmp_path.iterdir())  # refused before a run directory exists


def test_tune_help_lists_profiles():
    proc = subprocess.run(
        [sys.executable, "-m", "mateperf", "tune", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("profiles "))
    assert "default 'performance,balanced,cpu_fallback'" in line
    assert "only balanced" in proc.stdout


def _tuned_file(tmp_path, fingerprint) -> tuple:
    entry = {
        "settings": {
            "n_threads": 1,
            "n_threads_batch": 2,
            "n_batch": 128,
            "n_ubatch": 128,
            "n_gpu_layers": 0,
            "n_ctx": 2048,
            "type_k": "q8_0",
            "type_v": "q8_0",
            "flash_attn": True,
        },
        "measured": {},
        "evidence": [],
    }
    rec = recommended_file.tuned(
        {"profiles": {"balanced": entry}, "default_profile": "balanced"}, fingerprint
    )
    path = recommended_file.write(tmp_path / recommended_file.FILE_NAME, rec)
    return path, entry


def test_a_tuned_file_is_loaded_and_applied_by_profile(tmp_path):
    from mateperf.host import cpu_budget

    fp = cpu_budget()
    path, entry = _tuned_file(tmp_path, fp)
    rec = recommended_file.load(path, fp)
    assert recommended_file.as_params(rec) == entry["settings"]
    # a file tuned for balanced alone: another profile is named as missing, never a KeyError
    with pytest.raises(recommended_file.ConfigError, match="no performance profile: tune tuned"):
        recommended_file.as_params(rec, "performance")
    with pytest.raises(recommended_file.ConfigError, match="no cpu_fallback profile"):
        LlamaConfig.from_recommended(path, "m.gguf", profile="cpu_fallback")
    assert LlamaConfig.from_recommended(path, "m.gguf", profile="balanced").n_batch == 128
    assert recommended_file.not_tuned(rec) == ["performance", "cpu_fallback"]
    bad = json.loads(path.read_text(encoding="utf-8"))
    bad["profiles"]["balanced"]["settings"]["n_batch"] = 0
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(recommended_file.ConfigError, match="profile balanced: n_batch=0"):
        recommended_file.load(path, fp)


def test_run_with_a_tuned_config_takes_the_settings_the_phase_has(tmp_path):
    from mateperf.command import with_config
    from mateperf.host import cpu_budget

    path, _ = _tuned_file(tmp_path, cpu_budget())
    got = with_config("llm", {"trials": "2"}, str(path))
    assert got["n_threads"] == "1" and got["flash_attn"] == "True" and got["trials"] == "2"
    assert "type_k" not in got  # the llm phase has no KV type parameter


@pytest.mark.slow
def test_mateperf_tune_writes_profiles_the_companion_loads(tmp_path):
    """The real command on the default model, a small space (one batch, f16 KV)."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mateperf",
            "--results",
            str(out),
            "tune",
            "-p",
            "n_batch=128",
            "-p",
            "kv_types=f16",
            "-p",
            "flash_attn=off",
            "-p",
            "max_rounds=2",
            "-p",
            "min_reps=2",
            "-p",
            "confirm_reps=2",
            "-p",
            "reply_tokens=8",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = proc.stdout + proc.stderr
    assert "[tune] performance round 1/2" in console
    assert "frame budget 17.67 ms (1000/fps 16.67 + slack 1)" in console
    assert "the avatar alone, no model: frame p99" in console
    run = next(out.glob("*-tune-*"))
    rec = recommended_file.load(run / recommended_file.FILE_NAME)
    assert rec["frame_budget_ms"] == pytest.approx(1000 / 60 + 1.0, abs=1e-3)
    assert rec["frame_p99_idle_ms"] > 0 and rec["frame_slack_ms"] == 1.0
    pacing = rec["avatar_pacing"]  # the idle stand-in's timer, and whether its pacing held
    assert pacing["timer_resolution"] == "not needed on this OS (sleeps end within µs)"
    assert pacing["timer_overshoot_us"] >= 0 and 0 <= pacing["peer_awake_share"] <= 1.01
    assert set(rec["profiles"]) == {"performance", "balanced", "cpu_fallback"}
    for name, entry in rec["profiles"].items():
        assert entry["settings"]["n_gpu_layers"] == 0, name  # a CPU build runs no layers on a GPU
        assert entry["measured"]["frame_p99_ms"] > 0 and entry["measured"]["tg_tps"] > 0
        assert entry["evidence"] and entry["race"]["pruned"]
        assert entry["meets_frame_budget"] or (
            "least overrun" in entry["note"] or "at the edge of the budget" in entry["note"]
        )
    assert rec["profiles"]["performance"]["settings"]["n_ctx"] == 4096
    # the companion's balanced passes 35 layers: every layer of the default model's 18 blocks
    intent = rec["profiles"]["balanced"]["companion_intent"]
    assert intent.startswith("balanced: 35 layers on an 18-block model is full offload")
    assert "companion_intent" not in rec["profiles"]["performance"]
    md = (run / "tune.md").read_text(encoding="utf-8")
    assert intent in md
    assert (
        "Tuned settings per companion profile" in md and (run / "plots" / "tune_race.png").is_file()
    )


def test_the_final_phase_takes_a_tuned_file(tmp_path):
    from mateperf.host import cpu_budget
    from mateperf.phases.final.measure import arm_configs
    from mateperf.phases.final.params import FinalParams

    path, _ = _tuned_file(tmp_path, cpu_budget())
    configs, facts = arm_configs(FinalParams(config=str(path)), resolve_model(None), usable=2)
    threads, profile, optimised = configs["threads"], configs["profile"], configs["optimised"]
    assert (threads.n_threads, threads.n_threads_batch, threads.n_batch) == (1, 2, 128)
    assert threads.type_k == "f16" and threads.n_gpu_layers == configs["baseline"].n_gpu_layers
    assert (profile.n_gpu_layers, profile.flash_attn, profile.type_k) == (0, True, "q8_0")
    assert profile.profile == "tuned balanced" and facts["profile"] == "tuned balanced"
    assert (optimised.n_threads, optimised.type_v, optimised.warmup) == (1, "q8_0", True)
