"""Ten turns in the companion's call pattern through `mateperf.live`, beside llama.cpp's counters.

The companion's pattern, from its repository's documented signatures (the project holds none
of its code): `Llama(model_path, n_gpu_layers, n_ctx, n_batch, n_threads, use_mlock,
verbose=False)` with its balanced profile's values (n_threads clamped to this host's usable
CPUs), wrapped by the one line of docs/live.md, then `generate`'s
`self.model(prompt, temperature=0.7, top_p=0.9, max_tokens=..., stop=[...], echo=False)` per
turn. Around each turn this script reads llama.cpp's counters itself and prints them beside
the recorded row. The session stays in the results root ($MATEPERF_RESULTS, else results/),
where `mateperf report` reads it.

    .venv/bin/python benchmarks/live_companion_session.py [--max-tokens 24] [--avatar HOST:PORT]
"""

from __future__ import annotations

import argparse

import llama_cpp
from llama_cpp import Llama

from mateperf import live, model
from mateperf.companion import SYSTEM_PROMPT, USER_TURNS
from mateperf.gpu.companion_profiles import PROFILES
from mateperf.host import usable_cpus

BALANCED = PROFILES["balanced"]


def counters(llm) -> tuple[float, float, int, int]:
    d = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return d.t_p_eval_ms, d.t_eval_ms, d.n_p_eval, d.n_eval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--avatar", default=None, help="HOST:PORT (default: $MATEPERF_AVATAR)")
    args = ap.parse_args()
    llm = live.record(
        Llama(
            model_path=str(model.resolve_model(None)),
            n_gpu_layers=BALANCED.n_gpu_layers,
            n_ctx=BALANCED.n_ctx,
            n_batch=BALANCED.n_batch,
            n_threads=min(BALANCED.n_threads, usable_cpus()),
            use_mlock=BALANCED.use_mlock,
            verbose=False,
        ),
        avatar=args.avatar,
        label="ten companion turns (benchmarks/live_companion_session.py)",
    )
    theirs, history = [], []
    for user in USER_TURNS:
        prompt = "\n".join([SYSTEM_PROMPT, *history[-6:], f"User: {user}", "Mate:"])
        before = counters(llm)
        out = llm(
            prompt,
            temperature=0.7,
            top_p=0.9,
            max_tokens=args.max_tokens,
            stop=["User:", "\n\n"],
            echo=False,
        )
        after = counters(llm)
        theirs.append([a - b for a, b in zip(after, before, strict=True)])
        history += [f"User: {user}", f"Mate: {out['choices'][0]['text'].strip()}"]
    run = llm.session.run
    llm.close()
    df = run.read_frame().sort_values("trial")
    print(f"session {run.path}")
    print(
        "call | prompt/completion tok | recorded prompt-eval ms / eval ms (tokens) | "
        "llama.cpp read here | wall ms | recorder µs"
    )
    for (_, r), (p_ms, e_ms, n_p, n_e) in zip(df.iterrows(), theirs, strict=True):
        print(
            f"{int(r['trial']):4d} | {int(r['prompt_tokens'])}/{int(r['completion_tokens'])} | "
            f"{r['prompt_eval_ms']:.2f} / {r['eval_ms']:.2f} "
            f"({int(r['prompt_eval_tokens'])}+{int(r['eval_tokens'])}) | "
            f"{p_ms:.2f} / {e_ms:.2f} ({n_p}+{n_e}) | {r['wall_ms']:.1f} | "
            f"{r['overhead_us']:.0f}"
        )
    same = all(
        abs(r["prompt_eval_ms"] - t[0]) < 1e-6 and abs(r["eval_ms"] - t[1]) < 1e-6
        for (_, r), t in zip(df.iterrows(), theirs, strict=True)
    )
    print(f"recorded rows equal llama.cpp's counters read independently: {same}")


if __name__ == "__main__":
    main()
