"""The companion's GPU_PROFILES as llama.cpp loads them, against what their comments say.

Desktop-Mate's `src/ai/config.py` states each profile's intent beside its settings:
performance is every layer (-1, "5-5.5 GB"), balanced is "35 couches GPU sur 43 (Zephyr-7B)"
("3-4 GB"), cpu_fallback none ("0 GB"). llama.cpp reads n_gpu_layers as a count of its own
layers, the model's blocks plus the output layer, and anything above that count means all of
them. Zephyr-7B (a Mistral-7B fine-tune) has 32 blocks, so balanced's 35 is every layer: the
same offload as performance at half the context and batch, not 81% of the layers, and its
weights alone are more than its stated 3-4 GB.

This module holds the companion's profiles as facts (their names, settings and stated intent)
and computes, for a model's layout, what each one loads, what it is predicted to need, and the
one sentence that says where the effect differs from the intent, with the figures. Reports
format what it returns; nothing here formats a table.

The intent of a profile whose comment names a layer count ("35 of 43") is that share of the
model's blocks: on a 32-block model round(35 / 43 × 32) = 26 layers, 81%.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mateperf.gpu import estimate

PERFORMANCE, BALANCED, CPU_FALLBACK = "performance", "balanced", "cpu_fallback"
MiB = float(1 << 20)
# The companion's card: an RTX 4050 laptop GPU, 6 GB.
CARD_MB = 6144
# VRAM kept for the avatar, which renders on the same 6 GB card: Unity's player (D3D11 device,
# swap chain, render targets at the window's size) and the VRM model's textures and meshes, on
# a laptop whose GPU may also drive the desktop. Not measured (no Windows or Unity player here):
# 1 GiB is a round allowance for one VRM avatar at 1080p, to be replaced by the avatar's own
# figure where it is measured (`-p avatar_reserve_mb=...`).
AVATAR_RESERVE_MB = 1024


@dataclass(frozen=True)
class CompanionProfile:
    """One of the companion's GPU_PROFILES, as its config states it."""

    name: str
    n_gpu_layers: int
    n_ctx: int
    n_batch: int
    n_threads: int
    use_mlock: bool
    vram_estimate: str  # the companion's own words, e.g. "3-4 GB"
    stated_of: int = 0  # the layer count its comment assumes ("35 ... sur 43"); 0: none stated

    @property
    def stated_share(self) -> float:
        """The share of the model's layers the profile means: 1 for -1, 0 for 0, else
        n_gpu_layers of the count its comment names."""
        if self.n_gpu_layers < 0:
            return 1.0
        if self.n_gpu_layers == 0:
            return 0.0
        return self.n_gpu_layers / self.stated_of if self.stated_of else math.nan

    @property
    def stated_vram_gb(self) -> tuple[float, float]:
        """(low, high) of `vram_estimate` in GB; NaN where it names none."""
        numbers = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", self.vram_estimate.split("(")[0])]
        if not numbers:
            return math.nan, math.nan
        return numbers[0], numbers[-1]


PROFILES: dict[str, CompanionProfile] = {
    PERFORMANCE: CompanionProfile(PERFORMANCE, -1, 4096, 512, 6, True, "5-5.5 GB"),
    BALANCED: CompanionProfile(BALANCED, 35, 2048, 256, 6, True, "3-4 GB", stated_of=43),
    CPU_FALLBACK: CompanionProfile(CPU_FALLBACK, 0, 2048, 128, 8, False, "0 GB (RAM: 4-6 GB)"),
}


@dataclass(frozen=True)
class Effect:
    """What one profile does on one model, beside what it says (MiB figures predicted by
    `mateperf.gpu.estimate`; NaN where the device overhead was never measured)."""

    profile: str
    asked_layers: int  # n_gpu_layers as the companion passes it
    loaded_layers: int  # what llama.cpp offloads (0..all_layers)
    all_layers: int  # blocks + output
    n_layer: int  # blocks
    intent_layers: int  # the stated share of this model's blocks (-1: no share stated)
    predicted_mb: float  # at loaded_layers, flash attention as given
    intent_mb: float  # at intent_layers
    stated_vram: str
    stated_low_gb: float
    stated_high_gb: float

    @property
    def past_the_model(self) -> bool:
        """n_gpu_layers above the model's layers: llama.cpp loads all of them."""
        return self.asked_layers > self.all_layers

    @property
    def full_offload(self) -> bool:
        return self.loaded_layers == self.all_layers

    @property
    def predicted_gb(self) -> float:
        return self.predicted_mb * MiB / 1e9

    @property
    def vram_outside_statement(self) -> bool:
        """The prediction above the stated range (the companion writes GB)."""
        return not math.isnan(self.stated_high_gb) and self.predicted_gb > self.stated_high_gb

    @property
    def layers_differ(self) -> bool:
        """llama.cpp loads other layers than the profile's comment means."""
        meant = self.intent_layers >= 0 and self.loaded_layers != self.intent_layers
        return self.past_the_model or meant

    @property
    def differs(self) -> bool:
        """The effect is not the stated intent: other layers than meant, or more VRAM."""
        return self.layers_differ or self.vram_outside_statement

    @property
    def sentence(self) -> str:
        """What the profile does, in one sentence with the figures."""
        gib = f"{self.predicted_mb / 1024:.1f} GiB predicted"
        if math.isnan(self.predicted_mb):
            gib = "VRAM not predicted (the device overhead was never measured)"
        vs = ""
        if self.vram_outside_statement:
            vs = f", not {self.stated_vram}"
        elif not math.isnan(self.stated_high_gb) and not math.isnan(self.predicted_mb):
            vs = f", within its stated {self.stated_vram}"
        if self.asked_layers == 0:
            return (
                f"{self.profile}: no layer on the GPU; with the GPU visible to a CUDA build it "
                f"still holds the CUDA context and a compute buffer, {gib}{vs}."
            )
        if self.past_the_model:
            share = self.intent_layers / self.n_layer if self.n_layer else math.nan
            return (
                f"{self.profile}: {self.asked_layers} layers on {_a(self.n_layer)} "
                f"{self.n_layer}-block model is "
                f"full offload (all {self.all_layers} layers), {gib}{vs}; "
                f"{self.intent_layers} layers is {share:.0%}"
                + (
                    f" ({self.intent_mb / 1024:.1f} GiB)."
                    if not math.isnan(self.intent_mb)
                    else "."
                )
            )
        which = (
            f"every layer ({self.all_layers})"
            if self.full_offload
            else f"{self.loaded_layers} of {self.all_layers} layers"
        )
        if self.asked_layers > 0 and self.intent_layers >= 0:
            share = self.loaded_layers / self.n_layer
            which += f" ({share:.0%} of the {self.n_layer} blocks, as its comment intends)"
        return f"{self.profile}: {which}, {gib}{vs}."


def _a(n: int) -> str:
    """The article before a number said aloud: an 8, an 11, an 18, an 80-something; a 32."""
    return "an" if n in (11, 18) or str(n).startswith("8") else "a"


def intent_layers(profile: CompanionProfile, layout: estimate.Layout) -> int:
    """The n_gpu_layers the profile's comment means on this model: its stated share of the
    model's blocks (-1 where it states no share)."""
    if profile.n_gpu_layers < 0:
        return layout.all_layers
    share = profile.stated_share
    return -1 if math.isnan(share) else int(round(share * layout.n_layer))


def settings(profile: CompanionProfile, flash_attn: bool = False) -> estimate.Settings:
    """The profile's context settings as llama-cpp-python loads them for the companion (no
    flash attention or KV type passed: f16 KV cache, n_ubatch = n_batch)."""
    return estimate.Settings(n_ctx=profile.n_ctx, n_ubatch=profile.n_batch, flash_attn=flash_attn)


def effect(
    profile: CompanionProfile,
    layout: estimate.Layout,
    overhead: estimate.Overhead,
    flash_attn: bool = False,
) -> Effect:
    s = settings(profile, flash_attn)
    loaded = layout.resolve_layers(profile.n_gpu_layers)
    meant = intent_layers(profile, layout)
    low, high = profile.stated_vram_gb
    meant_mb = estimate.predict(layout, meant, s, overhead)["meta_total_mb"] if meant >= 0 else None
    return Effect(
        profile=profile.name,
        asked_layers=profile.n_gpu_layers,
        loaded_layers=loaded,
        all_layers=layout.all_layers,
        n_layer=layout.n_layer,
        intent_layers=meant,
        predicted_mb=estimate.predict(layout, loaded, s, overhead)["meta_total_mb"],
        intent_mb=math.nan if meant_mb is None else meant_mb,
        stated_vram=profile.vram_estimate,
        stated_low_gb=low,
        stated_high_gb=high,
    )


def effects(
    layout: estimate.Layout, overhead: estimate.Overhead, flash_attn: bool = False
) -> list[Effect]:
    return [effect(p, layout, overhead, flash_attn) for p in PROFILES.values()]


def intent_sentences(layout: estimate.Layout, overhead: estimate.Overhead) -> dict[str, str]:
    """Profile -> its sentence, for the profiles whose effect differs from their intent by
    their layers (the companion's comment names other layers than llama.cpp loads)."""
    return {e.profile: e.sentence for e in effects(layout, overhead) if e.layers_differ}


def most_layers_that_fit(
    layout: estimate.Layout, s: estimate.Settings, overhead: estimate.Overhead, available_mb: float
) -> tuple[int, float]:
    """(n_gpu_layers, MiB) of the most layers predicted within `available_mb`; (-1, NaN) where
    not even 0 fits or nothing is predicted."""
    best = (-1, math.nan)
    for k in range(layout.all_layers + 1):
        total = estimate.predict(layout, k, s, overhead)["meta_total_mb"]
        if not math.isnan(total) and total <= available_mb:
            best = (k, total)
    return best


def model_rows(
    layout: estimate.Layout,
    overhead: estimate.Overhead,
    card_mb: float = CARD_MB,
    reserve_mb: float = AVATAR_RESERVE_MB,
) -> list[dict]:
    """ "For the companion's model": per profile, what it loads, the predicted VRAM with flash
    attention off and on, whether each fits the card less the avatar's reserve, and the most
    layers that fit instead (at the profile's own context and batch)."""
    available = card_mb - reserve_mb
    rows = []
    for p in PROFILES.values():
        row = {
            "cm_profile": p.name,
            "cm_n_gpu_layers": p.n_gpu_layers,
            "cm_gpu_layers": layout.resolve_layers(p.n_gpu_layers),
            "cm_all_layers": layout.all_layers,
            "cm_n_layer": layout.n_layer,
            "cm_n_ctx": p.n_ctx,
            "cm_n_batch": p.n_batch,
            "cm_card_mb": float(card_mb),
            "cm_reserve_mb": float(reserve_mb),
            "cm_available_mb": float(available),
        }
        for fa, tag in ((False, "off"), (True, "on")):
            e = effect(p, layout, overhead, fa)
            k, k_mb = most_layers_that_fit(layout, settings(p, fa), overhead, available)
            known = not math.isnan(e.predicted_mb)
            row |= {
                f"cm_fa_{tag}_mb": e.predicted_mb,
                f"cm_fa_{tag}_fits": bool(e.predicted_mb <= available) if known else None,
                f"cm_fa_{tag}_max_layers": k,
                f"cm_fa_{tag}_max_mb": k_mb,
            }
        plain = effect(p, layout, overhead)
        row["cm_sentence"] = plain.sentence
        row["cm_layers_differ"] = plain.layers_differ
        rows.append(row)
    return rows
