"""Thin DVC stage entry points: read params.yaml, call the module that owns the work, write metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

#: the full record of a stage's result (``<name>.json``: per-case, per-episode, per-session
#: tables, messages), a DVC output beside ``metrics/<name>.json``, which holds only the headline
#: numbers a person compares across experiments (``dvc metrics show``, ``dvc exp show``)
REPORTS = Path("reports")

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


def headline(result: dict, keys: Sequence[str]) -> dict:
    """The values of ``keys`` in ``result`` (``"a.b"`` reaches into ``result["a"]["b"]`` and keeps
    the nesting), floats rounded to 4 decimals."""
    out: dict = {}
    for key in keys:
        *parents, leaf = key.split(".")
        value, node = result, out
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = round(value, 4) if isinstance(value, float) else value
    return out


def write_results(name: str, result: dict, keys: Sequence[str]) -> dict:
    """``reports/<name>.json`` gets ``result``, ``metrics/<name>.json`` its :func:`headline`."""
    write_metrics(REPORTS / f"{name}.json", result)
    metrics = headline(result, keys)
    write_metrics(Path("metrics") / f"{name}.json", metrics)
    return metrics
