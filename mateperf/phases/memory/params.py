"""The memory phase's parameters: the one schema (`mateperf.params`); the notebook repeats it."""

from __future__ import annotations

from dataclasses import dataclass

from mateperf.params import (
    Params,
    model_param,
    n_ctx_param,
    n_gpu_layers_param,
    n_threads_param,
    param,
    refuse,
)


@dataclass(frozen=True)
class MemoryParams(Params):
    model: str = model_param()
    messages: int = param(100, "chat messages (user turn + reply each)", at_least=1)
    warmup_messages: int = param(
        20, "first messages left out of the slope fit (KV and buffers filling up)", at_least=0
    )
    sample_interval_ms: float = param(
        20.0, "RSS/VRAM sampling period of the background sampler", above=0
    )
    uss_interval_ms: float = param(
        0.0, "background USS and heap period, 0 means at markers only, the cheapest", at_least=0
    )
    leak_threshold_mb_per_msg: float = param(
        0.025, 'MiB/message: "leak" only if the slope\'s 95% CI lies above', at_least=0
    )
    leak_kb_per_message: int = param(
        0,
        "self-check: keep this many KiB alive per message (a real leak)",
        at_least=0,
        variant=2,
    )
    gc_every_message: bool = param(
        False, "True: gc.collect() after every reply (the companion never does)", variant=1
    )
    max_tokens: int = param(
        48, "reply cap; each reply gets 50-100% of it in a fixed cycle", at_least=1
    )
    history_messages: int = param(
        10, "history kept by the companion (user and assistant messages)", at_least=0
    )
    n_ctx: int = n_ctx_param(at_least=64)
    n_threads: int = n_threads_param()
    n_gpu_layers: int = n_gpu_layers_param()
    seed: int = param(1234, "random seed of the sampler")

    def check(self) -> None:
        left = self.messages - self.warmup_messages
        if left < 3:
            refuse(
                "warmup_messages",
                self.warmup_messages,
                f"leaves {left} of messages={self.messages} to fit a slope to; need at least 3",
            )
        if self.history_messages % 2:
            refuse(
                "history_messages",
                self.history_messages,
                "must be even (user/assistant pairs: chat templates need the roles to alternate)",
            )
