"""`mateperf tune`'s race against the full grid, on this machine, in one run.

For one companion profile: every racing setting measured `--reps` times in interleaved rounds
(the grid), then the race over the same settings from scratch, then the race's pick against the
grid's best in an interleaved A/B (`--confirm` trials each). Prints both picks, their
objective, the A/B ratio with its 95% CI and verdict, and the wall time of each.

    .venv/bin/python benchmarks/tune_vs_grid.py [--profile balanced] [--reps 5] [--confirm 8]
        [-p n_batch=128,512 -p kv_types=f16,q8_0 ...]   # tune's own parameters
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from mateperf import model, runner, stats, workloads
from mateperf.command import parse_assignments
from mateperf.gpu import estimate
from mateperf.host import usable_cpus
from mateperf.tune import race as race_mod
from mateperf.tune import space
from mateperf.tune.params import TuneParams
from mateperf.tune.trial import CONSTRAINT, OBJECTIVE, Bench
from mateperf.tune.tuner import device


def measure_all(bench: Bench, settings: list[space.Setting], reps: int, seed: int) -> pd.DataFrame:
    """Every setting `reps` times in shuffled rounds, failures recorded (mateperf.runner)."""
    rng = np.random.default_rng(seed)
    visits = [
        runner.Visit(r, s, pos)
        for r in range(reps)
        for pos, s in enumerate(settings[i] for i in rng.permutation(len(settings)))
    ]
    rows = runner.run_trials(
        "tune",
        visits,
        lambda v: bench.measure(v.item),
        lambda v, row: f"{OBJECTIVE} {row[OBJECTIVE]:.0f} ms",
        base=lambda v: {"label": v.item.label, "round": v.round},
        label=lambda s: s.label,
    )
    return pd.DataFrame(rows)


def best_of(df: pd.DataFrame, budget_ms: float) -> str:
    """The race's ranking on the grid's medians: within the frame budget by the objective,
    else the least overrun."""
    med = df[df["error"] == ""].groupby("label")[[OBJECTIVE, CONSTRAINT]].median()
    meets = med[med[CONSTRAINT] <= budget_ms]
    if len(meets):
        return str(meets[OBJECTIVE].idxmin())
    return str((med[CONSTRAINT] - budget_ms).idxmin())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="balanced", choices=[r.name for r in space.RULES])
    ap.add_argument("--reps", type=int, default=5, help="grid: trials per setting")
    ap.add_argument("--confirm", type=int, default=8, help="A/B: trials each")
    ap.add_argument("-p", "--param", action="append", metavar="KEY=VALUE")
    args = ap.parse_args()
    p = TuneParams.from_values(parse_assignments(args.param), what="tune")
    path = model.resolve_model(p.model or None)
    layout = estimate.read_layout(path)
    offload = workloads.gpu_offload_available()
    overhead, budget, _ = device(p, offload)
    rule = next(r for r in space.RULES if r.name == args.profile)
    plan = space.candidates(
        rule, layout, usable_cpus(), budget, p.margin_mb, offload, overhead, p.axes()
    )
    racing = [c.setting for c in plan if not c.pruned]
    by_label = {s.label: s for s in racing}
    budget_ms = 1e3 / p.fps + p.frame_slack_ms  # tune's frame budget
    print(
        f"{args.profile}: {len(racing)} settings, grid x{args.reps}, then the race", file=sys.stderr
    )
    with Bench(
        str(path), p.peer, p.fps, p.frame_busy, p.command_hz, p.reply_tokens, p.seed
    ) as bench:
        start = time.perf_counter()
        grid = measure_all(bench, racing, args.reps, p.seed)
        grid_s = time.perf_counter() - start
        start = time.perf_counter()
        result = race_mod.race(
            [race_mod.Candidate(s.label, s.as_dict()) for s in racing],
            lambda c: bench.measure(by_label[c.label]),
            OBJECTIVE,
            higher_is_better=False,
            constraint=CONSTRAINT,
            budget=budget_ms,
            max_rounds=p.max_rounds,
            min_reps=min(p.min_reps, p.max_rounds),
            halve_every=1,
            eta=p.eta,
            seed=p.seed + 7,
            on_progress=lambda t: print(f"race {t}", file=sys.stderr, flush=True),
        )
        race_s = time.perf_counter() - start
        grid_best, pick = best_of(grid, budget_ms), result.winner.label
        pair = [by_label[grid_best], by_label[pick]] if pick != grid_best else [by_label[pick]]
        ab = measure_all(bench, pair, args.confirm, p.seed + 13)
    ok = ab[ab["error"] == ""]
    a = ok.loc[ok["label"] == grid_best, OBJECTIVE].to_numpy(float)
    b = ok.loc[ok["label"] == pick, OBJECTIVE].to_numpy(float)
    same = pick == grid_best
    r = stats.compare(a, b, higher_is_better=False) if not same else None
    gmed = grid[grid["error"] == ""].groupby("label")[OBJECTIVE].median()
    print(
        f"\nprofile {args.profile}, {len(racing)} settings, model {path.name}, frame budget "
        f"{budget_ms:.2f} ms\n"
    )
    print("| | grid | race |")
    print("|---|---|---|")
    print(f"| pick | {grid_best} | {pick} |")
    print(f"| trials | {len(grid)} | {result.total_trials} |")
    print(f"| wall time (s) | {grid_s:.0f} | {race_s:.0f} ({race_s / grid_s:.2f} of the grid) |")
    pick_med = gmed.get(pick, float("nan"))
    print(
        f"| pick's {OBJECTIVE} in the grid (median) | {gmed[grid_best]:.0f} | "
        f"{pick_med:.0f} ({pick_med / gmed[grid_best]:.3f}x) |"
    )
    if same:
        print("\nthe race picked the grid's best setting")
    else:
        print(
            f"\ninterleaved A/B, {args.confirm} trials each: race pick / grid best {OBJECTIVE} "
            f"{r.ratio:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}], p {r.p_value:.3f}: {r.verdict}"
        )
    print(f"race: {result.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
