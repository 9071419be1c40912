"""The rules of the house (docs/architecture.md), checked on the source itself.

* no import cycle between modules of ``pipeline`` (imports inside functions count);
* ``core``, ``schema``, ``qa`` and ``inputs`` never import ``apache_beam`` (its
  ``FileSystems``, which reads remote inputs, aside);
* imports sit at module top; one inside a function carries a comment beside it (same
  line or the line above) saying why;
* no module over ``MAX_LINES`` lines unless ``docs/architecture.md`` names it under
  "Long modules" with its reason.

The graph is read with :mod:`ast`, never by importing: ``from pkg import name`` is an
edge to ``pkg.name`` when that is a module, else to ``pkg``.  Importing ``a.b.c`` also
runs ``a/__init__`` and ``a/b/__init__``; those implicit edges to a module's own
ancestors are left out (they are how packages load), explicit imports of a package are
kept.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_LINES = 400
BEAM_FREE = ("pipeline.core", "pipeline.schema", "pipeline.qa", "pipeline.inputs")
BEAM_ALLOWED = ("apache_beam.io.filesystems", "apache_beam.io.filesystem")
_LOWER = {"errors", "core", "schema", "config", "inputs", "qa", "io"}
#: Room → the rooms it may import (docs/architecture.md, "Rooms").  ``inputs`` and ``qa``
#: name each other's types under ``TYPE_CHECKING`` only.
ALLOWED = {
    "errors": set(),
    "core": {"errors"},
    "schema": set(),
    "config": {"errors", "inputs"},
    "inputs": {"core", "schema", "errors", "qa", "config"},
    "qa": {"core", "config", "schema", "errors", "inputs"},
    "io": {"schema", "core", "errors"},
    "engine": _LOWER,
    "kinds": _LOWER | {"engine"},
    "beam": {"engine", "kinds", "qa", "schema", "core", "errors"},
    "report": {"io", "core", "schema", "errors", "qa"},
    "exports": {"io", "core", "schema", "errors"},
    "launch": _LOWER | {"engine", "kinds", "beam", "report"},
    "cli": _LOWER | {"engine", "kinds", "beam", "report", "exports", "launch"},
    "__init__": set(),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if "_resources" in parts:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _package_of(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str) -> list[tuple[str, ast.stmt, bool, int]]:
    """(imported module, node, at module top, line of the first import of its run) for every
    import statement in ``name``; a run is a sequence of import statements one after the
    other in the same block, so one comment above the run explains all of them."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try-import blocks at top level count as top
        if isinstance(node, (ast.If, ast.Try)):
            top.update(id(n) for n in ast.walk(node))
    run_start = {}
    for parent in ast.walk(tree):
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(parent, field, None)
            if not isinstance(block, list):
                continue
            start = None
            for stmt in block:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    start = start or stmt.lineno
                    run_start[id(stmt)] = start
                else:
                    start = None
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node, id(node) in top, run_start.get(id(node), node.lineno))
                    for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name).split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                out.append((candidate if candidate in MODULES else module, node, id(node) in top,
                            run_start.get(id(node), node.lineno)))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {
            target for target, *_ in _imports(name)
            if target in MODULES and target != name and target not in ancestors
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative order)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def _room(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_rooms_import_only_what_their_row_allows():
    assert set(ALLOWED) >= {_room(m) for m in MODULES}, "a new room needs its row in ALLOWED"
    offenders = sorted(
        f"{a} imports {b}" for a, targets in _graph().items() for b in targets
        if _room(a) != _room(b) and _room(b) not in ALLOWED[_room(a)]
    )
    assert offenders == []


@pytest.mark.parametrize("layer", BEAM_FREE)
def test_pure_layers_never_import_beam(layer):
    offenders = [
        f"{name}:{node.lineno} imports {target}"
        for name in MODULES if name == layer or name.startswith(layer + ".")
        for target, node, *_ in _imports(name)
        if target.split(".")[0] == "apache_beam" and not target.startswith(BEAM_ALLOWED)
    ]
    assert offenders == []


def _comment_beside(lines: list[str], lineno: int, run_start: int) -> bool:
    """A comment on the import's own line, or on the line above its run of imports."""
    here = lines[lineno - 1]
    above = lines[run_start - 2].strip() if run_start >= 2 else ""
    return "#" in here.split("import", 1)[-1] or above.startswith("#")


def test_imports_at_module_top_or_explained():
    offenders = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for target, node, at_top, run_start in _imports(name):
            if not at_top and not _comment_beside(lines, node.lineno, run_start):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target} inside a function")
    assert sorted(set(offenders)) == []


def _declared_long_modules() -> set[str]:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = re.search(r"^## Long modules\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return set(re.findall(r"`(pipeline/[\w/]+\.py)`", section.group(1))) if section else set()


def test_modules_are_short_or_explained():
    declared = _declared_long_modules()
    long = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in MODULES.values()
    }
    undeclared = {p: n for p, n in long.items() if n > MAX_LINES and p not in declared}
    assert undeclared == {}
    stale = sorted(p for p in declared if long.get(p, 0) <= MAX_LINES)
    assert stale == [], "docs/architecture.md lists modules that are no longer long"
