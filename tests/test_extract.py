"""Extraction: validated frames, quarantine with reasons, work proportional to change."""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd

from autosink.data.extract import extract_lake
from tests.lakes import make_episode


def _lake(tmp_path, n=3):
    lake = tmp_path / "lake"
    lake.mkdir()
    for k in range(n):
        make_episode(lake, datetime(2024, 7, 6, 17, 20 + k, 0), [0, 0, 1, 1], [0, 1, 1, 1])
    return lake


def test_extracts_frames_and_table(tmp_path):
    lake, out = _lake(tmp_path), tmp_path / "out"
    result = extract_lake(lake, out, expected_size=None, progress=False)
    assert (result.episodes_ok, result.episodes_quarantined, result.frames) == (3, 0, 12)
    table = pd.read_csv(out / "frames.csv", dtype={"episode": str})
    assert len(table) == 12 and table["episode"].nunique() == 3
    row = table.iloc[1]
    assert (row["model_output"], row["magnetic_status"], row["image"]) == (0, 1, "2.png")
    assert row["source"] == (lake / f"{row['episode']}.zip").as_posix()  # a reference, not a copy
    assert not list(out.rglob("*.png"))


def test_bad_episode_is_quarantined_and_others_go_through(tmp_path):
    lake, out = _lake(tmp_path), tmp_path / "out"
    (lake / "20240101_000000.zip").write_bytes(b"garbage")
    result = extract_lake(lake, out, expected_size=None, progress=False)
    assert result.episodes_ok == 3 and result.episodes_quarantined == 1
    record = json.loads((out / "quarantine/20240101_000000.json").read_text())
    assert "20240101_000000.zip" in record["reasons"][0] and record["sha256"]
    assert (lake / "20240101_000000.zip").exists()  # the raw file is never touched


def test_wrong_frame_size_is_quarantined(tmp_path):
    lake, out = _lake(tmp_path, n=1), tmp_path / "out"
    result = extract_lake(lake, out, expected_size=(640, 480), progress=False)
    assert result.episodes_quarantined == 1
    assert "640x480" in next(iter(result.quarantined.values()))[0].replace(" x ", "x")


def test_incremental_add_change_remove(tmp_path):
    lake, out = _lake(tmp_path), tmp_path / "out"
    extract_lake(lake, out, expected_size=None, progress=False)
    make_episode(lake, datetime(2024, 7, 7, 9, 0, 0), [1, 1], [1, 0])
    second = extract_lake(lake, out, expected_size=None, progress=False)
    assert (second.episodes_extracted, second.episodes_reused, second.episodes_ok) == (1, 3, 4)
    # change one episode's content: only it is redone
    first = sorted(lake.glob("*.zip"))[0]
    make_episode(lake, datetime(2024, 7, 6, 17, 20, 0), [1, 1, 1], [1, 1, 1])
    third = extract_lake(lake, out, expected_size=None, progress=False)
    assert (third.episodes_extracted, third.episodes_reused) == (1, 3)
    assert third.frames == 4 * 3 + 2 - 1
    first.unlink()
    fourth = extract_lake(lake, out, expected_size=None, progress=False)
    assert (fourth.episodes_removed, fourth.episodes_ok, fourth.episodes_extracted) == (1, 3, 0)
    assert not (out / "episodes" / f"{first.stem}.json").exists()


def test_leftover_temp_from_a_crash_is_cleaned(tmp_path):
    lake, out = _lake(tmp_path, n=1), tmp_path / "out"
    (out / "episodes").mkdir(parents=True)
    (out / "episodes/.20240706_172000.json.tmp").write_text("half")
    extract_lake(lake, out, expected_size=None, progress=False)
    assert not list((out / "episodes").glob(".*"))


def test_same_name_twice_is_quarantined_not_lost(tmp_path):
    lake, out = _lake(tmp_path, n=1), tmp_path / "out"
    twin = lake / "pi2"
    twin.mkdir()
    make_episode(twin, datetime(2024, 7, 6, 17, 20, 0), [0, 1], [0, 1])
    result = extract_lake(lake, out, expected_size=None, progress=False)
    assert result.episodes_ok == 0 and result.episodes_quarantined == 1
    assert "2 files in the lake have this name" in next(iter(result.quarantined.values()))[0]


def test_stricter_settings_recheck_reused_episodes(tmp_path):
    lake, out = _lake(tmp_path, n=2), tmp_path / "out"
    assert extract_lake(lake, out, expected_size=None, progress=False).episodes_ok == 2
    stricter = extract_lake(lake, out, expected_size=(640, 480), progress=False)
    assert stricter.episodes_quarantined == 2 and stricter.episodes_reused == 0


def test_moved_lake_updates_the_references(tmp_path):
    lake, out = _lake(tmp_path, n=1), tmp_path / "out"
    extract_lake(lake, out, expected_size=None, progress=False)
    moved = tmp_path / "lake2"
    lake.rename(moved)
    result = extract_lake(moved, out, expected_size=None, progress=False)
    assert result.episodes_reused == 1
    assert pd.read_csv(out / "frames.csv")["source"].str.startswith(moved.as_posix()).all()


_EXTRACT = r"""
import json, sys
from autosink.data.extract import extract_lake
runs = [extract_lake(sys.argv[1], sys.argv[2], expected_size=None, progress=False) for _ in range(2)]
print(json.dumps([{**r.metrics(), "quarantined": r.quarantined} for r in runs]))
"""


def test_devices_fifos_and_sockets_in_the_lake_are_quarantined(tmp_path):
    """Never opened nor hashed (a FIFO would block the stage, /dev/zero never end): quarantined
    with the reason, the good episodes go through, and the next run reuses the verdict."""
    from tests.special_files import KINDS, WORDS, make_special, run_isolated

    lake, out = _lake(tmp_path), tmp_path / "out"
    specials = {kind: make_special(lake / f"2024010{i + 1}_000000.zip", kind) for i, kind in enumerate(KINDS)}
    res = run_isolated(_EXTRACT, str(lake), str(out))
    assert res.returncode == 0, res.stderr
    first, second = json.loads(res.stdout.splitlines()[-1])  # (after the "quarantined ..." lines)
    assert (first["episodes_ok"], first["episodes_quarantined"], first["frames"]) == (3, 3, 12)
    assert (second["episodes_reused"], second["episodes_extracted"], second["episodes_quarantined"]) == (6, 0, 3)
    for kind, path in specials.items():
        (reason,) = first["quarantined"][path.stem]
        assert reason.startswith(f"{path}: path: is {WORDS[kind]}, not a regular file"), reason
        record = json.loads((out / "quarantine" / f"{path.stem}.json").read_text())
        assert record["reasons"] == [reason] and record["sha256"] is None and record["source"] == path.as_posix()
    assert len(pd.read_csv(out / "frames.csv")) == 12
