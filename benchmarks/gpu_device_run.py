"""The gpu phase on a GPU machine without papermill: a run, a forced fallback, a layer sweep.

The lent GPU machine has no papermill or Jupyter (see ../shared/gpu/README.md), so this drives
the library the notebook drives: `mateperf.phases.gpu.run`, stores each run's tidy frame and
its markdown section (mateperf.reports.gpu) under OUT, and a layer sweep's frame with a
measured-vs-predicted table. Everything goes to disk as soon as it exists, so a step cut off
by a timeout leaves the earlier ones.

    python3 benchmarks/gpu_device_run.py OUT [--layers 0,4,9,13,18,-1] [--trials 1]
        [--steps sweep,default,fallback]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import pandas as pd

from mateperf import host, results
from mateperf.phases import gpu
from mateperf.reports import gpu as gpu_report


def save(out: Path, name: str, df: pd.DataFrame, params: dict, seconds: float) -> pd.DataFrame:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    table = results.tidy(df, name, "gpu", params)
    results.atomic_write_parquet(d / "gpu.parquet", table)
    md = gpu_report.section(table, {"params": params}, d / "plots", d)
    results.atomic_write_text(d / "gpu.md", f"# {name} ({seconds:.0f} s)\n\n{md}")
    print(f"[device] {name}: {seconds:.0f} s -> {d}", file=sys.stderr, flush=True)
    return table


def run(out: Path, name: str, **params) -> pd.DataFrame:
    full = {**_defaults(), **params}
    start = time.perf_counter()
    df = gpu.run(**full)
    return save(out, name, df, full, time.perf_counter() - start)


def _defaults() -> dict:
    import inspect

    sig = inspect.signature(gpu.run)
    return {k: v.default for k, v in sig.parameters.items() if k != "isolate"}


def sweep(out: Path, layers: list[int], trials: int, seed: int) -> None:
    """Each layer count `trials` times, the points in a new shuffled order every round."""
    rng = random.Random(seed)
    parts = []
    for r in range(trials):
        order = list(layers)
        rng.shuffle(order)
        for k in order:
            table = run(out, f"sweep/p{k}_r{r}", n_gpu_layers=k, trials=1, compare_profiles=False)
            table["point"], table["round"] = f"n_gpu_layers={k}", r
            parts.append(table)
            combined = pd.concat(parts, ignore_index=True)
            results.atomic_write_parquet(out / "sweep" / "gpu.parquet", combined)
    combined = pd.concat(parts, ignore_index=True)
    vs = gpu.measured_vs_predicted(combined)
    extra = gpu_report.sweep_extra(combined, {"grid": {"n_gpu_layers": layers}}, out, out)
    text = [
        "# Layer sweep",
        "",
        extra,
        "",
        "## Measured vs predicted (all trials of each layer count)",
        "",
        vs.to_markdown(index=False) if len(vs) else "_(no VRAM measured)_",
    ]
    results.atomic_write_text(out / "sweep" / "sweep.md", "\n".join(text) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", default="0,4,9,13,18,-1")
    parser.add_argument("--trials", type=int, default=1, help="sweep rounds")
    parser.add_argument("--steps", default="sweep,default,fallback")
    parser.add_argument("--seed", type=int, default=20261127)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results.atomic_write_json(out / "host.json", host.fingerprint())
    steps = args.steps.split(",")
    layers = [int(v) for v in args.layers.split(",")]
    for step in steps:
        if step == "sweep":
            sweep(out, layers, args.trials, args.seed)
        elif step == "default":
            run(out, "default", trials=2)
        elif step == "fallback":
            # performance forced onto an emulated 1000 MiB card: the context alone is most of it
            run(
                out,
                "fallback",
                profile="performance",
                vram_budget_mb=1000,
                trials=1,
                compare_profiles=False,
            )
        else:
            parser.error(f"unknown step {step!r}")
    print(json.dumps({"done": steps}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
