"""Data validation of a feature-store snapshot: features, drift report, checks, gate.

``validate()`` always writes its outputs (feature cache, evidently HTML, plot tables, metrics
JSON) before it returns; the stage entry point raises ``DataValidationError`` afterwards when
the gate failed and ``validate.enforce`` is on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from autosink.core.fileio import atomic_write
from autosink.core.tracking import resolve_mode
from autosink.data.validation.checks import run_checks
from autosink.data.validation.drift import drift_report
from autosink.data.validation.features import FEATURES, FeatureConfig, compute_features, write_csv_atomic
from autosink.data.validation.wandb_log import log_to_wandb

SPLITS = ["train", "val", "test"]
# Fixed histogram ranges (values outside land in the end bins), so `dvc plots diff` can overlay
# the histograms of two snapshots bin for bin.
HIST_RANGES = {
    "brightness": (0.0, 255.0),
    "contrast": (0.0, 100.0),
    "sharpness": (0.0, 2000.0),
    "cast_rg": (-50.0, 50.0),
    "cast_bg": (-50.0, 50.0),
    "roi_brightness": (0.0, 255.0),
    "roi_objectness": (0.0, 0.3),
    "saturated": (0.0, 0.5),
}
HIST_BINS = 20


class DataValidationError(Exception):
    """The data-validation gate failed; the message lists every failed check with its numbers."""


@dataclass(frozen=True)
class Paths:
    store: Path = Path("data/feature-store")
    splits: Path = Path("data/splits")
    cache: Path = Path("data/validation/image_features.csv")
    html: Path = Path("reports/data_validation.html")
    plots: Path = Path("reports/data_validation")
    metrics: Path = Path("metrics/data_validation.json")  # the headline numbers (HEADLINE)
    report: Path = Path("reports/data_validation.json")  # the whole summary: every check's message


#: what metrics/data_validation.json holds: the numbers to compare across experiments
HEADLINE = ("passed", "checks_failed", "n_frames", "n_unreadable", "n_episodes", "drift_share")
#: summary keys that describe this run, not the data: the stage's run record, not the metrics
RUN_KEYS = ("features_computed", "features_reused", "wandb_mode", "seconds")


def _counts(labels: pd.Series, classes=("0", "1")) -> dict[str, int]:
    vc = labels.astype(int).astype(str).value_counts()
    return {c: int(vc.get(c, 0)) for c in classes}


def read_splits(splits_dir: Path) -> pd.DataFrame | None:
    """path, split, label of every split table present (None when there are none)."""
    tables = [
        pd.read_csv(splits_dir / f"{s}.csv", dtype={"path": str}).assign(split=s)
        for s in SPLITS
        if (splits_dir / f"{s}.csv").exists()
    ]
    return pd.concat(tables, ignore_index=True)[["path", "split", "label"]] if tables else None


def label_distribution(manifest: pd.DataFrame, splits: pd.DataFrame | None) -> pd.DataFrame:
    rows = [("store", c, n) for c, n in _counts(manifest["label"], ("0", "1", "-1")).items()]
    if splits is not None:
        rows += [(s, c, n) for s in SPLITS for c, n in _counts(splits.loc[splits["split"] == s, "label"]).items()]
    table = pd.DataFrame(rows, columns=["split", "label", "count"])
    table["name"] = table["split"] + " / label " + table["label"]
    return table


def episode_stats(frames: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    m = manifest.assign(is1=manifest["label"] == 1, is0=manifest["label"] == 0, ign=manifest["label"] == -1)
    per = m.groupby("episode").agg(
        user_id=("user_id", "first"),
        dishwashing_id=("dishwashing_id", "first"),
        start=("timestamp", "min"),
        frames=("label", "size"),
        share_label_1=("is1", "mean"),
        share_label_0=("is0", "mean"),
        share_ignored=("ign", "mean"),
    )
    img = frames.groupby("episode").agg(
        unreadable=("readable", lambda r: int((~r).sum())),
        mean_brightness=("brightness", "mean"),
        mean_roi_objectness=("roi_objectness", "mean"),
    )
    return per.join(img, how="left").reset_index().sort_values("start").round(4)


def feature_histograms(frames: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per bin; per feature the share of readable frames in that bin of its
    fixed range (``HIST_RANGES``; x = position in the range, 0..1)."""
    ok = frames[frames["readable"]]
    out = {"bin": np.arange(HIST_BINS), "x": (np.arange(HIST_BINS) + 0.5) / HIST_BINS}
    for f in FEATURES:
        lo, hi = HIST_RANGES[f]
        v = np.clip(ok[f].dropna().to_numpy(dtype=float), lo, hi)
        counts, _ = np.histogram(v, bins=HIST_BINS, range=(lo, hi))
        out[f] = np.round(counts / max(1, len(v)), 4)
    return pd.DataFrame(out)


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def failure_message(summary: dict) -> str:
    failed = [c for c in summary["checks"].values() if not c["passed"]]
    lines = [f"data validation failed: {len(failed)} of {len(summary['checks'])} checks"]
    lines += [f"  - {c['name']}: {c['message']} (value {c['value']}, threshold {c['threshold']})" for c in failed]
    return "\n".join(lines)


