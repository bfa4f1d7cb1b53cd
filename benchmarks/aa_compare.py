"""A/A check of `mateperf compare`: run a phase twice with identical parameters, compare.

Two runs of the same thing should be called different on about the nominal share of their
metrics (5% at the 5% level, less with few trials: Mann–Whitney with 5 trials a side cannot
reject more often than 3.2%). A much larger share means the comparison treats dependent
samples as independent, or compares columns that are not metrics.

    .venv/bin/python benchmarks/aa_compare.py ipc [--pairs 2] [-p key=value ...]
    .venv/bin/python benchmarks/aa_compare.py llm --mateperf /other/checkout/.venv/bin/mateperf

It drives the `mateperf` command (by default this checkout's), so an older checkout can be
measured the same way: the verdict column of its `compare` table is what is counted.
Runs go to a scratch results root (printed) unless `--results` is given.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAME = ("no detectable difference",)
# "not tested (one replicate)" and "too few trials to test: ..." (mateperf.stats)
UNTESTED_PREFIX = ("not tested", "too few trials to test")


def run_phase(mateperf: list[str], root: Path, phase: str, params: list[str]) -> Path:
    before = set(root.glob("*/run.json")) if root.is_dir() else set()
    args = [*mateperf, "--results", str(root), "run", phase]
    for p in params:
        args += ["-p", p]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        sys.exit(f"aa_compare: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    (new,) = set(root.glob("*/run.json")) - before
    print(f"  ran {new.parent.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return new.parent


def verdicts(markdown: str) -> list[str]:
    """The verdict column of a `mateperf compare` markdown table."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    if len(lines) < 3:
        return []
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = header.index("verdict")
    return [[c.strip() for c in ln.strip("|").split("|")][col] for ln in lines[2:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase")
    ap.add_argument("--pairs", type=int, default=1, help="A/A pairs to run (default 1)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--mateperf", default=None, help="mateperf command (default: this one)")
    ap.add_argument("--results", type=Path, default=None, help="results root (default: temp)")
    args = ap.parse_args()
    if args.pairs < 1:
        print("aa_compare: error: --pairs must be at least 1", file=sys.stderr)
        return 2
    mateperf = [args.mateperf] if args.mateperf else [sys.executable, "-m", "mateperf"]
    root = args.results or Path(tempfile.mkdtemp(prefix=f"aa-{args.phase}-"))
    root = root.resolve()
    print(f"A/A {args.phase}: {args.pairs} pair(s), results in {root}", flush=True)
    total_different = total_tested = total_untested = 0
    for pair in range(args.pairs):
        a = run_phase(mateperf, root, args.phase, args.param)
        b = run_phase(mateperf, root, args.phase, args.param)
        proc = subprocess.run(
            [*mateperf, "compare", str(a), str(b)],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
        )
        if proc.returncode != 0:
            sys.exit(f"aa_compare: compare failed:\n{proc.stderr[-2000:]}")
        out = root / f"aa_{pair}.md"
        out.write_text(proc.stdout, encoding="utf-8")
        vs = verdicts(proc.stdout)
        untested = [v for v in vs if v.startswith(UNTESTED_PREFIX)]
        tested = [v for v in vs if not v.startswith(UNTESTED_PREFIX)]
        different = [v for v in tested if v not in SAME]
        kinds = {v: different.count(v) for v in sorted(set(different))}
        print(
            f"pair {pair + 1}: {len(different)} of {len(tested)} compared metrics called "
            f"different ({_share(len(different), len(tested))}) {kinds or ''}"
            + (f"; {len(untested)} not tested" if untested else "")
            + f" -> {out}",
            flush=True,
        )
        total_different += len(different)
        total_tested += len(tested)
        total_untested += len(untested)
    untested_note = f"; {total_untested} not tested (one replicate, or too few trials)"
    print(
        f"A/A {args.phase}: {total_different} of {total_tested} called different "
        f"({_share(total_different, total_tested)}) over {args.pairs} pair(s)"
        + (untested_note if total_untested else "")
    )
    return 0


def _share(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}%" if n else "n/a"


if __name__ == "__main__":
    sys.exit(main())
