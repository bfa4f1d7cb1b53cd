"""A recorded session: the run directory, one row per call, and the proxy the companion holds.

`LiveLlama` stands where the companion keeps its `Llama` and forwards everything to it; the
completion calls (`__call__`, `create_completion`, `create_chat_completion`) go through
`Session.call`, which reads llama.cpp's counters, the clock, RSS and VRAM around the call and
appends the row to the run's journal before returning the call's own result (or raising its
own exception, after writing the row with its error). A streamed call is recorded when its
stream ends.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mateperf import avatar as avatar_info
from mateperf import results
from mateperf.journal import append_journal, journal_frame
from mateperf.live.avatar import AvatarFrames
from mateperf.live.counters import UNREAD, Counters
from mateperf.phases.live.params import LiveParams
from mateperf.trackers.gpu import NvmlDevice
from mateperf.trackers.process_memory import read_rss

ENV_AVATAR = "MATEPERF_AVATAR"
PHASE = "live"
NAN = float("nan")


def _settings(llm) -> dict:
    """What the companion loaded, as llama-cpp-python holds it (each row carries it)."""
    model_params = getattr(llm, "model_params", None)
    context_params = getattr(llm, "context_params", None)
    path = str(getattr(llm, "model_path", "") or "")
    return {
        "model_file": Path(path).name,
        "n_ctx": int(llm.n_ctx()) if hasattr(llm, "n_ctx") else -1,
        "n_batch": int(getattr(llm, "n_batch", -1)),
        "n_threads": int(getattr(context_params, "n_threads", -1)),
        "n_gpu_layers": int(getattr(model_params, "n_gpu_layers", -1)),
        "use_mlock": bool(getattr(model_params, "use_mlock", False)),
    }


class Session:
    """One recorded session: a `live` run directory and its journal, appended call by call."""

    def __init__(
        self,
        llm,
        avatar: str | None = None,
        label: str = "",
        results_root: str | os.PathLike | None = None,
    ):
        address = os.environ.get(ENV_AVATAR, "") if avatar is None else avatar
        params = LiveParams.from_values({"avatar": address, "label": label}, what=PHASE)
        self.settings = _settings(llm)
        self._counters = Counters(llm)
        self._gpu = NvmlDevice(prefix="no GPU")
        self._lock = threading.Lock()  # a companion may call from more than one thread
        self._next = 0
        self._closed = False
        self._avatar = AvatarFrames(address, self._frames) if address else None
        from mateperf import llama_features

        self.run = results.RunDir.create(
            PHASE,
            params.as_dict(),
            root=results_root,
            command=" ".join([Path(sys.argv[0]).name or "python", *sys.argv[1:]]).strip(),
            extra={
                "session": {
                    **self.settings,
                    "llama_cpp_python": llama_features.installed_version(),
                    "counters": self._counters.status,
                    "gpu": self._gpu.status,
                    "avatar": self._avatar.status if self._avatar else "none attached",
                    "pid": os.getpid(),
                },
                **({avatar_info.RUN_INFO_KEY: self._avatar.identity} if self._avatar else {}),
            },
        )
        self.journal = self.run.journal_path(PHASE)
        self._t0_ns = time.perf_counter_ns()
        atexit.register(self.close)

    # -- one call ------------------------------------------------------------------------------

    def call(self, method: str, fn: Callable, *args, **kwargs):
        """`fn(*args, **kwargs)`, recorded; its result or its exception, unchanged."""
        if self._closed:
            return fn(*args, **kwargs)
        t0 = time.perf_counter_ns()
        with self._lock:
            index, self._next = self._next, self._next + 1
        before = self._counters.read()
        if self._avatar is not None:
            self._avatar.start_call(index)
        t1 = time.perf_counter_ns()
        try:
            out = fn(*args, **kwargs)
        except BaseException as exc:
            self._end(index, method, before, t0, t1, time.perf_counter_ns(), None, exc, False)
            raise
        if kwargs.get("stream"):
            return self._stream(index, method, before, t0, t1, out)
        self._end(index, method, before, t0, t1, time.perf_counter_ns(), out, None, False)
        return out

    def _stream(self, index, method, before, t0, t1, chunks: Iterator) -> Iterator:
        error = None
        try:
            yield from chunks
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(index, method, before, t0, t1, time.perf_counter_ns(), None, error, True)

    def _end(self, index, method, before, t0, t1, t2, out, error, stream: bool) -> None:
        after = self._counters.read()
        perf = after.since(before) if after is not None and before is not None else dict(UNREAD)
        usage = (out or {}).get("usage") or {} if isinstance(out, dict) else {}
        choices = (out or {}).get("choices") or [{}] if isinstance(out, dict) else [{}]
        wall_ms = (t2 - t1) / 1e6
        gen_ms, prompt_ms = perf["eval_ms"], perf["prompt_eval_ms"]
        row = {
            "trial": index,
            "scenario": "call",
            "method": method,
            "stream": stream,
            "t_start_s": (t1 - self._t0_ns) / 1e9,
            "wall_ms": wall_ms,
            "prompt_tokens": usage.get("prompt_tokens", NAN),
            "completion_tokens": usage.get("completion_tokens", NAN),
            **perf,
            "pp_tps": _rate(perf["prompt_eval_tokens"], prompt_ms),
            "tg_tps": _rate(perf["eval_tokens"], gen_ms),
            "finish_reason": str(choices[0].get("finish_reason") or ""),
            "rss_mb": read_rss()[0],
            "vram_used_mb": self._gpu.memory_mb()[0],
            "vram_process_mb": self._gpu.process_mb(),
            "error": "" if error is None else f"{type(error).__name__}: {error}",
            **self.settings,
        }
        if self._avatar is not None:
            self._avatar.end_call(index)
        # the recorder's own time on the caller's thread, all but this row's own append
        row["overhead_us"] = ((t1 - t0) + (time.perf_counter_ns() - t2)) / 1e3
        append_journal(self.journal, row)

    def _frames(self, index: int, figures: dict) -> None:
        """The avatar's figures of call `index`: a line completing that call's row."""
        append_journal(self.journal, {"trial": index, **figures})

    # -- the end -------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish the run: the avatar's last figures, the journal as `live.parquet`, status ok.
        Called at exit too; a killed companion leaves the journal, which is read instead."""
        if self._closed:
            return
        self._closed = True
        if self._avatar is not None:
            self._avatar.close()
        if self.journal.is_file():
            frame = journal_frame(self.journal)
            self.run.write_frame(
                results.tidy(frame, self.run.run_id, PHASE, self.run.info["params"]), PHASE
            )
        self.run.finish(results.STATUS_OK)
        atexit.unregister(self.close)


