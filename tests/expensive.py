"""A pytest plugin that counts what makes the suite slow: model loads and papermill runs.

    .venv/bin/python -m pytest -p tests.expensive ...

A measure that does not depend on how loaded the machine is: at the end of the session it
prints how many times the model was loaded (in the test process, and in every run directory's
llama.log, which is where a phase run's notebook kernel logs each load), how many notebooks
papermill executed (in the test process, and into run directories: an executed notebook
beside a run.json), how many `mateperf run / sweep / all / tune` commands were started as
processes (refusals of bad input included), and which tests started them.
"""

from __future__ import annotations

import collections
import functools
import subprocess

import pytest

COUNTS: collections.Counter = collections.Counter()
BY_TEST: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
_current = ["(collection)"]
COMMANDS = ("run", "sweep", "all", "tune")
LOAD_LINE = "llama_model_loader: loaded meta data"


def _count(what: str) -> None:
    COUNTS[what] += 1
    BY_TEST[_current[0]][what] += 1


def _mateperf_command(args) -> str | None:
    argv = [str(a) for a in (args if isinstance(args, list | tuple) else [args])]
    if "mateperf" not in argv and not any(a.endswith(("/mateperf", "mateperf.cli")) for a in argv):
        return None
    if "--help" in argv or "-h" in argv:
        return None
    return next((a for a in argv if a in COMMANDS), None)


def pytest_configure(config) -> None:
    real_popen_init = subprocess.Popen.__init__

    @functools.wraps(real_popen_init)
    def popen_init(self, args, *rest, **kwargs):
        command = _mateperf_command(args)
        if command is not None:
            _count(f"mateperf {command} (process)")
        return real_popen_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = popen_init
    try:
        import papermill

        real_execute = papermill.execute_notebook

        @functools.wraps(real_execute)
        def execute(*args, **kwargs):
            _count("papermill in the test process")
            return real_execute(*args, **kwargs)

        papermill.execute_notebook = execute
    except ImportError:
        pass
    import llama_cpp

    real_init = llama_cpp.Llama.__init__

    @functools.wraps(real_init)
    def llama_init(self, *args, **kwargs):
        _count("model load in the test process")
        return real_init(self, *args, **kwargs)

    llama_cpp.Llama.__init__ = llama_init


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    try:
        return (yield)
    finally:
        _current[0] = "(between tests)"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    base = config._tmp_path_factory.getbasetemp()
    logged = sum(
        p.read_text(encoding="utf-8", errors="replace").count(LOAD_LINE)
        for p in base.rglob("llama.log")
    )
    executed = sum(1 for p in base.rglob("*.ipynb") if (p.parent / "run.json").is_file())
    tr = terminalreporter
    tr.section("expensive: model loads and papermill runs")
    tr.write_line(f"model loads in run directories' llama.log: {logged}")
    tr.write_line(f"notebooks executed into run directories: {executed}")
    for what, n in sorted(COUNTS.items()):
        tr.write_line(f"{what}: {n}")
    tr.write_line("by test:")
    for test, counts in sorted(BY_TEST.items(), key=lambda kv: -sum(kv[1].values())):
        tr.write_line(f"  {test}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
