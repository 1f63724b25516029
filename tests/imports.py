"""What a Python file imports, read with ``ast``: the parser tests/test_dvc_deps.py and tests/test_layers.py share.

Every import anywhere in the file counts, inside functions too (a lazy import runs when the
function does): ``import a.b``, ``from a.b import c`` (``c`` counts as the module ``a.b.c`` too
when that is a file or package under ``src``, else it is a name), ``from a import *``, relative
imports (resolved against the file's own package), and ``__import__("a")`` /
``importlib.import_module("a")`` with a literal absolute name. A name built at run time (an
f-string) cannot be read statically and is not reported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


@dataclass(frozen=True)
class Import:
    module: str  #: the absolute dotted name imported
    line: int
    statement: str  #: the statement as written, on one line
    lazy: bool  #: inside a function: runs when that function does, not when the file is imported


def module_file(name: str, src: Path) -> Path | None:
    """The file of module ``name`` (``a.b`` -> src/a/b.py or src/a/b/__init__.py), None if there is none."""
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path, src: Path) -> str:
    """``src/a/b.py`` -> ``a.b``, ``src/a/b/__init__.py`` -> ``a.b`` (the inverse of :func:`module_file`)."""
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module imports every package above it."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _resolve(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` names (relative ones from ``package``)."""
    if not node.level:
        return node.module
    anchor = package.split(".")
    if node.level > 1:
        anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _dynamic(node: ast.Call) -> str | None:
    """``__import__("a")``, ``import_module("a")``, ``importlib.import_module("a")``: ``a``."""
    func = node.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if called not in ("__import__", "import_module") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
        return arg.value
    return None


def imports_of(path: Path, src: Path, name: str | None = None) -> list[Import]:
    """Every import in file ``path``, in source order.

    ``name`` is the file's module name (default: from its place under ``src``); relative imports
    resolve against its package, and ``from pkg import x`` also reports ``pkg.x`` when
    ``src`` holds that module.
    """
    source = path.read_text()
    if name is None:
        name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def add(module: str, node: ast.AST, lazy: bool) -> None:
        statement = " ".join((ast.get_source_segment(source, node) or "").split())
        found.append(Import(module, node.lineno, statement, lazy))

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, lazy)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, package)
            add(base, node, lazy)
            for alias in node.names:
                if alias.name != "*" and module_file(f"{base}.{alias.name}", src):
                    add(f"{base}.{alias.name}", node, lazy)
        elif isinstance(node, ast.Call) and (dynamic := _dynamic(node)):
            add(dynamic, node, lazy)
        lazy = lazy or isinstance(node, _FUNCTIONS)
        for child in ast.iter_child_nodes(node):
            visit(child, lazy)

    visit(ast.parse(source, filename=str(path)), False)
    return sorted(found, key=lambda i: i.line)
