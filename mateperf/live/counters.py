"""llama.cpp's own performance counters of one context, read before and after a call.

`llama_perf_context(ctx)` returns what the context has accumulated since it was made (or last
reset): prompt-eval and eval time in ms and the tokens of each. llama-cpp-python never resets
them during completions (only its verbose embedding path does), so a call's figures are the
difference of two readings, and the recorder never resets what the companion might read.
llama-cpp-python 0.3.16, the companion's version, has the same binding (mateperf's oldest
supported build: `llama_features.MINIMUM_VERSION`); a build without it records the calls'
wall time and tokens, and `status` says why the counters are missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mateperf import llama_features


@dataclass(frozen=True)
class Perf:
    """One reading of a context's counters."""

    t_p_eval_ms: float
    t_eval_ms: float
    n_p_eval: int
    n_eval: int

    def since(self, before: Perf) -> dict:
        """The call's figures: this reading less `before`."""
        return {
            "prompt_eval_ms": self.t_p_eval_ms - before.t_p_eval_ms,
            "eval_ms": self.t_eval_ms - before.t_eval_ms,
            "prompt_eval_tokens": self.n_p_eval - before.n_p_eval,
            "eval_tokens": self.n_eval - before.n_eval,
        }


UNREAD = {
    "prompt_eval_ms": math.nan,
    "eval_ms": math.nan,
    "prompt_eval_tokens": math.nan,
    "eval_tokens": math.nan,
}


class Counters:
    """The counters of `llm`'s context; `read()` is None where this build has none."""

    def __init__(self, llm):
        self.status = llama_features.feature_status("token_counters")
        self._read = None
        self._ctx = None
        if self.status != llama_features.AVAILABLE:
            return
        import llama_cpp

        ctx = getattr(getattr(llm, "_ctx", None), "ctx", None)
        if ctx is None:
            self.status = "unavailable: this Llama object has no llama.cpp context (_ctx.ctx)"
            return
        self._read, self._ctx = llama_cpp.llama_perf_context, ctx

    def read(self) -> Perf | None:
        if self._read is None:
            return None
        d = self._read(self._ctx)
        return Perf(float(d.t_p_eval_ms), float(d.t_eval_ms), int(d.n_p_eval), int(d.n_eval))
