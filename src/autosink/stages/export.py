"""`export` stage: models/model.ckpt -> models/model.onnx + its card models/model.json.

The graph takes raw camera frames (uint8 RGB NHWC at the camera resolution) and holds the crop,
resize and normalisation the model was trained with; the export checks it against torch on real
validation frames before it replaces the file. The card records where the model came from
(feature-store version, git revision, checkpoint) and how it scored (eval and case gate).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autosink.core.fileio import sha256_file
from autosink.learn.export import export_onnx, write_model_card
from autosink.learn.frames import read_frame, read_split
from autosink.learn.training import load_trained

CKPT = Path("models/model.ckpt")
ONNX = Path("models/model.onnx")
EVAL = Path("reports/eval.json")
CASES = Path("reports/cases.json")
STORE = Path("data/feature-store")
VAL = Path("data/splits/val.csv")


def run(params: dict, progress: bool = True) -> dict:
    cfg = params["export"]
    h, w = int(params["data"]["frame_height"]), int(params["data"]["frame_width"])
    net, meta = load_trained(CKPT)
    val = read_split(VAL)
    frames = np.stack([read_frame(STORE / p, (w, h)) for p in val["path"].head(int(cfg["parity_frames"]))])
    export_onnx(net, ONNX, height=h, width=w, opset=int(cfg["opset"]), check_frames=frames)

    evaluation = json.loads(EVAL.read_text())
    cases = json.loads(CASES.read_text())
    ckpt_sha = sha256_file(CKPT)
    metrics = {
        "eval": {k: evaluation[k] for k in ("n", "accuracy", "precision", "recall", "f1", "auroc")},
        "cases": {name: {"accuracy": c["accuracy"], "n": c["n"]} for name, c in cases["cases"].items()},
        "gate_passed": bool(cases["passed"]),
    }
    card = write_model_card(
        ONNX,
        backbone=net.backbone_name,
        threshold=float(meta["threshold"]),
        # named after the ONNX bytes, which retraining with the same data and code reproduces
        # (the checkpoint's bytes differ from run to run)
        version=f"{net.backbone_name}-{sha256_file(ONNX)[:10]}",
        data_version=meta.get("data_version", ""),
        height=h,
        width=w,
        metrics=metrics,
        extra={
            "checkpoint_sha256": ckpt_sha,
            # what trained it: parameters + training code + splits, and the wandb run that logged it
            "training_fingerprint": meta.get("fingerprint"),
            "wandb_run_id": meta.get("wandb_run_id"),
            # how the threshold was chosen (the closed loop, or offline accuracy)
            "threshold_rule": meta.get("threshold_rule", "best accuracy on the validation split"),
            "water_invariance": evaluation.get("water_invariance"),
            "accuracy_vs_truth": evaluation.get("accuracy_vs_truth"),
        },
        input_size=(net.preprocess.height, net.preprocess.width),
        crop=net.preprocess.crop,
    )
    print(
        f"export: {ONNX} ({ONNX.stat().st_size / 1e6:.1f} MB, opset {cfg['opset']}, parity checked on "
        f"{len(frames)} validation frames) + {card}; case gate {'passed' if cases['passed'] else 'FAILED'}"
    )
    return metrics
