"""`validate_model` stage: the trained model on every case set -> metrics/cases.json (the gate).

Each ``CASEnn-<label>-<desc>/`` folder under ``validate_model.cases_dir`` is scored with the
candidate (models/model.ckpt, the same graph the export ships) and, when there is one, with the
production model (models/production/model.onnx, run by onnxruntime as the Pi runs it). The
verdict (every case >= its minimum, no case regressed beyond the tolerance) is written whatever
it is; a failed gate does not stop `dvc repro` (export still runs, so the failure can be
inspected), it stops `autosink promote`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from autosink.cases import evaluate_cases, format_report, gate, list_cases, onnx_predictor
from autosink.fileio import sha256_file
from autosink.stages import write_metrics
from autosink.training import load_trained

CKPT = Path("models/model.ckpt")
PRODUCTION = Path("models/production/model.onnx")
METRICS = Path("metrics/cases.json")


def run(params: dict, progress: bool = True) -> dict:
    cfg = params["validate_model"]
    size = (int(params["data"]["frame_width"]), int(params["data"]["frame_height"]))
    cases = list_cases(cfg["cases_dir"])
    net, meta = load_trained(CKPT)

    def predict(frames):
        with torch.no_grad():
            return net(torch.from_numpy(frames)).numpy()

    challenger = evaluate_cases(predict, cases, float(meta["threshold"]), size)
    champion, champion_info = None, None
    if PRODUCTION.exists():
        production, threshold = onnx_predictor(PRODUCTION)
        champion = evaluate_cases(production, cases, threshold, size)
        champion_info = {"model_sha256": production.card["model_sha256"], "version": production.card["version"]}
    result = gate(challenger, champion, cfg)
    result.update(checkpoint_sha256=sha256_file(CKPT), threshold=float(meta["threshold"]), champion=champion_info,
                  backbone=net.backbone_name)
    write_metrics(METRICS, result)
    print(format_report(result))
    if champion is None:
        print("validate_model: no production model yet (models/production/model.onnx): no regression check")
    return result
