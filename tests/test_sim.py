"""The scene simulator: renderer, label convention, simulated user, lake episodes, cases, baseline."""

from __future__ import annotations

import csv
import math
import re
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from autosink.core.episode import read_episode
from autosink.sim import (
    CASES,
    ROI,
    TRUTH_COLUMNS,
    ClosedLoop,
    Dish,
    Hand,
    Look,
    SceneState,
    Scrubber,
    SimUser,
    Truth,
    case_states,
    episode_windows,
    evaluate_trivial,
    label_of,
    make_model,
    make_sessions,
    make_users,
    override_runs,
    render,
    render_session,
    roi_slice,
    run_session,
    simulate_lake,
    wants_water,
    with_defaults,
)
from autosink.sim.scene import hand_holding, hand_on_scrubber
from autosink.sim.session import WISHES

TINY = {"seed": 7, "users": 2, "sessions_per_user": 1, "dishes_per_session": [2, 3], "case_frames": 1}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    metrics = simulate_lake(TINY, root / "lake", root / "truth", root / "cases", progress=False)
    return root, metrics


@pytest.fixture(scope="module")
def tiny_scripts():
    return make_sessions(with_defaults(TINY))


# --------------------------------------------------------------------------- renderer


def test_render_shape_dtype_and_speed(tiny_scripts):
    states = [replace(s, water_on=(i % 2 == 0)) for i, s in enumerate(tiny_scripts[0].states[:40])]
    render(states[0])  # build the cached background outside the timing
    t0 = time.perf_counter()
    frames = [render(s) for s in states]
    ms = (time.perf_counter() - t0) / len(states) * 1000
    print(f"\nrender: {ms:.1f} ms/frame (640x480)")
    for f in frames:
        assert f.shape == (480, 640, 3) and f.dtype == np.uint8
    assert frames[0][roi_slice()].shape == (ROI[3] - ROI[1], ROI[2] - ROI[0], 3)


def test_render_is_deterministic_and_water_visible(tiny_scripts):
    st = replace(tiny_scripts[0].states[5], look=replace(tiny_scripts[0].look, noise=1.0))
    a, b = render(st), render(st)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render(replace(st, noise_seed=st.noise_seed + 1)))  # per-frame camera noise
    dry, wet = render(replace(st, water_on=False)), render(replace(st, water_on=True))
    assert np.abs(dry[roi_slice()].astype(int) - wet[roi_slice()].astype(int)).sum() > 0


# --------------------------------------------------------------------------- label convention


def _scene(step: str, dish_xy=None, held=True, scrubber=False, hands=True) -> SceneState:
    look = Look()
    dish = None if dish_xy is None else Dish("plate", dish_xy[0], dish_xy[1], 85)
    hs: list[Hand] = []
    if dish is not None and held and hands:
        hs.append(hand_holding(dish, "R", 90))
    sc = None
    if scrubber:
        sc = Scrubber("sponge", 330, 260, -90)
        hs.append(hand_on_scrubber(sc))
    return SceneState(
        look, step, hands=tuple(hs), dish=dish, dish_held=held and dish is not None, scrubber=sc, scrubber_held=scrubber
    )


