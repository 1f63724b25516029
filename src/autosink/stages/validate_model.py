"""`validate_model` stage: the trained model on every case set -> reports/cases.json (the gate's
verdict, which `autosink promote` reads) and metrics/cases.json (its headline numbers).

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

from autosink.core.fileio import sha256_file
from autosink.learn.cases import evaluate_cases, format_report, gate, list_cases, onnx_predictor
from autosink.learn.training import load_trained
from autosink.stages import write_results

CKPT = Path("models/model.ckpt")
PRODUCTION = Path("models/production/model.onnx")
KEYS = ("passed", "cases_passed", "cases_total", "worst_case_accuracy", "mean_case_accuracy")


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
    result.update(
        checkpoint_sha256=sha256_file(CKPT),
        threshold=float(meta["threshold"]),
        champion=champion_info,
        backbone=net.backbone_name,
    )
    accuracy = [c["accuracy"] for c in result["cases"].values()]
    metrics = {
        "cases_passed": sum(bool(c["passed"]) for c in result["cases"].values()),
        "cases_total": len(accuracy),
        "worst_case_accuracy": min(accuracy, default=None),
        "mean_case_accuracy": sum(accuracy) / len(accuracy) if accuracy else None,
    }
    write_results("cases", {**result, **metrics}, KEYS)
    print(format_report(result))
    if champion is None:
        print("validate_model: no production model yet (models/production/model.onnx): no regression check")
    return result
