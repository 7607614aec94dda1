"""The package's layers are one-way (docs/architecture.md, "Layers").

Every module under src/grokscope is parsed (nothing is imported) and every import of a grokscope
module is collected: at module level and inside functions, `import grokscope.x`, `from grokscope.x
import y` and relative imports alike. Each module belongs to the layer named by its top-level
module or package (`grokscope.models.tl` is in `models`). Then:
- no import goes up LAYERS (a layer imports only itself and the layers before it);
- no two grokscope modules import each other, directly or through others (no cycles at all).
"""

from __future__ import annotations

import ast
import configparser
from collections import defaultdict
from pathlib import Path

import grokscope

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "grokscope"

# Lowest first: a layer may import the layers before it, never one after it. The package
# docstring, docs/architecture.md and .importlinter (highest first there) list the same order.
LAYERS = ("config", "experiments", "store", "tasks", "models", "train", "lm", "analysis", "report",
          "pipeline", "sweep", "cli")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every module of the package."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _from_module(name: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The module a `from ... import` names, relative ones resolved against the importing module."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if is_pkg else name.split(".")[:-1]  # up level - 1 packages from here
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, path: Path, is_pkg: bool) -> list[tuple[str, int]]:
    """(imported grokscope module, line) for every import in the file, wherever it is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _from_module(name, is_pkg, node)
            for alias in node.names:  # `from grokscope.x import y`: y may be a module of its own
                sub = f"{module}.{alias.name}"
                found.append((sub if sub in MODULES else module, node.lineno))
    return [(m, line) for m, line in found if m == "grokscope" or m.startswith("grokscope.")]


def _graph() -> dict[str, dict[str, int]]:
    """importer -> {imported module: first line}, between grokscope modules."""
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for name, (path, is_pkg) in MODULES.items():
        for target, line in _imports(name, path, is_pkg):
            while target not in MODULES:  # `import grokscope.a.b.c` where c is a name in b
                target = target.rsplit(".", 1)[0]
            if target != name:
                graph[name].setdefault(target, line)
    return graph


def layer(module: str) -> str | None:
    """The layer of a grokscope module; None for the root package (which holds only __version__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_is_in_a_layer():
    unknown = sorted({layer(m) for m in MODULES if layer(m) is not None} - set(LAYERS))
    assert not unknown, f"top-level modules not in LAYERS (place them in the order): {unknown}"


def test_the_root_package_imports_nothing_of_ours():
    # every layer may read grokscope.__version__, so the root must stay below them all
    assert not _graph().get("grokscope"), _graph()["grokscope"]


def test_no_import_goes_up_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    up = []
    for importer, targets in sorted(_graph().items()):
        for target, line in sorted(targets.items()):
            a, b = layer(importer), layer(target)
            if a is not None and b is not None and rank[b] > rank[a]:
                up.append(f"{MODULES[importer][0].relative_to(ROOT)}:{line}: {importer} imports {target} "
                          f"({a} -> {b})")
    assert not up, "imports going up the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(up)


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return out


def test_no_module_cycles():
    graph = _graph()
    cycles = _cycles(graph)
    shown = []
    for component in cycles:
        members = set(component)
        edges = [f"{a} -> {b} (line {line})" for a in component for b, line in sorted(graph[a].items()) if b in members]
        shown.append("cycle among " + ", ".join(component) + ":\n  " + "\n  ".join(edges))
    assert not cycles, "\n".join(shown)


def _private_uses(name: str, path: Path, is_pkg: bool) -> list[str]:
    """Another grokscope module's private names (`_x`) that this module imports or reads."""
    tree = ast.parse(path.read_text(), str(path))
    bound: dict[str, str] = {}  # local name -> grokscope module it is bound to
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound.update({a.asname: a.name for a in node.names if a.asname and a.name in MODULES})
        elif isinstance(node, ast.ImportFrom):
            module = _from_module(name, is_pkg, node)
            if module not in MODULES:
                continue
            for a in node.names:
                if f"{module}.{a.name}" in MODULES:
                    bound[a.asname or a.name] = f"{module}.{a.name}"
                elif a.name.startswith("_") and module != name:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {module}.{a.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__") and bound[node.value.id] != name):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}: reads {bound[node.value.id]}.{node.attr}")
    return out


def test_no_module_uses_another_modules_private_names():
    # what two modules share is public, in the lower of them (e.g. report/base.py for the report's modules)
    found = [use for name, (path, is_pkg) in MODULES.items() for use in _private_uses(name, path, is_pkg)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_cycle_finder_finds_a_cycle():
    a, b, c = sorted(MODULES)[:3]
    assert _cycles({a: {b: 1}, b: {c: 1}, c: {a: 1}}) == [sorted([a, b, c])]
    assert _cycles({a: {b: 1}, b: {c: 1}}) == []


def test_the_order_is_documented_where_it_is_promised():
    arrows = " -> ".join(LAYERS)
    assert arrows in " ".join(grokscope.__doc__.split()), "the package docstring must list LAYERS as " + arrows
    doc = " ".join((ROOT / "docs" / "architecture.md").read_text().split())
    assert arrows in doc, "docs/architecture.md must list LAYERS as " + arrows
    linter = configparser.ConfigParser()
    linter.read(ROOT / ".importlinter")
    layers = linter["importlinter:contract:layers"]["layers"].split()
    assert layers == list(reversed(LAYERS)), ".importlinter must list LAYERS, highest first"
