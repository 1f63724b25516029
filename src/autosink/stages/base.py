"""`base` stage: rendered sessions of the base kitchens -> models/base/model.ckpt (the starting
weights `train` fine-tunes), metrics/base.json."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch

from autosink.learn.base import BaseDataModule, base_sessions, render_pairs
from autosink.learn.model import build_preprocess
from autosink.learn.training import HISTORY_COLUMNS, fit
from autosink.stages import write_metrics, write_run_record

CKPT = Path("models/base/model.ckpt")
METRICS = Path("metrics/base.json")
HISTORY = Path("metrics/base/history.csv")


def base_params(params: dict) -> dict:
    """The params `fit` sees for the base run: `train` with `base.train` on top, from scratch."""
    base = params["base"]
    train = {**params["train"], **(base.get("train") or {}), "threshold": 0.5}
    return {**params, "model": {**params["model"], "weights": "none"}, "train": train}


def run(params: dict, progress: bool = True) -> dict:
    p = base_params(params)
    torch.set_num_threads(max(1, int(p["train"].get("threads") or os.cpu_count() or 1)))
    pre = build_preprocess(p["model"], p["data"])
    every = int(params["base"].get("every", 1))
    pairs = {
        split: render_pairs(
            base_sessions(params["sim"], params["base"], split), pre, every, progress, desc=f"base {split}"
        )
        for split in ("train", "val")
    }
    dm = BaseDataModule(pairs["train"], pairs["val"], p["train"], float(params["base"].get("stratify", 0.0)))
    result = fit(
        p,
        splits_dir=CKPT.parent / "no-splits",
        ckpt_dir=CKPT.parent / "checkpoints",
        out_ckpt=CKPT,
        progress=progress,
        datamodule=dm,
        data_version="sim-base",
        job_type="base",
    )
    if not result:  # a DDP worker other than rank 0
        return result
    history = result.pop("history")
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_csv(HISTORY, index=False)
    result["train_pairs"] = int(len(pairs["train"]["label"]))
    result["val_pairs"] = int(len(pairs["val"]["label"]))
    v = result["val"]
    write_metrics(
        METRICS,
        {
            "val_accuracy": v["accuracy"],
            "val_auroc": v["auroc"],
            "val_f1": v["f1"],
            "epochs": result["epochs"],
            "best_epoch": result["best_epoch"],
            "train_pairs": result["train_pairs"],
        },
    )
    write_run_record("base", result)
    print(
        f"base: {result['backbone']} {result['epochs']} epochs on {result['train_pairs']} rendered frames "
        f"(water on and off, {result['images_per_s']:.0f} images/s, {result['seconds']:.0f} s); val accuracy "
        f"{v['accuracy']:.3f} auroc {v['auroc']:.3f} -> {CKPT}"
    )
    return result
