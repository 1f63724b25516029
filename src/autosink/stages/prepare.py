"""`prepare` stage: the feature store's manifest -> train/val/test tables split by group."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from autosink.data.split import make_splits
from autosink.stages import write_results

MANIFEST = Path("data/feature-store/manifest.csv")
OUT_DIR = Path("data/splits")
#: the headline (reports/prepare.json: also the per-class counts and the grouping)
KEYS = ("train.frames", "train.groups", "val.frames", "val.groups", "test.frames", "test.groups")


def run(params: dict, progress: bool = True) -> dict:
    cfg = params["prepare"]
    if not MANIFEST.exists():
        raise FileNotFoundError(f"{MANIFEST}: not found; run the label stage first (dvc repro label)")
    manifest = pd.read_csv(MANIFEST, dtype={"episode": str, "dishwashing_id": str, "user_id": str})
    splits = make_splits(
        manifest,
        cfg["group_by"],
        dict(cfg["fractions"]),
        int(cfg["seed"]),
        include_review=bool(cfg["include_review"]),
        min_confidence=float(cfg["min_confidence"]),
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"group_by": cfg["group_by"]}
    for name, table in splits.items():
        table.to_csv(OUT_DIR / f"{name}.csv", index=False)
        metrics[name] = {
            "frames": int(len(table)),
            "groups": int(table[cfg["group_by"]].nunique()),
            "per_class": {str(c): int((table["label"] == c).sum()) for c in (0, 1)},
        }
    write_results("prepare", metrics, KEYS)
    print("prepare: " + ", ".join(f"{s} {metrics[s]['frames']} frames / {metrics[s]['groups']} groups" for s in splits))
    return metrics
