"""Collect the whole test suite as a Windows checkout would: no POSIX-only modules, no Mono.

Windows has no fcntl, resource, termios, pwd or grp: importing one fails. This runs
`pytest --collect-only -q` with every such import made from this repository's own code (tests/
and mateperf/) failing as it would there (third-party packages keep theirs: psutil's Linux
module needs resource, and on Windows psutil has its own module instead), and exits with
pytest's code. Run it with a PATH that has no mono or mcs to take Mono away too, e.g.
`env PATH=/nonexistent .venv/bin/python scripts/collect_as_windows.py`; a collection error is a
test module that would stop a Windows developer's `python -m pytest` before any test ran.
"""

from __future__ import annotations

import builtins
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSIX_ONLY = frozenset({"fcntl", "resource", "termios", "pwd", "grp", "posix"})
_real_import = builtins.__import__


def _windows_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = str((globals or {}).get("__file__") or "")
    ours = importer.startswith(str(REPO)) and "site-packages" not in importer
    if ours and level == 0 and name.partition(".")[0] in POSIX_ONLY:
        raise ModuleNotFoundError(f"No module named {name!r} (as on Windows)", name=name)
    return _real_import(name, globals, locals, fromlist, level)


def main() -> int:
    builtins.__import__ = _windows_import
    import pytest

    mono = [tool for tool in ("mono", "mcs") if shutil.which(tool)]
    print(
        f"collect as Windows: {', '.join(sorted(POSIX_ONLY))} unimportable from this repository; "
        + (f"Mono still on PATH ({', '.join(mono)})" if mono else "no Mono on PATH")
    )
    return pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", str(REPO / "tests")])


if __name__ == "__main__":
    sys.exit(main())
