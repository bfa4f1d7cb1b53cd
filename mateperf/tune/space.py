"""What `mateperf tune` may choose from, and what it never loads.

The settings: threads for generation and for prompts, the batch (n_ubatch = n_batch), the
layers offloaded, the context, the KV cache type and flash attention. Each companion profile
fixes the context it needs and how much of the card it may use (`ProfileRule`); a setting
whose predicted VRAM does not fit that is pruned before anything is loaded, with the
prediction as its reason (mateperf.gpu.estimate: GGUF metadata plus the device overhead).
A build without GPU offload prunes every setting with layers on the GPU: it would run them on
the CPU, a copy of the 0-layer setting.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from mateperf.gpu import companion_profiles, estimate, profiles
from mateperf.params import UNQUANTISED

if TYPE_CHECKING:
    from mateperf.model import LlamaConfig


def kv_choices(types: list[str], flash: list[bool]) -> list[tuple[str, str, bool]]:
    """(type_k, type_v, flash_attn) for each KV type and flash-attention setting; a quantised
    V cache needs flash attention, so those without it are left out."""
    return [(t, t, fa) for t in types for fa in flash if fa or t in UNQUANTISED]


@dataclass(frozen=True)
class Setting:
    """One candidate: everything the companion passes to Llama(...) that changes speed."""

    n_threads: int
    n_threads_batch: int
    n_batch: int
    n_gpu_layers: int
    n_ctx: int
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = False

    @property
    def label(self) -> str:
        kv = self.type_k if self.type_k == self.type_v else f"{self.type_k}/{self.type_v}"
        fa = "on" if self.flash_attn else "off"
        return (
            f"t{self.n_threads}/{self.n_threads_batch} b{self.n_batch} "
            f"ngl{self.n_gpu_layers} ctx{self.n_ctx} kv {kv} fa {fa}"
        )

    def config(self, model_path: str, seed: int = 1234) -> LlamaConfig:
        from mateperf.model import LlamaConfig  # a stored tune run is read without the model

        return LlamaConfig(model_path, seed=seed, n_ubatch=self.n_batch, **asdict(self))

    def as_dict(self) -> dict:
        return {**asdict(self), "n_ubatch": self.n_batch}


@dataclass(frozen=True)
class ProfileRule:
    """What a companion profile requires of a setting."""

    name: str
    n_ctx: int  # the context the companion runs this profile with
    vram_share: float  # of the budget it may use; 0: no GPU at all
    note: str


# The companion's three profiles (src/ai/config.py GPU_PROFILES): their contexts, and what each
# is for. performance may fill the card; balanced leaves half of it to the rest of the desktop
# (the companion's "35 of 43 layers" was that intent, by hand: on its 32-block model 35 is every
# layer, `companion_profiles`); cpu_fallback uses no GPU at all.
_CTX = {name: p.n_ctx for name, p in companion_profiles.PROFILES.items()}
RULES = (
    ProfileRule(
        profiles.PERFORMANCE, _CTX[profiles.PERFORMANCE], 1.0, "the fastest that fits the card"
    ),
    ProfileRule(
        profiles.BALANCED, _CTX[profiles.BALANCED], 0.5, "the fastest within half of the card"
    ),
    ProfileRule(
        profiles.CPU_FALLBACK, _CTX[profiles.CPU_FALLBACK], 0.0, "the fastest with no GPU at all"
    ),
)


@dataclass(frozen=True)
class Candidate:
    setting: Setting
    predicted_vram_mb: float  # NaN for a CPU-only setting
    pruned: str = ""  # why it is never loaded; "" for a candidate that races


def thread_pairs(usable: int) -> list[tuple[int, int]]:
    """(n_threads, n_threads_batch): every generation count, prompts on it or on every CPU."""
    return sorted({(t, tb) for t in range(1, usable + 1) for tb in (t, usable)})


def layer_choices(all_layers: int) -> list[int]:
    """0, 81% of the layers (the share the companion's balanced comment states), and all of
    them (-1)."""
    share = round(profiles.PROFILES[profiles.LAYERS_81PCT].layer_share * all_layers)
    return sorted({0, share, -1}, key=lambda k: (k < 0, k))


@dataclass(frozen=True)
class Axes:
    """The values tried of the settings a profile does not fix."""

    batches: tuple[int, ...] = (128, 512)
    kv: tuple[tuple[str, str, bool], ...] = (("f16", "f16", False), ("f16", "f16", True))


def grid(usable: int, n_ctx: int, all_layers: int, axes: Axes) -> list[Setting]:
    return [
        Setting(t, tb, b, k, n_ctx, tk, tv, fa)
        for (t, tb), b, k, (tk, tv, fa) in itertools.product(
            thread_pairs(usable), axes.batches, layer_choices(all_layers), axes.kv
        )
    ]


def predicted_vram_mb(layout: estimate.Layout, s: Setting, overhead: estimate.Overhead) -> float:
    if s.n_gpu_layers == 0:
        return math.nan
    settings = estimate.Settings(
        n_ctx=s.n_ctx,
        n_ubatch=s.n_batch,
        flash_attn=s.flash_attn,
        type_k=s.type_k,
        type_v=s.type_v,
    )
    return estimate.predict(layout, s.n_gpu_layers, settings, overhead)["meta_total_mb"]


def candidates(
    rule: ProfileRule,
    layout: estimate.Layout,
    usable: int,
    budget_mb: float,
    margin_mb: float,
    gpu_offload: bool,
    overhead: estimate.Overhead,
    axes: Axes,
) -> list[Candidate]:
    """Every setting of the profile's context, each either racing or pruned with its reason."""
    out = []
    allowed_mb = rule.vram_share * budget_mb
    for s in grid(usable, rule.n_ctx, layout.all_layers, axes):
        need = predicted_vram_mb(layout, s, overhead)
        reason = ""
        if s.n_gpu_layers != 0:
            if rule.vram_share == 0:
                reason = f"{rule.name} uses no GPU"
            elif math.isnan(need):
                reason = "no VRAM prediction (the device overhead was never measured)"
            elif need + margin_mb > allowed_mb:
                reason = (
                    f"predicted {need:.0f} + {margin_mb:.0f} MiB margin > {allowed_mb:.0f} MiB "
                    f"({rule.vram_share:.0%} of {budget_mb:.0f})"
                )
            elif not gpu_offload:
                reason = (
                    f"fits ({need:.0f} MiB predicted), but this llama-cpp-python build has no "
                    "GPU offload: the layers would run on the CPU"
                )
        out.append(Candidate(s, need, reason))
    return out
