"""The trivial baseline: can cheap global cues tell water-needed frames apart?

Features per frame (:data:`FEATURE_NAMES`): mean brightness and mean R, G, B of the whole frame
and of the ROI, plus the earlier system's 'objectness' cues: the ROI's mean deviation from the
empty-basin colour (estimated per frame as the median colour of basin floor strips beside the
ROI) and the Canny edge density in the ROI. A logistic regression trained on the 0/1 frames of
half the sessions and tested on the other half must stay well below 0.9 accuracy, otherwise the
simulated scenes would be solvable without looking at the scene's structure.
"""

from __future__ import annotations

import cv2
import numpy as np

from autosink.sim.scene import ROI

FEATURE_NAMES = (
    "frame_brightness",
    "frame_r",
    "frame_g",
    "frame_b",
    "roi_brightness",
    "roi_r",
    "roi_g",
    "roi_b",
    "roi_basin_deviation",
    "roi_edge_density",
)

_STRIPS = ((slice(170, 330), slice(120, 200)), (slice(170, 330), slice(440, 520)))


def trivial_features(frame: np.ndarray) -> np.ndarray:
    """The feature vector of one RGB uint8 (480, 640, 3) frame (float64, len(FEATURE_NAMES))."""
    f = frame.astype(np.float32)
    x0, y0, x1, y1 = ROI
    roi = f[y0:y1, x0:x1]
    whole_rgb = f.reshape(-1, 3).mean(0)
    roi_rgb = roi.reshape(-1, 3).mean(0)
    lum = np.array([0.299, 0.587, 0.114], np.float32)
    strips = np.concatenate([f[sy, sx][::2, ::2].reshape(-1, 3) for sy, sx in _STRIPS])
    basin = np.median(strips, axis=0)
    dev = float(np.abs(roi[::2, ::2] - basin).mean())
    grey = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    edges = float((cv2.Canny(grey, 50, 150) > 0).mean())
    return np.array([float(whole_rgb @ lum), *whole_rgb, float(roi_rgb @ lum), *roi_rgb, dev, edges], np.float64)


def evaluate_trivial(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> dict:
    """Logistic regression on :func:`trivial_features`, trained on half the groups (sessions)
    and tested on the other half; also the majority-class baseline on the same split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, groups = np.asarray(X, np.float64), np.asarray(y, np.int64), np.asarray(groups)
    nan = float("nan")
    if len(y) == 0:
        return {"trivial_baseline_accuracy": nan, "majority_baseline_accuracy": nan, "n_train": 0, "n_test": 0}
    uniq = np.unique(groups)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    train_groups = set(uniq[perm[: max(1, len(uniq) // 2)]].tolist())
    tr = np.array([g in train_groups for g in groups])
    te = ~tr
    if te.sum() == 0:  # a single session: split its frames in time instead
        tr = np.arange(len(y)) < len(y) // 2
        te = ~tr
    majority = int(np.bincount(y[tr], minlength=2).argmax()) if tr.any() else 0
    maj_acc = float((y[te] == majority).mean()) if te.any() else nan
    if len(np.unique(y[tr])) < 2:
        acc = maj_acc
    else:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(X[tr], y[tr])
        acc = float((clf.predict(X[te]) == y[te]).mean())
    return {
        "trivial_baseline_accuracy": acc,
        "majority_baseline_accuracy": maj_acc,
        "n_train": int(tr.sum()),
        "n_test": int(te.sum()),
    }
