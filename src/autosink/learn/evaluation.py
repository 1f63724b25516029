"""Evaluation of a trained model on held-out frames: metrics, per-episode accuracy, curves.

Frames go through the serving path, :meth:`WaterNet.forward` on raw RGB uint8 camera frames
(the graph the ONNX export holds), at the threshold training chose and the checkpoint records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from autosink.learn.frames import read_frame
from autosink.learn.model import WaterNet
from autosink.learn.renders import RenderCache, iter_renders
from autosink.learn.training import binary_metrics

__all__ = [
    "predict_paths",
    "evaluate_table",
    "curve_tables",
    "truth_report",
    "VISIBLE_STATE",
    "predict_water_on_off",
    "water_invariance",
]

#: What a single frame shows of the scene, in the simulator's truth files: everything the v1
#: label convention looks at except the washing step (pre-rinse / detergent / rinse).
VISIBLE_STATE = ("dish_in_roi", "dish_held", "hand_in_roi", "scrubber_visible", "water_on")


def predict_paths(
    net: WaterNet,
    paths: list[Path],
    frame_size: tuple[int, int],
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "predicting",
) -> np.ndarray:
    """``p(water_on)`` for each image file (read as RGB), through the full serving graph."""
    from tqdm import tqdm

    net.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
            frames = np.stack([read_frame(p, frame_size) for p in paths[start : start + batch_size]])
            out.append(net(torch.from_numpy(frames)).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def evaluate_table(table: pd.DataFrame, p: np.ndarray, threshold: float) -> dict:
    """Metrics over all frames plus accuracy per episode (the unit a user experiences)."""
    y = table["label"].to_numpy().astype(int)
    metrics = binary_metrics(p, y, threshold)
    metrics["threshold"] = float(threshold)
    pred = (p >= threshold).astype(int)
    per_episode = {}
    for episode, idx in table.groupby("episode").indices.items():
        per_episode[str(episode)] = {"n": int(len(idx)), "accuracy": float((pred[idx] == y[idx]).mean())}
    metrics["per_episode"] = per_episode
    metrics["worst_episode_accuracy"] = (
        min(v["accuracy"] for v in per_episode.values()) if per_episode else float("nan")
    )
    return metrics


def curve_tables(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, pd.DataFrame]:
    """Tables for ``dvc plots``: confusion pairs, ROC and precision-recall curves."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(y).astype(int)
    pred = (p >= threshold).astype(int)
    tables = {"confusion": pd.DataFrame({"actual": y, "predicted": pred})}
    if 0 < y.sum() < len(y):
        fpr, tpr, thr = roc_curve(y, p)
        tables["roc"] = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})
        precision, recall, thr = precision_recall_curve(y, p)
        tables["precision_recall"] = pd.DataFrame(
            {"recall": recall, "precision": precision, "threshold": np.append(thr, 1.0)}
        )
    return tables


def truth_report(
    table: pd.DataFrame, p: np.ndarray, threshold: float, truth_dir: Path, manifest: pd.DataFrame
) -> dict | None:
    """Held-out frames against the simulator's hidden truth (sample lake only; None when no test
    episode has a truth file; ``manifest``: the feature store's, for each frame's image name).
    Separates the model's errors from the labels' and bounds what a frame can tell:

    * ``label_agreement``: the pipeline's labels vs. the truth, where the truth is 0 or 1;
    * ``accuracy_vs_truth``: the model vs. the truth on those frames;
    * ``truth_ignore_share``: frames the v1 convention would ignore (truth -1) but that carry a
      label from the users' feedback (pre-rinse, a scrubber in sight), so they count in accuracy;
    * ``visible_state_ceiling``: the test accuracy (against the pipeline's labels) of the best
      rule that knows each frame's :data:`VISIBLE_STATE` exactly but not the washing step: the
      majority label of each state, fitted on these very frames (an upper bound).
    """
    parts = []
    named = table.assign(_i=np.arange(len(table))).merge(manifest[["path", "image"]], on="path", how="left")
    for episode, group in named.groupby("episode"):
        path = Path(truth_dir) / f"{episode}.csv"
        if path.exists():
            truth = pd.read_csv(path, usecols=["image", "label", *VISIBLE_STATE]).rename(columns={"label": "truth"})
            parts.append(group.merge(truth, on="image", how="inner"))
    if not parts:
        return None
    df = pd.concat(parts)
    y, t = df["label"].to_numpy(int), df["truth"].to_numpy(int)
    pred = (p[df["_i"].to_numpy()] >= threshold).astype(int)
    known = t != -1
    state_major = df.groupby(list(VISIBLE_STATE))["label"].transform(lambda x: int(x.mean() >= 0.5)).to_numpy()
    return {
        "frames": int(len(df)),
        "label_agreement": round(float((y[known] == t[known]).mean()), 4) if known.any() else None,
        "accuracy_vs_truth": round(float((pred[known] == t[known]).mean()), 4) if known.any() else None,
        "truth_ignore_share": round(float((~known).mean()), 4),
        "visible_state_ceiling": round(float((state_major == y).mean()), 4),
    }