def _rate(tokens, ms) -> float:
    """tokens/s; NaN where nothing was counted (a prompt served from the cache)."""
    return tokens / (ms / 1e3) if tokens == tokens and ms == ms and tokens > 0 and ms > 0 else NAN


class LiveLlama:
    """The companion's `Llama`, recorded: completions go through the session, everything else
    (attributes, tokenize, reset, ...) is the Llama's own."""

    def __init__(self, llm, session: Session):
        object.__setattr__(self, "_llm", llm)
        object.__setattr__(self, "session", session)

    def __call__(self, *args, **kwargs):
        return self.session.call("__call__", self._llm, *args, **kwargs)

    def create_completion(self, *args, **kwargs):
        return self.session.call("create_completion", self._llm.create_completion, *args, **kwargs)

    def create_chat_completion(self, *args, **kwargs):
        return self.session.call(
            "create_chat_completion", self._llm.create_chat_completion, *args, **kwargs
        )

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def __setattr__(self, name, value):
        setattr(self._llm, name, value)

    def close(self) -> None:
        """End the recording (the Llama itself stays loaded)."""
        self.session.close()

    def __enter__(self) -> LiveLlama:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record(
    llm,
    avatar: str | None = None,
    label: str = "",
    results_root: str | os.PathLike | None = None,
) -> LiveLlama:
    """`llm`, recorded call by call into a new `live` run directory.

    avatar: HOST:PORT of a running avatar to read frame figures from; None reads
    $MATEPERF_AVATAR, "" attaches none. results_root: default $MATEPERF_RESULTS, else the
    repository's results/.
    """
    return LiveLlama(llm, Session(llm, avatar, label, results_root))
