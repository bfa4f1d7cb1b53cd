"""Profiles, the selection under free VRAM and budgets, and the fallback chain.

Selection and fallback are decided from VRAM figures; with no GPU here, the figures (free
VRAM, what a load used, whether it ran out of memory) are given, the one fault that cannot be
caused for real. The phase test walks the chain for real on this machine's CPU.
"""

import math

from mateperf.gpu import profiles
from mateperf.gpu.profiles import CPU_FALLBACK, LAYERS_81PCT, LOW_MEMORY, PERFORMANCE

BASE = {"n_ctx": 2048, "n_batch": 512, "n_ubatch": 0, "n_threads": 1, "n_gpu_layers": -1}
ALL = 19  # the default model: 18 layers + output


def candidates(perf=1400.0, bal=1350.0, low=1100.0):
    resolved = {n: profiles.resolve(p, ALL, BASE) for n, p in profiles.PROFILES.items()}
    need = {PERFORMANCE: perf, LAYERS_81PCT: bal, LOW_MEMORY: low, CPU_FALLBACK: math.nan}
    return [profiles.Candidate(n, resolved[n], need[n], need[n] - 20) for n in profiles.ORDER]


def select(free_mb, budget_mb=None, margin_mb=512, **kw):
    args = dict(gpu_status="GPU 0: test", gpu_available=True, gpu_offload=True)
    args.update(kw)
    return profiles.select_profile(candidates(), free_mb, budget_mb, margin_mb, **args)


def test_profiles_resolve_for_the_model():
    r = {n: profiles.resolve(p, ALL, BASE) for n, p in profiles.PROFILES.items()}
    assert r[PERFORMANCE]["n_gpu_layers"] == -1 and r[PERFORMANCE]["offload_kqv"]
    assert r[LAYERS_81PCT]["n_gpu_layers"] == round(35 / 43 * ALL)  # the companion's 35 of 43
    assert r[LOW_MEMORY]["n_gpu_layers"] == 10 and not r[LOW_MEMORY]["offload_kqv"]
    assert (r[LOW_MEMORY]["n_ctx"], r[LOW_MEMORY]["n_batch"]) == (1024, 256)
    assert r[CPU_FALLBACK]["n_gpu_layers"] == 0 and not r[CPU_FALLBACK]["flash_attn"]


def test_fastest_profile_that_fits_is_chosen():
    assert select(free_mb=70000).chosen == PERFORMANCE
    # 1400 + 512 > 1880, but 1350 + 512 <= 1880
    s = select(free_mb=1880)
    assert s.chosen == LAYERS_81PCT
    rows = {r["profile"]: r for r in s.rows}
    assert (
        not rows[PERFORMANCE]["fits"] and "1400 + 512 margin > 1880" in rows[PERFORMANCE]["reason"]
    )
    assert rows[LAYERS_81PCT]["chosen"] and sum(r["chosen"] for r in s.rows) == 1
    assert select(free_mb=1000).chosen == CPU_FALLBACK


def test_budget_emulates_the_rtx_4050():
    """An 80 GB card with a 1700 MiB budget behaves like a small card: only low_memory fits."""
    s = select(free_mb=80000, budget_mb=1700)
    assert s.chosen == LOW_MEMORY and s.available_mb == 1700
    assert "budget 1700" in s.basis


def test_the_larger_prediction_decides():
    c = candidates()
    c[0].projected_mb = 5000.0  # llama.cpp sees more than the metadata for performance
    s = profiles.select_profile(c, 2500, None, 512, "GPU 0", True, True)
    assert s.chosen == LAYERS_81PCT


def test_no_gpu_or_no_offload_ends_at_cpu_fallback():
    s = select(free_mb=math.nan, gpu_available=False, gpu_status="no NVIDIA GPU: test reason")
    assert s.chosen == CPU_FALLBACK
    assert all(r["reason"] == "no NVIDIA GPU: test reason" for r in s.rows[:3])
    s = select(free_mb=70000, gpu_offload=False)
    assert s.chosen == CPU_FALLBACK and "no GPU offload" in s.rows[0]["reason"]
    unknown = profiles.select_profile(
        [profiles.Candidate(PERFORMANCE, {"n_gpu_layers": -1})], 70000, None, 512, "g", True, True
    )
    assert unknown.chosen == CPU_FALLBACK and "never measured" in unknown.rows[0]["reason"]


def test_forced_profile_is_kept_and_reported():
    s = select(free_mb=1000, requested=PERFORMANCE)
    assert s.forced and s.chosen == PERFORMANCE
    assert not next(r for r in s.rows if r["profile"] == PERFORMANCE)["fits"]


def test_fallback_chain_shrinks_context_then_layers_then_cpu():
    params = profiles.resolve(profiles.PROFILES[PERFORMANCE], ALL, BASE)
    chain = profiles.fallback_chain(PERFORMANCE, params, ALL)
    steps = [(s, p["n_gpu_layers"], p["n_ctx"]) for s, _, p in chain]
    assert steps == [
        ("as selected", -1, 2048),
        ("shrink context", -1, 1024),
        ("fewer layers", 9, 1024),
        ("fewer layers", 4, 1024),
        ("fewer layers", 2, 1024),
        ("fewer layers", 1, 1024),
        ("cpu", 0, 2048),
    ]
    assert chain[-1][1] == CPU_FALLBACK
    cpu = profiles.resolve(profiles.PROFILES[CPU_FALLBACK], ALL, BASE)
    assert len(profiles.fallback_chain(CPU_FALLBACK, cpu, ALL)) == 1


