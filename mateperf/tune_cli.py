"""`mateperf tune`: measure this machine's settings for each companion profile.

Writes a run directory (`<time>-tune-<id>`) with every trial (tune.parquet), the
recommended.json the companion loads (and `--config` and the final phase read), and tune.md.
"""

from __future__ import annotations

import argparse
import sys

from mateperf import recommended_file, results
from mateperf.avatar import RUN_INFO_KEY
from mateperf.command import (
    AVATAR_FLAG_HELP,
    EXIT_FAILED,
    EXIT_OK,
    check_avatar,
    command_line,
    parse_assignments,
)
from mateperf.errors import RunAborted
from mateperf.host import fingerprint
from mateperf.runner.lock import measurement_lock
from mateperf.tune.params import TuneParams

TUNE = "tune"


def run_tune(values: dict, root, command: str):
    """Tune with `values` (`-p`, --model, --avatar) into a new run directory; returns (run, the
    path of its recommended.json), the path None where the attached avatar went away (the
    trials so far kept, said in one line). Bad input raises before anything runs; any other
    failure marks the run failed and raises."""
    from mateperf import llama_features
    from mateperf.reports.format import fmt
    from mateperf.reports.header import run_header
    from mateperf.reports.tune import section
    from mateperf.tune.tuner import tune

    p = TuneParams.from_values(values, what=TUNE)
    llama_features.check_supported()
    from mateperf.model import resolve_model

    resolve_model(p.model or None)  # a missing or corrupt file: one line before anything runs
    check_avatar(p.avatar)  # nothing answers there: one line before anything runs
    run = results.RunDir.create(TUNE, p.as_dict(), root=root, command=command)
    shown = results.shown_path(run.path, root)
    print(f"mateperf: tuning -> {shown}", file=sys.stderr)
    try:
        with measurement_lock(root or results.default_root()):
            rec, trials = tune(p)
    except RunAborted as exc:  # the avatar went away: the trials so far kept, one line
        if exc.frame is not None and len(exc.frame):
            run.write_frame(results.tidy(exc.frame, run.run_id, TUNE, p.as_dict()), TUNE)
        rows = 0 if exc.frame is None else len(exc.frame)
        run.update(aborted=str(exc), rows_kept=rows)
        run.finish(results.STATUS_FAILED, f"{type(exc).__name__}: {exc}")
        print(f"mateperf: tune failed: {exc}; {rows} rows kept in {shown}", file=sys.stderr)
        return run, None
    except BaseException as exc:
        run.finish(results.STATUS_FAILED, f"{type(exc).__name__}: {exc}")
        raise
    if rec.get("avatar"):
        run.update(**{RUN_INFO_KEY: rec["avatar"]})
    rec = recommended_file.tuned(rec, fingerprint(), run_id=run.run_id)
    run.write_frame(results.tidy(trials, run.run_id, TUNE, p.as_dict()), TUNE)
    path = recommended_file.write(run.path / recommended_file.FILE_NAME, rec)
    md = run_header(run.info) + "\n" + section(rec, trials, run.plots_dir, run.path)
    run.write_text(f"{TUNE}.md", md)
    run.finish(results.STATUS_OK)
    for name, entry in rec["profiles"].items():
        m, s = entry["measured"], entry["settings"]
        print(
            f"{name:13s} n_threads {s['n_threads']}/{s['n_threads_batch']}, n_batch "
            f"{s['n_batch']}, n_gpu_layers {s['n_gpu_layers']}, n_ctx {s['n_ctx']}, KV "
            f"{s['type_k']}, flash_attn {'on' if s['flash_attn'] else 'off'}: reply "
            f"{fmt(m['reply_ms'], 0)} ms, ttft {fmt(m['ttft_ms'], 0)} ms, "
            f"{fmt(m['tg_tps'])} tok/s, frame p99 {fmt(m['frame_p99_ms'], 2)} ms"
            f"{'' if entry['meets_frame_budget'] else ' (over budget)'}"
        )
    if missing := recommended_file.not_tuned(rec):
        print(f"not tuned: {', '.join(missing)} (-p profiles=... names the profiles to tune)")
    print(f"{results.shown_path(path, root)} ({rec['wall_s']:.0f} s)")
    return run, path


def cmd_tune(args) -> int:
    values = parse_assignments(args.param)
    if args.model is not None:
        values["model"] = args.model
    if args.avatar is not None:
        values["avatar"] = args.avatar
    _run, path = run_tune(values, args.results, command_line())
    return EXIT_OK if path is not None else EXIT_FAILED


def add_commands(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="this machine's settings for each companion profile, measured under the avatar's load",
        description=__doc__.split("\n\n")[0],
        epilog=TuneParams.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="a parameter below")
    p.add_argument("--model", help="GGUF file (default: $MATEPERF_MODEL or the default model)")
    p.add_argument("--avatar", metavar="HOST:PORT", help=AVATAR_FLAG_HELP)
    p.set_defaults(func=cmd_tune)
