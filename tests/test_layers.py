"""The layers of the package: no import cycles, and no backend importing the front.

The import graph is read from the source (``ast``), with every import: at module level, under
``TYPE_CHECKING`` (a type-only import still ties two modules: neither can be read, moved or tested without
the other) and inside functions (a lazy import is a dependency all the same). The one exception is
``errors`` -> ``driver``: the error tree names the contract's types in its hints, and the contract raises
the error tree's exceptions.

The layers, from the bottom: the contract (``driver``, ``errors``, ``clock``) and the values of ``core``;
the seam (``backends.base``) and the backends under it; the front (``core.broker`` and its bases, the
subscriptions) over the seam; and over everything the FastAPI glue (``integration``), ``settings``, the CLI
and the package root, which re-exports all of it. A backend's ``broker`` module is the front over that
backend (``JetStreamBroker``, ``InMemoryBroker``): it may import the front, no other backend module may.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import jetstream_fastapi

PACKAGE = Path(jetstream_fastapi.__file__).parent
ROOT = "jetstream_fastapi"
EXEMPT = {("jetstream_fastapi.errors", "jetstream_fastapi.driver")}
"""Edges left out of the graph (see the module docstring)."""

KNOWN_CYCLES: dict[frozenset[str], str] = {}
"""Cycles that remain, each with the change that removes it; a test fails once one is gone, so that the
list only shrinks."""

FRONT = {
    "core.broker",
    "core.front",
    "core.consuming",
    "core.dead_letters",
    "core.operations",
    "core.subscription",
    "core.recurring",
    "observability.metrics_router",
    "settings",
}
"""The front's modules (besides ``integration``, ``cli`` and the package root)."""


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_of(path): path for path in PACKAGE.rglob("*.py")}


def _imported(module: str, node: ast.Import | ast.ImportFrom, package: bool) -> Iterable[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    # ``from . import tracing`` imports a module; ``from .driver import Message`` a name of one.
    return [f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the modules of the package it imports (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.update(_imported(module, node, path.name == "__init__.py"))
        graph[module] = {t for t in edges if t in MODULES and t != module and (module, t) not in EXEMPT}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _short(module: str) -> str:
    return module.removeprefix(ROOT).lstrip(".")


def test_no_import_cycles() -> None:
    found = {frozenset(_short(m) for m in cycle) for cycle in cycles(import_graph())}
    new = [sorted(cycle) for cycle in found if cycle not in KNOWN_CYCLES]
    assert new == [], "import cycles (TYPE_CHECKING and function-level imports included)"
    gone = [sorted(cycle) for cycle in KNOWN_CYCLES if cycle not in found]
    assert gone == [], "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_no_backend_imports_the_front() -> None:
    offenders = []
    for module, imports in import_graph().items():
        name = _short(module)
        if not name.startswith("backends.") or name.endswith(".broker"):
            continue
        for target in sorted(imports):
            front = _short(target)
            if front in FRONT or front == "" or front.startswith(("integration", "cli")):
                offenders.append(f"{name} -> {front or ROOT}")
    assert offenders == []


def test_nothing_imports_the_package_root() -> None:
    # The root re-exports everything, lazily: a module importing it for one name ties itself to all.
    assert [module for module, imports in import_graph().items() if ROOT in imports] == []


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "jetstream_fastapi.core.cron" in graph["jetstream_fastapi.driver"]  # under TYPE_CHECKING
    assert "jetstream_fastapi.observability.tracing" in graph["jetstream_fastapi.observability.logs"]  # in a function
    assert "jetstream_fastapi.driver" not in graph["jetstream_fastapi.errors"]  # the exemption
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []
