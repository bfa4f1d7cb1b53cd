"""`mateperf` command: thin over the library.

Exit codes: 0 success; 2 bad input (one line on stderr naming the bad value); 1 a measurement
failed (its run directory records what and why).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from mateperf import explore_cli, phases, results, sweep_cli, tune_cli
from mateperf.command import (
    AVATAR_FLAG_HELP,
    CONFIG_HELP,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    check_avatar,
    check_llama,
    command_line,
    parse_assignments,
    with_avatar,
    with_config,
)
from mateperf.errors import BadInput, ParameterError
from mateperf.execute import absolute_environment, execute_phase

INTERRUPTED_BY_CTRL_C = "stopped by Ctrl+C (KeyboardInterrupt) before it finished"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        raise BadInput(message)


def _with_model(phase: str, overrides: dict, model: str | None) -> dict:
    if model is not None:
        if "model" not in phases.defaults(phase):
            raise ParameterError(f"phase {phase} takes no model")
        overrides = {**overrides, "model": model}
    return overrides


def _print_outcome(outcome) -> None:
    status = "ok" if outcome.ok else "FAILED"
    print(
        f"{outcome.run.run_id}: {status} in {outcome.seconds:.1f} s -> "
        f"{results.shown_path(outcome.run.path)}"
    )
    if outcome.error:
        e = outcome.error
        print(
            f"  cell {e.get('cell')}: {e.get('ename')}: {e.get('evalue')}",
            file=sys.stderr,
        )


def cmd_info(args) -> int:
    from mateperf.host import fingerprint, format_fingerprint

    fp = fingerprint()
    print(json.dumps(fp, indent=2) if args.json else format_fingerprint(fp))
    return EXIT_OK


def run_phase(phase: str, overrides: dict, root: Path | None, command: str):
    phases.check_phase(phase)
    phases.require_notebook(phase)  # a recorded phase (live) is refused before any run dir
    check_llama(phase)
    params = phases.resolve_params(phase, overrides)
    run = results.RunDir.create(phase, params, root=root, command=command)
    print(
        f"mateperf: running phase {phase} -> {results.shown_path(run.path, root)}", file=sys.stderr
    )
    return execute_phase(phase, params, run)


def phases_help() -> str:
    lines = ["phases:"]
    for phase in phases.names():
        lines.append(f"  {phase:<8} {phases.title(phase)}")
    lines.append("`mateperf run PHASE --help` lists a phase's parameters.")
    return "\n".join(lines)


def phase_help(phase: str) -> str:
    phases.check_phase(phase)
    lines = [
        f"usage: mateperf run {phase} [-p NAME=VALUE ...] [--model PATH] [--config PATH]",
        "",
        phases.title(phase),
        "",
        phases.schema(phase).help_text(),
    ]
    return "\n".join(lines)


def cmd_run(args) -> int:
    if args.help or args.phase is None:
        if args.phase is None and not args.help:
            raise BadInput("run: which phase? " + ", ".join(phases.names()))
        print(phase_help(args.phase) if args.phase else phases_help())
        return EXIT_OK
    overrides = _with_model(args.phase, parse_assignments(args.param), args.model)
    overrides = with_config(args.phase, overrides, args.config)
    overrides = with_avatar(args.phase, overrides, args.avatar)
    check_avatar(args.avatar)
    outcome = run_phase(args.phase, overrides, args.results, command_line())
    _print_outcome(outcome)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _tune_step(args, step: str) -> Path | None:
    """`mateperf tune` inside `all`: its recommended.json for the final phase, or None (failed,
    said on the console; the final phase then takes the newest tune or cpu run's)."""
    values = {} if args.model is None else {"model": args.model}
    command = "mateperf tune" + (f" --model {shlex.quote(args.model)}" if args.model else "")
    if args.avatar is not None:  # the same live avatar the phases measured
        values["avatar"] = args.avatar
        command += f" --avatar {shlex.quote(args.avatar)}"
    print(f"mateperf: {step} tune: the companion's settings per profile", file=sys.stderr)
    try:
        _run, path = tune_cli.run_tune(values, args.results, command)
    except BadInput:
        raise
    except Exception as exc:  # the run directory records it; the job goes on to final
        print(f"mateperf: tune FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    return path


def plan_all(available: list[str], with_tune: bool) -> list[str]:
    """The steps of `mateperf all`: the phases in order, with `tune` after cpu and gpu and
    before final (whose tuned arms take its recommended.json), or last without a final."""
    steps = list(available)
    if with_tune:
        steps.insert(steps.index("final") if "final" in steps else len(steps), TUNE_STEP)
    return steps


TUNE_STEP = "tune"


def cmd_all(args) -> int:
    import time

    from mateperf.report import summary_section, write_final

    available = phases.available_phases()
    if not available:
        raise BadInput("no phase notebooks found under notebooks/")
    failed = []
    start = time.perf_counter()
    if args.avatar is not None:
        with_avatar(available[0], {}, args.avatar, required=False)  # HOST:PORT, one line
        check_avatar(args.avatar)
    steps = plan_all(available, args.tune)
    seconds: dict[str, float] = {}
    tuned: Path | None = None
    for i, phase in enumerate(steps, 1):
        step = f"[{i}/{len(steps)}]"
        if phase == TUNE_STEP:
            began = time.perf_counter()
            tuned = _tune_step(args, step)
            seconds[TUNE_STEP] = time.perf_counter() - began
            if tuned is None:
                failed.append(TUNE_STEP)
            continue
        overrides = {}
        if args.model is not None and phases.declared(phase).uses_model:
            overrides["model"] = args.model
        command = f"mateperf run {phase}" + (
            f" --model {shlex.quote(args.model)}" if "model" in overrides else ""
        )
        # the first phase's call refuses a file for another host before anything is measured
        configured = with_config(phase, overrides, args.config, required=False)
        if configured != overrides:
            command += f" --config {shlex.quote(args.config)}"  # as the user typed it
        elif tuned is not None and "config" in phases.defaults(phase):
            # the final phase's tuned arms: this job's own tune
            configured = {**overrides, "config": str(tuned)}
            command += f" --config {shlex.quote(results.command_path(tuned, args.results))}"
        attached = with_avatar(phase, configured, args.avatar, required=False)
        if attached != configured:
            command += f" --avatar {shlex.quote(args.avatar)}"
        configured = attached
        print(f"mateperf: {step} {phase}: {phases.title(phase)}", file=sys.stderr)
        outcome = run_phase(phase, configured, args.results, command)
        _print_outcome(outcome)
        seconds[phase] = outcome.seconds
        elapsed = time.perf_counter() - start
        print(
            f"mateperf: {step} {phase} "
            f"{'ok' if outcome.ok else 'FAILED'} in {outcome.seconds:.0f} s; "
            f"{elapsed / 60:.1f} min so far",
            file=sys.stderr,
        )
        if not outcome.ok:
            failed.append(phase)
    not_built = [p for p in phases.names() if p not in available and not phases.recorded_by(p)]
    if not_built:
        print(f"mateperf: phases not built yet: {', '.join(not_built)}", file=sys.stderr)
    for p in phases.names():
        if phases.recorded_by(p):
            print(
                f"mateperf: {p} is not part of all: recorded by {phases.recorded_by(p)}",
                file=sys.stderr,
            )
    out = write_final(None, args.results)
    print()
    print(summary_section(out.read_text(encoding="utf-8")))
    print()
    print("time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(
        f"report: {results.shown_path(out, args.results)} "
        f"({(time.perf_counter() - start) / 60:.1f} min in all)"
    )
    if failed:
        print(f"mateperf: failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_report(args) -> int:
    from mateperf.report import unfinished_notes, write_final

    for path in args.runs:
        if not (Path(path) / results.RUN_JSON).is_file():
            raise BadInput(f"{path} is not a run directory (no {results.RUN_JSON})")
        named_run = results.RunDir.open(Path(path))
        if not named_run.has_frame():  # e.g. killed before its notebook saved anything
            state = f"{results.status_now(named_run.info)}, no {named_run.phase}.parquet"
            raise BadInput(f"{path} holds no rows to report ({state})")
    named = [Path(p) for p in args.runs] or None
    for line in unfinished_notes(named, args.results):  # killed, Ctrl+C'd, still running
        print(line)
    try:
        out = write_final(named, args.results)
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    print(results.shown_path(out, args.results))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mateperf", description="Desktop-Mate performance lab")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show papermill's per-cell log and the kernel's own messages",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results root (default: $MATEPERF_RESULTS or results/ in the repository)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("info", help="host fingerprint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "run",
        help="run one phase notebook headless into a new run directory",
        add_help=False,
        usage="mateperf run PHASE [-p NAME=VALUE ...] [--model PATH] [--config PATH] "
        "[--avatar HOST:PORT]",
    )
    p.add_argument("phase", nargs="?")
    p.add_argument("-h", "--help", action="store_true", help="the phases, or PHASE's parameters")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE")
    p.add_argument("--model", help="GGUF file (default: $MATEPERF_MODEL or the default model)")
    p.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    p.add_argument("--avatar", metavar="HOST:PORT", help=AVATAR_FLAG_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "all",
        help="every built phase with defaults, `mateperf tune` before the final phase, the report",
    )
    p.add_argument("--model")
    p.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    p.add_argument("--avatar", metavar="HOST:PORT", help=AVATAR_FLAG_HELP)
    p.add_argument(
        "--no-tune",
        dest="tune",
        action="store_false",
        help="leave `mateperf tune` out (the final phase then takes the newest tune or cpu "
        "run's recommended.json)",
    )
    p.set_defaults(func=cmd_all)

    p = sub.add_parser("report", help="regenerate results/FINAL_RESULTS.md from stored runs")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR")
    p.set_defaults(func=cmd_report)

    sweep_cli.add_commands(sub)
    tune_cli.add_commands(sub)
    explore_cli.add_commands(sub)
    return parser


def _console_never_fails_on_unicode() -> None:
    """Output redirected to a file or pipe on Windows uses the ANSI code page (cp1252, cp932),
    which cannot encode "−", "µ" or "→": replace such characters instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            if (stream.encoding or "").lower().replace("-", "") != "utf8":
                stream.reconfigure(errors="replace")


def main(argv: list[str] | None = None) -> int:
    _console_never_fails_on_unicode()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.verbose:
            os.environ["MATEPERF_VERBOSE"] = "1"
        if args.results is not None:
            args.results = args.results.resolve()
            os.environ["MATEPERF_RESULTS"] = str(args.results)
        # Kernels run in their run directory: paths must not depend on where we were started.
        absolute_environment()
        return args.func(args)
    except BadInput as exc:
        print(f"mateperf: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        # the runs it was writing say so (a killed process cannot: results.status_now tells)
        for run in results.interrupt_owned_runs(INTERRUPTED_BY_CTRL_C):
            print(f"mateperf: {run.run_id} recorded as interrupted", file=sys.stderr)
        print("mateperf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
