"""The layers of ``autosink`` and what each may import: the one place they are written down.

tests/test_layers.py checks every import in src/autosink (and edge/run.py) against this;
tests/edge_fixtures.py derives from it which ``autosink`` modules the Pi may load.

Rules:
- every module under src/autosink belongs to exactly one layer (:data:`LAYERS`);
- nothing imports upward: a module imports ``autosink`` modules of its own layer or of layers
  below it in :data:`ORDER` only (the exceptions, each a debt with its reason: :data:`KNOWN_UPWARD`);
- a layer named in :data:`LIBRARIES` imports, besides the standard library, only those
  libraries; one named in :data:`LAZY_ONLY` only inside a function (the Pi may lack it, and
  ``edge/run.py`` must not load it at start).
"""

from __future__ import annotations

from pathlib import Path

from tests.imports import module_name

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "autosink"

#: the layers, lowest first
ORDER = ("core", "edge", "sim", "data", "learn", "stages", "ops", "labelapp", "cli")

#: module or package under ``autosink`` -> its layer. A package covers every module in it; the
#: root package ``autosink`` covers only its own ``__init__.py``. Entries do not nest.
LAYERS = {
    "autosink": "core",
    # Pi-safe core: the episode format, the model card, file helpers, subprocesses, W&B run names
    "autosink.core": "core",
    # the Raspberry Pi runtime (edge/run.py is its entry point)
    "autosink.edge": "edge",
    # the simulated sink, users and episode lake
    "autosink.sim": "sim",
    # episodes -> labelled, split, validated tables
    "autosink.data": "data",
    # the model: training, evaluation, export, the gate's cases, the water benchmark, the decision rule
    "autosink.learn": "learn",
    # the DVC stage entry points (thin)
    "autosink.stages": "stages",
    # run the project: params and workspace, benchmarks, the closed loop, promotion, plots
    "autosink.ops": "ops",
    # the labeling web app
    "autosink.labelapp": "labelapp",
    # the `autosink` command
    "autosink.cli": "cli",
}

#: layer -> the only libraries, besides the standard library, it may import (a name covers its
#: submodules: ``RPi.GPIO`` covers ``RPi.GPIO.x``). A layer not named here may import any.
LIBRARIES = {
    "core": ("numpy", "cv2"),
    "edge": ("numpy", "cv2", "onnxruntime", "picamera2", "RPi.GPIO", "serial", "pydrive2", "wandb"),
}

#: layer -> libraries it may import only inside a function: the camera (picamera2), the valve and
#: button (RPi.GPIO, pyserial), the Google Drive upload (pydrive2), the W&B model source (wandb)
LAZY_ONLY = {
    "edge": ("picamera2", "RPi.GPIO", "serial", "pydrive2", "wandb"),
}

#: (importer, imported) -> why this upward import exists today. Each is a debt: the test fails
#: once one is gone, so the entry goes too.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}

#: files outside src/autosink checked as part of a layer (path from the repository root)
EXTRA_FILES = {"edge/run.py": "edge"}

#: the layers the Raspberry Pi loads
PI_LAYERS = ("core", "edge")


def covers(key: str, module: str) -> bool:
    """Whether the :data:`LAYERS` entry ``key`` covers ``module``."""
    return module == key or (key != PACKAGE and module.startswith(key + "."))


def entries_for(module: str, layers: dict[str, str] = LAYERS) -> list[str]:
    """The entries of ``layers`` that cover ``module`` (exactly one when the table is right)."""
    return [key for key in layers if covers(key, module)]


def layer_of(module: str, layers: dict[str, str] = LAYERS) -> str | None:
    """The layer of an ``autosink`` module, None when no entry covers it."""
    keys = entries_for(module, layers)
    return layers[keys[0]] if keys else None


def modules(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``src``: dotted name -> file."""
    return {module_name(path, src): path for path in sorted((src / package).rglob("*.py"))}


def modules_in(*layer_names: str) -> frozenset[str]:
    """The ``autosink`` modules of these layers."""
    return frozenset(name for name in modules() if layer_of(name) in layer_names)