def test_labels_follow_the_convention():
    cx, cy = (ROI[0] + ROI[2]) / 2, (ROI[1] + ROI[3]) / 2
    far = (ROI[0] - 60, ROI[3] + 40)
    assert label_of(_scene("detergent", (cx, cy), scrubber=True)) == 0  # detergent: 0, dish in ROI or not
    assert label_of(_scene("detergent", far, scrubber=True)) == 0
    assert label_of(_scene("rinse", (cx, cy))) == 1  # hand holds dish inside the ROI
    assert label_of(_scene("rinse", (cx, cy), scrubber=True)) == -1  # scrubber visible during rinse
    assert label_of(_scene("rinse", far)) == 0  # dish far
    assert label_of(_scene("rinse", None)) == 0  # no dish
    assert label_of(_scene("rinse", (cx, cy), held=False)) == 0  # dish lies there, nobody holds it
    assert label_of(_scene("prerinse", (cx, cy))) == 1  # held under the spout, as in rinse
    assert label_of(_scene("prerinse", far)) == 0  # held away from the spout: no water needed
    assert label_of(_scene("prerinse", (cx, cy), scrubber=True)) == -1  # scrubber visible: ignored
    assert label_of(_scene("prerinse", far, scrubber=True)) == -1
    assert label_of(_scene("prerinse", (cx, cy), held=False)) == 0
    assert label_of(_scene("idle")) == 0
    # ROI edge: the dish centre decides
    assert label_of(_scene("rinse", (ROI[0] + 2, cy))) == 1
    assert label_of(_scene("rinse", (ROI[0] - 2, cy))) == 0
    assert label_of(_scene("prerinse", (ROI[0] + 2, cy))) == 1
    assert label_of(_scene("prerinse", (ROI[0] - 2, cy))) == 0
    # the need: a held dish under the spout, in pre-rinse or rinse, scrubber in view or not
    assert wants_water(_scene("prerinse", (cx, cy))) and wants_water(_scene("rinse", (cx, cy)))
    assert wants_water(_scene("rinse", (cx, cy), scrubber=True))
    assert wants_water(_scene("prerinse", (cx, cy), scrubber=True))
    assert not wants_water(_scene("prerinse", far))  # the old wish wanted this one
    assert not wants_water(_scene("rinse", far))
    assert not wants_water(_scene("rinse", (cx, cy), held=False))
    assert not wants_water(_scene("rinse", None)) and not wants_water(_scene("idle"))
    assert not wants_water(_scene("detergent", (cx, cy), scrubber=True))


def test_session_scripts_follow_the_convention():
    # more users than TINY (scripts are cheap, nothing renders): 2 kitchens may never leave the
    # scrubber in view during a rinse, the only source of -1 now that pre-rinse is labelled
    scripts = make_sessions(with_defaults(dict(TINY, users=8)))
    seen, seen_prerinse = set(), set()
    for script in scripts:
        for st in script.states:
            lab = label_of(st)
            seen.add(lab)
            if st.step == "detergent":
                assert lab == 0 and st.scrubber_visible  # detergent always shows the scrubber
            if st.step in ("prerinse", "rinse"):
                if st.scrubber_visible:
                    assert lab == -1
                else:
                    assert lab == int(st.dish_held and st.dish_in_roi)
                assert wants_water(st) == (st.dish_held and st.dish_in_roi)
            else:
                assert not wants_water(st)
            if lab == 1:
                assert wants_water(st) and not st.scrubber_visible and st.dish_held and st.dish_in_roi
            if lab != -1:  # label 1 and the need agree wherever the label is not ignored
                assert lab == int(wants_water(st))
            if st.step == "prerinse":
                seen_prerinse.add(lab)
    assert seen == {-1, 0, 1}
    assert {0, 1} <= seen_prerinse  # pre-rinse away from the spout is a 0 now, under it a 1
    steps = {st.step for s in scripts for st in s.states}
    assert steps == {"idle", "prerinse", "detergent", "rinse"}


def test_the_prerinse_wish_wants_water_wherever_the_dish_is_held():
    cx, cy = (ROI[0] + ROI[2]) / 2, (ROI[1] + ROI[3]) / 2
    far = (ROI[0] - 60, ROI[3] + 40)
    st = _scene("prerinse", far)
    assert not st.dish_in_roi and st.dish_held
    assert wants_water(st, "prerinse") and not wants_water(st, "spout") and not wants_water(st)
    assert label_of(st) == 0  # the label does not depend on the wish
    assert Truth.of(st, "prerinse").wants_water and not Truth.of(st).wants_water
    assert Truth.of(st, "prerinse").label == Truth.of(st).label == 0
    # the wish only differs in pre-rinse; an empty hand or a dish lying there is not wanted either way
    assert not wants_water(_scene("prerinse", far, held=False), "prerinse")
    assert not wants_water(_scene("prerinse", None), "prerinse")
    assert wants_water(_scene("prerinse", (cx, cy)), "prerinse")
    for step, xy in (("rinse", far), ("rinse", (cx, cy)), ("detergent", (cx, cy)), ("idle", None)):
        for held in (True, False):
            a = _scene(step, xy, held=held, scrubber=step == "detergent")
            assert wants_water(a, "prerinse") == wants_water(a, "spout"), (step, xy, held)


def test_deviant_users_off_gives_everyone_the_spout_wish():
    for share in (None, 0, 0.0):
        cfg = with_defaults(dict(TINY, users=30, deviant_users=share))
        assert {u.wish for u in make_users(cfg)} == {"spout"}
    assert {u.wish for u in make_users(with_defaults(dict(TINY, users=30)))} == {"spout"}  # the default
    assert set(WISHES) == {"spout", "prerinse"}


