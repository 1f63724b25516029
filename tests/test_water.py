"""Tests for the water-savings benchmark (src/autosink/learn/water.py, the `water` stage).

The stage runs for real (params composed from conf/, the edge runtime and controller, frames
rendered on the fly) on a couple of short held-out sessions, with tiny constant ONNX models
from tests/edge_fixtures.py (``scale=0``: the output is ``sigmoid(bias)`` whatever the frame).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from autosink.edge.controller import ControllerConfig
from autosink.edge.settings import load_config
from autosink.learn.water import (
    CSV_COLUMNS,
    DEFAULTS,
    controller_config,
    derive,
    frame_counts,
    heldout_scripts,
    run_benchmark,
)
from autosink.ops.config import compose
from autosink.sim.lake import with_defaults
from autosink.sim.session import make_sessions
from autosink.stages import water as stage
from tests.edge_fixtures import write_tiny_model

FLOW = 6.0
TOTAL_KEYS = {
    "litres_autosink",
    "litres_always_on",
    "litres_oracle",
    "litres_ir",
    "savings_pct",
    "oracle_savings_pct",
    "ir_savings_pct",
    "withheld_s",
    "withheld_pct",
    "false_offs",
    "false_offs_per_10min",
    "valve_switches",
    "valve_switches_per_min",
    "need_s",
    "open_s",
    "duration_s",
    "frames",
    "ir_open_s",
    "unneeded_open_s",
    "need_stretches",
    "missed_needs",
    "max_open_cuts",
    "model_errors",
    "ir_withheld_s",
    "ir_switches",
    "ir_switches_per_min",
}


@pytest.fixture(scope="module")
def base_params(repo_root: Path) -> dict:
    params = compose(repo_root)
    params["water"] = yaml.safe_load(open(repo_root / "conf/water/default.yaml"))
    return params


def _small(params: dict, repo_root: Path, model: Path, **controller) -> dict:
    """The real config, shrunk: two short sessions, absolute paths (the stage runs in a tmp dir)."""
    p = copy.deepcopy(params)
    w = p["water"]
    w.update(
        model=str(model), sessions=2, dishes_per_session=[1, 1], controller_from=str(repo_root / "edge" / "config.toml")
    )
    w["controller"].update(controller)
    return p


def _run_stage(params: dict, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    old = Path.cwd()
    os.chdir(workdir)
    try:
        return stage.run(params, progress=False)
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def always_on(tmp_path_factory, base_params, repo_root) -> tuple[dict, Path]:
    d = tmp_path_factory.mktemp("water_on")
    model = write_tiny_model(d / "on" / "model.onnx", scale=0.0, bias=10.0)  # p = 0.99995 on every frame
    # max_open_s above any session: the safety cut is tested on its own below
    params = _small(base_params, repo_root, model, max_open_s=1e6)
    return _run_stage(params, d / "run"), d / "run"


@pytest.fixture(scope="module")
def always_off(tmp_path_factory, base_params, repo_root) -> tuple[dict, Path]:
    d = tmp_path_factory.mktemp("water_off")
    model = write_tiny_model(d / "off" / "model.onnx", scale=0.0, bias=-10.0)  # p = 0.00005
    return _run_stage(_small(base_params, repo_root, model), d / "run"), d / "run"


# --------------------------------------------------------------------------- config


def test_conf_group_lists_the_defaults(repo_root):
    conf = yaml.safe_load(open(repo_root / "conf/water/default.yaml"))
    assert set(conf) == set(DEFAULTS)
    assert conf["flow_l_min"] == 6.0 and conf["fps"] == 2.0
    assert set(conf["controller"]) == set(ControllerConfig.__dataclass_fields__)


def test_controller_settings_come_from_the_edge_config(repo_root):
    cfg = yaml.safe_load(open(repo_root / "conf/water/default.yaml"))
    edge = load_config(repo_root / "edge" / "config.toml")["controller"]
    assert controller_config(cfg, repo_root) == ControllerConfig.from_dict(edge)
    cfg["controller"]["min_on_s"] = 2.5
    assert controller_config(cfg, repo_root).min_on_s == 2.5
    assert controller_config({"controller_from": ""}) == ControllerConfig()
    with pytest.raises(ValueError, match="unknown controller config keys"):
        controller_config({"controller_from": "", "controller": {"min_on": 1.0}})


def test_heldout_sessions_are_not_the_lake(base_params):
    lake = make_sessions(with_defaults(base_params["sim"]), "lake")
    held = heldout_scripts(DEFAULTS)
    assert len(held) == DEFAULTS["sessions"]
    assert not {s.dishwashing_id for s in held} & {s.dishwashing_id for s in lake}
    assert not {s.seed for s in held} & {s.seed for s in lake}
    # growing the benchmark keeps the sessions it had
    more = heldout_scripts({**DEFAULTS, "sessions": DEFAULTS["sessions"] + 2})
    assert [s.dishwashing_id for s in more[: len(held)]] == [s.dishwashing_id for s in held]


# --------------------------------------------------------------------------- metric definitions


def test_frame_counts_follow_the_definitions():
    #        frame: 0  1  2  3  4  5  6  7  8  9
    need = np.array([0, 1, 1, 1, 0, 1, 1, 0, 1, 1], bool)
    valve = np.array([0, 0, 1, 0, 0, 1, 1, 1, 0, 0], bool)
    ir = np.array([1, 1, 0, 0, 0, 0, 1, 1, 1, 1], bool)
    c = frame_counts(need, valve, ir, fps=2.0)
    assert c["duration_s"] == 5.0 and c["need_s"] == 3.5 and c["open_s"] == 2.0 and c["ir_open_s"] == 3.0
    assert c["withheld_s"] == 2.0  # frames 1, 3, 8, 9
    assert c["unneeded_open_s"] == 0.5  # frame 7
    assert c["need_stretches"] == 3  # [1,4), [5,7), [8,10)
    # [1,4) closes at frame 3; [8,10) closes on its first frame (open just before it): both count
    assert c["false_offs"] == 2
    assert c["missed_needs"] == 1  # [8,10): never open during it (a miss and a false-off)
    assert c["valve_switches"] == 4  # opens at 2 and 5, closes at 3 and 8
    assert c["ir_switches"] == 3
    # the valve open before a stretch and closing on its first frame is a false-off
    c2 = frame_counts([0, 1, 1], [1, 0, 0], [0, 0, 0], fps=1.0)
    assert c2["false_offs"] == 1 and c2["missed_needs"] == 1
    m = derive(c, FLOW)
    assert m["litres_always_on"] == pytest.approx(5.0 / 60 * FLOW)
    assert m["litres_autosink"] == pytest.approx(2.0 / 60 * FLOW, abs=1e-4)
    assert m["savings_pct"] == pytest.approx(60.0)
    assert m["oracle_savings_pct"] == pytest.approx(30.0)
    assert m["ir_savings_pct"] == pytest.approx(40.0)
    assert m["false_offs_per_10min"] == pytest.approx(2 / (5.0 / 600), rel=1e-4)
    assert m["valve_switches_per_min"] == pytest.approx(4 / (5.0 / 60), rel=1e-4)
    assert m["withheld_pct"] == pytest.approx(100 * 2.0 / 3.5, rel=1e-4)
    assert derive(frame_counts([0, 0], [0, 0], [0, 0], 2.0), FLOW)["withheld_pct"] is None


# --------------------------------------------------------------------------- the stage, constant models


def _check_consistent(metrics: dict) -> None:
    assert metrics["flow_l_min"] == FLOW and metrics["user_overrides"] is False
    assert len(metrics["sessions"]) == metrics["n_sessions"] == 2
    for m in [metrics["total"], *metrics["sessions"].values()]:
        assert TOTAL_KEYS <= set(m)
        assert m["need_s"] > 0
        assert m["litres_oracle"] == pytest.approx(m["need_s"] * FLOW / 60, abs=1e-3)
        assert m["litres_always_on"] == pytest.approx(m["duration_s"] * FLOW / 60, abs=1e-3)
        assert m["oracle_savings_pct"] == pytest.approx(100 * (1 - m["need_s"] / m["duration_s"]), abs=1e-3)
        assert 0 <= m["litres_oracle"] <= m["litres_always_on"]
        assert 0 <= m["litres_ir"] <= m["litres_always_on"]
        assert m["model_errors"] == 0
    total = metrics["total"]
    for key in ("duration_s", "need_s", "open_s", "withheld_s", "false_offs", "valve_switches", "frames"):
        assert total[key] == pytest.approx(sum(s[key] for s in metrics["sessions"].values()), abs=1e-3)
    # what is written is what was returned
    assert json.loads(json.dumps(metrics)) == metrics


def test_always_on_model_saves_nothing_and_withholds_nothing(always_on):
    metrics, _ = always_on
    _check_consistent(metrics)
    for m in [metrics["total"], *metrics["sessions"].values()]:
        assert m["savings_pct"] == pytest.approx(0.0, abs=1e-6)
        assert m["litres_autosink"] == pytest.approx(m["litres_always_on"])
        assert m["withheld_s"] == 0 and m["false_offs"] == 0 and m["missed_needs"] == 0
        assert m["unneeded_open_s"] == pytest.approx(m["duration_s"] - m["need_s"])
    # opens on the first frame of every session and stays open
    assert [m["valve_switches"] for m in metrics["sessions"].values()] == [1, 1]


def test_always_off_model_withholds_all_needed_water(always_off):
    metrics, run = always_off
    # it "saves" every litre, and the verdict fails it for that
    headline = json.loads((run / "metrics/water.json").read_text())
    assert headline["savings_pct"] == 100.0 and headline["withheld_pct"] == 100.0 and headline["passed"] is False
    assert metrics["total"]["missed_needs_pct"] == 100.0  # no need got any water
    _check_consistent(metrics)
    for m in [metrics["total"], *metrics["sessions"].values()]:
        assert m["withheld_s"] == pytest.approx(m["need_s"]) and m["withheld_pct"] == pytest.approx(100.0)
        assert m["savings_pct"] == pytest.approx(100.0)
        assert m["litres_autosink"] == 0 and m["valve_switches"] == 0 and m["false_offs"] == 0
        assert m["missed_needs"] == m["need_stretches"] > 0


def test_stage_writes_metrics_csv_and_plot(always_on):
    metrics, run = always_on
    assert json.loads((run / "reports/water.json").read_text()) == metrics
    # the headline: savings beside the withheld water, the false-offs and the verdict
    headline = json.loads((run / "metrics/water.json").read_text())
    assert headline["passed"] is True and headline["withheld_pct"] == 0.0  # always on withholds nothing
    assert headline["savings_pct"] == round(metrics["total"]["savings_pct"], 4) and "false_offs_per_10min" in headline
    with open(run / "metrics/water/session.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    first = metrics["sessions"][metrics["plot_session"]]
    assert len(rows) == first["frames"]
    assert float(rows[1]["t_s"]) - float(rows[0]["t_s"]) == pytest.approx(1 / metrics["fps"])
    assert {r["valve"] for r in rows} == {"1"} and all(float(r["p"]) > 0.99 for r in rows)
    assert sum(int(r["need"]) for r in rows) / metrics["fps"] == pytest.approx(first["need_s"])
    png = run / "reports/water_session.png"
    assert png.stat().st_size > 20_000
    img = cv2.imread(str(png))
    assert img is not None and img.shape[1] > 800 and img.std() > 10  # a real picture, not blank


# --------------------------------------------------------------------------- the edge controller decides


def test_the_edge_controller_is_in_the_loop(tmp_path, repo_root):
    """A constant 'water on' model is cut by the controller's maximum open time, and the edge
    runtime's own count of open seconds agrees with the benchmark's frame accounting."""
    model = write_tiny_model(tmp_path / "on" / "model.onnx", scale=0.0, bias=10.0)
    cfg = {
        **DEFAULTS,
        "model": str(model),
        "sessions": 1,
        "dishes_per_session": [1, 1],
        "controller_from": str(repo_root / "edge" / "config.toml"),
        "controller": {"max_open_s": 5.0},
    }
    metrics, traces = run_benchmark(cfg, progress=False)
    (trace,) = traces
    m = metrics["total"]
    assert m["max_open_cuts"] == 1  # never reopens: p never falls to off_threshold (the lockout)
    assert m["open_s"] == pytest.approx(5.0)
    assert trace.valve[:10] == [True] * 10 and not any(trace.valve[10:])
    assert trace.stats.seconds_open == pytest.approx(m["open_s"])
    assert trace.stats.valve_changes == m["valve_switches"]
    # the card's threshold is honoured through the edge's normalisation: p 0.6 under a card
    # threshold of 0.7 never opens the valve
    low = write_tiny_model(tmp_path / "low" / "model.onnx", scale=0.0, bias=math.log(0.6 / 0.4), threshold=0.7)
    metrics, _ = run_benchmark({**cfg, "model": str(low)}, progress=False)
    assert metrics["total"]["open_s"] == 0 and metrics["model"]["threshold"] == 0.7


class _Tap:
    """In the recorder's place: every frame's (model_output, magnetic_status, valve)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int]] = []

    def add(self, t, wall, image, model_output, magnetic_status, valve=0) -> None:
        self.rows.append((int(model_output), int(magnetic_status), int(bool(valve))))

    def close(self, *a, **k) -> None:
        pass


