"""The gpu phase's parameters: the one schema (`mateperf.params`); the notebook repeats it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mateperf.gpu import companion_profiles, profiles
from mateperf.params import Params, model_param, n_ctx_param, n_threads_param, param, refuse


@dataclass(frozen=True)
class GpuParams(Params):
    model: str = model_param()
    n_gpu_layers: int = param(
        -1, "the configuration measured; -1 means all (the output layer goes first)", at_least=-1
    )
    n_ctx: int = n_ctx_param()
    n_batch: int = param(512, "logical batch size", at_least=1)
    n_ubatch: int = param(0, "0 means the same as n_batch", at_least=0)
    offload_kqv: bool = param(True, "KV cache of offloaded layers on the GPU")
    flash_attn: bool = param(False, "flash attention")
    n_threads: int = n_threads_param()
    profile: str = param(
        "auto",
        "auto, or force performance / layers_81pct / low_memory / cpu_fallback",
        choices=("auto", *profiles.PROFILES),
        variant=2,
    )
    vram_budget_mb: int = param(
        0,
        "0 means the free VRAM; 6144 emulates the original RTX 4050 6 GB",
        at_least=0,
        variant=1,
    )
    margin_mb: int = param(
        512, "VRAM kept free beyond the prediction when choosing a profile", at_least=0
    )
    companion_model: str = param(
        "",
        "the companion's model file; empty: the generated Zephyr-7B Q5_K_M shape",
    )
    avatar_reserve_mb: int = param(
        companion_profiles.AVATAR_RESERVE_MB,
        "MiB of the companion's 6 GB card left to the avatar (an allowance)",
        at_least=0,
    )
    warn_pct: float = param(80.0, "VRAM alert levels, percent of the card or of the budget")
    critical_pct: float = param(90.0, "VRAM critical level, percent of the card or of the budget")
    trials: int = param(
        4,
        "measured trials per configuration after a warm-up round (a rank test needs 4+4)",
        at_least=1,
    )
    max_tokens: int = param(16, "companion reply length in each trial", at_least=0)
    pp_tokens: int = param(128, "prompt-processing test size", at_least=0)
    tg_tokens: int = param(32, "generation test size", at_least=0)
    monitor_interval_ms: float = param(100.0, "NVML sampling period", above=0)
    compare_profiles: bool = param(
        True, "also measure every profile that fits (GPU only; off in sweeps)"
    )
    seed: int = param(1234, "")

    def check(self) -> None:
        from mateperf.model import LlamaConfig

        if not 0 < self.warn_pct <= self.critical_pct <= 100:
            refuse(
                "warn_pct",
                self.warn_pct,
                f"and critical_pct={self.critical_pct} must satisfy "
                "0 < warn_pct <= critical_pct <= 100",
            )
        if self.companion_model and not Path(self.companion_model).is_file():
            refuse("companion_model", self.companion_model, "is not a file")
        LlamaConfig.check_params(self)
