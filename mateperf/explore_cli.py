"""`mateperf explore`: a fresh copy of the explore notebook to run, and how to open it.

The tracked `notebooks/00_explore.ipynb` is committed without outputs; JupyterLab autosaves an
open notebook every 120 s, outputs included. Each `mateperf explore` copies it to
`<results root>/explore/<time>-explore.ipynb` (ignored by git, like every run directory), so
running it never writes into the tracked file, and prints the JupyterLab command; `--lab`
starts JupyterLab on it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mateperf import results
from mateperf.command import EXIT_OK
from mateperf.host import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "00_explore.ipynb"
FOLDER = "explore"


def fresh_copy(root: Path | None = None, now: dt.datetime | None = None) -> Path:
    """A new copy of the explore notebook under the results root; never overwrites one."""
    folder = Path(root or results.default_root()) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    path, n = folder / f"{stamp}-explore.ipynb", 1
    while path.exists():
        n += 1
        path = folder / f"{stamp}-explore-{n}.ipynb"
    shutil.copyfile(NOTEBOOK, path)
    return path


def lab_command(path: Path) -> tuple[list[str], str]:
    """(argv, the command as a person types it from the repository root)."""
    try:
        shown = Path(os.path.relpath(path, REPO_ROOT)).as_posix()
    except ValueError:  # another drive on Windows
        shown = str(path)
    if shown.startswith(".."):
        shown = str(path)
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={REPO_ROOT}", shown]
    return argv, f".venv/bin/jupyter lab {shown}"


def cmd_explore(args) -> int:
    path = fresh_copy(args.results)
    argv, typed = lab_command(path)
    print(f"a fresh copy of the explore notebook: {results.command_path(path, args.results)}")
    print(f"open it in JupyterLab (from the repository root): {typed}")
    if args.lab:
        return subprocess.call(argv, cwd=REPO_ROOT)
    return EXIT_OK


def add_commands(sub) -> None:
    p = sub.add_parser(
        "explore",
        help="a fresh copy of the explore notebook under results/explore/, and how to open it",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--lab", action="store_true", help="start JupyterLab on the copy")
    p.set_defaults(func=cmd_explore)
