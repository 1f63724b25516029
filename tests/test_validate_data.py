"""Data validation stage: features and their cache, checks and gate, evidently report, wandb mode.

Each test builds a small feature store (64x48 frames written with OpenCV) in a temporary
project folder and runs the real stage entry point there, with the real defaults from
conf/validate/default.yaml, shrunk only where the sample is small (frames per class/split,
episode share) and with wandb disabled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from autosink.core.tracking import resolve_mode
from autosink.data.validation import FEATURES, DataValidationError
from autosink.data.validation.checks import check_drift
from autosink.data.validation.drift import choose_reference
from autosink.data.validation.features import FeatureConfig, compute_features
from autosink.stages import validate_data

ROOT = Path(__file__).resolve().parents[1]
W, H = 64, 48
USERS = 4
EPISODES_PER_USER = 2
FRAMES = 12


def frame(rng: np.random.Generator, label: int) -> np.ndarray:
    """A tiny RGB sink: counter, grey basin, a random object, noise; label 1 has a red dish under
    the faucet, label 0 one elsewhere."""
    img = np.empty((H, W, 3), np.float32)
    img[:] = (110, 80, 50)
    img[5:44, 8:56] = (150, 150, 155)
    x0, y0 = int(rng.integers(0, W - 12)), int(rng.integers(0, H - 10))
    img[y0 : y0 + int(rng.integers(4, 10)), x0 : x0 + int(rng.integers(4, 12))] = rng.uniform(30, 220, 3)
    x, y = (
        (int(rng.integers(26, 38)), int(rng.integers(19, 31)))
        if label == 1
        else (int(rng.choice([14, 50])), int(rng.integers(10, 38)))
    )
    cv2.circle(img, (x, y), int(rng.integers(4, 7)), (190, 60, 50), -1)
    img *= rng.uniform(0.9, 1.1)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_store(root: Path, seed: int = 0, drift: str | None = None, labels: str = "mixed") -> pd.DataFrame:
    """Write data/feature-store (0/ 1/ manifest.csv version.json) and data/splits under ``root``.

    ``drift`` ("dark" or "cast") alters every user's later episodes, the ones the time-split
    reference compares against the earlier ones.
    """
    rng = np.random.default_rng(seed)
    store = root / "data" / "feature-store"
    rows = []
    for u in range(USERS):
        for e in range(EPISODES_PER_USER):
            episode = f"2024070{e + 1}_0{u}0000"
            for i in range(FRAMES):
                label = 0 if labels == "zeros" else int(rng.random() < 0.45)
                rgb = frame(rng, label)
                if drift and e >= 1:
                    if drift == "dark":
                        rgb = (rgb * 0.35).astype(np.uint8)
                    elif drift == "cast":
                        rgb = np.clip(rgb.astype(int) + (45, 0, -35), 0, 255).astype(np.uint8)
                path = f"{label}/{episode}_{i:04d}.png"
                (store / str(label)).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(store / path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                rows.append(
                    {
                        "episode": episode,
                        "frame_index": i,
                        "image": f"{i + 1}.png",
                        "path": path,
                        "timestamp": f"2024-07-0{e + 1}T0{u}:00:{i:02d}",
                        "user_id": f"user_{u}",
                        "dishwashing_id": f"{u:04d}{e:06d}",
                        "label": label,
                        "source": "auto",
                        "confidence": 0.95,
                        "review": False,
                        "rule": "override",
                        "model_output": label,
                        "magnetic_status": label,
                    }
                )
    manifest = pd.DataFrame(rows)
    manifest.to_csv(store / "manifest.csv", index=False)
    (store / "version.json").write_text(json.dumps({"version": f"fs-test{seed}", "frames": len(manifest)}))
    splits = root / "data" / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    split_of = {"user_0": "train", "user_1": "train", "user_2": "val", "user_3": "test"}
    cols = ["path", "label", "episode", "frame_index", "user_id", "dishwashing_id", "source", "confidence"]
    for s in ("train", "val", "test"):
        manifest[manifest["user_id"].map(split_of) == s][cols].to_csv(splits / f"{s}.csv", index=False)
    return manifest


def stage_params() -> dict:
    cfg = yaml.safe_load((ROOT / "conf" / "validate" / "default.yaml").read_text())
    cfg["checks"].update(min_frames_per_class=10, min_frames_per_split_class=3, max_episode_share=0.3)
    cfg["wandb"]["mode"] = "disabled"
    return {"data": {"frame_width": W, "frame_height": H}, "validate": cfg}


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def run_stage(params: dict | None = None) -> tuple[dict, DataValidationError | None]:
    try:
        return validate_data.run(params or stage_params(), progress=False), None
    except DataValidationError as e:
        return json.loads(Path("reports/data_validation.json").read_text()), e


def failed(metrics: dict) -> set[str]:
    return {name for name, c in metrics["checks"].items() if not c["passed"]}


def test_clean_sample_passes_and_writes_everything(project):
    make_store(project)
    metrics, error = run_stage()
    assert error is None, str(error)
    assert metrics["passed"] and not failed(metrics)
    assert metrics["n_frames"] == USERS * EPISODES_PER_USER * FRAMES
    assert metrics["drift"]["reference"]["kind"] == "time_split"
    # the metrics file holds the headline numbers; the report every check with its message
    headline = json.loads(Path("metrics/data_validation.json").read_text())
    assert headline == {
        "passed": True,
        "checks_failed": 0,
        "n_frames": metrics["n_frames"],
        "n_unreadable": 0,
        "n_episodes": metrics["n_episodes"],
        "drift_share": metrics["drift_share"],
    }
    on_disk = json.loads(Path("reports/data_validation.json").read_text())
    for key in ("drift_share", "n_frames", "per_class", "per_split", "passed", "checks"):
        assert key in on_disk
    assert set(on_disk["per_class"]) == {"0", "1", "-1"}
    assert sum(on_disk["per_class"].values()) == metrics["n_frames"]
    for name, check in on_disk["checks"].items():
        assert set(check) == {"name", "passed", "value", "threshold", "message"} and check["name"] == name
    assert {
        "readable",
        "frame_size",
        "near_duplicates",
        "class_balance",
        "min_frames_per_class",
        "min_frames_per_split",
        "drift",
        "max_user_share",
        "max_episode_share",
    } <= set(on_disk["checks"])
    # evidently's own HTML (its dashboard bootstrap and the drift preset's widget)
    html = Path("reports/data_validation.html").read_text()
    assert "window.drawDashboard(" in html and "Dataset Drift" in html
    # DVC plot tables
    labels = pd.read_csv("reports/data_validation/label_distribution.csv")
    assert set(labels["split"]) == {"store", "train", "val", "test"}
    assert labels.loc[labels["split"] == "store", "count"].sum() == metrics["n_frames"]
    hist = pd.read_csv("reports/data_validation/features.csv")
    assert set(FEATURES) <= set(hist.columns) and np.allclose(hist[FEATURES].sum(), 1.0, atol=1e-3)
    episodes = pd.read_csv("reports/data_validation/episodes.csv")
    assert len(episodes) == USERS * EPISODES_PER_USER and {"frames", "share_label_1", "mean_brightness"} <= set(
        episodes.columns
    )
    # no temp files left behind
    assert not list(project.rglob(".*.tmp"))
    # a rerun takes every frame's features from the cache
    again, _ = run_stage()
    assert again["features_computed"] == 0 and again["features_reused"] == metrics["n_frames"]


@pytest.mark.parametrize("kind", ["dark", "cast"])
def test_injected_drift_fails_the_drift_check(project, kind):
    make_store(project, drift=kind)
    metrics, error = run_stage()
    assert error is not None and failed(metrics) == {"drift"}
    assert "drift:" in str(error)
    drifted = set(metrics["drift"]["drifted_features"])
    assert ({"brightness", "roi_brightness"} if kind == "dark" else {"cast_rg", "cast_bg"}) <= drifted


def test_class_collapse_fails_balance_and_minimum_checks(project):
    make_store(project, labels="zeros")
    metrics, error = run_stage()
    assert {"class_balance", "min_frames_per_class", "min_frames_per_split"} <= failed(metrics)
    assert metrics["per_class"]["1"] == 0
    message = str(error)  # every failed check, with its numbers
    assert "class_balance" in message and "min_frames_per_class" in message and "0.0%" in message


def test_not_enforced_reports_but_does_not_raise(project):
    make_store(project, labels="zeros")
    params = stage_params()
    params["validate"]["enforce"] = False
    metrics, error = run_stage(params)
    assert error is None and metrics["passed"] is False and metrics["enforced"] is False


def test_corrupt_and_wrong_size_images_fail_and_the_report_is_still_written(project):
    manifest = make_store(project)
    bad = manifest["path"].iloc[[3, 40]].tolist()
    for p in bad:
        Path("data/feature-store", p).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image" * 3)
    big = manifest["path"].iloc[5]
    cv2.imwrite(str(Path("data/feature-store", big)), np.full((H * 2, W * 2, 3), 128, np.uint8))
    metrics, error = run_stage()
    assert error is not None and {"readable", "frame_size"} <= failed(metrics)
    assert metrics["checks"]["readable"]["value"] == 2 and bad[0] in metrics["checks"]["readable"]["message"]
    assert metrics["checks"]["frame_size"]["value"] == 1
    assert f"{W * 2}x{H * 2}" in metrics["checks"]["frame_size"]["message"]
    assert "readable:" in str(error) and "frame_size:" in str(error)
    assert metrics["n_unreadable"] == 2
    assert "window.drawDashboard(" in Path("reports/data_validation.html").read_text()


def test_production_reference_is_used_when_present(project):
    manifest = make_store(project)
    ref, _ = compute_features(
        manifest["path"].tolist(), Path("data/feature-store"), project / "ref.csv", FeatureConfig(), progress=False
    )
    Path("models/production").mkdir(parents=True)
    ref[FEATURES] = ref[FEATURES] * 0.5  # as if the production model saw other pictures
    ref.to_csv("models/production/data_features.csv", index=False)
    metrics, error = run_stage()
    assert metrics["drift"]["reference"]["kind"] == "production"
    assert error is not None and "drift" in failed(metrics)


def test_feature_cache_recomputes_only_new_or_changed_frames(project):
    manifest = make_store(project)
    store, cache, cfg = Path("data/feature-store"), Path("data/validation/image_features.csv"), FeatureConfig()
    paths = manifest["path"].tolist()
    first, counts = compute_features(paths, store, cache, cfg, progress=False)
    assert counts == {"computed": len(paths), "reused": 0}
    fresh = cache.read_bytes()
    again, counts = compute_features(paths, store, cache, cfg, progress=False)
    assert counts == {"computed": 0, "reused": len(paths)}
    pd.testing.assert_frame_equal(first, again, check_dtype=False)
    # the cache is a DVC output: rows reused come back with the very digits a fresh run writes
    # (no float lost in the CSV round trip), and it is keyed by content, so new mtimes (a fresh
    # clone) change nothing
    assert cache.read_bytes() == fresh
    before = cache.read_bytes()
    for p in paths:
        os.utime(store / p, ns=(1, 1))
    _, counts = compute_features(paths, store, cache, cfg, progress=False)
    assert counts == {"computed": 0, "reused": len(paths)} and cache.read_bytes() == before
    # a new episode and one rewritten frame: only those are computed
    rng = np.random.default_rng(1)
    new = [f"0/20240709_000000_{i:04d}.png" for i in range(5)]
    for p in new:
        cv2.imwrite(str(store / p), frame(rng, 0))
    changed = paths[0]
    cv2.imwrite(str(store / changed), 255 - cv2.imread(str(store / changed)))
    table, counts = compute_features(paths + new, store, cache, cfg, progress=False)
    assert counts == {"computed": len(new) + 1, "reused": len(paths) - 1}
    row = table.set_index("path").loc[changed]
    assert row["brightness"] != first.set_index("path").loc[changed, "brightness"]
    # frames that left the store leave the cache; other feature settings invalidate it
    compute_features(paths[:10], store, cache, cfg, progress=False)
    assert len(pd.read_csv(cache)) == 10
    _, counts = compute_features(paths[:10], store, cache, FeatureConfig(hash_size=8), progress=False)
    assert counts["computed"] == 10


def test_time_split_reference_pairs_each_users_early_and_late_episodes(tmp_path):
    rows = [
        {"episode": f"u{u}e{e}", "user_id": f"u{u}", "timestamp": f"2024-07-0{e + 1}T00:00:00", "readable": True}
        for u in range(3)
        for e in range(4 if u < 2 else 1)
        for _ in range(3)
    ]
    frames = pd.DataFrame(rows)
    choice = choose_reference(frames, tmp_path / "absent.csv", min_episodes=4)
    assert choice["kind"] == "time_split"
    assert set(choice["reference"]["episode"]) == {"u0e0", "u0e1", "u1e0", "u1e1"}
    assert set(choice["current"]["episode"]) == {"u0e2", "u0e3", "u1e2", "u1e3"}  # u2 (one episode) left out
    assert "1 users with one episode left out" in choice["description"]
    few = choose_reference(frames[frames["user_id"] == "u2"], tmp_path / "absent.csv", min_episodes=4)
    assert few["kind"] == "none" and few["reference"] is None
    check = check_drift({"drift_share": None, "skipped": few["description"]}, 0.3, 1.0)
    assert check.passed and check.value is None and "not measured" in check.message


def test_wandb_mode_resolution():
    assert resolve_mode("offline", {}) == ("offline", None)
    assert resolve_mode("offline", {"WANDB_MODE": "disabled"}) == ("disabled", None)
    mode, note = resolve_mode("online", {})
    assert mode == "offline" and "WANDB_API_KEY" in note
    assert resolve_mode("offline", {"WANDB_MODE": "online", "WANDB_API_KEY": "x"}) == ("online", None)
    assert resolve_mode("bogus", {})[0] == "offline"


def test_wandb_offline_run_is_written_locally(project, monkeypatch):
    make_store(project)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    params = stage_params()
    params["validate"]["wandb"].update(mode="offline", dir=str(project / "wb"))
    metrics, error = run_stage(params)
    assert error is None and metrics["wandb_mode"] == "offline"
    runs = list((project / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
