"""Sparse-to-dense propagation rules (src/autosink/data/labels.py), one frame per second unless said;
human label files (the episode sha256 they record, the save lock) and how the label stage reports
labels given for another file of their episode."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autosink.core.fileio import sha256_file
from autosink.data.labels import (
    IGNORE,
    LABELS_MATCH,
    LABELS_MISMATCH,
    LABELS_UNVERIFIED,
    HumanLabelFile,
    LabelRules,
    human_labels_lock,
    human_labels_lock_path,
    parse_human_labels,
    propagate,
    read_human_label_file,
    read_human_labels,
    user_events,
    write_human_labels,
)

RULES = LabelRules(min_reaction_s=1, max_reaction_s=3, min_override_s=2, passive_window_s=1)


def seq(text: str) -> list[int]:
    return [int(c) for c in text]


def test_no_override_no_switch_follows_the_model():
    m = seq("0000000000")
    out = propagate(m, m, fps=1, rules=RULES)
    assert out.label.tolist() == m and not out.review.any()
    assert set(out.rule) == {"accepted"} and np.allclose(out.confidence, RULES.conf_accepted)


def test_model_switch_the_user_went_along_with_is_uncertain_nearby():
    m = seq("0000011111")
    out = propagate(m, m, fps=1, rules=RULES)
    assert out.label.tolist() == m  # nothing contradicts the model
    assert out.review.tolist() == [False] * 4 + [True, True] + [False] * 4
    assert out.rule[4] == "uncertain" and out.confidence[4] == RULES.conf_review


def test_forced_on_applies_from_before_the_override():
    # the need starts somewhere before frame 6; the user forces water on at 6 and lets go at 10
    m = seq("000000000000")
    s = seq("000000111100")
    out = propagate(m, s, fps=1, rules=RULES)
    assert out.rule[6:10] == ["override"] * 4 and (out.label[6:10] == 1).all()
    assert out.label[5] == 1 and out.rule[5] == "reaction" and not out.review[5]  # surely needed already
    assert out.review[3:5].all() and out.label[3:5].tolist() == [0, 1]  # uncertain: split at the mean delay
    assert not out.review[:3].any() and out.label[:3].tolist() == [0, 0, 0]
    # letting go at 10 is the user's own decision: no delay, nothing propagates back
    assert out.label[9] == 1 and out.label[10] == 0 and not out.review[9:].any()


def test_closing_the_faucet_after_the_model_wrongly_opened_it():
    # the model turns on at 4; the user closes at 6 (reaction 2 s); the model goes off at 9
    m = seq("0000111110")
    s = seq("0000110000")
    out = propagate(m, s, fps=1, rules=RULES)
    assert out.label.tolist() == seq("0000000000")  # best guess: wrong from the model's switch on
    assert out.rule[5] == "reaction" and not out.review[5]
    assert out.review[3:5].all()  # the switch is the likely start, but a human confirms it
    assert out.rule[6:9] == ["override"] * 3


def test_reopening_after_a_close_is_immediate():
    m = seq("1111111111")
    s = seq("1110000111")  # closed at 3, reopened at 7 (the user wants water again)
    out = propagate(m, s, fps=1, rules=RULES)
    assert user_events(np.array(m), np.array(s)) == [3, 7]
    assert out.label[6] == 0 and out.label[7] == 1 and not out.review[5:].any()


def test_late_reaction_scales_with_fps():
    m = [0] * 20
    s = [0] * 12 + [1] * 8
    out = propagate(m, s, fps=2, rules=RULES)  # 1 s = 2 frames, 3 s = 6 frames
    assert out.label[10:12].tolist() == [1, 1] and not out.review[10:12].any()
    assert out.review[6:10].all() and not out.review[5]


def test_overlapping_overrides_do_not_reach_past_each_other():
    # forced on 3..5, let go at 6, forced on again at 8
    m = seq("0000000000000")
    s = seq("0001110011100")
    out = propagate(m, s, fps=1, rules=RULES)
    assert user_events(np.array(m), np.array(s)) == [3, 6, 8, 11]
    assert out.label[7] == 1 and out.rule[7] == "reaction"
    # the re-force at 8 reaches back at most to the let-go at 6, not over the first override
    assert out.rule[6] == "uncertain"
    assert out.rule[3:6] == ["override"] * 3


def test_flicker_is_ignored_and_reviewed():
    m = seq("0000000000")
    s = seq("0000100000")  # a one-frame toggle
    out = propagate(m, s, fps=1, rules=RULES)
    assert out.label[4] == IGNORE and out.review[4] and out.rule[4] == "flicker"


def test_water_the_controller_held_after_a_release_is_ignored_not_wanted():
    """The user pressed for water (frames 3-5), let go; the Pi held the valve open 3 s more (the
    valve column says open, the user's state says no): those frames are ignored, not read as a wish."""
    m = seq("000000000000")
    s = seq("000111000000")
    v = seq("000111111000")
    out = propagate(m, s, fps=1, rules=RULES, arduino_output=v)
    assert list(out.label[3:6]) == [1, 1, 1]
    assert list(out.label[6:9]) == [IGNORE] * 3 and set(out.rule[6:9]) == {"hold"} and not out.review[6:9].any()
    assert list(out.label[9:]) == [0, 0, 0]
    # without the valve column (the earlier Pis' episodes: arduino_output always 0) nothing changes
    assert list(propagate(m, s, fps=1, rules=RULES).label) == list(propagate(m, s, 1, RULES, seq("0" * 12)).label)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="equal-length"):
        propagate([0, 1], [0], fps=1)
    with pytest.raises(ValueError, match="fps"):
        propagate([0], [0], fps=0)
    with pytest.raises(ValueError, match="arduino_output"):
        propagate([0, 1], [0, 1], fps=1, arduino_output=[1])
    with pytest.raises(ValueError, match="min_reaction_s"):
        LabelRules(min_reaction_s=3, max_reaction_s=1)