def test_walk_records_every_attempt_and_its_reason():
    """A card that runs out above 600 MiB: the attempt fails like a failed CUDA allocation."""

    def vram(params):
        k = ALL if params["n_gpu_layers"] < 0 else params["n_gpu_layers"]
        return 300 + 40 * k + params["n_ctx"] / 16 if k else 0.0

    def attempt(params):
        used = vram(params)
        if used > 600:
            return {"ok": False, "error": "ValueError: Failed to create llama_context"}
        return {"ok": True, "vram_delta_mb": used, "tg_tps": 100.0}

    params = profiles.resolve(profiles.PROFILES[PERFORMANCE], ALL, BASE)
    chain = profiles.fallback_chain(PERFORMANCE, params, ALL)
    # no limit to skip against: every step is loaded until one works
    attempts = profiles.walk(chain, attempt, lambda p: profiles.StepPrediction(vram(p)))
    assert [a.ok for a in attempts] == [False, False, False, True]
    assert not any(a.skipped for a in attempts)
    assert attempts[0].reason.startswith("ValueError: Failed to create llama_context")
    assert (
        attempts[-1].params["n_gpu_layers"] == 4 and attempts[-1].reason == "loaded and generated"
    )
    rows = [a.row() for a in attempts]
    assert [r["attempt"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["attempt_predicted_mb"] == vram(params)


def test_walk_leaves_a_step_that_exceeds_the_budget():
    def attempt(params):
        k = ALL if params["n_gpu_layers"] < 0 else params["n_gpu_layers"]
        return {"ok": True, "vram_delta_mb": 1200.0 if k > 1 else 0.0}

    params = profiles.resolve(profiles.PROFILES[LAYERS_81PCT], ALL, BASE)
    chain = profiles.fallback_chain(LAYERS_81PCT, params, ALL)
    unknown = profiles.StepPrediction(math.nan)
    attempts = profiles.walk(chain, attempt, lambda p: unknown, limit_mb=1000)
    assert attempts[0].reason == "measured 1200 MiB of VRAM > 1000 MiB available"
    assert attempts[-1].ok and attempts[-1].params["n_gpu_layers"] == 1


def test_walk_skips_what_is_predicted_not_to_fit_and_loads_only_the_rest():
    """An emulated 1000 MiB card, margin 100: the steps predicted above 900 MiB are skipped
    unloaded, with the figures; the first predicted to fit is the first loaded."""
    loaded = []

    def vram(params):
        k = ALL if params["n_gpu_layers"] < 0 else params["n_gpu_layers"]
        return 500 + 40 * k + params["n_ctx"] / 16 if k else 0.0

    def attempt(params):
        loaded.append(params["n_gpu_layers"])
        return {"ok": True, "vram_delta_mb": vram(params) + 5}

    params = profiles.resolve(profiles.PROFILES[PERFORMANCE], ALL, BASE)
    chain = profiles.fallback_chain(PERFORMANCE, params, ALL)
    predict = lambda p: profiles.StepPrediction(vram(p), vram(p) - 10)  # noqa: E731
    attempts = profiles.walk(chain, attempt, predict, limit_mb=1000, margin_mb=100)
    # -1 at 2048: 1388; -1 at 1024: 1324; 9 layers: 924 > 900; 4 layers: 724 fits
    assert [a.skipped for a in attempts] == [True, True, True, False]
    assert loaded == [4]
    assert attempts[0].reason == (
        "skipped: predicted 1388 + 100 margin > 1000 MiB available (not loaded)"
    )
    assert attempts[-1].ok and "predicted 724 + 100 margin ≤ 1000 MiB" in attempts[-1].reason
    row = attempts[0].row()
    assert row["attempt_skipped"] and row["attempt_need_mb"] == 1388
    assert math.isnan(row["attempt_vram_mb"])  # nothing was measured for a skipped step


def test_a_step_predicted_to_fit_that_fails_still_falls_through():
    """The prediction says every step fits; the first two loads fail (the fault a small card
    causes, given here): the chain goes on, and the third step's load is the outcome."""
    calls = []

    def attempt(params):
        calls.append(params["n_gpu_layers"])
        if len(calls) <= 2:
            return {"ok": False, "error": "RuntimeError: CUDA error: out of memory"}
        return {"ok": True, "vram_delta_mb": 300.0}

    params = profiles.resolve(profiles.PROFILES[PERFORMANCE], ALL, BASE)
    chain = profiles.fallback_chain(PERFORMANCE, params, ALL)
    attempts = profiles.walk(
        chain, attempt, lambda p: profiles.StepPrediction(200.0), limit_mb=1000, margin_mb=100
    )
    assert [a.ok for a in attempts] == [False, False, True]
    assert not any(a.skipped for a in attempts)
    assert attempts[0].reason == "RuntimeError: CUDA error: out of memory"


def test_without_the_overhead_the_buffers_alone_decide_a_skip():
    p = profiles.StepPrediction(math.nan, math.nan, 690.0)
    assert p.need() == (690.0, "buffers alone (overhead never measured)")
    chain = [("as selected", PERFORMANCE, {"n_gpu_layers": -1}), ("cpu", CPU_FALLBACK, {})]
    attempts = profiles.walk(
        chain,
        lambda params: {"ok": True},
        lambda params: p if params else profiles.StepPrediction(0.0, 0.0, 0.0),
        limit_mb=1000,
        margin_mb=512,
    )
    assert attempts[0].skipped and "buffers alone (overhead never measured) 690" in (
        attempts[0].reason
    )
    assert attempts[1].ok  # the last step (the CPU) is always loaded


def test_companion_profiles_are_its_config():
    assert profiles.COMPANION_PROFILES == {
        PERFORMANCE: (-1, 4096, 512),
        "balanced": (35, 2048, 256),  # the companion's name, not ours
        CPU_FALLBACK: (0, 2048, 128),
    }
