"""The import rules between the layers of ``autosink``, declared in tests/layers.py.

Every import in every module under src/autosink, and in edge/run.py, is read with ``ast``
(tests/imports.py: inside functions too, relative ones resolved) and checked: nothing imports a
higher layer; the core and the edge import only the libraries named for them, the Pi's
optional ones only inside a function. A failure names the file, the line, the import and the
rule it breaks. A module no entry of ``LAYERS`` covers fails too, named.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tests import layers
from tests.imports import imports_of, module_file
from tests.layers import (
    EXTRA_FILES,
    KNOWN_UPWARD,
    LAYERS,
    LAZY_ONLY,
    LIBRARIES,
    ORDER,
    PACKAGE,
    PI_LAYERS,
    ROOT,
    SRC,
    covers,
    entries_for,
    layer_of,
)


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    statement: str
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: `{self.statement}`: {self.rule}"


def _names(module: str, libs: tuple[str, ...]) -> str | None:
    """The entry of ``libs`` that ``module`` is (``RPi.GPIO``), is inside (``RPi.GPIO.x``) or holds (``RPi``)."""
    for lib in libs:
        if module == lib or module.startswith(lib + ".") or lib.startswith(module + "."):
            return lib
    return None


def check(
    *,
    root: Path = ROOT,
    src: Path = SRC,
    table: dict[str, str] = LAYERS,
    order: tuple[str, ...] = ORDER,
    libraries: dict[str, tuple[str, ...]] = LIBRARIES,
    lazy_only: dict[str, tuple[str, ...]] = LAZY_ONLY,
    known: dict[tuple[str, str], str] = KNOWN_UPWARD,
    extra: dict[str, str] = EXTRA_FILES,
) -> tuple[list[Violation], set[tuple[str, str]]]:
    """The imports that break the rules, and the ``known`` upward imports that were met."""
    files = [(name, path, layer_of(name, table)) for name, path in layers.modules(src).items()]
    files += [(None, root / rel, layer) for rel, layer in extra.items()]
    found: list[Violation] = []
    met: set[tuple[str, str]] = set()
    for name, path, layer in files:
        if layer is None:  # no layer: test_every_module_has_one_layer names it
            continue
        rank = order.index(layer)
        for imp in imports_of(path, src, name or path.stem):
            rel = path.relative_to(root).as_posix()

            def fail(rule: str, imp=imp, rel=rel) -> None:
                found.append(Violation(rel, imp.line, imp.statement, rule))

            top = imp.module.split(".")[0]
            if top == PACKAGE:
                target = layer_of(imp.module, table)
                if target is None or order.index(target) <= rank:
                    continue
                if (name, imp.module) in known:
                    met.add((name, imp.module))
                    continue
                fail(
                    f"{layer} imports {imp.module} ({target}): nothing imports upward, "
                    f"{layer} may import only {' < '.join(order[: rank + 1])}"
                )
            elif top in sys.stdlib_module_names:
                continue
            elif layer in libraries and not _names(imp.module, libraries[layer]):
                allowed = ", ".join(libraries[layer])
                fail(f"{layer} imports {imp.module}: it may import only the standard library and {allowed}")
            elif not imp.lazy and (lib := _names(imp.module, lazy_only.get(layer, ()))):
                fail(f"{layer} imports {lib} at module level: it may import it only inside a function")
    return found, met


# -------------------------------------------------------------------------------- the tree


def test_every_module_has_one_layer():
    wrong = []
    for name, path in layers.modules().items():
        keys = entries_for(name)
        if len(keys) != 1:
            where = path.relative_to(ROOT).as_posix()
            wrong.append(f"{where} ({name}): " + (f"in {len(keys)} entries {keys}" if keys else "no layer"))
    assert not wrong, "every module needs exactly one entry in LAYERS (tests/layers.py): " + "; ".join(wrong)


def test_the_layers_are_the_folders():
    """Each package folder under src/autosink is one layer of its own name; only the package's
    ``__init__.py`` and the ``autosink`` command (cli.py) sit outside a folder."""
    folders = sorted(p.name for p in (SRC / PACKAGE).iterdir() if (p / "__init__.py").is_file())
    assert {key: LAYERS[key] for key in LAYERS if key.count(".") == 1 and key != f"{PACKAGE}.cli"} == {
        f"{PACKAGE}.{name}": name for name in folders
    }
    loose = sorted(p.name for p in (SRC / PACKAGE).glob("*.py"))
    assert loose == ["__init__.py", "cli.py"], f"modules outside a layer folder: {loose}"


def test_the_table_is_well_formed():
    assert len(set(ORDER)) == len(ORDER)
    assert set(LAYERS.values()) <= set(ORDER), set(LAYERS.values()) - set(ORDER)
    assert set(LIBRARIES) | set(LAZY_ONLY) | set(EXTRA_FILES.values()) <= set(ORDER)
    for key in LAYERS:
        assert module_file(key, SRC), f"LAYERS names {key}, which is not a module or package under src/"
        nested = [other for other in LAYERS if other != key and covers(other, key)]
        assert not nested, f"LAYERS: {key} lies inside {nested}; entries do not nest"
    for layer, libs in LAZY_ONLY.items():
        assert set(libs) <= set(LIBRARIES.get(layer, libs)), f"{layer}: a lazy-only library must be allowed"
    for importer, imported in KNOWN_UPWARD:
        assert module_file(importer, SRC) and module_file(imported, SRC), (importer, imported)
    for rel in EXTRA_FILES:
        assert (ROOT / rel).is_file(), rel
    assert PI_LAYERS == ORDER[: len(PI_LAYERS)], "the Pi's layers are the lowest: they import no other"


def test_imports_follow_the_layers():
    found, _ = check()
    assert not found, f"{len(found)} import(s) break the layer rules (tests/layers.py):\n" + "\n".join(map(str, found))


def test_known_upward_imports_are_still_there():
    _, met = check()
    gone = sorted(set(KNOWN_UPWARD) - met)
    assert not gone, f"no longer imported upward, remove from KNOWN_UPWARD (tests/layers.py): {gone}"


def test_the_pi_loads_only_core_and_edge_modules():
    """tests/edge_fixtures.py's footprint check allows exactly the modules of the Pi's layers."""
    from tests.edge_fixtures import ALLOWED_AUTOSINK

    assert ALLOWED_AUTOSINK == layers.modules_in(*PI_LAYERS)
    assert {"autosink", "autosink.core.episode", "autosink.core.fileio", "autosink.core.modelcard"} <= ALLOWED_AUTOSINK
    assert "autosink.edge.runtime" in ALLOWED_AUTOSINK and "autosink.learn.training" not in ALLOWED_AUTOSINK


# -------------------------------------------------------------------------------- the check itself


def test_check_catches_each_kind_of_violation(tmp_path):
    """A fake ``autosink`` with one of each violation, and the forms that must pass."""
    files = {
        "src/autosink/__init__.py": "",
        "src/autosink/core.py": "import json\nimport numpy as np\nfrom numpy.linalg import norm\n",
        "src/autosink/bad_core.py": "import os\nimport torch\n\n\ndef f():\n    return __import__('pandas')\n",
        "src/autosink/edge/__init__.py": "",
        "src/autosink/edge/ok.py": (
            "from autosink.core import np\nfrom .. import core\nfrom . import cam\n\n\n"
            "def camera():\n    from picamera2 import Picamera2\n    import RPi.GPIO as GPIO\n"
        ),
        "src/autosink/edge/cam.py": "import picamera2\n\n\ndef f():\n    from ..pipe import thing\n",
        "src/autosink/pipe.py": "import torch\nfrom autosink.edge import cam\nthing = 1\nfrom autosink import top\n",
        "src/autosink/pipe2.py": "import autosink.top\n",
        "src/autosink/top.py": "import autosink.pipe\nfrom . import pipe2\n",
        "src/autosink/orphan.py": "import autosink.top\n",
        "run.py": "import sys\nimport torch\nfrom autosink.edge import ok\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    table = {
        "autosink": "core",
        "autosink.core": "core",
        "autosink.bad_core": "core",
        "autosink.edge": "edge",
        "autosink.pipe": "pipe",
        "autosink.pipe2": "pipe",
        "autosink.top": "top",
    }
    found, met = check(
        root=tmp_path,
        src=tmp_path / "src",
        table=table,
        order=("core", "edge", "pipe", "top"),
        libraries={"core": ("numpy",), "edge": ("numpy", "picamera2", "RPi.GPIO")},
        lazy_only={"edge": ("picamera2", "RPi.GPIO")},
        known={("autosink.pipe2", "autosink.top"): "a debt"},
        extra={"run.py": "edge"},
    )
    assert {(v.file, v.line, v.statement) for v in found} == {
        ("src/autosink/bad_core.py", 2, "import torch"),
        ("src/autosink/bad_core.py", 6, "__import__('pandas')"),
        ("src/autosink/edge/cam.py", 1, "import picamera2"),
        ("src/autosink/edge/cam.py", 5, "from ..pipe import thing"),
        ("src/autosink/pipe.py", 4, "from autosink import top"),
        ("run.py", 2, "import torch"),
    }, "\n".join(map(str, found))
    rules = {(v.file, v.line): v.rule for v in found}
    assert "may import only the standard library and numpy" in rules["src/autosink/bad_core.py", 2]
    assert "picamera2 at module level" in rules["src/autosink/edge/cam.py", 1]
    assert rules["src/autosink/edge/cam.py", 5] == (
        "edge imports autosink.pipe (pipe): nothing imports upward, edge may import only core < edge"
    )
    assert "pipe imports autosink.top (top)" in rules["src/autosink/pipe.py", 4]
    assert met == {("autosink.pipe2", "autosink.top")}
    # the module without a layer is named by the coverage test, not skipped silently
    names = layers.modules(tmp_path / "src")
    assert [name for name in names if not entries_for(name, table)] == ["autosink.orphan"]
