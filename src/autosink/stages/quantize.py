"""`quantize` stage: models/model.onnx -> the int8 edge model models/model.int8.onnx + its card
models/model.int8.json, and what int8 costs next to fp32 -> metrics/quantize.json (the headline),
reports/quantize.json (everything) and a table in the log.

Calibration: ``export.int8.calibration_frames`` frames spread evenly over the validation split,
raw camera frames as the graph takes them (:mod:`autosink.learn.quantize`). The cost, both files
run by onnxruntime through the edge's own loader (card and sha256 checked), one thread, on the
same frames: the test split against the simulator's truth (as the evaluate stage counts it) and
against the labels; every case set, with the case gate's floors and int8 against fp32 as the
champion (``validate_model`` parameters); the water benchmark's held-out sessions (``water``
parameters) through the edge loop, fp32's numbers taken from reports/water.json when that
report is about this model and these settings (else fp32 runs again here).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from autosink.core.fileio import sha256_file
from autosink.learn.cases import gate, list_cases, onnx_predictor
from autosink.learn.evaluation import truth_report
from autosink.learn.export import jsonable
from autosink.learn.frames import read_frame, read_split
from autosink.learn.quantize import (
    calibration_rows,
    compare_cases,
    compare_frames,
    compare_water,
    decision_summary,
    format_cost,
    int8_path_for,
    latency_ms,
    quantize_onnx,
    with_int8_defaults,
    write_int8_card,
)
from autosink.learn.training import binary_metrics
from autosink.learn.water import run_benchmark, with_water_defaults
from autosink.stages import REPORTS, write_results, write_run_record

MODEL = Path("models/model.onnx")
INT8 = int8_path_for(MODEL)  # models/model.int8.onnx, its card models/model.int8.json
STORE = Path("data/feature-store")
VAL = Path("data/splits/val.csv")
TEST = Path("data/splits/test.csv")
WATER = REPORTS / "water.json"
#: the headline (metrics/quantize.json); short names: `dvc metrics show` must fit 120 columns,
#: and none may equal another stage's metric (`dvc exp show --keep` selects them by name)
KEYS = ("int8_acc_truth", "acc_loss_pts", "int8_worst_case", "int8_withheld_pct", "int8_false_offs_10min")
WATER_KEYS = (
    "withheld_pct",
    "missed_needs_pct",
    "false_offs_per_10min",
    "savings_pct",
    "savings_of_oracle_pct",
    "litres_autosink",
    "valve_switches_per_min",
    "model_errors",
)
#: what must match for reports/water.json's fp32 numbers to stand beside int8's
WATER_SETTINGS = ("flow_l_min", "fps", "n_sessions", "user_overrides", "controller")


def _test_metrics(table: pd.DataFrame, p: np.ndarray, threshold: float, truth_dir: Path | None) -> dict:
    m = binary_metrics(p, table["label"].to_numpy(int), threshold)
    if truth_dir is not None:
        truth = truth_report(table, p, threshold, truth_dir, pd.read_csv(STORE / "manifest.csv"))
        if truth:
            m["accuracy_vs_truth"] = truth["accuracy_vs_truth"]
            m["truth_frames"] = truth["frames"]
    return jsonable(m, "quantize test metrics")


def run(params: dict, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    cfg = with_int8_defaults(params["export"]["int8"])
    size = (int(params["data"]["frame_width"]), int(params["data"]["frame_height"]))

    # ----------------------------------------------------------- quantise
    val = read_split(VAL)
    rows = calibration_rows(len(val), cfg["calibration_frames"])
    calib = np.stack([read_frame(STORE / p, size) for p in val["path"].iloc[rows]])
    data_version = json.loads((STORE / "version.json").read_text())["version"]
    settings = quantize_onnx(
        MODEL,
        INT8,
        calib,
        per_channel=cfg["per_channel"],
        activation_type=cfg["activation_type"],
        exclude_preprocessing=cfg["exclude_preprocessing"],
    )
    calibration = {"frames": len(calib), "data_version": data_version, "split": "val"}
    # a first card (no metrics yet): the edge's loader, which measures below, needs it
    write_int8_card(INT8, MODEL, calibration=calibration, quantization=settings, metrics={})
    seconds["quantize"] = time.perf_counter() - t0

    # ----------------------------------------------------------- test split, cases
    t = time.perf_counter()
    fp32, threshold = onnx_predictor(MODEL, threads=1)
    int8, threshold8 = onnx_predictor(INT8, threads=1)
    if threshold8 != threshold:
        raise ValueError(f"{INT8}: threshold {threshold8} differs from {MODEL}'s {threshold}")
    models = {"fp32": fp32, "int8": int8}
    table = read_split(TEST)
    p = compare_frames(models, [STORE / q for q in table["path"]], size)
    truth_dir = Path(params["label"]["truth_dir"])
    use_truth = truth_dir if params["data"]["source"] == "sample" and truth_dir.is_dir() else None
    test = {name: _test_metrics(table, p[name], threshold, use_truth) for name in models}
    test["agreement"] = decision_summary(p["fp32"], p["int8"], threshold)
    ref = "accuracy_vs_truth" if "accuracy_vs_truth" in test["fp32"] else "accuracy"
    loss = None
    if test["fp32"].get(ref) is not None and test["int8"].get(ref) is not None:
        loss = round(100.0 * (test["fp32"][ref] - test["int8"][ref]), 2)
    seconds["test"] = time.perf_counter() - t

    t = time.perf_counter()
    cases = list_cases(params["validate_model"]["cases_dir"])
    per_case = compare_cases(models, cases, threshold, size)
    verdict = gate(per_case["int8"], per_case["fp32"], params["validate_model"])
    seconds["cases"] = time.perf_counter() - t

    # ----------------------------------------------------------- water
    t = time.perf_counter()
    wcfg = with_water_defaults(params["water"])
    water8, _ = run_benchmark({**wcfg, "model": str(INT8)}, progress=progress)
    water32 = json.loads(WATER.read_text()) if WATER.is_file() else None
    fp32_sha = sha256_file(MODEL)
    why = None
    if water32 is None:
        why = f"{WATER} is missing"
    elif (water32.get("model") or {}).get("sha256") != fp32_sha:
        why = f"{WATER} is about another model"
    elif any(water32.get(k) != water8.get(k) for k in WATER_SETTINGS):
        why = f"{WATER} ran other settings"
    if why:
        print(f"quantize: {why}: running the fp32 model on the held-out sessions too")
        water32, _ = run_benchmark(wcfg, progress=progress)
    water = compare_water(water8, water32, WATER_KEYS)
    water["fp32_from"] = str(WATER) if why is None else "this run"
    seconds["water"] = time.perf_counter() - t

    # ----------------------------------------------------------- the card, the results
    worst = min((c["accuracy"] for c in per_case["int8"].values()), default=None)
    card_metrics = {
        "eval": {k: test["int8"][k] for k in ("n", "accuracy", "precision", "recall", "f1", "auroc")},
        "accuracy_vs_truth": test["int8"].get("accuracy_vs_truth"),
        "cases": {name: {"accuracy": c["accuracy"], "n": c["n"]} for name, c in per_case["int8"].items()},
        "gate_passed": bool(verdict["passed"]),
        "water": {k: water["int8"][k] for k in ("withheld_pct", "false_offs_per_10min", "savings_of_oracle_pct")},
        "vs_fp32": {"accuracy_loss_pts": loss, "decision_agreement": test["agreement"]["decision_agreement"]},
    }
    card = write_int8_card(INT8, MODEL, calibration=calibration, quantization=settings, metrics=card_metrics)
    sizes = {"fp32": MODEL.stat().st_size, "int8": INT8.stat().st_size}
    result = {
        "model": {
            "fp32": {"path": str(MODEL), "sha256": fp32_sha, "version": fp32.card["version"]},
            "int8": {
                "path": str(INT8),
                "sha256": sha256_file(INT8),
                "version": int8.card["version"],
                "card": str(card),
            },
        },
        "size_bytes": sizes,
        "calibration": calibration,
        "quantization": settings,
        "threshold": threshold,
        "test": test,
        "accuracy_loss_pts": loss,
        "accuracy_loss_of": ref,
        "cases": {**per_case, "gate": verdict},
        "water": water,
        "passed": bool(verdict["passed"]),
    }
    headline = {
        "int8_acc_truth": test["int8"].get("accuracy_vs_truth"),
        "acc_loss_pts": loss,
        "int8_worst_case": None if worst is None else round(worst, 4),
        "int8_withheld_pct": water["int8"]["withheld_pct"],
        "int8_false_offs_10min": water["int8"]["false_offs_per_10min"],
    }
    write_results("quantize", {**result, **headline}, KEYS)

    # what this machine measured (not a DVC output: it differs from machine to machine)
    frame = calib[0]
    latency = {name: round(latency_ms(path, frame), 3) for name, path in (("fp32", MODEL), ("int8", INT8))}
    seconds["total"] = time.perf_counter() - t0
    write_run_record(
        "quantize",
        {"seconds": {k: round(v, 2) for k, v in seconds.items()}, "latency_ms_p50_1_thread": latency, "sizes": sizes},
    )

    print(
        f"quantize: {INT8} ({sizes['int8'] / 1e6:.1f} MB, QDQ, {settings['weight_type']} weights"
        f"{' per channel' if settings['per_channel'] else ''}, {settings['activation_type']} activations, "
        f"{settings['excluded_nodes']} preprocessing nodes kept float) + {card}; calibrated on "
        f"{len(calib)} validation frames of {data_version}"
    )
    print(format_cost(result))
    fails = "; ".join(verdict["failures"])
    print(
        f"quantize: int8 case gate (floors, and int8 vs fp32 as the champion): "
        f"{'PASSED' if verdict['passed'] else 'FAILED: ' + fails}; water: {len(water.get('sessions_that_differ', []))} "
        f"of {water['n_sessions']} sessions differ (fp32 from {water['fp32_from']})"
    )
    print(
        f"quantize: one onnxruntime thread, one frame, p50: fp32 {latency['fp32']:.2f} ms, "
        f"int8 {latency['int8']:.2f} ms; "
        f"{seconds['total']:.0f} s (quantise {seconds['quantize']:.0f}, test {seconds['test']:.0f}, cases "
        f"{seconds['cases']:.0f}, water {seconds['water']:.0f}) -> {Path('metrics/quantize.json')}, "
        f"{REPORTS / 'quantize.json'}"
    )
    return result