def test_deviant_users_all_gives_everyone_the_prerinse_wish():
    users = make_users(with_defaults(dict(TINY, users=30, deviant_users=1.0)))
    assert {u.wish for u in users} == {"prerinse"}


def test_deviant_users_change_only_the_wish():
    base = make_users(with_defaults(dict(TINY, users=40)))
    for share in (0.3, 0.7, 1.0):
        dev = make_users(with_defaults(dict(TINY, users=40, deviant_users=share)))
        assert [u.look for u in dev] == [u.look for u in base]
        assert [u.habits for u in dev] == [u.habits for u in base]
        assert [(u.index, u.user_id, u.reaction_delay_s) for u in dev] == [
            (u.index, u.user_id, u.reaction_delay_s) for u in base
        ]
    # a share in between: some of each, and raising it only adds deviants (one draw per user)
    w3 = [u.wish for u in make_users(with_defaults(dict(TINY, users=40, deviant_users=0.3)))]
    w7 = [u.wish for u in make_users(with_defaults(dict(TINY, users=40, deviant_users=0.7)))]
    assert 0 < w3.count("prerinse") < w7.count("prerinse") < 40
    assert all(b == "prerinse" for a, b in zip(w3, w7) if a == "prerinse")


def test_deviant_users_keep_the_session_scripts_and_labels(tiny_scripts):
    dev = make_sessions(with_defaults(dict(TINY, deviant_users=1.0)))
    assert [s.dishwashing_id for s in dev] == [s.dishwashing_id for s in tiny_scripts]
    n_differ = 0
    for a, b in zip(tiny_scripts, dev):
        assert a.user.wish == "spout" and b.user.wish == "prerinse"
        assert a.states == b.states
        ta, tb = a.truths, b.truths
        assert [t.label for t in ta] == [t.label for t in tb]
        for st, x, y in zip(a.states, ta, tb):
            assert x.wants_water == wants_water(st, "spout") and y.wants_water == wants_water(st, "prerinse")
            n_differ += x.wants_water != y.wants_water
    assert n_differ > 0  # the tiny lake has pre-rinse away from the spout


def test_the_closed_loop_follows_the_users_wish(tiny_scripts):
    script = tiny_scripts[0]
    deviant = replace(script, user=replace(script.user, wish="prerinse"))
    for s, wish in ((script, "spout"), (deviant, "prerinse")):
        recs = run_session(s, "always_off")
        assert [r.truth.wants_water for r in recs] == [wants_water(st, wish) for st in s.states]


# --------------------------------------------------------------------------- simulated user


def _drive(user: SimUser, wants: list[bool], model: list[int], fps: float = 2.0) -> tuple[list[int], list[str]]:
    mag, modes = [], []
    for i, (w, m) in enumerate(zip(wants, model)):
        mag.append(user.step(i / fps, w, m))
        modes.append(user.mode)
    return mag, modes


def test_user_forces_water_on_after_the_reaction_delay_and_lets_go():
    wants = [True] * 6 + [False] * 3
    mag, modes = _drive(SimUser((1.0, 1.0)), wants, [0] * 9)
    assert mag == [0, 0, 1, 1, 1, 1, 0, 0, 0]  # 1.0 s wrong (frames at 0, 0.5, 1.0) -> opens at t=1.0
    assert modes[2:6] == ["forced_on"] * 4 and modes[6] == "none"


def test_user_tolerates_short_wrong_states():
    mag, _ = _drive(SimUser((1.0, 1.0)), [True, True, False, True, True, False], [0] * 6)
    assert mag == [0] * 6


def test_user_closes_running_water_until_the_model_goes_off_or_water_is_wanted():
    user = SimUser((0.5, 0.5))
    mag, modes = _drive(user, [False] * 5, [1, 1, 1, 1, 0])
    assert mag == [1, 0, 0, 0, 0] and modes[1:4] == ["closed"] * 3 and modes[4] == "none"
    mag, modes = _drive(SimUser((0.5, 0.5)), [False, False, False, True, True], [1] * 5)
    assert mag == [1, 0, 0, 1, 1] and modes[3] == "none"  # reopens when water is wanted again
    assert user.interventions == 1


