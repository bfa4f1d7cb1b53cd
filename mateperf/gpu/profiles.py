"""GPU profiles, the choice among them, and a load that falls back instead of crashing.

The companion defines GPU_PROFILES performance / balanced / cpu_fallback with n_gpu_layers
-1 / 35 / 0, its comment saying "35 of 43 layers" (on its 32-block Zephyr-7B, 35 is every
layer: `mateperf.gpu.companion_profiles`); the original plan added low_memory. Here a profile
is a set of load parameters with its layer count as a share of the model's layers (so it means
the same on any model), named for what it loads: performance (all), layers_81pct (81% of them,
the share the companion's balanced comment intended), low_memory (half, KV cache in RAM) and
cpu_fallback (none), listed fastest first as the plan assumed; the phase measures whether the
order holds.

`select_profile` takes the fastest profile whose predicted VRAM plus a margin fits what is
available: the free VRAM NVML reports, or less when `vram_budget_mb` emulates a smaller card
(6144 for the RTX 4050 of the original study). The prediction is the larger of the two
(metadata estimate, llama.cpp's projection plus the measured device overhead) where both are
known. `walk` then goes down a fallback chain, fastest first (the selection; the context
halved; fewer layers, halving; the CPU), and predicts before it loads: a step whose prediction
plus the margin exceeds what is available is skipped, with the figures in its reason, and only a
step predicted to fit is loaded. On a 6 GB card a load that does not fit is an out-of-memory
abort, or worse, so the prediction is the first line of defence and the load the second: a
step predicted to fit that still fails, or measures more than is available, falls through to
the next. Where the device overhead was never measured, the buffers alone are a lower bound:
a step is skipped only if even they do not fit.

`COMPANION_PROFILES` are Desktop-Mate's own GPU_PROFILES (src/ai/config.py,
`companion_profiles.PROFILES`) as absolute settings, for the target-card table: on a CUDA
build its cpu_fallback (n_gpu_layers 0, GPU visible) still holds the CUDA context and
op_offload's compute buffer on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mateperf.gpu import companion_profiles

PERFORMANCE, LAYERS_81PCT, LOW_MEMORY, CPU_FALLBACK = (
    "performance",
    "layers_81pct",
    "low_memory",
    "cpu_fallback",
)
# The companion's profile names (its GPU_PROFILES keys), which tune answers for.
BALANCED = companion_profiles.BALANCED
MIN_FALLBACK_CTX = 512


@dataclass(frozen=True)
class Profile:
    name: str
    layer_share: float  # 1 = every layer (-1), 0 = none
    offload_kqv: bool
    flash_attn: bool
    max_ctx: int = 0  # 0: the run's n_ctx; else at most this
    max_batch: int = 0  # 0: the run's n_batch; else at most this (n_ubatch follows)
    hide_gpu: bool = False  # run with no CUDA device visible (a true CPU fallback)
    note: str = ""


PROFILES: dict[str, Profile] = {
    PERFORMANCE: Profile(
        PERFORMANCE, 1.0, True, True, note="every layer and the KV cache on the GPU (-1)"
    ),
    # the share the companion's balanced comment states (35 of 43); its 35 itself is every
    # layer of a 32-block 7B (companion_profiles says so with the figures)
    LAYERS_81PCT: Profile(
        LAYERS_81PCT, 35 / 43, True, True, note="81% of the model's layers (35/43, as a share)"
    ),
    LOW_MEMORY: Profile(
        LOW_MEMORY,
        0.5,
        False,
        True,
        max_ctx=1024,
        max_batch=256,
        note="half the layers, KV cache in RAM, context ≤ 1024, batch ≤ 256",
    ),
    # n_gpu_layers 0 alone still uses ~1.2 GiB of an H100 (CUDA context, op_offload's compute
    # buffer): the fallback hides the GPU from llama.cpp instead
    CPU_FALLBACK: Profile(CPU_FALLBACK, 0.0, False, False, hide_gpu=True, note="no GPU at all"),
}
ORDER = (PERFORMANCE, LAYERS_81PCT, LOW_MEMORY, CPU_FALLBACK)  # fastest first, as assumed

# Desktop-Mate's GPU_PROFILES: (n_gpu_layers, n_ctx, n_batch); llama-cpp-python 0.3.16 there
# leaves flash attention off and the KV cache with the offloaded layers.
COMPANION_PROFILES: dict[str, tuple[int, int, int]] = {
    name: (p.n_gpu_layers, p.n_ctx, p.n_batch) for name, p in companion_profiles.PROFILES.items()
}
# The companion's card: an RTX 4050 laptop GPU, 6 GB.
COMPANION_CARD_MB = companion_profiles.CARD_MB


def resolve(profile: Profile, all_layers: int, base: dict) -> dict:
    """The profile's load parameters for a model with `all_layers` (n_layer + 1) and the run's
    base settings (n_ctx, n_batch, n_ubatch, n_threads, ...)."""
    params = dict(base)
    if profile.layer_share >= 1:
        params["n_gpu_layers"] = -1
    else:
        params["n_gpu_layers"] = int(round(profile.layer_share * all_layers))
    if profile.max_ctx:
        params["n_ctx"] = min(params["n_ctx"], profile.max_ctx)
    if profile.max_batch:
        params["n_batch"] = min(params["n_batch"], profile.max_batch)
        params["n_ubatch"] = min(params.get("n_ubatch") or params["n_batch"], params["n_batch"])
    params["offload_kqv"] = profile.offload_kqv
    params["flash_attn"] = profile.flash_attn
    params["hide_gpu"] = profile.hide_gpu
    return params


@dataclass
class Candidate:
    """A profile's parameters and what it is predicted to need on the device (MiB)."""

    profile: str
    params: dict
    predicted_mb: float = math.nan  # metadata estimate, overhead included
    projected_mb: float = math.nan  # llama.cpp's projection + the measured overhead

    @property
    def need_mb(self) -> float:
        known = [v for v in (self.predicted_mb, self.projected_mb) if not math.isnan(v)]
        return max(known) if known else math.nan


