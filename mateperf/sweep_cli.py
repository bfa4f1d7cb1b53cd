"""`mateperf sweep` and `mateperf compare`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mateperf import phases, results
from mateperf.command import (
    AVATAR_FLAG_HELP,
    CONFIG_HELP,
    EXIT_FAILED,
    EXIT_OK,
    check_avatar,
    check_llama,
    command_line,
    parse_assignments,
    with_avatar,
    with_config,
)
from mateperf.errors import BadInput
from mateperf.sweep.execute import execute
from mateperf.sweep.manifest import FAILED, OK, Sweep, overhead
from mateperf.sweep.plan import parse_grid, plan


def cmd_sweep(args) -> int:
    start = time.perf_counter()
    phases.check_phase(args.phase)
    phases.require_notebook(args.phase)  # a recorded phase (live) has nothing to sweep
    check_llama(args.phase)
    if args.resume:
        if args.grid or args.param or args.model is not None or args.config is not None:
            raise BadInput(
                "--resume takes no --grid, -p, --model or --config: the sweep keeps its own"
            )
        if args.avatar is not None:
            raise BadInput("--resume takes no --avatar: the sweep keeps its own")
        if args.rounds is not None or args.seed is not None:
            raise BadInput("--resume takes no --rounds or --seed: the sweep keeps its own")
        sw = Sweep.open(Path(args.resume))
        if sw.run.phase != args.phase:
            raise BadInput(f"{args.resume} is a sweep of phase {sw.run.phase}, not {args.phase}")
        print(f"mateperf: resuming sweep {results.shown_path(sw.run.path)}", file=sys.stderr)
    else:
        grid_raw = parse_grid(args.grid)
        fixed_raw = parse_assignments(args.param)
        if args.model is not None:
            fixed_raw["model"] = args.model
        # swept names stay swept: the file only fills the fixed settings the grid leaves alone
        fixed_raw = {
            k: v
            for k, v in with_config(args.phase, fixed_raw, args.config).items()
            if k not in grid_raw or k in fixed_raw
        }
        fixed_raw = with_avatar(args.phase, fixed_raw, args.avatar)
        check_avatar(args.avatar)
        grid, fixed, schema = plan(args.phase, grid_raw, fixed_raw)
        sw = Sweep.create(
            args.phase, grid, fixed, schema, command_line(), rounds=args.rounds, seed=args.seed
        )
        m = sw.manifest()
        print(
            f"mateperf: sweep of {len(m['points'])} points x {m['rounds']} rounds "
            f"(order seed {m['order_seed']}) -> {results.shown_path(sw.run.path)}",
            file=sys.stderr,
        )
    manifest = execute(sw)
    from mateperf.reports.sweep import write_markdown  # matplotlib: only once something ran

    write_markdown(sw.run)
    wall = time.perf_counter() - start
    ov = overhead(manifest, wall, only=sw.executed)
    units = manifest["point_rounds"]
    ok = sum(u["status"] == OK for u in units)
    failed = [u for u in units if u["status"] == FAILED]
    print(
        f"{sw.run.run_id}: {ok}/{len(units)} point-rounds ok ({len(manifest['points'])} points "
        f"x {manifest['rounds']} rounds); this invocation ran {len(sw.executed)} "
        f"point-round(s) in {wall:.1f} s, measured work {ov['measured_s']:.1f} s, "
        f"outside it {ov['overhead_share'] * 100:.1f}% -> {results.shown_path(sw.run.path)}"
    )
    for u in failed:
        e = u["error"] or {}
        print(
            f"  failed {u['name']} (attempt {len(u['attempts'])}): "
            f"{e.get('ename')}: {e.get('evalue')}",
            file=sys.stderr,
        )
    return EXIT_FAILED if failed else EXIT_OK


def cmd_compare(args) -> int:
    from mateperf.compare import compare_runs
    from mateperf.reports.compare import format_comparison

    table, warnings = compare_runs(Path(args.run_a), Path(args.run_b))
    for w in warnings:
        print(w, file=sys.stderr)
    print(format_comparison(table, Path(args.run_a).name, Path(args.run_b).name))
    return EXIT_OK


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="run a phase notebook over a parameter grid")
    p.add_argument("phase")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", default=[])
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE")
    p.add_argument("--model")
    p.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    p.add_argument("--avatar", metavar="HOST:PORT", help=AVATAR_FLAG_HELP)
    p.add_argument(
        "--rounds",
        type=int,
        help="visit every point this many times, each round in a shuffled order; the "
        "phase's repetitions are split among them (default: min(trials, 3), or 1)",
    )
    p.add_argument("--seed", type=int, help="seed of the visiting order (default: random)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="finish a sweep: run its interrupted and failed point-rounds",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("compare", help="compare two runs of a phase")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.set_defaults(func=cmd_compare)
