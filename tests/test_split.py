"""Split by group: no leakage, stratified, seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from autosink.data.split import SPLITS, make_splits

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def fake_manifest(sessions=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(sessions):
        for e in range(rng.integers(1, 4)):
            for i in range(rng.integers(5, 30)):
                rows.append(
                    {
                        "episode": f"ep{s:02d}{e}",
                        "frame_index": i,
                        "user_id": f"user_{s % 4}",
                        "dishwashing_id": f"{s:010x}",
                        "label": int(rng.random() < 0.3 + 0.02 * (s % 10)),
                        "source": "auto",
                        "confidence": 0.9,
                        "review": bool(rng.random() < 0.1),
                        "path": f"x/{s}_{e}_{i}.png",
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("group_by", ["dishwashing_id", "episode", "user_id"])
def test_no_group_in_two_splits(group_by):
    splits = make_splits(fake_manifest(), group_by, FRACTIONS, seed=1)
    seen = [set(splits[s][group_by]) for s in SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    # no frame of one episode in two splits, whatever the grouping
    episodes = [set(splits[s]["episode"]) for s in SPLITS]
    assert not (episodes[0] & episodes[1] | episodes[0] & episodes[2] | episodes[1] & episodes[2])


def test_stratified_and_sized():
    m = fake_manifest(sessions=60)
    splits = make_splits(m, "dishwashing_id", FRACTIONS, seed=1)
    total = sum(len(t) for t in splits.values())
    pos = sum(int(t["label"].sum()) for t in splits.values())
    for name, table in splits.items():
        assert abs(len(table) / total - FRACTIONS[name]) < 0.05
        assert abs(table["label"].sum() / pos - FRACTIONS[name]) < 0.05


def test_review_and_ignored_frames_left_out():
    m = fake_manifest()
    m.loc[0, "label"] = -1
    splits = make_splits(m, "dishwashing_id", FRACTIONS, seed=1)
    used = pd.concat(splits.values())
    assert len(used) == int(((m["label"] != -1) & ~m["review"]).sum())
    with_review = pd.concat(make_splits(m, "dishwashing_id", FRACTIONS, seed=1, include_review=True).values())
    assert len(with_review) == int((m["label"] != -1).sum())


def test_seeded():
    m = fake_manifest()
    a = make_splits(m, "dishwashing_id", FRACTIONS, seed=3)
    b = make_splits(m, "dishwashing_id", FRACTIONS, seed=3)
    assert all(a[s].equals(b[s]) for s in SPLITS)


def test_bad_params():
    with pytest.raises(ValueError, match="group_by"):
        make_splits(fake_manifest(), "frame", FRACTIONS, seed=1)
    with pytest.raises(ValueError, match="fractions"):
        make_splits(fake_manifest(), "episode", {"train": 1.0}, seed=1)