@dataclass
class Selection:
    chosen: str
    available_mb: float
    basis: str
    rows: list[dict]
    forced: bool = False


def available_vram(free_mb: float, budget_mb: float | None) -> tuple[float, str]:
    """What a load may use: NVML's free VRAM, capped by an emulated card's size."""
    if budget_mb:
        if math.isnan(free_mb):
            return math.nan, f"budget {budget_mb:.0f} MiB (no GPU to hold it)"
        return min(free_mb, budget_mb), f"min(free {free_mb:.0f}, budget {budget_mb:.0f}) MiB"
    return free_mb, "free VRAM (NVML)"


def select_profile(
    candidates: list[Candidate],
    free_mb: float,
    budget_mb: float | None,
    margin_mb: float,
    gpu_status: str,
    gpu_available: bool,
    gpu_offload: bool,
    requested: str = "auto",
) -> Selection:
    """The fastest candidate that fits, or cpu_fallback; every candidate's verdict in `rows`.

    requested: "auto", or a profile name to force (still reported against the prediction).
    """
    available, basis = available_vram(free_mb, budget_mb)
    rows = []
    chosen = ""
    for c in sorted(candidates, key=lambda c: ORDER.index(c.profile)):
        need = c.need_mb
        if c.params.get("hide_gpu"):
            fits, reason = True, "needs no VRAM (the GPU is hidden from llama.cpp)"
        elif not gpu_available:
            fits, reason = False, gpu_status
        elif not gpu_offload:
            fits, reason = False, "this llama-cpp-python build has no GPU offload"
        elif math.isnan(need):
            fits, reason = False, "no prediction (the device overhead was never measured)"
        else:
            fits = need + margin_mb <= available
            sign = "≤" if fits else ">"
            reason = f"{need:.0f} + {margin_mb:.0f} margin {sign} {available:.0f} MiB available"
        if fits and not chosen:
            chosen = c.profile
        rows.append(
            {
                "profile": c.profile,
                "predicted_mb": c.predicted_mb,
                "projected_mb": c.projected_mb,
                "need_mb": need,
                "margin_mb": margin_mb,
                "available_mb": available,
                "fits": fits,
                "reason": reason,
            }
        )
    forced = requested not in ("", "auto")
    if forced:
        chosen = requested
    for row in rows:
        row["chosen"] = row["profile"] == chosen
    return Selection(chosen or CPU_FALLBACK, available, basis, rows, forced)


