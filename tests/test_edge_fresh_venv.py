"""The edge is deployable alone: a fresh venv with only edge/requirements.txt runs edge/run.py.

Slow (creates a venv and installs onnxruntime, numpy and OpenCV from PyPI: about a minute),
so marked ``slow``. It runs from a copy holding only ``edge/`` and the packages the edge
may import (``autosink/__init__``, ``autosink/core/``, ``autosink/edge/``): if the edge ever imports
anything else from the pipeline, or torch, this fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from autosink.core.episode import EpisodeMeta, Interaction, episode_stem, write_episode
from tests.edge_fixtures import FOOTPRINT_SCRIPT, bright_roi_frame, check_footprint, write_tiny_model
from tests.layers import PI_LAYERS

ROOT = Path(__file__).resolve().parents[1]


def _minimal_checkout(dst: Path) -> Path:
    """``edge/`` + the edge-safe part of ``src/autosink`` (what a Pi needs, nothing more)."""
    shutil.copytree(ROOT / "edge", dst / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    src = dst / "src" / "autosink"
    for package in PI_LAYERS:  # the Pi's layers are folders: core/, edge/
        shutil.copytree(
            ROOT / "src" / "autosink" / package, src / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "src" / "autosink" / "__init__.py", src / "__init__.py")
    return dst


def _episode(path: Path, n: int = 12) -> Path:
    t0 = datetime(2024, 7, 6, 17, 25, 40)
    its = [
        Interaction(
            timestamp=t0.replace(second=40 + i // 2),
            model_output=0,
            magnetic_status=int(4 <= i < 8),
            image=f"{i + 1}.png",
            arduino_output=int(4 <= i < 8),
        )
        for i in range(n)
    ]
    meta = EpisodeMeta(2, "user_0001", "0123456789", t0.astimezone(), its)
    frames = [bright_roi_frame() if i % 2 else np.full((480, 640, 3), 90, np.uint8) for i in range(n)]
    return write_episode(path / f"{episode_stem(t0)}.zip", meta, frames)


@pytest.mark.slow
def test_edge_runs_in_a_fresh_venv_with_only_its_requirements(tmp_path):
    py311 = shutil.which("python3.11")
    if py311 is None:
        pytest.skip("python3.11 not on PATH")
    venv = tmp_path / "venv"
    subprocess.run([py311, "-m", "venv", str(venv)], check=True, timeout=300)
    vpy = str(venv / "bin" / "python")
    install = subprocess.run(
        [
            vpy,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(ROOT / "edge" / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    # nothing of the training stack came along
    probe = (
        "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None for m in "
        "['torch', 'pandas', 'sklearn', 'onnxruntime', 'cv2', 'numpy', 'serial']}))"
    )
    found = json.loads(subprocess.run([vpy, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert found == {
        "torch": False,
        "pandas": False,
        "sklearn": False,
        "onnxruntime": True,
        "cv2": True,
        "numpy": True,
        "serial": True,
    }

    checkout = _minimal_checkout(tmp_path / "pi")
    help_ = subprocess.run([vpy, "edge/run.py", "--help"], cwd=checkout, capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "--camera" in help_.stdout, help_.stderr

    model = write_tiny_model(tmp_path / "models" / "model.onnx")
    zip_path = _episode(tmp_path / "episodes")
    lake = tmp_path / "lake"
    lake.mkdir()
    args = [
        "--camera",
        f"episode:{zip_path}",
        "--valve",
        "fake",
        "--max-frames",
        "10",
        "--fps",
        "0",
        "--model",
        str(model),
        "--spool",
        str(tmp_path / "spool"),
        "--upload-to",
        str(lake),
        "--user-id",
        "u1",
    ]
    run = subprocess.run(
        [vpy, "-c", FOOTPRINT_SCRIPT, *args], cwd=checkout, capture_output=True, text=True, timeout=300
    )
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("FOOTPRINT ")]
    assert line, run.stdout + run.stderr
    result = json.loads(line[-1][len("FOOTPRINT ") :])
    assert result["code"] in (0, None), run.stderr
    check_footprint(result["modules"])
    assert "torch" not in result["modules"]
    assert "stats: frames=10" in run.stderr and "stop=max-frames" in run.stderr, run.stderr
