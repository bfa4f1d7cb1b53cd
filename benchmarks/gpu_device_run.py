"""The gpu phase on a GPU machine without papermill: real run directories and their report.

The lent GPU machine has no papermill or Jupyter (see ../shared/gpu/README.md), so this drives
the library the notebook drives: `mateperf.phases.gpu.run`, saved through the notebook's own
`PhaseRun.save` into a run directory under ROOT (run.json, gpu.parquet, gpu.md, plots), which
`mateperf report ROOT/<run_id>` renders with the summary row like any run. FINAL_RESULTS.md of
those runs is written to ROOT at the end of each step. Each step prints its measured-vs-
predicted table, so a step cut off by a timeout leaves the earlier ones on disk and in the log.

    python3 benchmarks/gpu_device_run.py ROOT [--steps default,fallback,sweep]
        [--layers 0,9,-1] [--trials 4]

Steps:
- default: the phase's defaults (4 trials; every profile that fits, flash attention on for
  performance / balanced / low_memory and off for the run's own n_gpu_layers and cpu_fallback).
- fallback: performance forced onto an emulated 1000 MiB card, 1 trial: the chain skips every
  GPU step by prediction and loads the CPU.
- sweep: the run's own configuration at each of --layers, 1 trial each (the per-layer table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mateperf import host, results
from mateperf.notebook import PhaseRun
from mateperf.phases import gpu
from mateperf.report import write_final


def defaults() -> dict:
    """The phase's parameters and defaults, as its Params declares them (the notebook's cell
    declares the same; that is tested)."""
    return gpu.GpuParams.defaults()


def run(root: Path, name: str, **overrides) -> Path:
    """One phase run saved as a run directory; returns its path."""
    params = {**defaults(), **overrides}
    command = "benchmarks/gpu_device_run.py " + " ".join(f"{k}={v}" for k, v in overrides.items())
    rd = results.RunDir.create("gpu", params, root=root, command=command.strip())
    start = time.perf_counter()
    df = gpu.run(**params)
    table = PhaseRun("gpu", rd, params, interactive=True).save(df)  # finishes it: status ok
    seconds = time.perf_counter() - start
    print(f"[device] {name}: {seconds:.0f} s -> {rd.path}", file=sys.stderr, flush=True)
    vs = gpu.measured_vs_predicted(table)
    if len(vs):
        cols = ["scenario", "profile", "gpu_layers", "cfg_n_ctx", "cfg_flash_attn", "measured_mb"]
        cols = [c for c in cols if c in vs] + ["meta_mb", "meta_error_mb", "proj_mb", "n"]
        print(f"## {name}: measured vs predicted\n{vs[cols].to_markdown(index=False)}", flush=True)
    attempts = table[table["scenario"] == gpu.SCENARIO_ATTEMPT]
    for _, a in attempts.sort_values("attempt").iterrows():
        print(f"attempt {int(a['attempt'])} {a['attempt_step']}: {a['attempt_reason']}", flush=True)
    return rd.path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="results root for the run directories")
    parser.add_argument("--steps", default="default,fallback")
    parser.add_argument("--layers", default="0,9,-1", help="sweep step: n_gpu_layers values")
    parser.add_argument("--trials", type=int, default=0, help="default step (0: the phase's)")
    args = parser.parse_args()
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    results.atomic_write_json(root / "host.json", host.fingerprint())
    steps = args.steps.split(",")
    unknown = [s for s in steps if s not in ("default", "fallback", "sweep")]
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}")
    done: list[Path] = []
    for step in steps:
        if step == "default":
            extra = {"trials": args.trials} if args.trials else {}
            done.append(run(root, "default", **extra))
        elif step == "fallback":
            done.append(
                run(
                    root,
                    "fallback",
                    profile="performance",
                    vram_budget_mb=1000,
                    trials=1,
                    compare_profiles=False,
                )
            )
        else:
            for k in (int(v) for v in args.layers.split(",")):
                done.append(
                    run(root, f"layers {k}", n_gpu_layers=k, trials=1, compare_profiles=False)
                )
        # the report of what exists so far, as `mateperf report` renders it
        final = write_final(done, root)
        print(f"[device] {final} rendered from {len(done)} run(s)", file=sys.stderr, flush=True)
    print(json.dumps({"done": [p.name for p in done]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
