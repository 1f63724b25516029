"""Train/val/test split by group (session, episode or user): no group in two splits.

Frames of one dish-washing session are near-duplicates of each other, so a
frame-level split leaks (the earlier system's defect). Groups are assigned
greedily, largest first in a seeded order, each to the split that brings both
the frame counts and the positive counts closest to the target fractions:
stratified, seeded, deterministic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
GROUP_KEYS = ("dishwashing_id", "episode", "user_id")


def usable_frames(manifest: pd.DataFrame, include_review: bool, min_confidence: float) -> pd.DataFrame:
    """Frames fit for training and evaluation: labelled 0/1, confident enough, reviewed if asked."""
    keep = manifest["label"].isin([0, 1]) & (manifest["confidence"] >= min_confidence)
    if not include_review:
        keep &= ~manifest["review"].astype(bool)
    return manifest[keep]


def assign_groups(frames: pd.DataFrame, group_by: str, fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Map each group to a split."""
    if group_by not in GROUP_KEYS:
        raise ValueError(f"prepare.group_by must be one of {GROUP_KEYS}, got {group_by!r}")
    if set(fractions) != set(SPLITS) or any(f < 0 for f in fractions.values()):
        raise ValueError(f"prepare.fractions needs non-negative train, val and test, got {fractions}")
    total_f = sum(fractions.values())
    target = np.array([fractions[s] / total_f for s in SPLITS])
    stats = frames.groupby(group_by)["label"].agg(n="size", pos="sum")
    rng = np.random.default_rng(seed)
    order = stats.assign(tie=rng.permutation(len(stats))).sort_values(["n", "tie"], ascending=[False, True])
    n_tot, pos_tot = max(stats["n"].sum(), 1), max(stats["pos"].sum(), 1)
    n_acc, pos_acc = np.zeros(len(SPLITS)), np.zeros(len(SPLITS))
    out: dict[str, str] = {}
    for group, row in order.iterrows():
        costs = []
        for i in range(len(SPLITS)):
            n_try, pos_try = n_acc.copy(), pos_acc.copy()
            n_try[i] += row["n"]
            pos_try[i] += row["pos"]
            costs.append(((n_try / n_tot - target) ** 2).sum() + ((pos_try / pos_tot - target) ** 2).sum())
        best = int(np.argmin(costs))
        n_acc[best] += row["n"]
        pos_acc[best] += row["pos"]
        out[str(group)] = SPLITS[best]
    return out


def make_splits(
    manifest: pd.DataFrame,
    group_by: str,
    fractions: dict[str, float],
    seed: int,
    include_review: bool = False,
    min_confidence: float = 0.0,
) -> dict[str, pd.DataFrame]:
    frames = usable_frames(manifest, include_review, min_confidence)
    assignment = assign_groups(frames, group_by, fractions, seed)
    split_of = frames[group_by].astype(str).map(assignment)
    cols = ["path", "label", "episode", "frame_index", "user_id", "dishwashing_id", "source", "confidence"]
    return {s: frames.loc[split_of == s, cols].reset_index(drop=True) for s in SPLITS}
