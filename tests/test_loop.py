"""Tests for the closed loop's edge side (src/autosink/ops/loop.py, water.SimUserFeedback) and the
loop's settings. The whole loop (copy, dvc repro, promote) runs in tests/test_pipeline_e2e.py.

The fleet's sessions run through the real edge runtime, recorder and uploader with tiny constant
ONNX models (tests/edge_fixtures.py) and the simulated user."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from autosink.core.episode import read_episode
from autosink.data.labels import propagate
from autosink.ops.loop import LoopSettings, collect_round, fleet_scripts
from autosink.sim.lake import with_defaults
from autosink.sim.session import make_sessions
from tests.edge_fixtures import write_tiny_model

SIM = {"users": 3, "sessions_per_user": 2, "dishes_per_session": [1, 1]}


def test_fleet_rounds_are_new_sessions_of_the_lake_households():
    lake = make_sessions(with_defaults(SIM), "lake")
    r1, r2 = fleet_scripts(SIM, 1), fleet_scripts(SIM, 2)
    assert [s.user.user_id for s in r1] == [s.user.user_id for s in lake[:3]]  # the same people and kitchens
    ids = [{s.dishwashing_id for s in x} for x in (lake, r1, r2)]
    assert len(ids[1]) == len(ids[2]) == 3 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert min(s.start for s in r1) > max(s.start for s in lake)  # later days, so episode names never clash
    assert min(s.start for s in r2) > max(s.start for s in r1)
    assert len(fleet_scripts(SIM, 1, households=2)) == 2


def test_more_sessions_per_round_are_the_next_sessions_of_each_household():
    two = [fleet_scripts(SIM, r, sessions=2) for r in (1, 2)]
    one = [fleet_scripts(SIM, r) for r in (1, 2, 3, 4)]
    assert [len(x) for x in two] == [6, 6]
    ids = lambda scripts: sorted(s.dishwashing_id for s in scripts)  # noqa: E731
    assert ids(two[0]) == ids(one[0] + one[1]) and ids(two[1]) == ids(one[2] + one[3])
    with pytest.raises(ValueError, match="--sessions"):
        LoopSettings(sessions=0)


def test_a_lighting_regime_relights_the_same_fleet_sessions():
    plain, lit = fleet_scripts(SIM, 1), fleet_scripts({**SIM, "regime": "warm-dim"}, 1)
    for a, b in zip(plain, lit):  # the same people doing the same things, only the light differs
        assert a.dishwashing_id == b.dishwashing_id and len(a.states) == len(b.states)
        assert a.look != b.look and b.look.gain < a.look.gain and b.look.cast[2] < a.look.cast[2]
        assert [st.step for st in a.states] == [st.step for st in b.states]
    assert [s.look for s in fleet_scripts({**SIM, "regime": "warm-dim"}, 1)] == [s.look for s in lit]


def _project(tmp_path, repo_root, bias: float):
    project = tmp_path / "project"
    write_tiny_model(project / "models/production/model.onnx", scale=0.0, bias=bias)
    (project / "data/data-lake").mkdir(parents=True)
    params = {
        "sim": SIM,
        "data": {"lake": "data/data-lake"},
        "water": {"controller_from": str(repo_root / "edge/config.toml")},
    }
    return project, params


def test_user_corrects_a_model_that_never_opens_and_the_lake_gets_the_episodes(tmp_path, repo_root):
    project, params = _project(tmp_path, repo_root, bias=-10.0)  # p = 0.00005 on every frame
    out = collect_round(project, params, 1, tmp_path / "spool", progress=False)
    assert out["sessions"] == 3 and out["frames"] > 100
    assert out["user_interventions"] > 0 and out["episodes"] > 0
    assert out["withheld_pct"] > 0  # the user's reaction delay: some needed water came late
    episodes = sorted((project / "data/data-lake").glob("*.zip"))
    assert len(episodes) == out["episodes"] and not list((tmp_path / "spool").glob("*.zip"))
    forced = 0
    for path in episodes:
        ep = read_episode(path)  # the lake's reader accepts what the edge wrote
        m = np.array([i.model_output for i in ep.meta.interactions])
        s = np.array([i.magnetic_status for i in ep.meta.interactions])
        assert not m.any()  # the model never said water...
        assert s.any()  # ...the user forced it on: the override is the episode's reason
        labels = propagate(m, s, fps=2.0)
        assert (labels.label[s == 1] == 1).all()  # and the labeler turns it into "water needed"
        forced += int(s.sum())
    assert forced > 0


def _overridden(path) -> list[bytes]:
    """The decoded pixels of every frame where the faucet differed from the model, in order."""
    import zipfile

    import cv2

    ep = read_episode(path)
    with zipfile.ZipFile(path) as z:
        return [
            cv2.imdecode(np.frombuffer(z.read(it.image), np.uint8), cv2.IMREAD_COLOR).tobytes()
            for it in ep.meta.interactions
            if it.model_output != it.magnetic_status
        ]


def test_replaying_an_episode_with_its_user_records_the_same_overrides(tmp_path, repo_root):
    """The edge demo that records (edge/run.py --camera episode:<zip> --replay-user): the same
    frames, the same model and the recorded faucet states as the user's hand give an episode the
    lake accepts, overridden on exactly the frames the original was."""
    from autosink.core.episode import check_episode
    from autosink.edge.clock import SimClock
    from autosink.edge.feedback import replay_user
    from autosink.edge.settings import load_config, merge_config
    from autosink.edge.wiring import build_runtime

    project, params = _project(tmp_path, repo_root, bias=-10.0)  # never opens: the user forces water
    collect_round(project, params, 1, tmp_path / "spool", progress=False)
    original = max(sorted((project / "data/data-lake").glob("*.zip")), key=lambda p: len(_overridden(p)))
    assert _overridden(original)
    cfg = merge_config(
        load_config(repo_root / "edge/config.toml"),
        {
            "model": {"path": str(project / "models/production/model.onnx")},
            "camera": {"source": f"episode:{original}", "fps": 2.0},
            "valve": {"kind": "fake"},
            "recorder": {"spool": str(tmp_path / "replay-spool")},
            "upload": {"to": ""},
        },
    )
    cfg, feedback = replay_user(cfg)
    build_runtime(cfg, clock=SimClock(), feedback=feedback, background=False, install_signals=False).run()
    (replayed,) = sorted((tmp_path / "replay-spool").glob("*.zip"))
    assert check_episode(replayed) == []  # what `autosink lake check` runs
    assert _overridden(replayed) == _overridden(original)
    with pytest.raises(ValueError, match="episode:<zip>"):
        replay_user(merge_config(cfg, {"camera": {"source": "folder:/tmp"}}))


def test_user_closes_a_model_that_never_closes(tmp_path, repo_root):
    project, params = _project(tmp_path, repo_root, bias=10.0)
    params["water"]["controller"] = {"max_open_s": 1e6}
    out = collect_round(project, params, 1, tmp_path / "spool", progress=False)
    assert out["user_interventions"] > 0 and out["episodes"] > 0
    for path in sorted((project / "data/data-lake").glob("*.zip")):
        ep = read_episode(path)
        m = np.array([i.model_output for i in ep.meta.interactions])
        s = np.array([i.magnetic_status for i in ep.meta.interactions])
        assert m.all() and not s.all()  # the model always said water; the user closed the faucet


def test_settings_are_checked():
    assert LoopSettings(rounds=1, min_case_accuracy=0.5, overrides=["train.lr=0.01"]).compose_args("x=1") == [
        "data=real",
        "validate_model.min_gain=0.02",
        "water.regime=none",
        "validate_model.min_accuracy=0.5",
        "train.lr=0.01",
        "x=1",
    ]
    assert "model.weights=none" not in LoopSettings().start_args()  # default: start from the base model
    assert "model.weights=none" in LoopSettings(start="weak").start_args()
    # --retrain warm: round 1 trains from the base model, later rounds fine-tune production
    assert LoopSettings().retrain_args(1) == [] and LoopSettings().retrain_args(2) == ["model.weights=production"]
    assert LoopSettings(retrain="scratch").retrain_args(3) == []
    lit = LoopSettings(regime="warm-dim").compose_args()
    assert "water.regime=warm-dim" in lit and "validate.enforce=false" in lit  # drift is the point there
    for bad in (
        {"rounds": 0},
        {"households": 0},
        {"weak_epochs": 0},
        {"min_case_accuracy": 1.5},
        {"min_gain": -1},
        {"start": "scratch"},
        {"regime": "disco"},
        {"retrain": "hot"},
    ):
        with pytest.raises(ValueError):
            LoopSettings(**bad)
    # the report (metrics/loop.json) records the settings as plain JSON data, completely: they
    # read back into the same settings
    for settings in (
        LoopSettings(),
        LoopSettings(
            rounds=3,
            households=2,
            start="weak",
            retrain="scratch",
            regime="warm-dim",
            weak_epochs=2,
            min_case_accuracy=0.5,
            min_gain=0.1,
            overrides=["train.lr=0.01"],
        ),
    ):
        recorded = json.loads(json.dumps(asdict(settings)))
        assert recorded == asdict(settings) and LoopSettings(**recorded) == settings
