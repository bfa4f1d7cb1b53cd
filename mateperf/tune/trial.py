"""One tuning trial: a setting loaded and a companion reply streamed under the avatar's load.

The load runs for the whole tune (`Bench`): a frame-paced peer busy for `frame_busy` of every
frame, as Unity's main thread is, with emotion commands streaming to it. Each trial loads the
model with its setting, warms up as llama-bench does (a prompt of the reply's size, one token),
then, inside the peer's measurement window, streams one companion turn. The trial's figures:
time to first token, generation tokens/s, the reply time the objective ranks by, and the
avatar's frame p99 over the window.

VRAM, where a GPU is read (`vram`: the one NVML reader, trackers.gpu.NvmlDevice): the device
memory used before the load, after it, and after the reply; `vram_delta_mb` is what the trial
added. The trial runs in this process, so a CUDA context an earlier trial created stays and is
not counted again (the gpu phase, which isolates each trial in a child, measures it).

Attached to a live avatar (`avatar`, HOST:PORT), the load streams to that avatar instead of a
spawned peer and the frame figures are its own; where it reports FrameTimingManager's GPU frame
time, `frame_gpu_p99_ms` (the larger of the frame interval p99 and the GPU frame time p99) is
the constraint, so a setting that keeps the interval but not the GPU's frame does not pass.

The objective, `reply_ms`: time to first token plus `reply_tokens` at the measured generation
rate, the time to a reply of fixed length. A reply's own length differs between settings (a
quantised KV cache may change the greedy text), so its raw wall time would rank lengths, not
speeds.
"""

from __future__ import annotations

import math

import numpy as np

from mateperf import companion, model, workloads
from mateperf.companion_load import avatar_alone, background
from mateperf.trackers.gpu import NvmlDevice
from mateperf.tune.space import Setting

OBJECTIVE = "reply_ms"
CONSTRAINT = "frame_p99_ms"
GPU_CONSTRAINT = "frame_gpu_p99_ms"  # where the avatar reports its GPU frame time
WARMUP_PROMPT_TOKENS = 128


class Bench:
    """The avatar's load for a whole tune, and `measure(setting)` for one trial in it."""

    def __init__(
        self,
        model_path: str,
        peer: str,
        fps: float,
        frame_busy: float,
        command_hz: float,
        reply_tokens: int,
        seed: int,
        vram: NvmlDevice | None = None,
        avatar: str = "",
    ):
        self.model_path = model_path
        self.vram = vram  # an NvmlDevice without a device reads NaN
        self.reply_tokens = reply_tokens
        self.seed = seed
        self.load = background("companion", peer, fps, frame_busy, command_hz, avatar)
        self.trials = 0
        self.rng = np.random.default_rng(seed)

    def __enter__(self) -> Bench:
        self.load.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.load.__exit__(*exc)

    @property
    def identity(self):
        """The attached avatar's identity (None for a spawned stand-in); after `__enter__`."""
        return self.load.identity

    def constraint(self, idle: dict) -> str:
        """The race's constraint: the frame p99, or with it the GPU frame time where the
        avatar reported one while idle."""
        return GPU_CONSTRAINT if math.isfinite(idle.get("gpu_p99_ms", math.nan)) else CONSTRAINT

    def _vram_used_mb(self) -> float:
        return self.vram.memory_mb()[0] if self.vram is not None else math.nan

    def idle_frames(self, seconds: float = 3.0) -> dict:
        """The avatar's figures with no model loaded: what the frame pacing alone gives here."""
        return _with_gpu(avatar_alone(self.load, seconds))

    def measure(self, setting: Setting) -> dict:
        """One trial; raises on a failed load or reply (the race records it and goes on)."""
        user = companion.USER_TURNS[self.trials % len(companion.USER_TURNS)]
        self.trials += 1
        before_mb = self._vram_used_mb()
        llm, load_s = model.load(setting.config(self.model_path, self.seed))
        try:
            loaded_mb = self._vram_used_mb()
            workloads.bench_warm_up(llm, WARMUP_PROMPT_TOKENS, setting.n_batch, self.rng)
            with self.load.window() as avatar:
                reply = workloads.stream_reply(
                    llm, companion.chat_messages(user), self.reply_tokens, self.seed
                )
            after_mb = self._vram_used_mb()
        finally:
            model.close(llm)
        tg = reply["tg_tps"]
        return {
            "vram_loaded_delta_mb": loaded_mb - before_mb,
            "vram_delta_mb": after_mb - before_mb,
            "load_s": load_s,
            "ttft_ms": reply["ttft_ms"],
            "tg_tps": tg,
            "pp_tps": reply["pp_tps"],
            "gen_tokens": reply["gen_tokens"],
            OBJECTIVE: reply["ttft_ms"] + 1e3 * self.reply_tokens / tg,
            **_with_gpu(avatar.figures()),
        }


def _with_gpu(figures: dict) -> dict:
    """The window's figures and `frame_gpu_p99_ms`: the frame p99 or the GPU's, the larger."""
    gpu = figures.get("gpu_p99_ms", math.nan)
    frame = figures.get(CONSTRAINT, math.nan)
    both = max(frame, gpu) if math.isfinite(gpu) else math.nan
    return {**figures, GPU_CONSTRAINT: both}
