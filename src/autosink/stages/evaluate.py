"""`evaluate` stage: models/model.ckpt on the held-out test split -> metrics/eval.json + plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from autosink.learn.evaluation import curve_tables, evaluate_table, predict_paths, truth_report, water_invariance
from autosink.learn.frames import read_split
from autosink.learn.renders import RenderCache
from autosink.learn.training import load_trained
from autosink.stages import REPORTS, write_results

CKPT = Path("models/model.ckpt")
STORE = Path("data/feature-store")
TEST = Path("data/splits/test.csv")
METRICS = Path("metrics/eval.json")
REPORT = REPORTS / "eval.json"
#: the headline (the rest, per-episode accuracy and the truth report included, is in REPORT)
#: (feedback-label accuracy and AUROC there too: the headline must fit a 120-column `dvc metrics show`)
KEYS = ("accuracy_vs_truth", "f1", "water_invariance.mean_abs_diff", "water_invariance.accuracy_water_off")
PLOTS = Path("metrics/eval")


def run(params: dict, progress: bool = True) -> dict:
    net, meta = load_trained(CKPT)
    table = read_split(TEST)
    size = (int(params["data"]["frame_width"]), int(params["data"]["frame_height"]))
    p = predict_paths(net, [STORE / path for path in table["path"]], size, progress=progress, desc="evaluate")
    metrics = evaluate_table(table, p, float(meta["threshold"]))
    truth_dir = Path(params["label"]["truth_dir"])
    if params["data"]["source"] == "sample" and truth_dir.is_dir():
        truth = truth_report(table, p, metrics["threshold"], truth_dir, pd.read_csv(STORE / "manifest.csv"))
        if truth:
            metrics["truth"] = truth
            metrics["accuracy_vs_truth"] = truth["accuracy_vs_truth"]
    inv = params.get("evaluate", {}).get("invariance") or {}
    if int(inv.get("sessions", 0)) > 0:
        from autosink.learn.water import heldout_scripts

        scripts = heldout_scripts(params["water"])[: int(inv["sessions"])]
        cache = RenderCache.from_params(params, net.preprocess)
        metrics["water_invariance"] = water_invariance(
            net, scripts, metrics["threshold"], int(inv.get("every", 1)), progress=progress, cache=cache
        )
    metrics["backbone"] = net.backbone_name
    metrics["data_version"] = meta.get("data_version", "")
    PLOTS.mkdir(parents=True, exist_ok=True)
    for name, frame in curve_tables(p, table["label"].to_numpy(), metrics["threshold"]).items():
        frame.to_csv(PLOTS / f"{name}.csv", index=False)
    table.assign(p_water=p.round(6), predicted=(p >= metrics["threshold"]).astype(int)).to_csv(
        PLOTS / "predictions.csv", index=False
    )
    write_results("eval", metrics, KEYS)
    print(
        f"evaluate: {metrics['n']} held-out frames: accuracy {metrics['accuracy']:.3f}, f1 {metrics['f1']:.3f}, "
        f"auroc {metrics['auroc']:.3f}, worst episode {metrics['worst_episode_accuracy']:.2f} -> {METRICS}, {REPORT}"
    )
    if "truth" in metrics:
        t = metrics["truth"]
        print(
            f"evaluate: against the simulator's truth: labels agree {t['label_agreement']}, model "
            f"{t['accuracy_vs_truth']}; {t['truth_ignore_share']:.0%} of test frames are 'ignore' by the "
            f"convention; a rule seeing each frame's state but not the washing step reaches "
            f"{t['visible_state_ceiling']:.3f}"
        )
    if "water_invariance" in metrics:
        w = metrics["water_invariance"]
        print(
            f"evaluate: water on vs off on {w['pairs']} held-out scenes: probability moves by {w['mean_abs_diff']:.3f} "
            f"on average; accuracy vs truth with the water off {w['accuracy_water_off']:.3f}, on "
            f"{w['accuracy_water_on']:.3f}"
        )
    return metrics
