"""Thin DVC stage entry points: read params.yaml, call the module that owns the work, write metrics."""

from __future__ import annotations

import json
from pathlib import Path


def write_metrics(path: str | Path, metrics: dict) -> Path:
    """Write a small JSON metrics file (declared under `metrics:` in dvc.yaml)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path