def validate(params: dict, paths: Paths = Paths(), progress: bool = True) -> dict:
    """Validate the feature store under ``paths.store``; write every output; return the summary."""
    t0 = time.perf_counter()
    if "validate" not in params:
        raise ValueError(
            "params.yaml has no `validate` group: add `- validate: default` to the defaults in "
            "conf/config.yaml and run `make params`"
        )
    cfg, data = params["validate"], params["data"]
    manifest_file = paths.store / "manifest.csv"
    if not manifest_file.exists():
        raise FileNotFoundError(f"{manifest_file}: not found; run the label stage first (dvc repro label)")
    manifest = pd.read_csv(
        manifest_file, dtype={"episode": str, "dishwashing_id": str, "user_id": str, "path": str, "timestamp": str}
    )
    manifest["path"] = manifest["path"].fillna("")
    version_file = paths.store / "version.json"
    version = json.loads(version_file.read_text()).get("version") if version_file.exists() else None

    labelled = manifest[manifest["label"].isin([0, 1])].reset_index(drop=True)
    if labelled.empty:
        raise ValueError(
            f"{manifest_file}: no frame labelled 0 or 1: nothing to validate or train on "
            "(is the lake empty, or every episode quarantined? see metrics/extract.json)"
        )
    feats, cache_counts = compute_features(
        labelled["path"].tolist(), paths.store, paths.cache, FeatureConfig.from_params(cfg), progress=progress
    )
    meta = labelled[["episode", "frame_index", "timestamp", "user_id", "dishwashing_id", "label"]]
    frames = pd.concat([meta, feats], axis=1)
    frames.loc[labelled["path"] == "", ["readable", "error"]] = [False, "no path in the manifest"]
    splits = read_splits(paths.splits)
    per_split = None if splits is None else {s: _counts(splits.loc[splits["split"] == s, "label"]) for s in SPLITS}

    drift = drift_report(frames, Path(cfg["reference"]), paths.html, cfg)
    per_class = _counts(manifest["label"], ("0", "1", "-1"))
    checks = run_checks(
        frames, per_class, per_split, drift, cfg, (int(data["frame_width"]), int(data["frame_height"])), SPLITS
    )

    labels = label_distribution(manifest, splits)
    write_csv_atomic(labels, paths.plots / "label_distribution.csv")
    write_csv_atomic(feature_histograms(frames), paths.plots / "features.csv")
    write_csv_atomic(episode_stats(frames, manifest), paths.plots / "episodes.csv")

    summary = {
        "passed": all(c.passed for c in checks),
        "enforced": bool(cfg.get("enforce", True)),
        "feature_store_version": version,
        "n_frames": int(len(frames)),
        "n_unreadable": int((~frames["readable"]).sum()),
        "n_episodes": int(manifest["episode"].nunique()),
        "n_users": int(manifest["user_id"].nunique()),
        "per_class": per_class,
        "per_split": per_split,
        "drift_share": drift["drift_share"],
        "drift": {k: drift[k] for k in ("reference", "drifted_features", "scores")},
        "checks": {c.name: c.as_dict() for c in checks},
        "features_computed": cache_counts["computed"],
        "features_reused": cache_counts["reused"],
    }
    # before wandb: the record never depends on the tracker; nor on what an earlier run left in
    # the cache or on this machine's environment (RUN_KEYS: in the run record, see the stage)
    summary["checks_failed"] = sum(not c["passed"] for c in summary["checks"].values())
    _write_json_atomic(paths.report, {k: v for k, v in summary.items() if k not in RUN_KEYS})
    _write_json_atomic(paths.metrics, {k: summary[k] for k in HEADLINE})
    summary["wandb_mode"] = resolve_mode(cfg.get("wandb", {}).get("mode"))[0]
    tracking = log_to_wandb(summary, frames, labels, cfg, FEATURES)
    if tracking.get("run_dir"):  # printed, not stored: it changes every run
        print(f"validate: wandb {tracking['mode']} run in {tracking['run_dir']}")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