def fallback_chain(profile: str, params: dict, all_layers: int) -> list[tuple[str, str, dict]]:
    """(step, profile, params) to try in order: as selected, context halved, fewer layers
    (halving), then the CPU. A CPU start is a chain of one."""
    k = params["n_gpu_layers"]
    k = all_layers if k < 0 or k > all_layers else k
    chain = [("as selected", profile, dict(params))]
    if k == 0:
        return chain
    current = dict(params)
    if current["n_ctx"] >= 2 * MIN_FALLBACK_CTX:
        current = {**current, "n_ctx": current["n_ctx"] // 2}
        chain.append(("shrink context", profile, dict(current)))
    while k > 1:
        k //= 2
        current = {**current, "n_gpu_layers": k}
        chain.append(("fewer layers", profile, dict(current)))
    cpu = resolve(PROFILES[CPU_FALLBACK], all_layers, params)
    chain.append(("cpu", CPU_FALLBACK, cpu))
    return chain


@dataclass
class Attempt:
    index: int
    step: str
    profile: str
    params: dict
    predicted_mb: float
    projected_mb: float
    ok: bool = False
    reason: str = ""
    result: dict | None = None
    skipped: bool = False  # not loaded: predicted not to fit
    need_mb: float = math.nan  # what the skip decision used
    need_basis: str = ""

    def row(self) -> dict:
        r = self.result or {}
        return {
            "attempt": self.index,
            "attempt_step": self.step,
            "profile": self.profile,
            "attempt_ok": self.ok,
            "attempt_skipped": self.skipped,
            "attempt_reason": self.reason,
            "attempt_predicted_mb": self.predicted_mb,
            "attempt_projected_mb": self.projected_mb,
            "attempt_need_mb": self.need_mb,
            "attempt_need_basis": self.need_basis,
            "attempt_vram_mb": r.get("vram_delta_mb", math.nan),
            "attempt_load_s": r.get("load_s", math.nan),
            "attempt_tg_tps": r.get("tg_tps", math.nan),
        }


@dataclass(frozen=True)
class StepPrediction:
    """A chain step's predictions in MiB: totals (overhead included; NaN where it was never
    measured) and the device buffers alone (a lower bound that needs no overhead)."""

    meta_mb: float
    proj_mb: float = math.nan
    buffers_mb: float = math.nan

    def need(self) -> tuple[float, str]:
        """(MiB, what it is): the larger known total, else the buffers alone."""
        known = [v for v in (self.meta_mb, self.proj_mb) if not math.isnan(v)]
        if known:
            return max(known), "predicted"
        if not math.isnan(self.buffers_mb):
            return self.buffers_mb, "buffers alone (overhead never measured)"
        return math.nan, "no prediction"


def walk(
    chain: list[tuple[str, str, dict]],
    attempt: Callable[[dict], dict],
    predict: Callable[[dict], StepPrediction],
    limit_mb: float = math.nan,
    margin_mb: float = 0.0,
) -> list[Attempt]:
    """Go down the chain until a step loads, runs, and (if a limit is given) stays within it.

    Each step is predicted first: with a limit, a step whose need plus `margin_mb` exceeds it
    is skipped unloaded (its reason gives the figures). A step predicted to fit, or that cannot
    be predicted, is loaded: attempt(params) -> result dict (ok, error, vram_delta_mb, ...);
    a failure or a measurement over the limit falls through. The last step (the CPU) is always
    loaded. Every step is returned, the last one the outcome.
    """
    attempts = []
    for i, (step, profile, params) in enumerate(chain):
        p = predict(params)
        need, basis = p.need()
        a = Attempt(i, step, profile, params, p.meta_mb, p.proj_mb, need_mb=need, need_basis=basis)
        last = i == len(chain) - 1
        over = not math.isnan(limit_mb) and not math.isnan(need) and need + margin_mb > limit_mb
        if over and not last:
            a.skipped = True
            a.reason = (
                f"skipped: {basis} {need:.0f} + {margin_mb:.0f} margin > {limit_mb:.0f} MiB "
                "available (not loaded)"
            )
            attempts.append(a)
            continue
        a.result = attempt(params)
        used = a.result.get("vram_delta_mb", math.nan)
        if not a.result.get("ok"):
            a.reason = a.result.get("error") or "failed"
        elif not math.isnan(limit_mb) and not math.isnan(used) and used > limit_mb:
            a.reason = f"measured {used:.0f} MiB of VRAM > {limit_mb:.0f} MiB available"
        else:
            a.ok = True
            note = a.result.get("note")
            a.reason = "loaded and generated" + (f" ({note})" if note else "")
            if not math.isnan(need) and not math.isnan(limit_mb):
                a.reason += f"; {basis} {need:.0f} + {margin_mb:.0f} margin ≤ {limit_mb:.0f} MiB"
        attempts.append(a)
        if a.ok:
            break
    return attempts
