"""The import graph of gateway/ has no cycle, at any depth (modules inside
gateway/routes included). `lint-imports` checks the layers (pyproject.toml); this test
reads the same graph and names every group of modules that import each other."""

from __future__ import annotations

import grimp


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected groups of an import graph: each is a set of modules that
    reach each other."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    # Tarjan's algorithm, iterative (no recursion limit on a deep graph).
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in edges[node]:
                        groups.append(sorted(group))
    return groups


def package_cycles(package: str) -> list[list[str]]:
    """The cycles of ``package``, function-level imports included."""
    return import_cycles(grimp.build_graph(package, cache_dir=None))


def test_finder_sees_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"),
                 ("p.e", "p.e")):
        graph.add_import(importer=a, imported=b)
    assert import_cycles(graph) == [["p.a", "p.b", "p.c"], ["p.e"]]


def test_gateway_has_no_import_cycle() -> None:
    assert package_cycles("gateway") == []


def test_libraries_have_no_import_cycle() -> None:
    for package in ("policies", "audit", "meeting_adapters"):
        assert package_cycles(package) == [], package
