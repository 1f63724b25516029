"""Case folders, case evaluation and the case gate (fast: small frames, a tiny ONNX model, no training)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from autosink.core.modelcard import card_path_for, read_card, write_card
from autosink.learn.cases import (
    Case,
    CaseError,
    case_score,
    evaluate_cases,
    format_report,
    gate,
    list_cases,
    onnx_predictor,
    parse_case_name,
    wilson_interval,
)
from tests.edge_fixtures import bright_roi_frame, write_tiny_model

SMALL = (32, 24)  # width, height of the synthetic frames: reading is the slow part


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_case(root: Path, name: str, frames: list[np.ndarray] | int = 2) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if isinstance(frames, int):  # pixel (0, 0) tells the label, so an oracle can read it off the frame
        label = name.split("-")[1] == "1"
        frames = [np.full((SMALL[1], SMALL[0], 3), 10 * k, np.uint8) for k in range(frames)]
        for f in frames:
            f[0, 0] = (200, 0, 0) if label else (0, 0, 0)
    for k, f in enumerate(frames):
        write_png(d / f"{k:03d}.png", f)
    return d


@pytest.fixture
def small_cases(tmp_path: Path) -> list[Case]:
    root = tmp_path / "cases"
    make_case(root, "CASE01-0-detergent", 3)
    make_case(root, "CASE02-1-rinse-dish-close", 4)
    make_case(root, "CASE03-0-empty-sink", 2)
    make_case(root, "CASE04-1-rinse-dim", 1)
    return list_cases(root)


def always_off(frames: np.ndarray) -> np.ndarray:
    return np.zeros(len(frames))


def result(accuracies: dict[str, float], n: int = 12) -> dict[str, dict]:
    """Case results as evaluate_cases writes them, from accuracies."""
    return {
        name: {
            "label": parse_case_name(name)[1],
            "n": n,
            "accuracy": a,
            "mean_p": 0.5,
            "correct": round(a * n),
            **dict(zip(("wilson_low", "wilson_high"), wilson_interval(round(a * n), n))),
        }
        for name, a in accuracies.items()
    }


# --------------------------------------------------------------------------- names and folders


@pytest.mark.parametrize(
    "name, expected",
    [
        ("CASE03-1-rinse-dish-close-water", (3, 1, "rinse-dish-close-water")),
        ("CASE01-0-detergent-hand-scrubber", (1, 0, "detergent-hand-scrubber")),
        ("CASE10-0-empty-sink-water-running", (10, 0, "empty-sink-water-running")),
        ("CASE123-1-x", (123, 1, "x")),
    ],
)
def test_parse_good_names(name, expected):
    assert parse_case_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "CASE3-1-x",  # one digit
        "case03-1-x",  # lower case
        "CASE03-2-x",  # label not 0/1
        "CASE03-x-1",  # label is the second field, not the third
        "CASE03-1",  # no description
        "CASE03-1-",  # empty description
        "CASE03--1-x",
        "CASEab-1-x",
        "03-1-x",
        "notes",
    ],
)
def test_parse_bad_names(name):
    with pytest.raises(CaseError) as e:
        parse_case_name(name)
    assert name in str(e.value) and "CASEnn-<0|1>-<description>" in str(e.value)


def test_label_is_the_second_field():
    # "-1-" in the description must not be taken for the label
    assert parse_case_name("CASE07-0-dish-1-far") == (7, 0, "dish-1-far")


def test_list_real_cases(repo_root: Path):
    root = repo_root / "data" / "cases"
    if not root.is_dir() or not any(root.iterdir()):
        pytest.skip("data/cases absent (run `dvc repro simulate`)")
    cases = list_cases(root)
    assert [c.number for c in cases] == sorted(c.number for c in cases)
    assert len({c.number for c in cases}) == len(cases)
    for c in cases:
        assert c.name == f"CASE{c.number:02d}-{c.label}-{c.description}"
        assert c.frames and all(p.suffix == ".png" and p.parent.name == c.name for p in c.frames)
        assert list(c.frames) == sorted(c.frames)
    by_prefix = {c.name.split("-")[0]: c for c in cases}
    if "CASE03" in by_prefix:  # the one case of the earlier system where water is needed
        assert by_prefix["CASE03"].label == 1


def test_list_cases_sorted_by_number_and_ignores_files_and_hidden(tmp_path: Path):
    make_case(tmp_path, "CASE10-0-b", 1)
    make_case(tmp_path, "CASE02-1-a", 2)
    (tmp_path / "README.md").write_text("cases\n")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "CASE02-1-a" / "notes.txt").write_text("not a frame\n")
    cases = list_cases(tmp_path)
    assert [(c.number, c.label, len(c.frames)) for c in cases] == [(2, 1, 2), (10, 0, 1)]


def test_list_cases_bad_folder_name(tmp_path: Path):
    make_case(tmp_path, "CASE01-0-ok", 1)
    make_case(tmp_path, "CASE02-yes-rinse", 1)
    with pytest.raises(CaseError, match=r"CASE02-yes-rinse.*must be 0 or 1.*CASEnn-<0\|1>-<description>"):
        list_cases(tmp_path)


def test_list_cases_empty_case_folder(tmp_path: Path):
    make_case(tmp_path, "CASE01-0-ok", 1)
    (tmp_path / "CASE02-1-empty").mkdir()
    (tmp_path / "CASE02-1-empty" / "a.jpg").write_bytes(b"x")
    with pytest.raises(CaseError, match=r"CASE02-1-empty: case folder holds no \.png frames"):
        list_cases(tmp_path)


def test_list_cases_duplicate_number(tmp_path: Path):
    make_case(tmp_path, "CASE03-1-rinse", 1)
    make_case(tmp_path, "CASE03-0-far", 1)
    with pytest.raises(CaseError, match=r"CASE03-.*case number 03 is also used by .*CASE03-.*unique"):
        list_cases(tmp_path)


def test_list_cases_missing_or_empty_root(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"nope.*dvc repro simulate"):
        list_cases(tmp_path / "nope")
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(CaseError, match=r"no case folders.*dvc repro simulate.*add CASEnn"):
        list_cases(tmp_path)


# --------------------------------------------------------------------------- evaluation


def test_always_off_predictor(small_cases):
    res = evaluate_cases(always_off, small_cases, 0.5, frame_size=SMALL, batch_size=2)
    assert list(res) == [c.name for c in small_cases]
    for c in small_cases:
        r = res[c.name]
        assert r["label"] == c.label and r["n"] == len(c.frames)
        assert r["accuracy"] == (1.0 if c.label == 0 else 0.0)
        assert r["correct"] == (len(c.frames) if c.label == 0 else 0)
        assert r["mean_p"] == 0.0


def test_oracle_predictor_by_case_label(small_cases):
    shapes: list[tuple] = []

    def oracle(frames: np.ndarray) -> np.ndarray:
        assert frames.dtype == np.uint8 and frames.shape[1:] == (SMALL[1], SMALL[0], 3)
        shapes.append(frames.shape)
        return (frames[:, 0, 0, 0] > 100).astype(float)  # the marker make_case puts by label

    res = evaluate_cases(oracle, small_cases, 0.5, frame_size=SMALL, batch_size=3)
    assert {n: r["accuracy"] for n, r in res.items()} == {c.name: 1.0 for c in small_cases}
    assert [s[0] for s in shapes] == [3, 3, 1, 2, 1]  # batched within a case, never across
    assert gate(res, None, {})["passed"]


def test_threshold_is_inclusive(small_cases):
    res = evaluate_cases(lambda f: np.full(len(f), 0.3), small_cases, 0.3, frame_size=SMALL)
    assert all(r["accuracy"] == float(r["label"]) for r in res.values())  # p >= threshold means water


def test_frames_are_rgb(tmp_path: Path):
    red = np.zeros((SMALL[1], SMALL[0], 3), np.uint8)
    red[..., 0] = 255
    cases = [Case("CASE01-1-red", 1, 1, "red", (tmp_path / "f.png",))]
    write_png(tmp_path / "f.png", red)
    res = evaluate_cases(lambda f: (f[:, 0, 0, 0] > 200).astype(float), cases, 0.5, frame_size=SMALL)
    assert res["CASE01-1-red"]["accuracy"] == 1.0


def test_bad_predictions_name_the_case(small_cases):
    with pytest.raises(CaseError, match=r"CASE01-0-detergent: predict returned shape"):
        evaluate_cases(lambda f: np.zeros(len(f) + 1), small_cases, 0.5, frame_size=SMALL)
    with pytest.raises(CaseError, match=r"CASE01-0-detergent.*000\.png: predict returned .*not a probability"):
        evaluate_cases(lambda f: np.full(len(f), np.nan), small_cases, 0.5, frame_size=SMALL)
    with pytest.raises(ValueError, match=r"expected 640x480"):  # read_frame's size check names the file
        evaluate_cases(always_off, small_cases, 0.5)


# --------------------------------------------------------------------------- Wilson interval


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        (57, 60, 0.8630, 0.9829),  # the Wilson score interval, z = 1.96
        (60, 60, 0.9398, 1.0),
        (0, 60, 0.0, 0.0602),
        (11, 12, 0.6461, 0.9851),
        (6, 12, 0.2538, 0.7462),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-4) and hi == pytest.approx(high, abs=5e-4)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for n in (1, 2, 5, 12, 37, 60, 250):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
            lo, hi = wilson_interval(k, n)
            assert lo == pytest.approx(ci.low, abs=1e-7) and hi == pytest.approx(ci.high, abs=1e-7), (k, n)


def test_wilson_interval_edges_and_symmetry():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no frames: nothing known
    lo, hi = wilson_interval(60, 60)
    assert hi == pytest.approx(1.0, abs=1e-12) and hi <= 1.0 and lo < 1.0
    lo, hi = wilson_interval(0, 60)
    assert lo == pytest.approx(0.0, abs=1e-12) and lo >= 0.0 and hi > 0.0
    for k, n in ((3, 12), (57, 60), (1, 7)):
        a, b = wilson_interval(k, n)
        c, d = wilson_interval(n - k, n)
        assert a == pytest.approx(1 - d) and b == pytest.approx(1 - c)
    # more frames at the same accuracy: a narrower interval
    widths = [hi - lo for lo, hi in (wilson_interval(9 * m, 10 * m) for m in (1, 3, 10, 100))]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.05


def test_evaluate_cases_reports_the_interval(small_cases):
    res = evaluate_cases(always_off, small_cases, 0.5, frame_size=SMALL)
    for c in small_cases:
        r = res[c.name]
        assert (r["wilson_low"], r["wilson_high"]) == wilson_interval(r["correct"], r["n"])
        assert r["wilson_low"] <= r["accuracy"] <= r["wilson_high"]
    r = res["CASE02-1-rinse-dish-close"]  # 0 of 4 right
    assert r["wilson_low"] == 0.0 and r["wilson_high"] == pytest.approx(0.4899, abs=5e-4)
    r = res["CASE01-0-detergent"]  # 3 of 3 right
    assert r["wilson_low"] == pytest.approx(0.4385, abs=5e-4) and r["wilson_high"] == pytest.approx(1.0)


def test_case_score_is_what_evaluate_cases_reports(small_cases):
    p = np.array([0.1, 0.5, 0.49, 0.9])  # label 1, threshold 0.5: the 0.5 counts (inclusive)
    r = case_score(p, 1, 0.5)
    assert list(r) == ["label", "n", "accuracy", "wilson_low", "wilson_high", "mean_p", "correct"]
    assert r == {
        "label": 1,
        "n": 4,
        "accuracy": 0.5,
        "wilson_low": wilson_interval(2, 4)[0],
        "wilson_high": wilson_interval(2, 4)[1],
        "mean_p": pytest.approx(0.4975),
        "correct": 2,
    }
    assert all(type(r[k]) is t for k, t in (("label", int), ("n", int), ("correct", int), ("mean_p", float)))
    empty = case_score(np.zeros(0), 0, 0.5)
    assert (empty["accuracy"], empty["mean_p"], empty["wilson_low"], empty["wilson_high"]) == (0.0, None, 0.0, 1.0)

    def by_pixel(frames):  # the oracle's rule, spread over (0, 1)
        return np.where(frames[:, 0, 0, 0] > 100, 0.7, 0.2) + frames[:, 1, 1, 0] / 2550

    res = evaluate_cases(by_pixel, small_cases, 0.5, frame_size=SMALL, batch_size=3)
    for c in small_cases:
        frames = np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in c.frames])
        assert res[c.name] == case_score(by_pixel(frames), c.label, 0.5)


def test_report_shows_the_95_percent_interval():
    res = result({NAMES[0]: 57 / 60, NAMES[1]: 1.0}, n=60)
    text = format_report(gate(res, None, {"min_accuracy": 0.9}))
    head, rule, *rows = text.splitlines()
    assert "95% interval" in head and set(rule) == {"-"} and len(rule) == len(head)
    row0 = next(r for r in rows if r.startswith(NAMES[0]))
    row1 = next(r for r in rows if r.startswith(NAMES[1]))
    assert "0.86-0.98" in row0 and "0.950" in row0
    assert "0.94-1.00" in row1
    # the column sits between accuracy and production, aligned with its header
    col = head.index("95% interval") + len("95% interval")
    assert row0[:col].endswith("0.86-0.98") and row1[:col].endswith("0.94-1.00")
    assert head.index("accuracy") < head.index("95% interval") < head.index("production")


def test_report_without_an_interval_shows_a_dash():
    # results written before the interval existed (an older production model's metrics)
    old = {n: {k: v for k, v in r.items() if not k.startswith("wilson")} for n, r in result({NAMES[0]: 1.0}).items()}
    text = format_report(gate(old, None, {}))
    head, _, row, *_ = text.splitlines()
    col = head.index("95% interval") + len("95% interval")
    assert row[:col].rstrip().endswith("-") and "PASSED" in text


# --------------------------------------------------------------------------- gate

NAMES = [
    "CASE01-0-detergent-hand-scrubber",
    "CASE03-1-rinse-dish-close-water",
    "CASE05-0-rinse-no-dish",
    "CASE06-1-rinse-dish-close-dim-light",
]


def test_gate_passes_a_good_result():
    out = gate(result({n: 0.95 for n in NAMES}), None, {"min_accuracy": 0.9})
    assert out["passed"] and out["failures"] == []
    assert any("no production model" in n for n in out["notes"])
    assert list(out["cases"]) == NAMES
    c = out["cases"][NAMES[1]]
    assert c["passed"] and c["min_accuracy"] == 0.9 and c["champion_accuracy"] is None and c["n"] == 12
    text = format_report(out)
    assert "PASSED" in text and NAMES[1] in text


def test_gate_fails_always_off_model_on_exactly_the_label_1_cases(small_cases):
    res = evaluate_cases(always_off, small_cases, 0.5, frame_size=SMALL)
    out = gate(res, None, {})
    assert not out["passed"]
    label1 = [c.name for c in small_cases if c.label == 1]
    assert [f.split(":")[0] for f in out["failures"]] == label1
    assert out["failures"][0] == f"{label1[0]}: accuracy 0.00 < 0.90"
    assert [n for n, c in out["cases"].items() if not c["passed"]] == label1
    text = format_report(out)
    assert "FAILED" in text and all(f"FAIL {n}" in text for n in label1)


def test_gate_regression_against_production():
    champion = result({n: 1.0 for n in NAMES})
    worse = result({**{n: 1.0 for n in NAMES}, NAMES[2]: 0.83})
    out = gate(worse, champion, {"min_accuracy": 0.8, "max_regression": 0.05})
    assert not out["passed"]
    assert out["failures"] == [
        "CASE05-0-rinse-no-dish: accuracy 0.83 regressed from 1.00 (production) by more than 0.05"
    ]
    assert out["cases"][NAMES[2]]["champion_accuracy"] == 1.0
    # within the tolerance, at its edge included (0.95 = 1.00 - 0.05 in floats or not)
    ok = gate(result({n: 0.95 for n in NAMES}), champion, {"min_accuracy": 0.8, "max_regression": 0.05})
    assert ok["passed"], ok["failures"]
    # a tolerance of 0 makes any drop fail; None turns the check off
    assert not gate(result({n: 0.95 for n in NAMES}), champion, {"max_regression": 0.0})["passed"]
    assert gate(worse, champion, {"min_accuracy": 0.8, "max_regression": None})["passed"]


def test_gate_min_and_regression_both_reported():
    out = gate(result({NAMES[1]: 0.42}), result({NAMES[1]: 1.0}), {})
    assert out["failures"] == [
        f"{NAMES[1]}: accuracy 0.42 < 0.90",
        f"{NAMES[1]}: accuracy 0.42 regressed from 1.00 (production) by more than 0.05",
    ]


def test_gate_regression_needs_a_champion_that_passes_itself():
    # a model that never opens the water: perfect on "no water" cases, 0 on the others
    never = result({n: (1.0 if "-0-" in n else 0.0) for n in NAMES})
    better = result({n: (0.92 if "-0-" in n else 0.95) for n in NAMES})
    out = gate(better, never, {"min_accuracy": 0.9, "max_regression": 0.05})
    assert out["passed"], out["failures"]
    assert any("production fails the case floor itself" in n for n in out["notes"])
    # the floors still decide
    assert not gate(result({n: 0.5 for n in NAMES}), never, {"min_accuracy": 0.9})["passed"]
    # a champion that passes is a reference: the same drop fails
    assert not gate(better, result({n: 1.0 for n in NAMES}), {"min_accuracy": 0.9})["passed"]


def test_gate_climb_rule_accepts_a_better_model_while_production_fails_the_floor():
    weak = result({NAMES[0]: 1.0, NAMES[1]: 0.0, NAMES[2]: 1.0, NAMES[3]: 0.0})  # never opens: mean 0.5
    better = result({NAMES[0]: 0.75, NAMES[1]: 0.5, NAMES[2]: 0.83, NAMES[3]: 0.42})  # mean 0.625, worst 0.42
    cfg = {"min_accuracy": 0.9, "max_regression": 0.05}
    assert not gate(better, weak, cfg)["passed"]  # off by default: the floors decide
    out = gate(better, weak, {**cfg, "min_gain": 0.05})
    assert out["passed"] and out["failures"] == []
    assert any("climb rule: mean case accuracy 0.500 (production) -> 0.625" in n for n in out["notes"])
    assert sum("passed by the climb rule despite" in n for n in out["notes"]) == 4  # each floor miss stays visible
    # not enough gain, or a worse worst case: refused, saying why
    out = gate(better, weak, {**cfg, "min_gain": 0.2})
    assert not out["passed"] and "not better than production by min_gain 0.2" in out["failures"][-1]
    mid = result({NAMES[0]: 0.5, NAMES[1]: 0.5, NAMES[2]: 0.5, NAMES[3]: 0.5})
    worse_worst = result({NAMES[0]: 1.0, NAMES[1]: 1.0, NAMES[2]: 1.0, NAMES[3]: 0.25})
    assert not gate(worse_worst, mid, {**cfg, "min_gain": 0.05})["passed"]
    # a production model that passes the floors is never climbed over
    good = result({n: 0.95 for n in NAMES})
    assert not gate(result({n: 0.85 for n in NAMES}), good, {**cfg, "min_gain": 0.0})["passed"]
    # the rule does not depend on the regression check being on
    assert gate(better, weak, {"min_accuracy": 0.9, "max_regression": None, "min_gain": 0.05})["passed"]
    # it never excuses a case production has no result for
    new_case = {**better, "CASE11-0-new": {**better[NAMES[0]], "accuracy": 0.0, "correct": 0}}
    out = gate(new_case, weak, {**cfg, "min_gain": 0.05})
    assert not out["passed"] and "climb rule: not applied" in out["failures"][-1]
    with pytest.raises(ValueError, match="min_gain"):
        gate(better, weak, {"min_gain": -1})


def test_gate_compares_only_shared_cases():
    challenger = result({NAMES[0]: 1.0, NAMES[1]: 1.0})
    champion = result({NAMES[1]: 1.0, NAMES[2]: 1.0})
    out = gate(challenger, champion, {})
    assert out["passed"]
    assert out["cases"][NAMES[0]]["champion_accuracy"] is None
    assert out["cases"][NAMES[1]]["champion_accuracy"] == 1.0
    assert NAMES[2] not in out["cases"]
    notes = " | ".join(out["notes"])
    assert f"no production result for {NAMES[0]}" in notes and f"production results only for {NAMES[2]}" in notes


def test_gate_per_case_overrides():
    res = result({NAMES[0]: 0.85, NAMES[1]: 0.85, NAMES[2]: 0.99, NAMES[3]: 0.85})
    cfg = {"min_accuracy": 0.8, "per_case": {"CASE03": 0.9, NAMES[2]: 1.0, "CASE06": 0.5, NAMES[3]: 0.8, "CASE09": 0.5}}
    out = gate(res, None, cfg)
    mins = {n: c["min_accuracy"] for n, c in out["cases"].items()}
    assert mins == {NAMES[0]: 0.8, NAMES[1]: 0.9, NAMES[2]: 1.0, NAMES[3]: 0.8}  # full name beats prefix
    assert out["failures"] == [f"{NAMES[1]}: accuracy 0.85 < 0.90", f"{NAMES[2]}: accuracy 0.99 < 1.00"]
    notes = " | ".join(out["notes"])
    assert "'CASE09' matches no evaluated case" in notes and "'CASE06' matches no" in notes
    with pytest.raises(ValueError, match=r"per_case key 'rinse'"):
        gate(res, None, {"per_case": {"rinse": 0.5}})
    with pytest.raises(ValueError, match=r"per_case\['CASE03'\] must be a number in \[0, 1\]"):
        gate(res, None, {"per_case": {"CASE03": 90}})


def test_gate_min_frames_and_bad_config():
    out = gate(result({NAMES[0]: 1.0}, n=3), None, {"min_frames": 5})
    assert out["failures"] == [f"{NAMES[0]}: only 3 frame(s) < min_frames 5: too few to judge"]
    assert not gate({}, None, {})["passed"]
    with pytest.raises(ValueError, match="min_accuracy"):
        gate(result({NAMES[0]: 1.0}), None, {"min_accuracy": "high"})
    with pytest.raises(ValueError, match="min_frames"):
        gate(result({NAMES[0]: 1.0}), None, {"min_frames": 0})


def test_gate_does_not_print_a_failing_pair_as_equal():
    out = gate(result({NAMES[0]: 0.899}), None, {})
    assert out["failures"] == [f"{NAMES[0]}: accuracy 0.899 < 0.900"]


# --------------------------------------------------------------------------- ONNX


def test_onnx_predictor_runs_the_exported_model(tmp_path: Path):
    model = write_tiny_model(tmp_path / "model" / "model.onnx", threshold=0.4)
    predict, threshold = onnx_predictor(model, threads=1)
    assert threshold == 0.4 == read_card(card_path_for(model))["threshold"]
    root = tmp_path / "cases"
    make_case(root, "CASE01-1-dish-in-roi", [bright_roi_frame(), bright_roi_frame(level=60)])
    make_case(root, "CASE02-0-empty", [bright_roi_frame(roi_level=40), bright_roi_frame(level=90, roi_level=90)])
    res = evaluate_cases(predict, list_cases(root), threshold, batch_size=2)
    assert {n: r["accuracy"] for n, r in res.items()} == {"CASE01-1-dish-in-roi": 1.0, "CASE02-0-empty": 1.0}
    assert res["CASE01-1-dish-in-roi"]["mean_p"] > 0.9 > 0.2 > res["CASE02-0-empty"]["mean_p"]
    with pytest.raises(ValueError, match=r"model\.onnx: expected uint8 RGB frames \[N, 480, 640, 3\]"):
        predict(np.zeros((1, 24, 32, 3), np.uint8))


def test_onnx_predictor_follows_the_card_colour_order(tmp_path: Path):
    red = np.zeros((480, 640, 3), np.uint8)
    red[150:350, 220:420, 0] = 255  # a red ROI, RGB
    rgb, _ = onnx_predictor(write_tiny_model(tmp_path / "a" / "m.onnx", weights=(1.0, 0.0, 0.0)))
    bgr, _ = onnx_predictor(write_tiny_model(tmp_path / "b" / "m.onnx", weights=(0.0, 0.0, 1.0), color="BGR"))
    p_rgb, p_bgr = rgb(red[None])[0], bgr(red[None])[0]
    assert p_rgb > 0.9 and abs(p_rgb - p_bgr) < 1e-5  # the BGR model's blue channel sees the red


def test_onnx_predictor_refuses_missing_card(tmp_path: Path):
    model = write_tiny_model(tmp_path / "model.onnx", card=False)
    with pytest.raises(ValueError, match=r"model\.onnx: no model card model\.json"):
        onnx_predictor(model)
    with pytest.raises(FileNotFoundError, match="other.onnx"):
        onnx_predictor(tmp_path / "other.onnx")


def test_onnx_predictor_refuses_sha_mismatch(tmp_path: Path):
    model = write_tiny_model(tmp_path / "model.onnx")
    card = read_card(card_path_for(model))
    other = write_tiny_model(tmp_path / "other" / "model.onnx", bias=-1.0)  # another model's bytes
    model.write_bytes(other.read_bytes())
    with pytest.raises(ValueError, match=r"model\.onnx: sha256 .* does not match model\.json model_sha256"):
        onnx_predictor(model)
    write_card(card_path_for(model), {**card, "model_sha256": "0" * 64})
    with pytest.raises(ValueError, match="does not match"):
        onnx_predictor(model)