def predict_water_on_off(
    net: WaterNet,
    states: list,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "water on/off pairs",
    workers: int | None = None,
    cache: RenderCache | None = None,
) -> np.ndarray:
    """``[N, 2]``: the network's probability (full serving graph) on each scene rendered with the
    water off (column 0) and running (column 1), the same scene and noise otherwise.

    Rendering is most of the work: :func:`autosink.learn.renders.iter_renders` draws ``batch_size``
    scenes at a time in ``workers`` processes (default: every core), or takes them from ``cache``,
    while this process runs the network on what arrives (normalise + backbone: the serving graph
    after its resize, on the resized renders rounded to uint8 as the cache keeps them)."""
    from tqdm import tqdm

    if not states:
        return np.zeros((0, 2), np.float32)
    preprocess = getattr(net, "preprocess", None)  # a WaterNet; anything else gets raw frames
    out = {False: [], True: []}
    net.eval()
    total = -(-len(states) // batch_size)
    renders = iter_renders(states, preprocess, batch_size, workers, cache)
    with torch.no_grad():
        for off_on in tqdm(renders, total=total, desc=desc, unit="batch", disable=not progress, leave=False):
            for water, x in zip((False, True), off_on):
                p = net(x) if preprocess is None else torch.sigmoid(net.logits_from_resized(x.float() / 255.0))
                out[water].append(p.numpy())
    return np.stack([np.concatenate(out[False]), np.concatenate(out[True])], 1)


def water_invariance(
    net: WaterNet,
    sessions: list,
    threshold: float,
    every: int = 1,
    batch_size: int = 32,
    progress: bool = False,
    cache: RenderCache | None = None,
) -> dict:
    """Does the model decide from the water it caused? Every ``every``-th frame of ``sessions``
    (held-out kitchens) is rendered twice, the same scene with the water running and without,
    and both go through the full serving graph (:func:`predict_water_on_off`).

    ``mean_abs_diff``: mean |p(water on) - p(water off)| over the pairs (0 = the stream carries
    no weight). ``accuracy_water_off`` / ``accuracy_water_on``: against the truth (frames the v1
    convention does not ignore); water-off is the frame the model sees when it must open the
    valve. ``pairs``: how many scenes.
    """
    from autosink.sim.session import label_of

    states = [st for s in sessions for st in s.states[:: max(1, int(every))]]
    p = predict_water_on_off(net, states, batch_size, progress, cache=cache)
    off, on = p[:, 0], p[:, 1]
    truth = np.array([label_of(st) for st in states])
    known = truth >= 0

    def acc(q: np.ndarray) -> float:
        return round(float(((q[known] >= threshold).astype(int) == truth[known]).mean()), 4)

    return {
        "pairs": len(states),
        "mean_abs_diff": round(float(np.abs(on - off).mean()), 4),
        "accuracy_water_off": acc(off),
        "accuracy_water_on": acc(on),
    }
