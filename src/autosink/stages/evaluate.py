"""`evaluate` stage: models/model.ckpt on the held-out test split -> metrics/eval.json + plots."""

from __future__ import annotations

from pathlib import Path

from autosink.evaluation import curve_tables, evaluate_table, predict_paths
from autosink.frames import read_split
from autosink.stages import write_metrics
from autosink.training import load_trained

CKPT = Path("models/model.ckpt")
STORE = Path("data/feature-store")
TEST = Path("data/splits/test.csv")
METRICS = Path("metrics/eval.json")
PLOTS = Path("metrics/eval")


def run(params: dict, progress: bool = True) -> dict:
    net, meta = load_trained(CKPT)
    table = read_split(TEST)
    size = (int(params["data"]["frame_width"]), int(params["data"]["frame_height"]))
    p = predict_paths(net, [STORE / path for path in table["path"]], size, progress=progress, desc="evaluate")
    metrics = evaluate_table(table, p, float(meta["threshold"]))
    metrics["backbone"] = net.backbone_name
    metrics["data_version"] = meta.get("data_version", "")
    PLOTS.mkdir(parents=True, exist_ok=True)
    for name, frame in curve_tables(p, table["label"].to_numpy(), metrics["threshold"]).items():
        frame.to_csv(PLOTS / f"{name}.csv", index=False)
    table.assign(p_water=p.round(6), predicted=(p >= metrics["threshold"]).astype(int)).to_csv(
        PLOTS / "predictions.csv", index=False)
    write_metrics(METRICS, metrics)
    print(f"evaluate: {metrics['n']} held-out frames: accuracy {metrics['accuracy']:.3f}, f1 {metrics['f1']:.3f}, "
          f"auroc {metrics['auroc']:.3f}, worst episode {metrics['worst_episode_accuracy']:.2f} -> {METRICS}")
    return metrics
