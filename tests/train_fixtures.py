"""A tiny feature store + splits on disk, and the real config shrunk to train on it in seconds."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from autosink.ops.config import compose

W, H = 64, 48  # tiny "camera" frames


def tiny_frame(label: int, rng: np.random.Generator) -> np.ndarray:
    """RGB frame: noisy background; label 1 has a bright square in the middle (learnable)."""
    img = rng.integers(40, 90, size=(H, W, 3), dtype=np.uint8)
    if label:
        img[16:32, 24:40] = (230, 200, 40)
    return img


def write_store(root: Path, sessions: int = 6, frames_per_session: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """``root/store`` (image folders) and ``root/splits/{train,val,test}.csv``, split by session."""
    rng = np.random.default_rng(seed)
    store, splits = root / "store", root / "splits"
    rows = []
    for s in range(sessions):
        for i in range(frames_per_session):
            label = int(i % 2)
            rel = f"{label}/ep{s:02d}_{i:04d}.png"
            (store / str(label)).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(store / rel), cv2.cvtColor(tiny_frame(label, rng), cv2.COLOR_RGB2BGR))
            rows.append(
                {
                    "path": rel,
                    "label": label,
                    "episode": f"ep{s:02d}",
                    "frame_index": i,
                    "user_id": f"user_{s % 3}",
                    "dishwashing_id": f"{s:010x}",
                    "source": "auto",
                    "confidence": 0.95,
                }
            )
    table = pd.DataFrame(rows)
    splits.mkdir(parents=True, exist_ok=True)
    n_test = max(1, sessions // 6)
    parts = {
        "train": range(0, sessions - 2 * n_test),
        "val": range(sessions - 2 * n_test, sessions - n_test),
        "test": range(sessions - n_test, sessions),
    }
    for name, sess in parts.items():
        table[table["episode"].isin([f"ep{s:02d}" for s in sess])].to_csv(splits / f"{name}.csv", index=False)
    return store, splits


def tiny_params(repo_root: Path, overrides: list[str] | None = None) -> dict:
    """The real composed config (conf/), shrunk: CPU, tiny input, one epoch, no logger."""
    params = compose(repo_root, overrides or [])
    params["data"].update(frame_width=W, frame_height=H)
    params["model"].update(input_height=32, input_width=32, crop=None, weights="none")
    params["train"].update(
        max_epochs=1,
        batch_size=8,
        accelerator="cpu",
        devices=1,
        strategy="auto",
        threads=1,
        early_stopping_patience=0,
        limit_train_batches=2,
        limit_val_batches=2,
    )
    params["train"]["wandb"]["mode"] = "disabled"
    return params