@pytest.mark.parametrize("model_name", ["roi_presence", "always_off", "random"])
def test_closed_loop_rows_follow_the_user_semantics(tiny_scripts, model_name):
    fps = tiny_scripts[0].fps
    n_forced = n_closed = 0
    for script in tiny_scripts:
        lo, hi = script.user.reaction_delay_s
        recs = run_session(script, model_name)
        assert len(recs) == len(script.states)
        for i, r in enumerate(recs):
            assert r.state.water_on == bool(recs[i - 1].magnetic_status if i else 0)  # water follows the faucet
            if r.user_mode == "none":
                assert r.magnetic_status == r.model_output
            if r.model_output == 0 and r.magnetic_status == 1:
                assert r.user_mode == "forced_on" and r.truth.wants_water
            if r.model_output == 1 and r.magnetic_status == 0:
                assert r.user_mode == "closed" and not r.truth.wants_water
        for i, r in enumerate(recs):
            prev = recs[i - 1].user_mode if i else "none"
            if r.user_mode != "none" and r.user_mode != prev:  # an intervention starts here
                n_forced += r.user_mode == "forced_on"
                n_closed += r.user_mode == "closed"
                wrong = [bool(x.truth.wants_water) != bool(x.model_output) for x in recs[: i + 1]]
                k = i
                while k > 0 and wrong[k - 1]:
                    k -= 1
                waited = (i - k) / fps
                assert wrong[i] and lo - 1e-9 <= waited <= hi + 1.0 / fps  # reaction delay respected
    if model_name == "always_off":
        assert n_forced > 0 and n_closed == 0
    if model_name == "roi_presence":
        assert n_forced > 0


def test_frame_models_get_rendered_frames(tiny_scripts):
    seen = []

    def model(state, frame):  # a plain callable: treated as needing pixels, like an ONNX model
        seen.append(frame.shape)
        return float(frame[roi_slice()].mean() > 300)  # always off

    script = tiny_scripts[0]
    script = replace(script, states=script.states[:12])
    recs = ClosedLoop(script, model, SimUser((0.5, 0.5), seed=1)).run()
    assert len(recs) == 12 and seen == [(480, 640, 3)] * 12
    frames, rows = render_session(script, make_model("always_on"))
    assert len(frames) == len(rows) == 12 and all(r["model_output"] == 1 for r in rows)


# --------------------------------------------------------------------------- episodes


def test_episode_windows_merge_and_clamp():
    mo = [0] * 30
    ms = [0] * 30
    for i in (5, 6, 12, 26):  # overrides
        ms[i] = 1
    assert override_runs(mo, ms) == [(5, 7), (12, 13), (26, 27)]
    # pre/post 2 s at 2 fps: [1, 11) and [8, 17) overlap -> merged; the last is clamped to the session end
    assert episode_windows(mo, ms, 2.0, 2.0, 2.0) == [(1, 17), (22, 30)]
    # windows starting in the second where the previous one ends merge too (stems stay unique)
    ms2 = [0] * 12
    ms2[1], ms2[3], ms2[9] = 1, 1, 1
    assert episode_windows([0] * 12, ms2, 4.0, 0.0, 0.0) == [(1, 4), (9, 10)]  # at 4 fps: frames 1, 3 share 0 s