def test_the_pis_hold_after_a_release_is_not_labelled_as_the_users_wish(tmp_path, base_params, repo_root):
    """A model that never opens, simulated users pressing the button while they want water, and
    the Pi's 10 s hold after each release: the label stage must not read the held water as wanted
    (when the hold was recorded as the user's state, every unwanted open frame came out labelled
    1); the held frames are ignored, neither wanted nor unwanted."""
    from dataclasses import replace

    from autosink.data.labels import IGNORE, propagate
    from autosink.edge.inference import load_model
    from autosink.learn.water import SimUserFeedback, run_session
    from autosink.sim.session import wants_water

    model = load_model(write_tiny_model(tmp_path / "off.onnx", scale=0.0, bias=-10.0))
    cfg = {**base_params["water"], "controller_from": str(repo_root / "edge" / "config.toml")}
    ccfg = replace(controller_config(cfg), forced_on_hold_s=10.0)
    wanted = unwanted_open = as_wish = held = 0
    for script in heldout_scripts(cfg)[:3]:
        tap = _Tap()
        run_session(script, model, ccfg, feedback=SimUserFeedback(script), recorder=tap)
        m, s, v = (np.array(c) for c in zip(*tap.rows))
        need = np.array([wants_water(st) for st in script.states])
        unwanted = (v == 1) & ~need
        label = propagate(m, s, float(script.fps), arduino_output=v).label
        wanted += int(((label == 1) & need).sum())
        unwanted_open += int(unwanted.sum())
        as_wish += int(((label == 1) & unwanted).sum())
        hold = (v == 1) & (s == 0)
        assert (label[hold] == IGNORE).all()
        held += int(hold.sum())
    assert wanted > 50 and unwanted_open > 20 and held >= unwanted_open
    assert as_wish == 0
