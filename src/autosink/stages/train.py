"""`train` stage: feature store + splits -> models/model.ckpt, metrics/train.json, training curves."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from autosink.stages import write_metrics
from autosink.training import HISTORY_COLUMNS, fit

STORE = Path("data/feature-store")
GATE = Path("reports/data_validation/verdict.json")
METRICS = Path("metrics/train.json")
HISTORY = Path("metrics/train/history.csv")


def check_data_gate(path: Path = GATE) -> None:
    """Refuse to train on data that failed validate_data (when its gate is enforced)."""
    if not path.exists():
        return
    verdict = json.loads(path.read_text())
    if verdict.get("enforced") and not verdict.get("passed", True):
        raise ValueError(f"{path}: the data validation gate failed; fix the data or set validate.enforce=false")


def run(params: dict, progress: bool = True) -> dict:
    check_data_gate()
    version_file = STORE / "version.json"
    data_version = json.loads(version_file.read_text())["version"] if version_file.exists() else ""
    result = fit(params, store_dir=STORE, progress=progress, data_version=data_version)
    if not result:  # a DDP worker other than rank 0: rank 0 writes the results
        return result
    history = result.pop("history")
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_csv(HISTORY, index=False)
    result["data_version"] = data_version
    write_metrics(METRICS, dict(result))
    val = result["val"]
    print(f"train: {result['backbone']} {result['epochs']} epochs (best {result['best_epoch']}), "
          f"{result['images_per_s']:.0f} images/s; val accuracy {val['accuracy']:.3f} f1 {val['f1']:.3f} "
          f"at threshold {result['threshold']:.2f} -> models/model.ckpt")
    return result
