"""The import graph of mateperf has no cycle.

Read from the source with `ast`, not by importing: every `import mateperf...` and
`from mateperf... import ...`, at module level and inside function bodies alike (an import
moved into a function to dodge a cycle is still an arrow).
"""

from __future__ import annotations

import ast
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


def import_graph() -> dict[str, set[str]]:
    """Module -> the mateperf modules it imports (module level and function bodies)."""
    known = _modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from mateperf import phases` imports the submodule mateperf.phases
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for imported in names:
                if not imported.startswith("mateperf"):
                    continue
                found = _target(imported, known)
                if found and found != name:
                    graph[name].add(found)
                    break
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
        ),
    ),
    (
        "instruments",
        (
            "host",
            "results",
            "bridge",
            "trackers",
            "model",
            "gpu",
            "workloads",
            "companion_load",
            "runner",
            "recommend",
        ),
    ),
    ("phases", ("phases", "tune")),
    ("reports", ("reports", "report", "compare", "explore")),
    (
        "drivers",
        ("notebook", "execute", "sweep", "command", "cli", "sweep_cli", "tune_cli", "__main__"),
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
)


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
        assert not external & {"llama_cpp", "socket", "pynvml", "psutil"}, module
        measuring = [b for b in graph[module] if b.startswith(MEASURING) or ".measure" in b]
        assert not measuring, f"{module} imports {measuring}"
