"""mateperf's pp/tg figures against llama.cpp's own llama-bench, interleaved in one run.

Builds (once, outside the repository) llama-bench from the same sdist and CMAKE_ARGS as the
installed llama-cpp-python, then alternates rounds: llama-bench, mateperf, llama-bench, ...
on the same model, threads, batch and flash-attention setting, and prints both figures and
the ratio of medians with its 95% CI.

    .venv/bin/python benchmarks/llama_bench_compare.py [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from mateperf import model, stats
from mateperf.host import usable_cpus
from mateperf.phases.llm.measure import throughput_trial

REPO = Path(__file__).resolve().parents[1]


def build_llama_bench() -> Path:
    out = subprocess.run(
        [str(REPO / "benchmarks" / "build_llama_bench.sh")],
        check=True,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    return Path(out.stdout.strip().splitlines()[-1])


def llama_bench(binary: Path, model_path: Path, threads: int, reps: int, n_pp: int, n_tg: int):
    cmd = [
        str(binary),
        "-m",
        str(model_path),
        "-t",
        str(threads),
        "-p",
        str(n_pp),
        "-n",
        str(n_tg),
        "-r",
        str(reps),
        "-b",
        "512",
        "-ub",
        "512",
        "-fa",
        "0",
        "-ngl",
        "0",
        "-o",
        "json",
    ]
    out = subprocess.run(
        cmd, check=True, capture_output=True, encoding="utf-8", errors="replace"
    ).stdout
    rows = json.loads(out)
    pp = next(r for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)["samples_ts"]
    tg = next(r for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)["samples_ts"]
    return list(pp), list(tg)


def mateperf_bench(model_path: Path, threads: int, reps: int, n_pp: int, n_tg: int):
    config = model.LlamaConfig(
        str(model_path),
        n_ctx=2048,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=False,
    )
    p = {"pp_tokens": n_pp, "tg_tokens": n_tg}
    rng = np.random.default_rng(config.seed)
    # the first repetition is the phase's warm-up, left out as the phase leaves it out
    reps_rows = [throughput_trial(config, p, rng) for _ in range(reps + 1)][1:]
    rows = [row for rep in reps_rows for row in rep]
    pp = [r["pp_tps"] for r in rows if r["scenario"] == "pp"]
    tg = [r["tg_tps"] for r in rows if r["scenario"] == "tg"]
    return pp, tg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=usable_cpus())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--model", default="")
    args = ap.parse_args()
    model_path = model.resolve_model(args.model or None)
    binary = build_llama_bench()
    samples = {
        ("llama-bench", "pp"): [],
        ("llama-bench", "tg"): [],
        ("mateperf", "pp"): [],
        ("mateperf", "tg"): [],
    }
    for rnd in range(args.rounds):
        for tool in ("llama-bench", "mateperf"):
            fn = llama_bench if tool == "llama-bench" else mateperf_bench
            extra = (binary,) if tool == "llama-bench" else ()
            pp, tg = fn(*extra, model_path, args.threads, args.reps, 512, 128)
            samples[(tool, "pp")] += pp
            samples[(tool, "tg")] += tg
            print(
                f"round {rnd + 1}/{args.rounds} {tool:11s} pp512 {np.median(pp):8.1f} "
                f"tg128 {np.median(tg):6.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"\nmodel {model_path.name}, threads {args.threads}, n_batch 512, flash_attn off, "
        f"{args.rounds} interleaved rounds x {args.reps} repetitions\n"
    )
    print(
        "| test | llama-bench median [95% CI] | mateperf median [95% CI] | "
        "mateperf/llama-bench [95% CI] |"
    )
    print("|---|---|---|---|")
    for test in ("pp", "tg"):
        a, b = samples[("llama-bench", test)], samples[("mateperf", test)]
        sa, sb = stats.summarize(a), stats.summarize(b)
        r = stats.compare(a, b, higher_is_better=True)
        name = "pp512" if test == "pp" else "tg128"
        print(
            f"| {name} | {sa['median']:.1f} [{sa['ci_low']:.1f}, {sa['ci_high']:.1f}] | "
            f"{sb['median']:.1f} [{sb['ci_low']:.1f}, {sb['ci_high']:.1f}] | "
            f"{r.ratio:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
