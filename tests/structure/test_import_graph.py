"""No import cycle between thresher's modules, checked on the source.

Every import counts, at module level or inside a function: a lazy import hides a cycle from
Python but not from a reader, who still has to hold both modules in mind to change either.
An edge goes to the module named (`from thresher.a import b` is thresher.a.b where that is a
module, else thresher.a), not to the packages above it.
"""

from __future__ import annotations

import ast

from tests.package_source import module_name, source_files


def package_sources() -> dict[str, tuple[str, bool]]:
    """Module name -> (source, whether it is a package's __init__)."""
    return {module_name(p): (p.read_text(), p.name == "__init__.py")
            for p in source_files()}


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module an ImportFrom names, relative imports resolved against `module`."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the thresher modules it imports, anywhere in its source."""
    known = set(sources)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets.update(filter(None, (resolve(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, is_package, node)
                for alias in node.names:
                    # `from pkg import mod` imports the module pkg.mod; `from mod import name`
                    # imports mod.
                    full = f"{base}.{alias.name}"
                    target = full if full in known else resolve(base)
                    if target is not None:
                        targets.add(target)
        targets.discard(module)
        graph[module] = {t for t in targets if t.split(".")[0] == "thresher"}
    return graph


def loops(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each module of one
    reaches every other through imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per loop, as the path a -> b -> ... -> a from its alphabetically first module."""
    return sorted(_shortest_cycle(graph, component) for component in loops(graph))


def _shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first, inside it)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component of >1 always has one


def describe(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in found)


def test_no_import_cycle_between_thresher_modules() -> None:
    graph = import_graph(package_sources())
    assert "thresher.stream.pump" in graph and "thresher.distributed.pipeline" in graph
    found = [(_shortest_cycle(graph, loop), sorted(loop)) for loop in loops(graph)]
    assert not found, "import cycles (every import counts, inside functions too):\n" + "\n".join(
        f"{' -> '.join(cycle)}  (a loop of {len(loop)} modules: {', '.join(loop)})"
        for cycle, loop in sorted(found))


def test_a_cycle_through_a_lazy_import_is_named() -> None:
    sources = package_sources()
    # Two modules that import nothing of thresher (so in no cycle today): a module-level import
    # one way and a function-level one back close a loop.
    leaves = sorted(m for m, targets in import_graph(sources).items()
                    if not targets and not sources[m][1])
    a, b = leaves[:2]
    sources[a] = (sources[a][0] + f"\nfrom {b} import x\n", False)
    sources[b] = (sources[b][0] + f"\ndef f():\n    import {a}\n", False)
    named = describe(cycles(import_graph(sources)))
    assert f"{a} -> {b} -> {a}" in named.splitlines(), named


def test_relative_imports_resolve_to_the_module_named() -> None:
    sources = {
        "thresher": ("", True),
        "thresher.a": ("from . import b\n", True),
        "thresher.a.b": ("from .c import thing\n", False),
        "thresher.a.c": ("def g():\n    from .. import a\n", False),
    }
    graph = import_graph(sources)
    assert graph == {"thresher": set(), "thresher.a": {"thresher.a.b"},
                     "thresher.a.b": {"thresher.a.c"}, "thresher.a.c": {"thresher.a"}}
    assert cycles(graph) == [["thresher.a", "thresher.a.b", "thresher.a.c", "thresher.a"]]
