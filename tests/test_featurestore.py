"""Feature store: dense labels, human labels win, cumulative, incremental, linked not copied."""

from __future__ import annotations

import json
import zipfile
from datetime import datetime

import pandas as pd
import pytest

from autosink.data.extract import extract_lake
from autosink.data.featurestore import build_feature_store
from autosink.data.labels import LabelRules, read_human_labels, write_human_labels
from tests.lakes import make_episode

RULES = LabelRules(min_reaction_s=0.5, max_reaction_s=1.0, min_override_s=0.5)


@pytest.fixture
def setup(tmp_path):
    lake, extracted, labels, store = (tmp_path / n for n in ("lake", "extracted", "labels", "store"))
    lake.mkdir()
    labels.mkdir()
    make_episode(lake, datetime(2024, 7, 6, 17, 20, 0), [0] * 8, [0, 0, 0, 0, 1, 1, 1, 1])
    make_episode(lake, datetime(2024, 7, 6, 17, 30, 0), [1] * 6, [1, 1, 1, 0, 0, 0])

    def build():
        extract_lake(lake, extracted, expected_size=None, progress=False)
        return build_feature_store(extracted, labels, store, RULES, default_fps=2.0, progress=False)

    return lake, labels, store, build


def manifest(store):
    return pd.read_csv(store / "manifest.csv", dtype={"episode": str})


def test_every_frame_has_a_label_and_image_folder_matches(setup):
    _, _, store, build = setup
    work = build()
    m = manifest(store)
    assert len(m) == 14 and set(m["source"]) == {"auto"}
    for _, row in m.iterrows():
        if row["label"] in (0, 1):
            assert row["path"].startswith(f"{row['label']}/") and (store / row["path"]).exists()
    on = m[(m["episode"] == "20240706_172000") & (m["frame_index"] >= 4)]
    assert (on["label"] == 1).all()
    files = {p.relative_to(store).as_posix() for c in "01" for p in (store / c).iterdir()}
    assert files == set(m.loc[m["path"].notna() & (m["path"] != ""), "path"])
    assert work["version"].startswith("fs-")


def test_store_frames_are_the_lake_bytes(setup):
    lake, _, store, build = setup
    build()
    m = manifest(store)
    row = m[m["label"] == 1].iloc[0]
    with zipfile.ZipFile(lake / f"{row['episode']}.zip") as z:
        assert (store / row["path"]).read_bytes() == z.read(row["image"])


def test_human_labels_win_and_only_that_episode_is_relabelled(setup):
    _, labels, store, build = setup
    first = build()
    write_human_labels(labels / "20240706_172000.csv", {0: 1, 5: -1})
    second = build()
    assert (second["episodes_relabelled"], second["episodes_reused"]) == (1, 1)
    m = manifest(store).set_index(["episode", "frame_index"])
    row = m.loc[("20240706_172000", 0)]
    assert (row["label"], row["source"], row["confidence"], bool(row["review"])) == (1, "human", 1.0, False)
    assert m.loc[("20240706_172000", 5), "label"] == -1
    assert not (store / "0/20240706_172000_0000.png").exists()
    assert (store / "1/20240706_172000_0000.png").exists()
    assert second["version"] != first["version"]


def test_cumulative_and_incremental_when_an_episode_arrives(setup):
    lake, _, store, build = setup
    build()
    make_episode(lake, datetime(2024, 7, 8, 8, 0, 0), [0, 0, 0, 0], [0, 0, 0, 0])
    work = build()
    assert (work["episodes_relabelled"], work["episodes_reused"], work["episodes"]) == (1, 2, 3)
    assert manifest(store)["episode"].nunique() == 3
    again = build()
    assert again["episodes_relabelled"] == 0 and again["version"] == work["version"]


def test_version_is_reproducible(setup, tmp_path):
    _, _, store, build = setup
    build()
    v1 = json.loads((store / "version.json").read_text())["version"]
    for p in store.rglob("*"):
        if p.is_file():
            p.unlink()
    build()
    assert json.loads((store / "version.json").read_text())["version"] == v1


def test_human_label_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "20240706_172000.csv"
    bad.write_text("frame_index,label\n3,2\n")
    with pytest.raises(ValueError, match=r"20240706_172000.csv: line 2"):
        read_human_labels(bad)
    bad.write_text("idx,label\n")
    with pytest.raises(ValueError, match="line 1"):
        read_human_labels(bad)
    bad.write_text("frame_index,label\n1,1\n1,0\n")
    with pytest.raises(ValueError, match="labelled twice"):
        read_human_labels(bad)


def test_human_label_for_missing_frame_is_an_error(setup):
    _, labels, _, build = setup
    write_human_labels(labels / "20240706_172000.csv", {99: 1})
    with pytest.raises(ValueError, match="frame 99"):
        build()