def test_flicker_gives_no_confident_reaction_window():
    m = seq("0000000000")
    s = seq("0000100000")
    out = propagate(m, s, fps=1, rules=RULES)
    assert not any(r == "reaction" for r in out.rule)
    assert out.review[1:4].all() and out.rule[3] == "uncertain"


# ---------------------------------------------------------------------------- human label files

SHA_A, SHA_B = "a" * 64, "b" * 64


def test_human_label_file_records_the_episode_sha256(tmp_path):
    path = tmp_path / "20240706_172000.csv"
    write_human_labels(path, {12: 1, 3: -1, 4: 0}, SHA_A)
    assert path.read_text() == f"# episode sha256: {SHA_A}\nframe_index,label\n3,-1\n4,0\n12,1\n"
    doc = read_human_label_file(path)
    assert doc == HumanLabelFile({3: -1, 4: 0, 12: 1}, SHA_A)
    assert read_human_labels(path) == {3: -1, 4: 0, 12: 1}
    assert doc.check(SHA_A) == LABELS_MATCH
    assert doc.check(SHA_B) == LABELS_MISMATCH  # a re-upload of the episode with other frames
    write_human_labels(path, {}, SHA_A)  # no labels left: still says which file it was for
    assert read_human_label_file(path) == HumanLabelFile({}, SHA_A)


def test_older_human_label_files_without_the_sha_still_load_unverified(tmp_path):
    path = tmp_path / "20240706_172000.csv"
    path.write_text("frame_index,label\n5,1\n6,-1\n")
    doc = read_human_label_file(path)
    assert doc == HumanLabelFile({5: 1, 6: -1}, None)
    assert doc.check(SHA_A) == doc.check(SHA_B) == LABELS_UNVERIFIED
    write_human_labels(path, {5: 1})  # no sha given: the older format
    assert path.read_text() == "frame_index,label\n5,1\n"


