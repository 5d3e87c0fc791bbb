"""The package's import graph, read statically: no cycles, no private or keras.src imports.

Every module of ``segbalance`` is parsed with :mod:`ast` (nothing is imported), so a cycle is
named even where a function-level import keeps it from failing at run time.

Edges: ``import a.b`` and ``from a import b`` point at module ``a.b`` when it exists, else at
``a`` (a name defined by ``a`` or re-exported by its ``__init__``); relative imports resolve
against the importing module's package; imports inside functions and ``TYPE_CHECKING``
blocks count. The packages Python initialises on the way to a module (``segbalance`` and
``segbalance.data`` for ``import segbalance.data.discover``) are not edges: every module
would otherwise depend on every ``__init__`` above it. A package ``__init__`` that imports
its children is still caught with a child that names the package itself
(``from segbalance.pipeline import build_augmenter`` inside ``segbalance/pipeline/``).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "segbalance"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# The one keras.src import left, for want of a public API (see segbalance/export.py):
# Keras' numpy-2 shim for tf2onnx, used only by ONNX export and only when it is importable.
KERAS_SRC_ALLOWED = {("segbalance.export", "keras.src.export.tf2onnx_lib")}


@dataclass
class Module:
    """One parsed module: where it is, whether it is a package ``__init__``, its tree."""

    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    edges: dict[str, int] = field(default_factory=dict)  # target module -> first line


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def parse_package() -> dict[str, Module]:
    """Every module under ``segbalance/`` by dotted name."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        name, is_package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        modules[name] = Module(name, path, is_package, tree)
    return modules


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if not module.is_package:
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def imported(module: Module) -> Iterator[tuple[ast.stmt, str, str | None]]:
    """(node, absolute module, imported name or None) for every import in ``module``."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                yield node, source, alias.name


def _target(modules: dict[str, Module], source: str, name: str | None) -> str | None:
    """The module an import depends on: the submodule ``source.name`` if there is one."""
    if name is not None and f"{source}.{name}" in modules:
        return f"{source}.{name}"
    while source and source not in modules:  # import a.b.c where c is not a module
        source = source.rpartition(".")[0]
    return source or None


def build_graph() -> dict[str, Module]:
    """The parsed modules with their edges to other modules of the package filled in."""
    modules = parse_package()
    for module in modules.values():
        for node, source, name in imported(module):
            if not _ours(source):
                continue
            target = _target(modules, source, name)
            if target is not None:
                module.edges.setdefault(target, node.lineno)
    return modules


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """One concrete cycle ``[a, b, ..., a]`` per strongly connected group (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for nxt in sorted(modules[name].edges):
            if nxt not in index:
                visit(nxt)
                low[name] = min(low[name], low[nxt])
            elif nxt in on_stack:
                low[name] = min(low[name], index[nxt])
        if low[name] == index[name]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == name:
                    break
            if len(group) > 1 or name in modules[name].edges:
                groups.append(group)

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return [_loop_through(modules, group) for group in groups]


def _loop_through(modules: dict[str, Module], group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for name in frontier:
            for nxt in sorted(modules[name].edges):
                if nxt == start:
                    return [*paths[name], start]
                if nxt in group and nxt not in paths:
                    paths[nxt] = [*paths[name], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no loop through {sorted(group)}")  # Tarjan says there is one


def _describe(modules: dict[str, Module], loop: list[str]) -> str:
    steps = [f"{a} (line {modules[a].edges[b]})" for a, b in itertools.pairwise(loop)]
    return " -> ".join([*steps, loop[-1]])


def test_graph_sees_the_kinds_of_import() -> None:
    """The resolver itself: relative, package, submodule and function-level imports."""
    modules = build_graph()
    assert "segbalance.data.pairing" in modules["segbalance.data.discover"].edges
    assert "segbalance.pipeline.cache" in modules["segbalance.pipeline"].edges
    assert "segbalance.version" in modules["segbalance.cli"].edges  # its __version__
    fake = Module("segbalance.data.x", ROOT / "data/x.py", False, ast.parse(""))
    rel = ast.parse("from . import pairing\nfrom ..errors import UserError").body
    assert [_absolute(fake, n) for n in rel if isinstance(n, ast.ImportFrom)] == [
        "segbalance.data",
        "segbalance.errors",
    ]
    assert _target(modules, "segbalance.data", "pairing") == "segbalance.data.pairing"
    assert _target(modules, "segbalance.pipeline", "DecodedCache") == "segbalance.pipeline"


def test_no_import_cycles() -> None:
    modules = build_graph()
    found = [_describe(modules, loop) for loop in cycles(modules)]
    assert not found, "import cycles:\n  " + "\n  ".join(found)


def _module_aliases(modules: dict[str, Module], module: Module) -> dict[str, str]:
    """Local names bound to a package module (``from segbalance.data import discover``)."""
    aliases = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    aliases[alias.asname] = alias.name
    return aliases


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_names_cross_modules() -> None:
    """``_name`` is the module's own: imported or reached as ``mod._name`` it is a leak."""
    modules = build_graph()
    leaks = []
    for module in modules.values():
        where = module.path.relative_to(ROOT.parent)
        for node, source, name in imported(module):
            if _ours(source) and name is not None and _private(name):
                leaks.append(f"{where}:{node.lineno}: from {source} import {name}")
        aliases = _module_aliases(modules, module)
        for node in ast.walk(module.tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                leaks.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not leaks, "private names used across modules:\n  " + "\n  ".join(leaks)


def test_no_keras_src_imports() -> None:
    """``keras.src`` is Keras' private tree: it moves between releases without notice."""
    found = []
    for module in parse_package().values():
        for node, source, name in imported(module):
            full = f"{source}.{name}" if source == "keras" and name else source
            private = full == "keras.src" or full.startswith("keras.src.")
            if private and (module.name, source) not in KERAS_SRC_ALLOWED:
                where = module.path.relative_to(ROOT.parent)
                found.append(f"{where}:{node.lineno}: {full}")
    assert not found, "keras.src imports (use the public keras API):\n  " + "\n  ".join(found)


def test_every_module_starts_with_a_docstring() -> None:
    """Its first line says what the module holds: the index a reader scans first."""
    bare = [
        str(module.path.relative_to(ROOT.parent))
        for module in parse_package().values()
        if not (ast.get_docstring(module.tree) or "").strip()
    ]
    assert not bare, "modules without a docstring: " + ", ".join(bare)


def test_the_package_version_is_the_one_pyproject_declares() -> None:
    import tomllib

    from segbalance.version import __version__

    declared = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == declared
