"""Record a real companion session: one line around the companion's `Llama`.

In Desktop-Mate's `ModelManager.load_model`, the one line::

    from mateperf import live
    self.model = live.record(Llama(model_path=..., n_gpu_layers=..., ..., verbose=False))

Everything else stays as it is: `self.model(prompt, temperature=..., max_tokens=..., ...)`
returns what it returned, raises what it raised. Each completion call (`__call__`,
`create_completion`, `create_chat_completion`; a streamed one when its stream ends) appends a
row to a new `live` run directory under $MATEPERF_RESULTS (else the repository's results/):
prompt and completion tokens, llama.cpp's own prompt-eval and eval ms from its performance
counters, wall ms, RSS, VRAM where NVML reads a GPU, and with an avatar attached
(`MATEPERF_AVATAR=HOST:PORT`, or `avatar=`) its frame p99 during the call. The rows are
appended as they go (`live.jsonl`); at exit, or `self.model.close()`, the run is finished and
the frame written as `live.parquet`. `mateperf report RUN_DIR`, `mateperf compare` and the
explore notebook read a session like any run, a killed one too. docs/live.md.
"""

from __future__ import annotations

from mateperf.avatar import parse_address
from mateperf.live.session import ENV_AVATAR, LiveLlama, Session, record

__all__ = ["ENV_AVATAR", "LiveLlama", "Session", "parse_address", "record"]
