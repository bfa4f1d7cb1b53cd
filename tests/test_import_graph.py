"""The import graph of mateperf has no cycle.

Read from the source with `ast`, not by importing: every `import mateperf...` and
`from mateperf... import ...`, at module level and inside function bodies alike (an import
moved into a function to dodge a cycle is still an arrow).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mateperf"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(name: str, known: dict[str, Path]) -> str | None:
    """The mateperf module that `name` (a module, or a name inside one) refers to."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported_names(node: ast.AST, package: str) -> list[str]:
    """What an import statement names, one entry per imported name: `from mateperf import
    phases, stats` names the submodules mateperf.phases and mateperf.stats, and
    `from mateperf.stats import compare` names mateperf.stats.compare (resolved by `_target`
    to the module mateperf.stats)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the mateperf modules it imports (module level and function bodies)."""
    known = _modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for imported in _imported_names(node, package):
                if not imported.startswith("mateperf"):
                    continue
                found = _target(imported, known)
                if found and found != name:
                    graph[name].add(found)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module, as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(graph, set(c)) for c in components]


def _cycle_through(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """A shortest cycle from the component's first module back to itself, for the message."""
    start = min(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(members)


def test_the_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "mateperf.phases" in graph["mateperf.report"]
    assert "mateperf.stats" in graph["mateperf.phases.llm"] or graph["mateperf.phases.llm"]
    # a cycle made of a function-level import is still found
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(toy) == [["a", "b", "c", "a"]]


def test_no_import_cycle_between_mateperf_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# Layers, lowest first. A module may import its own layer and those below, never above.
LAYERS = (
    (
        "foundation",
        (
            "errors",
            "progress",
            "params",
            "stats",
            "metrics",
            "upgrade",
            "llama_features",
            "companion",
            "avatar",
            "avatar_pacing",
            "cpu_topology",
            "thread_rules",
            "frame_budget",
            "companion_config",
        ),
    ),
    (
        "instruments",
        (
            "host",
            "run_owner",
            "journal",
            "results",
            "gguf_file",
            "bridge",
            "trackers",
            "model",
            "gpu",
            "workloads",
            "companion_load",
            "companion_readback",
            "runner",
            "recommend",
            "recommended_file",
        ),
    ),
    ("phases", ("phases", "tune", "compare", "live")),
    ("reports", ("reports", "report", "explore")),
    (
        "drivers",
        (
            "notebook",
            "execute",
            "sweep",
            "command",
            "cli",
            "sweep_cli",
            "tune_cli",
            "explore_cli",
            "__main__",
        ),
    ),
)
# What reads stored frames imports nothing that measures.
MEASURING = (
    "mateperf.bridge",
    "mateperf.trackers",
    "mateperf.model",
    "mateperf.workloads",
    "mateperf.companion_load",
    "mateperf.gpu.trial",
    "mateperf.gpu.child",
    "mateperf.runner",
)
# Extension modules that only measuring code may load.
MEASURING_EXTERNAL = ("llama_cpp", "pynvml", "socket")


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for rank, (_name, tops) in enumerate(LAYERS):
        if top in tops:
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = [
        f"{a} ({LAYERS[_layer(a)][0]}) -> {b} ({LAYERS[_layer(b)][0]})"
        for a in sorted(graph)
        if a != "mateperf"
        for b in sorted(graph[a])
        if b != "mateperf" and _layer(b) > _layer(a)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_a_phase_analysis_imports_nothing_that_measures():
    graph = import_graph()
    analyses = [m for m in graph if m.startswith("mateperf.phases.") and ".analyse" in m]
    assert len(analyses) >= 6, analyses
    for module in analyses:
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        external = {
            a.name.split(".")[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import)
            for a in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom) and not node.level
        }
        assert not external & {*MEASURING_EXTERNAL, "psutil"}, module
        measuring = [b for b in graph[module] if b.startswith(MEASURING) or ".measure" in b]
        assert not measuring, f"{module} imports {measuring}"


# --- what reads a stored run ---------------------------------------------------------------------
# The report, the explorer and every module under reports/ format stored frames. What they load
# is what Python runs when they are imported: their own imports (module level and function
# bodies: a report function runs when the report does), then, transitively, the module-level
# imports of everything loaded, and the package `__init__` above every loaded module (importing
# mateperf.phases.ipc.analyse runs mateperf/phases/ipc/__init__.py first).
READERS = ("mateperf.reports", "mateperf.report", "mateperf.explore")


def _is_measuring(module: str) -> bool:
    return module.startswith(MEASURING) or module.rpartition(".")[2] == "measure"


def _imports(module: str, path: Path, function_bodies: bool) -> tuple[set[str], set[str]]:
    """(mateperf modules, top-level external packages) `module` imports: at module level
    (`if TYPE_CHECKING:` blocks left out: they never run), and in function bodies if asked."""
    known = _modules()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes: list[ast.AST] = []

    def collect(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if function_bodies:
                    nodes.extend(ast.walk(node))
                continue
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                collect(node.orelse)
                continue
            if isinstance(node, ast.ClassDef) and function_bodies:
                nodes.extend(ast.walk(node))
                continue
            nodes.append(node)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and not isinstance(node, ast.ClassDef):
                    collect(inner)

    collect(ast.parse(path.read_text(encoding="utf-8")).body)
    found, external = set(), set()
    for node in nodes:
        for imported in _imported_names(node, package):
            if not imported.startswith("mateperf"):
                external.add(imported.split(".")[0])
                continue
            target = _target(imported, known)
            if target and target != module:
                found.add(target)
    return found, external


def _with_packages(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def loaded_by(root: str) -> dict[str, str | None]:
    """Every module (mateperf's, and `ext:<name>` for external packages) that importing and
    running `root` loads -> the module that loads it (None for the root): to print a path."""
    known = _modules()
    came_from: dict[str, str | None] = {root: None}
    stack = [root]
    while stack:
        module = stack.pop()
        if module.startswith("ext:"):
            continue
        found, external = _imports(module, known[module], function_bodies=module == root)
        for target in sorted(
            set().union(*(_with_packages(f) for f in found)) | _with_packages(module)
        ):
            if target in known and target not in came_from:
                came_from[target] = module
                stack.append(target)
        for name in external:
            came_from.setdefault(f"ext:{name}", module)
    return came_from


def _path(came_from: dict[str, str | None], module: str) -> str:
    chain = [module]
    while came_from[chain[-1]] is not None:
        chain.append(came_from[chain[-1]])
    return " <- ".join(chain)


def measuring_loads(roots: list[str]) -> list[str]:
    """`what <- ... <- root` for every measuring module or extension a reader loads, and
    every phase module a reader imports that is not the phase's analysis."""
    problems = []
    for root in roots:
        came_from = loaded_by(root)
        for module in sorted(came_from):
            if module.startswith("ext:"):
                if module[4:] in MEASURING_EXTERNAL:
                    problems.append(_path(came_from, module))
            elif _is_measuring(module):
                problems.append(_path(came_from, module))
        own, _ = _imports(root, _modules()[root], function_bodies=True)
        for module in sorted(own):
            parts = module.split(".")
            if len(parts) > 3 and parts[1] == "phases" and parts[3] not in ("analyse", "verdict"):
                problems.append(f"{module} <- {root} (a report imports a phase's analysis only)")
    return problems


def _readers() -> list[str]:
    return sorted(m for m in _modules() if m.startswith(READERS))


def test_reading_a_stored_run_loads_nothing_that_measures():
    """Rendering a stored run needs no model, bridge, tracker, runner or measure module."""
    problems = measuring_loads(_readers())
    assert not problems, "readers of stored runs load measuring code:\n" + "\n".join(problems)


def test_the_readers_rule_sees_a_measuring_import(tmp_path, monkeypatch):
    """The rule finds a reader that imports measuring code, directly or through a phase package
    whose `__init__` imports its measure module."""
    report = PACKAGE / "reports" / "llm.py"
    text = report.read_text(encoding="utf-8")
    real_read = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == report:
            return text + "\nfrom mateperf.phases.llm import measure\n"
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    problems = measuring_loads(["mateperf.reports.llm"])
    assert any(
        p.startswith("mateperf.phases.llm.measure <- mateperf.reports.llm") for p in problems
    )
    assert any("ext:llama_cpp" in p or "mateperf.model" in p for p in problems), problems


def test_importing_the_readers_loads_no_measuring_module():
    """The same rule, run: import every reader in a fresh interpreter, then look at what loaded."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {_readers()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    loaded = json.loads(out)
    measuring = [
        m
        for m in loaded
        if (m.startswith("mateperf.") and _is_measuring(m))
        or m.split(".")[0] in MEASURING_EXTERNAL[:2]
    ]
    assert not measuring, f"importing the readers loaded {measuring}"


def test_every_module_imports_on_this_interpreter():
    """Every module imported for real (scripts/test-py310.sh runs this under Python 3.10): a
    name the interpreter or a dependency's version lacks (datetime.UTC, tomllib, StrEnum) fails
    at import here rather than in the middle of a measurement."""
    import importlib

    for name in _modules():
        if not name.endswith("__main__"):  # it runs the command line when imported
            importlib.import_module(name)