def test_lake_episodes_read_back_with_matching_truth(tiny_lake):
    root, m = tiny_lake
    zips = sorted((root / "lake").glob("*.zip"))
    assert m["episodes"] == len(zips) > 0
    assert m["frames"] == sum(m["frames_per_class"].values())
    assert sorted(p.stem for p in (root / "truth").glob("*.csv")) == [z.stem for z in zips]
    n = 0
    for z in zips:
        ep = read_episode(z)
        meta = ep.meta
        assert meta.version == 2 and re.fullmatch(r"user_\d{4}", meta.user_id)
        assert re.fullmatch(r"[0-9a-f]{10}", meta.dishwashing_id)
        assert meta.dishwashing_start.utcoffset().total_seconds() == 9 * 3600
        assert ep.stem == meta.interactions[0].timestamp.strftime("%Y%m%d_%H%M%S")
        with open(root / "truth" / f"{z.stem}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == TRUTH_COLUMNS
        assert len(rows) == len(meta.interactions) == len(ep.frame_names)
        for it, row in zip(meta.interactions, rows):
            assert it.arduino_output == 0 and it.timestamp.tzinfo is None and it.timestamp.microsecond == 0
            assert it.image == row["image"]
            assert (it.model_output, it.magnetic_status) == (int(row["model_output"]), int(row["magnetic_status"]))
        assert any(it.model_output != it.magnetic_status for it in meta.interactions)  # saved around an override
        assert ep.load_frame(0).shape == (480, 640, 3)
        n += len(rows)
    assert n == m["frames"]


def test_lake_is_deterministic_by_seed(tiny_lake, tmp_path):
    root, m = tiny_lake
    again = simulate_lake(
        TINY, tmp_path / "a" / "lake", tmp_path / "a" / "truth", tmp_path / "a" / "cases", progress=False
    )
    assert again == m
    for sub in ("lake", "truth", "cases"):
        assert _tree(root / sub) == _tree(tmp_path / "a" / sub), sub
    other = dict(TINY, seed=8)
    simulate_lake(other, tmp_path / "b" / "lake", tmp_path / "b" / "truth", tmp_path / "b" / "cases", progress=False)
    assert _tree(root / "lake") != _tree(tmp_path / "b" / "lake")
    assert _tree(root / "cases") != _tree(tmp_path / "b" / "cases")


def test_simulate_lake_wipes_stale_outputs(tmp_path):
    for sub in ("lake", "truth", "cases"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "stale.txt").write_text("x")
    simulate_lake(
        dict(TINY, users=1, dishes_per_session=[1, 1]),
        tmp_path / "lake",
        tmp_path / "truth",
        tmp_path / "cases",
        progress=False,
    )
    assert not list(tmp_path.rglob("stale.txt"))


# --------------------------------------------------------------------------- cases


def test_case_folders(tiny_lake):
    root, m = tiny_lake
    dirs = sorted(p for p in (root / "cases").iterdir() if p.is_dir())
    assert [d.name for d in dirs] == [c[0] for c in CASES] and len(dirs) >= 10
    assert m["case_frames"] == len(dirs) * TINY["case_frames"]
    for ci, d in enumerate(dirs):
        m_ = re.fullmatch(r"CASE(\d\d)-([01])-([a-z0-9-]+)", d.name)
        assert m_ and int(m_.group(1)) == ci + 1
        pngs = sorted(d.glob("*.png"))
        assert len(pngs) == TINY["case_frames"]
        # the PNG holds the true colours: OpenCV reads BGR, flipped back it equals the RGB render
        st = case_states(ci, 1, TINY["seed"])[0]
        assert label_of(st) == int(m_.group(2))
        assert np.array_equal(cv2.imread(str(pngs[0]))[..., ::-1], render(st))


def test_case_seeds_are_disjoint_from_the_lake(tiny_scripts):
    lake_seeds = {st.noise_seed for s in tiny_scripts for st in s.states}
    case_seeds = {st.noise_seed for ci in range(len(CASES)) for st in case_states(ci, 3, TINY["seed"])}
    assert not lake_seeds & case_seeds
    held = make_sessions(with_defaults(TINY), "heldout")
    assert not {s.dishwashing_id for s in held} & {s.dishwashing_id for s in tiny_scripts}


# --------------------------------------------------------------------------- trivial baseline


def test_evaluate_trivial_detects_separable_features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    X = np.c_[y + rng.normal(0, 0.1, 400), rng.normal(0, 1, (400, 3))]
    groups = np.repeat(np.arange(8), 50)
    assert evaluate_trivial(X, y, groups)["trivial_baseline_accuracy"] > 0.95


@pytest.mark.slow
def test_trivial_baseline_cannot_separate_the_scenes(tmp_path):
    cfg = {"seed": 11, "users": 4, "sessions_per_user": 2, "case_frames": 1}
    t0 = time.perf_counter()
    m = simulate_lake(cfg, tmp_path / "lake", tmp_path / "truth", tmp_path / "cases", progress=False)
    print(
        f"\nmoderate lake: {m['frames']} frames in {time.perf_counter() - t0:.1f} s, "
        f"trivial {m['trivial_baseline_accuracy']:.3f}, majority {m['majority_baseline_accuracy']:.3f}, "
        f"classes {m['frames_per_class']}"
    )
    assert m["trivial_baseline_accuracy"] < 0.9
    assert m["majority_baseline_accuracy"] < 0.9
    c = m["frames_per_class"]
    assert 0.2 <= c["1"] / (c["0"] + c["1"]) <= 0.55
    assert not math.isnan(m["trivial_baseline_accuracy"])
