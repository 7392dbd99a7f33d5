"""The direction of imports: no module of attncluster imports itself back through others (no cycle, lazy imports
inside functions included), and extract/ imports nothing above itself (only errors, outputs, distributed, data/)."""

from __future__ import annotations

import ast
from pathlib import Path

import attncluster

SRC = Path(attncluster.__file__).resolve().parent  # the package under test


def import_graph() -> dict[str, set[str]]:
    """Module -> the attncluster modules it imports anywhere in its text (module level or inside a function)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(("attncluster", *path.relative_to(SRC).with_suffix("").parts))
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attncluster"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("attncluster"))
        graph[name] = {m for m in found if m in modules and m not in (name, "attncluster")}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    cycles = []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    assert cycles == []


def test_extract_imports_nothing_above_itself():
    allowed = ("attncluster.extract", "attncluster.data", "attncluster.errors", "attncluster.outputs",
               "attncluster.distributed")
    graph = import_graph()
    upward = {m: sorted(t for t in deps if not t.startswith(allowed))
              for m, deps in graph.items() if m.startswith("attncluster.extract")}
    assert {m: d for m, d in upward.items() if d} == {}
