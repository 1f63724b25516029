"""Thin DVC stage entry points: read params.yaml, call the module that owns the work, write metrics."""

from __future__ import annotations

import json
from pathlib import Path

#: per stage (``<stage>.json``), what its last run in this workspace did: measured times, work
#: done (episodes re-extracted or reused, ...) and details beyond the headline metrics. Under
#: ``runs/`` (git-ignored) and never a DVC output: these differ from run to run (a fresh clone
#: redoes everything, an incremental run little), and DVC's outputs must not.
RUNS = Path("runs/stages")


def write_metrics(path: str | Path, metrics: dict) -> Path:
    """Write a small JSON metrics file (declared under `metrics:` in dvc.yaml)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def write_run_record(stage: str, record: dict) -> Path:
    """Record what a stage's run did (:data:`RUNS`)."""
    return write_metrics(RUNS / f"{stage}.json", record)
