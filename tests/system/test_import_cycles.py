"""No import cycle inside pipeline/: every module can be read knowing only what it imports.

What counts as an import: every ``import`` and ``from ... import`` statement anywhere in a module — at module
level, under ``if TYPE_CHECKING:``, in ``try``/``except``, and inside functions. A function-level ("lazy") import
is a dependency all the same: the function does not work without the other module, and a reader has to hold
both in mind. Moving an import into a function hides a cycle from Python's import machinery, not from the
next engineer, so it does not break one. (The lazy imports that stay — of optional libraries, of the optional
Kafka consumer — point one way.) A module named in a string (``importlib.import_module``) is not an import.

Edges: ``import pipeline.a.b`` and ``from pipeline.a.b import x`` depend on ``pipeline.a.b``; ``from pipeline.a
import b`` on the submodule ``pipeline.a.b`` when there is one, else on the package ``pipeline.a``; relative
imports are resolved against the importing module's package. Importing a submodule also runs the ``__init__``
of its packages; that is not an edge — otherwise every package that re-exports its modules would form a cycle
with each of them, and the cycles worth knowing about would drown.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from tests.support.paths import REPO

ROOT = REPO

Graph = dict[str, set[str]]


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of ``package`` under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(module: str, is_package: bool, tree: ast.AST, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports, anywhere in its source."""
    known = set(known)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # relative: against the module's own package (a package's __init__ is its own package)
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    # `import pipeline.a.b` names pipeline.a.b; an import of something not in the package (a library) is no edge
    return {name for name in found if name in known and name != module}


def import_graph(root: Path, package: str) -> Graph:
    """Module -> the modules of the same package it imports."""
    modules = _modules(root, package)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_bytes(), filename=str(path))
        graph[name] = _imported(name, path.name == "__init__.py", tree, modules)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan; the package is a few hundred modules, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first, inside the component)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")  # a component always has one


def test_pipeline_has_no_import_cycle() -> None:
    graph = import_graph(ROOT, "pipeline")
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100, "the graph is empty: the test proves nothing"
    found = cycles(graph)
    assert not found, "import cycles inside pipeline/ (break them; see this test's docstring):\n" + "\n".join(
        " -> ".join(cycle) for cycle in found
    )


#: The one-way rule (docs/architecture.md, "Module map"), bottom layer first. A unit is a package under pipeline/
#: or a module at its top; a unit may import units of lower layers only (and itself), never one of its own layer
#: or above. A new unit must be placed here before it can be imported.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "loop", "_accel"),
    ("files", "events", "windows"),
    ("bus", "networks", "serving", "keys"),
    ("features", "revocations", "views"),
    ("scoring", "simulate", "validation", "alerts"),
    ("archive", "response"),
    ("detection",),
    ("nodes",),
    ("demo",),
    ("cli",),
)


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: pipeline/__init__.py, which imports nothing


def layer_violations(graph: Graph, layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """``module imports other (layer i -> layer j)`` for every import that does not go down a layer."""
    rank = {unit: i for i, layer in enumerate(layers) for unit in layer}
    found = []
    for module, imports in sorted(graph.items()):
        unit = _unit(module)
        for imported in sorted(imports):
            other = _unit(imported)
            if unit is None or other is None or other == unit:
                continue
            if unit not in rank or other not in rank:
                found.append(f"{module} imports {imported}: place {unit if unit not in rank else other} in LAYERS")
            elif rank[other] >= rank[unit]:
                found.append(f"{module} imports {imported} (layer {rank[unit]} -> layer {rank[other]})")
    return found


def test_imports_go_down_the_layers() -> None:
    graph = import_graph(ROOT, "pipeline")
    units = {_unit(module) for module in graph} - {None}
    assert units == {unit for layer in LAYERS for unit in layer}, "LAYERS names units that are gone, or misses some"
    assert not layer_violations(graph), "\n".join(layer_violations(graph))


def test_an_import_up_or_across_a_layer_is_named() -> None:
    graph: Graph = {
        "pipeline.keys.store": {"pipeline.validation.config", "pipeline.errors"},  # up
        "pipeline.bus.kafka": {"pipeline.serving.web"},  # across: the same layer
        "pipeline.validation.app": {"pipeline.keys.store", "pipeline.validation.config"},  # down, and within
        "pipeline.newthing": {"pipeline.errors"},  # not placed
    }
    assert layer_violations(graph) == [
        "pipeline.bus.kafka imports pipeline.serving.web (layer 2 -> layer 2)",
        "pipeline.keys.store imports pipeline.validation.config (layer 2 -> layer 4)",
        "pipeline.newthing imports pipeline.errors: place newthing in LAYERS",
    ]


def _package(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_a_cycle_is_found_through_any_kind_of_import(tmp_path: Path) -> None:
    """The same graph, on a small package: each way of importing closes a cycle, and the cycle is named."""
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.api import run\n",
            "pkg/api.py": "from pkg import engine\n\ndef run():\n    return engine.go()\n",
            # function-level and relative
            "pkg/engine.py": "def go():\n    from .api import run\n    return run\n",
            # TYPE_CHECKING only, through `from package import module`
            "pkg/sub/__init__.py": "",
            "pkg/sub/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n",
            "pkg/sub/b.py": "import pkg.sub.a\n",
            # plain `import`, two levels up
            "pkg/sub/c.py": "from .. import util\n",
            "pkg/util.py": "import pkg.sub.c as c\nimport json\n",
            # one way only: no cycle
            "pkg/leaf.py": "from pkg.util import c\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg"] == {"pkg.api"}
    assert graph["pkg.leaf"] == {"pkg.util"}  # c is a name in pkg.util, not a module of the package
    assert sorted(" -> ".join(cycle) for cycle in cycles(graph)) == [
        "pkg.api -> pkg.engine -> pkg.api",
        "pkg.sub.a -> pkg.sub.b -> pkg.sub.a",
        "pkg.sub.c -> pkg.util -> pkg.sub.c",
    ]


def test_one_way_imports_and_package_init_re_exports_are_no_cycle(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",  # re-exports: no edge back
            "pkg/a.py": "class A: ...\n",
            "pkg/b.py": "from pkg.a import A\n\ndef make():\n    import pkg.c\n    return pkg.c\n",
            "pkg/c.py": "import importlib\nMODULE = importlib.import_module('pkg.b')\n",  # a string is no import
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": set(), "pkg.b": {"pkg.a", "pkg.c"}, "pkg.c": set()}
    assert cycles(graph) == []
