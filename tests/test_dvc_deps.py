"""dvc.yaml lists every file of autosink that a stage runs, so editing one reruns the stages it affects.

Each stage's code is the import closure, inside ``autosink``, of the module its ``cmd`` runs
(``autosink <command>`` -> the stage module the CLI's parser maps it to). The closure is found
statically with ``ast`` (tests/imports.py): ``import autosink.x``, ``from autosink.x import y`` (``y`` a submodule
or a name), ``from autosink import x``, relative imports, and imports anywhere in a module,
inside functions too (a lazy import runs when the stage does). Importing a module runs the
``__init__.py`` of every package above it, so those count as well. A dep naming a folder covers
every file under it. Extra deps are harmless and not reported; a missing one fails, naming the
stage and the file.
"""

from __future__ import annotations

import ast
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from autosink import cli
from tests import imports
from tests.imports import with_parents

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "autosink"


@cache
def module_file(name: str) -> Path | None:
    """The file of module ``name`` (``a.b`` -> src/a/b.py or src/a/b/__init__.py), None if there is none."""
    return imports.module_file(name, SRC)


@cache
def imported_modules(name: str) -> frozenset[str]:
    """The ``autosink`` modules that module ``name`` imports, anywhere in its body (tests/imports.py reads them)."""
    found = {imp.module for imp in imports.imports_of(module_file(name), SRC, name)}
    return frozenset(
        parent
        for module in found
        if module == PACKAGE or module.startswith(PACKAGE + ".")
        for parent in with_parents(module)
    )


@cache
def closure(name: str) -> frozenset[str]:
    """Module ``name``, the packages above it, and everything they import inside ``autosink``, transitively."""
    seen: set[str] = set()
    todo = with_parents(name)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        assert module_file(module), f"{module} is imported but src/{module.replace('.', '/')} does not exist"
        seen.add(module)
        todo.extend(imported_modules(module) - seen)
    return frozenset(seen)


def closure_files(name: str) -> set[str]:
    return {module_file(m).relative_to(ROOT).as_posix() for m in closure(name)}


def stage_module(cmd: str) -> str:
    """The module an ``autosink ...`` stage command runs, as cli.py's parser maps it."""
    argv = shlex.split(cmd)
    assert argv[0] == "autosink", f"not an autosink command: {cmd!r}"
    func = cli.build_parser().parse_args(argv[1:]).func
    # stage(...) sets func to stage_handler(module)'s handler: the module sits in its closure
    if func.__code__ is cli.stage_handler("").__code__:
        return dict(zip(func.__code__.co_freevars, (c.cell_contents for c in func.__closure__)))["module"]
    # a command with its own handler (validate-data) that calls stage_handler("<module>")
    import inspect
    import textwrap

    calls = [
        node.args[0].value
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(func))))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "stage_handler"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]
    assert len(calls) == 1, f"cannot tell which stage module {cmd!r} runs ({func.__name__})"
    return calls[0]


def covered(path: str, deps: list[str]) -> bool:
    """Whether a dep names ``path`` or a folder above it."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_runs_an_autosink_stage_module():
    for stage, spec in DVC.items():
        module = f"{PACKAGE}.stages.{stage_module(spec['cmd'])}"
        assert module_file(module), f"stage {stage}: `{spec['cmd']}` runs {module}, which does not exist"


@pytest.mark.parametrize("stage", list(DVC))
def test_stage_deps_cover_its_import_closure(stage):
    spec = DVC[stage]
    module = f"{PACKAGE}.stages.{stage_module(spec['cmd'])}"
    deps = [str(dep) for dep in spec.get("deps", [])]
    missing = sorted(path for path in closure_files(module) if not covered(path, deps))
    assert not missing, (
        f"dvc.yaml stage {stage} ({spec['cmd']} -> {module}) does not list code it imports: " + ", ".join(missing)
    )


def test_closure_follows_every_import_form(tmp_path, monkeypatch):
    """The analysis itself: absolute, from-package, relative and lazy imports, and parent __init__s."""
    files = {
        "autosink/__init__.py": "",
        "autosink/a.py": "import autosink.b\nfrom autosink.pkg import sub\n",
        "autosink/b.py": "def f():\n    from autosink import c\n",
        "autosink/c.py": "from autosink.d import thing\n",
        "autosink/d.py": "thing = 1\nimport os\n",
        "autosink/pkg/__init__.py": "",
        "autosink/pkg/sub.py": "from . import rel\nfrom .deep.mod import x\n",
        "autosink/pkg/rel.py": "from ..e import y\n",
        "autosink/pkg/deep/__init__.py": "",
        "autosink/pkg/deep/mod.py": "x = 1\n",
        "autosink/e.py": "y = 1\n",
        "autosink/unused.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(f"{__name__}.SRC", tmp_path)
    caches = (module_file, imported_modules, closure)
    for cached in caches:
        cached.cache_clear()
    try:
        found = closure("autosink.a")
    finally:
        for cached in caches:
            cached.cache_clear()
    assert found == {
        "autosink",
        "autosink.a",
        "autosink.b",
        "autosink.c",
        "autosink.d",
        "autosink.pkg",
        "autosink.pkg.sub",
        "autosink.pkg.rel",
        "autosink.pkg.deep",
        "autosink.pkg.deep.mod",
        "autosink.e",
    }
    assert covered("src/autosink/sim/lake.py", ["src/autosink/sim"])
    assert not covered("src/autosink/simulate.py", ["src/autosink/sim"])
