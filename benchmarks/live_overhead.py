"""What `mateperf.live` costs the companion per call (goal: at most 1% of a call's wall time).

Two measurements in one run, on the default model loaded as the companion's balanced profile
loads it (n_ctx 2048, n_batch 256):

1. Real calls: each of `--calls` completions (the companion's `self.model(prompt, ...)`, up to
   `--max-tokens` tokens) goes through the recorder, and the Llama call inside is timed on its
   own; the recorder's cost is the outer time less the inner one (the proxy, two readings of
   llama.cpp's counters, RSS, NVML, the row and its journal append), and its share is that
   over the inner call's wall time.
2. The recorder alone: `--empty` calls of a function that does nothing, through the same
   session (with the real model's counters), so its cost per call is not lost in the noise of
   a model call on a shared host.

With `--avatar` a frame-paced Python peer (60 fps) is attached, as `MATEPERF_AVATAR` would:
the caller then also queues the avatar's reset and read, and a worker thread queries it (its
work runs during the call, on another thread: what it takes from the call shows up in the
call's own time, not in the recorder's).

    .venv/bin/python benchmarks/live_overhead.py [--calls 20] [--max-tokens 16] [--avatar]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from llama_cpp import Llama

from mateperf import live, model
from mateperf.bridge.process import start_peer
from mateperf.companion import USER_TURNS
from mateperf.host import usable_cpus


def _q(values, p) -> float:
    return float(np.percentile(np.asarray(values, float), p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--empty", type=int, default=2000)
    ap.add_argument("--avatar", action="store_true", help="attach a frame-paced Python peer")
    args = ap.parse_args()

    peer = start_peer("python", fps=60.0) if args.avatar else None
    root = tempfile.mkdtemp(prefix="mateperf-live-bench-")
    llm = Llama(
        model_path=str(model.resolve_model(None)),
        n_gpu_layers=0,
        n_ctx=2048,
        n_batch=256,
        n_threads=usable_cpus(),
        verbose=False,
    )
    recorded = live.record(
        llm, avatar=f"{peer.host}:{peer.port}" if peer else "", results_root=root
    )
    session = recorded.session
    inner_ns: list[int] = []

    def timed(*a, **kw):
        t = time.perf_counter_ns()
        try:
            return llm(*a, **kw)
        finally:
            inner_ns.append(time.perf_counter_ns() - t)

    overhead_us, wall_ms = [], []
    try:
        for i in range(args.calls):
            prompt = f"User: {USER_TURNS[i % len(USER_TURNS)]}\nMate:"
            t = time.perf_counter_ns()
            session.call(
                "__call__",
                timed,
                prompt,
                temperature=0.7,
                top_p=0.9,
                max_tokens=args.max_tokens,
                stop=["User:"],
                echo=False,
            )
            outer = time.perf_counter_ns() - t
            overhead_us.append((outer - inner_ns[-1]) / 1e3)
            wall_ms.append(inner_ns[-1] / 1e6)
        empty_us = []
        for _ in range(args.empty):
            t = time.perf_counter_ns()
            session.call("__call__", lambda: None)
            empty_us.append((time.perf_counter_ns() - t) / 1e3)
    finally:
        recorded.close()
        if peer is not None:
            peer.stop()
    share = np.asarray(overhead_us) / 1e3 / np.asarray(wall_ms)
    print(f"session {session.run.path} (avatar: {session.run.info['session']['avatar']})")
    print(
        f"real calls: n {len(wall_ms)}, call wall ms median {_q(wall_ms, 50):.0f} "
        f"(p5 {_q(wall_ms, 5):.0f}, p95 {_q(wall_ms, 95):.0f})"
    )
    print(
        f"  recorder µs per call: median {_q(overhead_us, 50):.0f}, p95 {_q(overhead_us, 95):.0f}, "
        f"max {max(overhead_us):.0f}"
    )
    print(
        f"  share of the call's wall time: median {100 * _q(share, 50):.4f}%, "
        f"p95 {100 * _q(share, 95):.4f}%, max {100 * share.max():.4f}% (goal ≤ 1%)"
    )
    print(
        f"recorder alone (a function that does nothing, n {len(empty_us)}): µs per call "
        f"median {_q(empty_us, 50):.0f}, p5 {_q(empty_us, 5):.0f}, p95 {_q(empty_us, 95):.0f}"
    )
    print(
        f"  the 1% goal holds for calls longer than {_q(empty_us, 95) / 10:.1f} ms "
        "(p95 of the recorder alone × 100)"
    )


if __name__ == "__main__":
    main()
