"""What does the memory sampler cost the work it watches? Generation tokens/s with and without it.

Arms are interleaved in one process (ABBA BAAB ... so drift and other load on the host cancel),
the first pair is discarded, and the result is the ratio of medians with its bootstrap CI and a
Mann-Whitney verdict from mateperf.stats. Each trial generates exactly --tokens tokens (EOS
banned) from the same prompt with greedy decoding; the prompt is cached after the first call, so
a trial is almost pure generation. Two rates per trial:
  tg_tps   llama.cpp's own counters (n_eval / t_eval_ms): time inside decode
  e2e_tps  tokens / wall time of the whole call: decode plus Python-side sampling, where the
           sampler thread's GIL use would show

    .venv/bin/python benchmarks/memory_sampler_overhead.py --pairs 15 --tokens 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import llama_cpp

from mateperf import model, results, stats
from mateperf.runner.lock import measurement_lock
from mateperf.trackers.memory import MemorySampler

PROMPT = (
    "You are Mate, a cheerful desktop companion. The user says: I just got home from work and "
    "I'm tired. Tell me something nice about my evening.\nMate:"
)


def generate(llm, tokens: int) -> dict:
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    start = time.perf_counter_ns()
    out = llm.create_completion(
        PROMPT,
        max_tokens=tokens,
        temperature=0.0,
        logit_bias={llm.token_eos(): float("-inf")},
    )
    wall_s = (time.perf_counter_ns() - start) / 1e9
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    n = out["usage"]["completion_tokens"]
    return {
        "tokens": n,
        "tg_tps": perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms > 0 else float("nan"),
        "e2e_tps": n / wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="GGUF path (default: the default model)")
    ap.add_argument("--pairs", type=int, default=15, help="with/without pairs (first discarded)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per trial")
    ap.add_argument("--n-threads", type=int, default=0, help="0 = the CPUs this process may use")
    ap.add_argument("--interval-ms", type=float, default=20.0, help="sampler RSS period")
    ap.add_argument(
        "--uss-interval-ms",
        type=float,
        default=0.0,
        help="sampler USS/heap period (0 = markers only)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.pairs < 3 or args.tokens < 1:
        print("memory_sampler_overhead: need --pairs >= 3 and --tokens >= 1", file=sys.stderr)
        return 2

    # Hold the results root's measurement lock: another mateperf run on the same cores would
    # swamp a difference of a few percent.
    with measurement_lock(results.default_root()):
        result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    report(result, args)
    return 0


def measure(args) -> dict:
    config = model.LlamaConfig(
        str(model.resolve_model(args.model or None)), n_threads=args.n_threads
    )
    llm, _ = model.load(config)
    arms: dict[str, dict[str, list[float]]] = {
        "without": {"tg_tps": [], "e2e_tps": []},
        "with": {"tg_tps": [], "e2e_tps": []},
    }
    samples_taken = 0
    try:
        for pair in range(args.pairs):
            order = ("without", "with") if pair % 2 == 0 else ("with", "without")
            for arm in order:
                if arm == "with":
                    with MemorySampler(args.interval_ms, args.uss_interval_ms) as sampler:
                        row = generate(llm, args.tokens)
                    samples_taken += sampler.n_samples if pair else 0
                else:
                    row = generate(llm, args.tokens)
                if pair == 0:
                    continue  # warm-up pair: caches, page faults, the prompt's first evaluation
                for metric in ("tg_tps", "e2e_tps"):
                    arms[arm][metric].append(row[metric])
            print(f"[overhead] pair {pair + 1}/{args.pairs} ({order[0]} first)", file=sys.stderr)
    finally:
        model.close(llm)

    result = {
        "tokens_per_trial": args.tokens,
        "pairs_kept": args.pairs - 1,
        "n_threads": config.threads,
        "interval_ms": args.interval_ms,
        "sampler_samples_in_kept_trials": samples_taken,
    }
    for metric in ("tg_tps", "e2e_tps"):
        ab = stats.compare(arms["without"][metric], arms["with"][metric], higher_is_better=True)
        result[metric] = {
            "without": stats.summarize(arms["without"][metric]),
            "with": stats.summarize(arms["with"][metric]),
            "ratio_with_over_without": ab.ratio,
            "ratio_ci": [ab.ci_low, ab.ci_high],
            "p_value": ab.p_value,
            "verdict": ab.verdict,
            "overhead_pct": (1 - ab.ratio) * 100,
            "overhead_pct_ci": [(1 - ab.ci_high) * 100, (1 - ab.ci_low) * 100],
        }
    return result


def report(result: dict, args) -> None:
    print(
        f"sampler overhead, {result['pairs_kept']} interleaved pairs of {args.tokens} tokens, "
        f"{result['n_threads']} threads, sampler every {args.interval_ms:g} ms"
    )
    for metric in ("tg_tps", "e2e_tps"):
        r = result[metric]
        for arm in ("without", "with"):
            s = r[arm]
            print(
                f"  {metric:8s} {arm:8s} median {s['median']:7.2f} tok/s "
                f"[95% CI {s['ci_low']:.2f}, {s['ci_high']:.2f}]  p5-p95 {s['p5']:.2f}-"
                f"{s['p95']:.2f}  std {s['std']:.2f}  n {s['n']}"
            )
        lo, hi = r["overhead_pct_ci"]
        print(
            f"  {metric:8s} with/without {r['ratio_with_over_without']:.4f} "
            f"[{r['ratio_ci'][0]:.4f}, {r['ratio_ci'][1]:.4f}], overhead "
            f"{r['overhead_pct']:+.2f}% [{lo:+.2f}%, {hi:+.2f}%], p {r['p_value']:.3f}: "
            f"{r['verdict']}"
        )


if __name__ == "__main__":
    sys.exit(main())