@pytest.mark.parametrize(
    "text, match",
    [
        ("# episode sha256: xyz\nframe_index,label\n", "line 1: expected '# episode sha256: <64 hex digits>'"),
        (f"# episode sha256: {SHA_A.upper()}\nframe_index,label\n", "line 1"),
        ("# a note\nframe_index,label\n", "line 1"),
        (f"# episode sha256: {SHA_A}\n", "line 2: expected header"),
        (f"# episode sha256: {SHA_A}\nidx,label\n", "line 2: expected header"),
        (f"# episode sha256: {SHA_A}\nframe_index,label\n1,1\n1,0\n", "line 4: frame 1 labelled twice"),
        (f"frame_index,label\n# episode sha256: {SHA_A}\n", "line 2: expected 'frame_index,label'"),
    ],
)
def test_malformed_human_label_files_name_the_line(text, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        parse_human_labels(text, "x.csv")


def test_writing_refuses_bad_labels_and_bad_shas(tmp_path):
    path = tmp_path / "e.csv"
    for labels, sha in (({1: 2}, SHA_A), ({-1: 1}, SHA_A), ({1: 1}, "abc"), ({1: 1}, SHA_A.upper())):
        with pytest.raises(ValueError, match=r"e\.csv"):
            write_human_labels(path, labels, sha)
    assert not path.exists() and list(tmp_path.iterdir()) == []


HOLD = textwrap.dedent("""
    import sys
    from autosink.data.labels import human_labels_lock
    with human_labels_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.readline()
""")


def test_the_labels_lock_excludes_other_processes_and_leaves_no_file(tmp_path, repo_root):
    path = tmp_path / "labels" / "20240706_172000.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        cwd=repo_root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        assert human_labels_lock_path(path).exists()
        with pytest.raises(TimeoutError, match="another save holds its lock"):
            with human_labels_lock(path, timeout=0.2):
                pass
        writer = threading.Thread(target=write_human_labels, args=(path, {1: 1}, SHA_A))
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive() and not path.exists()  # waits for the holder
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
        writer.join(10)
        assert not writer.is_alive()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert read_human_label_file(path) == HumanLabelFile({1: 1}, SHA_A)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no lock or temp file left


def test_a_lock_file_left_by_a_killed_save_is_harmless(tmp_path):
    path = tmp_path / "20240706_172000.csv"
    human_labels_lock_path(path).write_text("")
    write_human_labels(path, {2: 0}, SHA_A)
    assert read_human_labels(path) == {2: 0} and not human_labels_lock_path(path).exists()


# ---------------------------------------------------------------------------- the label stage


def test_label_stage_skips_and_reports_labels_given_for_another_file(tmp_path, monkeypatch, capsys):
    """Labels for a re-uploaded episode (the file's sha is not the lake file's) are not applied and
    are reported in the output, reports/labels.json and the run record; older files without the
    sha are applied and named; matching ones are applied."""
    from autosink.data.extract import extract_lake
    from autosink.stages import label as stage
    from tests.lakes import make_episode

    lake = tmp_path / "data/data-lake"
    lake.mkdir(parents=True)
    names = []
    for hour in (9, 10, 11):
        z = make_episode(lake, datetime(2024, 7, 1, hour, 0, 0), [0] * 8, [0] * 4 + [1] * 4)
        names.append(z.stem)
    ok, changed, old = names
    extract_lake(lake, tmp_path / "data/extracted", expected_size=None, progress=False)
    sha = {n: sha256_file(lake / f"{n}.zip") for n in names}
    labels = tmp_path / "data/labels"
    write_human_labels(labels / f"{ok}.csv", {0: 1, 1: 1}, sha[ok])
    write_human_labels(labels / f"{changed}.csv", {2: 1, 3: 1, 4: 0}, "0" * 64)  # for another file
    (labels / f"{old}.csv").write_text("frame_index,label\n7,-1\n")  # an older file: no sha
    monkeypatch.chdir(tmp_path)
    params = {"label": {"default_fps": 2.0, "truth_dir": "data/truth"}, "data": {"source": "lake"}}

    metrics = stage.run(params, progress=False)
    out = capsys.readouterr().out
    assert f"data/labels/{changed}.csv" in out and "NOT applied" in out
    assert f"data/labels/{old}.csv" in out and "without the episode sha256" in out
    report = json.loads(Path("reports/labels.json").read_text())
    assert report["human_label_files_mismatched"] == [f"data/labels/{changed}.csv"]
    assert report["frames_human"] == metrics["frames_human"] == 3  # 2 (matching) + 1 (older file)
    record = json.loads(Path("runs/stages/label.json").read_text())
    assert record["human_label_files_mismatched"] == [
        {
            "file": f"data/labels/{changed}.csv",
            "episode": changed,
            "labels": 3,
            "labels_for_sha256": "0" * 64,
            "episode_sha256": sha[changed],
        }
    ]
    assert record["human_label_files_unverified"] == [f"data/labels/{old}.csv"]
    manifest = pd.read_csv("data/feature-store/manifest.csv", dtype={"episode": str})
    human = manifest[manifest["source"] == "human"]
    assert sorted(zip(human["episode"], human["frame_index"])) == [(ok, 0), (ok, 1), (old, 7)]

    # Reported on every run until fixed, reused episodes included; once relabelled for the
    # episode's file, applied and no longer reported.
    stage.run(params, progress=False)
    assert f"data/labels/{changed}.csv" in capsys.readouterr().out
    write_human_labels(labels / f"{changed}.csv", {2: 1}, sha[changed])
    stage.run(params, progress=False)
    assert "NOT applied" not in capsys.readouterr().out
    report = json.loads(Path("reports/labels.json").read_text())
    assert "human_label_files_mismatched" not in report and report["frames_human"] == 4
    assert json.loads(Path("runs/stages/label.json").read_text())["human_label_files_mismatched"] == []
