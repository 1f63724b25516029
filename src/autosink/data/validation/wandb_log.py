"""Log the validation summary to Weights & Biases: offline by default, never online without a key.

Mode: ``validate.wandb.mode``, resolved by :func:`autosink.core.tracking.resolve_mode` (said in a log
line). Offline runs land in ``<dir>/wandb/offline-run-*`` (``dir`` defaults to the repository
root, where ``wandb/`` is git-ignored); ``wandb sync`` uploads them later. A wandb failure is
reported and never fails the stage: the metrics JSON and the HTML report are the record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from autosink.core.tracking import resolve_mode, run_identity


def _config_key(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:8]


def log_to_wandb(summary: dict, frames: pd.DataFrame, labels: pd.DataFrame, cfg: dict, features: list[str]) -> dict:
    """Log one run (job_type data-validation). Returns {mode, run_dir or error}."""
    w = cfg.get("wandb", {})
    mode, note = resolve_mode(w.get("mode"))
    if note:
        print(f"validate: {note}")
    if mode == "disabled":
        return {"mode": mode}
    try:
        import wandb

        run_dir = Path(w.get("dir") or ".")
        run_dir.mkdir(parents=True, exist_ok=True)
        ident = run_identity("data-validation", f"{summary.get('feature_store_version')}-{_config_key(cfg)}")
        ident["tags"].append(str(summary.get("feature_store_version", "unknown")))
        run = wandb.init(
            project=w.get("project", "autosink"),
            mode=mode,
            dir=str(run_dir),
            config={"validate": cfg},
            settings=wandb.Settings(silent=True, console="off"),
            **ident,
        )
        label_table = wandb.Table(dataframe=labels[["name", "split", "label", "count"]])
        checks = wandb.Table(
            columns=["name", "passed", "value", "threshold", "message"],
            data=[
                [c["name"], c["passed"], str(c["value"]), str(c["threshold"]), c["message"]]
                for c in summary["checks"].values()
            ],
        )
        ok = frames[frames["readable"]]
        log = {
            "label_distribution": wandb.plot.bar(label_table, "name", "count", title="Frames per split and label"),
            "label_table": label_table,
            "checks": checks,
            **{
                f"features/{f}": wandb.Histogram(ok[f].dropna().to_numpy(dtype=np.float64))
                for f in features
                if ok[f].notna().any()
            },
        }
        run.log(log)
        run.summary.update(
            {
                "drift_share": summary["drift_share"],
                "n_frames": summary["n_frames"],
                "passed": summary["passed"],
                "per_class": summary["per_class"],
                **{f"checks/{n}": c["passed"] for n, c in summary["checks"].items()},
            }
        )
        out = {"mode": mode, "run_dir": str(Path(run.dir).parent)}
        run.finish()
        return out
    except Exception as e:  # noqa: BLE001 - tracking must never break the gate
        print(f"validate: wandb logging failed ({type(e).__name__}: {e}); the metrics and report are written")
        return {"mode": mode, "error": f"{type(e).__name__}: {e}"}
