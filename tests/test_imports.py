"""The package's import graph has no cycles: imports inside `ppl` run one way.

Layering, bottom to top: `ppl.models`, then `ppl.draws`, `ppl.next_token` and `ppl.context`, then
`ppl.constraints`, then the language core (`primitives`, `handlers`, `compiler`), then
`ppl.inference` (the engine, SMC, MCMC, `Posterior`), then presentation (`summary`, `html`,
`plots`, `serialize`), then `ppl.workloads` and `ppl.cli`.

The graph is read from the source with `ast`, not from `sys.modules`: every `import` and
`from ... import` counts, at module level and inside functions (a lazy import still ties two
modules together), except those under `if TYPE_CHECKING:`. `import a.b.c`, and
`from a.b import c` where `c` is a submodule, is an edge to `a.b.c`; `from a.b import name` is an
edge to `a.b` (its `__init__` for a package). The implicit import of parent packages
(`ppl.inference.smc` first runs `ppl/__init__.py`) is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ppl"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its `__init__.py`)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """The import statements of a module, outside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = []
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through a component, for the failure message: a -> b -> ... -> a."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    return component


def test_graph_sees_the_package():
    graph = import_graph()
    assert "ppl.inference.smc" in graph["ppl.inference"]  # `from a.b import submodule`
    assert "ppl.compiler" in graph["ppl"]  # `from a.b import name`: the module a.b
    assert "ppl.context" in graph["ppl.constraints.tokens"]
    # lazy imports count; those under `if TYPE_CHECKING:` do not
    assert "ppl.inference.html" in graph["ppl.inference.posterior"]
    assert "ppl.inference.posterior" not in graph["ppl.inference.html"]


def test_finder_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert _cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_import_graph_has_no_cycles():
    graph = import_graph()
    cycles = strongly_connected(graph)
    message = "\n".join(
        f"cycle among {component}: {' -> '.join(_cycle(graph, component))}" for component in cycles
    )
    assert not cycles, message


def test_star_import_leaves_the_builtin_map_alone():
    namespace: dict = {}
    exec("from ppl import *", namespace)
    assert "map" not in namespace and "imap" in namespace and "smc" in namespace
    import ppl

    assert callable(ppl.map) and ppl.map is not map
