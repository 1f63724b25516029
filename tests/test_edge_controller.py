"""The valve controller: safety properties over arbitrary step sequences, then worked examples."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autosink.edge.controller import OPEN_REASONS, REASONS, Controller, ControllerConfig, Decision, UserInput

NONE = UserInput()
FORCE = UserInput(forced_on=True)
CLOSE = UserInput(closed=True)
# Reasons allowed to cut a minimum on time or a forced-on hold short.
OVERRIDES = {"stale-frame", "model-error", "user-closed", "fault", "max-open"}

# -- trace harness --------------------------------------------------------------------------


@dataclass
class Row:
    now: float
    fault: bool
    prob: float | None
    stale: bool  # the frame was stale or missing
    invalid: bool  # the probability was invalid
    user: UserInput
    d: Decision


def run(cfg: ControllerConfig, steps) -> list[Row]:
    """Drive a controller; each step is (dt, "fault") or (dt, prob, frame_age | None, UserInput)."""
    c, now, rows = Controller(cfg), 0.0, []
    assert not c.is_open and c.last == Decision(False, "start", None)
    for step in steps:
        now += step[0]
        if step[1] == "fault":
            d = c.fault(now)
            rows.append(Row(now, True, None, False, False, NONE, d))
        else:
            _, prob, age, user = step
            d = c.step(now, prob, None if age is None else now - age, user)
            stale = age is None or abs(age) > cfg.stale_frame_s
            invalid = prob is None or not (isinstance(prob, float) and 0 <= prob <= 1)
            rows.append(Row(now, False, prob, stale, invalid, user, d))
        assert d.open == c.is_open and d == c.last
    return rows


def runs(rows: list[Row]):
    """Maximal open runs as (first index, index of the closing step or None)."""
    i, out = 0, []
    while i < len(rows):
        if rows[i].d.open and (i == 0 or not rows[i - 1].d.open):
            j = i
            while j < len(rows) and rows[j].d.open:
                j += 1
            out.append((i, j if j < len(rows) else None))
            i = j
        else:
            i += 1
    return out


# -- strategies -----------------------------------------------------------------------------


@st.composite
def configs(draw):
    off = draw(st.sampled_from([0.0, 0.2, 0.4, 0.5]))
    on = draw(st.sampled_from([v for v in (0.5, 0.6, 0.8, 1.0) if v > off]))
    t = st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0])
    return ControllerConfig(
        on_threshold=on,
        off_threshold=off,
        smoothing=draw(st.sampled_from([0.3, 0.5, 1.0])),
        min_on_s=draw(t),
        min_off_s=draw(t),
        max_open_s=draw(st.sampled_from([2.0, 5.0, 10.0])),
        stale_frame_s=draw(st.sampled_from([0.5, 1.0])),
        forced_on_hold_s=draw(st.sampled_from([0.5, 2.0, 4.0])),
    )


GOOD_PROBS = st.one_of(st.sampled_from([0.0, 0.05, 0.3, 0.4, 0.5, 0.6, 0.95, 1.0]), st.floats(0, 1))
BAD_PROBS = st.sampled_from([None, math.nan, -0.01, 1.01, math.inf, -math.inf])
GOOD_AGES = st.sampled_from([0.0, 0.1, 0.5])  # never above the smallest stale_frame_s drawn
BAD_AGES = st.sampled_from([None, 1.5, -2.0, 0.9])  # 0.9: stale only when stale_frame_s is 0.5
USERS = [UserInput(forced_on=True), UserInput(closed=True), UserInput(forced_on=True, closed=True)]
dts = st.sampled_from([0.0, 0.1, 0.1, 0.25, 0.5, 1.0, 3.0])


def mostly(draw, good, bad, odds=6):
    """Healthy most of the time, so that the dwell and lockout rules get exercised too."""
    return draw(bad) if draw(st.integers(0, odds)) == 0 else draw(good)


@st.composite
def segments(draw):
    """A run of identical steps (a held button, a model stuck high, a stalled camera...)."""
    if draw(st.integers(0, 19)) == 0:
        return [(draw(dts), "fault")]
    n = draw(st.integers(1, 15))
    user = mostly(draw, st.just(NONE), st.sampled_from(USERS), odds=4)
    return [(draw(dts), mostly(draw, GOOD_PROBS, BAD_PROBS), mostly(draw, GOOD_AGES, BAD_AGES), user)] * n


def traces():
    return st.tuples(configs(), st.lists(segments(), max_size=30).map(lambda segs: [s for seg in segs for s in seg]))


PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- properties -----------------------------------------------------------------------------


@PROPS
@given(traces())
def test_a_f_never_open_on_a_bad_frame_or_after_a_fault_and_reasons_are_consistent(trace):
    cfg, steps = trace
    for r in run(cfg, steps):
        assert r.d.reason in REASONS and r.d.reason != "start"
        assert r.d.open == (r.d.reason in OPEN_REASONS) or r.d.reason == "model"
        if r.stale or r.invalid or r.fault:
            assert not r.d.open and r.d.smoothed is None
        if not r.fault and (r.stale or r.invalid):
            assert r.d.reason == ("stale-frame" if r.stale else "model-error")
        if r.user.closed:
            assert not r.d.open
        assert r.d.smoothed is None or 0.0 <= r.d.smoothed <= 1.0


@PROPS
@given(traces())
def test_b_no_open_lasts_longer_than_max_open(trace):
    cfg, steps = trace
    rows = run(cfg, steps)
    for i, j in runs(rows):
        last = (len(rows) if j is None else j) - 1
        assert rows[last].now - rows[i].now < cfg.max_open_s


@PROPS
@given(traces())
def test_c_minimum_dwell_times(trace):
    cfg, steps = trace
    rows = run(cfg, steps)
    for i, j in runs(rows):
        # a model open stays open min_on_s unless a fault, bad frame, user close or max-open cut it
        if rows[i].d.reason == "model" and j is not None and rows[j].now - rows[i].now < cfg.min_on_s:
            assert rows[j].d.reason in OVERRIDES, rows[j]
    closes = [j for _, j in runs(rows) if j is not None]
    opens = [i for i, _ in runs(rows)]
    for j in closes:
        # once closed, only the user's forced-on reopens within min_off_s
        nxt = next((i for i in opens if i > j), None)
        if nxt is not None and rows[nxt].now - rows[j].now < cfg.min_off_s:
            assert rows[nxt].d.reason == "user-forced-on", rows[nxt]


@PROPS
@given(traces())
def test_d_forced_on_opens_at_once_and_holds(trace):
    cfg, steps = trace
    rows = run(cfg, steps)
    held_cut = False  # a forced-on held (over consecutive steps) through a max-open cut is ignored
    for k, r in enumerate(rows):
        if r.fault:
            continue
        if not r.user.forced_on:
            held_cut = False
        elif not (r.stale or r.invalid or r.user.closed) and not held_cut:
            if r.d.reason == "max-open":  # the press came when the valve had been open too long
                held_cut = True
                assert k > 0 and rows[k - 1].d.open
            else:
                assert r.d.open and r.d.reason == "user-forced-on", r
        if r.user.forced_on and r.d.reason == "max-open":
            held_cut = True
    for i, j in runs(rows):
        if j is None:
            continue
        forced = [k for k in range(i, j) if rows[k].d.reason == "user-forced-on" and rows[k].user.forced_on]
        # (1e-9: the controller compares now with forced + hold, which rounds differently)
        if forced and rows[j].now - rows[forced[-1]].now < cfg.forced_on_hold_s - 1e-9:
            assert rows[j].d.reason in OVERRIDES, rows[j]


@PROPS
@given(traces())
def test_e_no_model_reopen_after_a_user_close_or_max_open_until_the_model_saw_no_need(trace):
    cfg, steps = trace
    rows = run(cfg, steps)
    for i, _ in runs(rows):
        if rows[i].d.reason != "model":
            continue
        lock = max(
            (
                k
                for k in range(i)
                if rows[k].user.closed or rows[k].d.reason == "max-open" and (k == 0 or rows[k - 1].d.open)
            ),
            default=None,
        )
        if lock is None:
            continue
        between = rows[lock + 1 : i]
        released = any(r.d.smoothed is not None and r.d.smoothed <= cfg.off_threshold for r in between)
        if rows[lock].user.closed and not released:
            # a user forced-on after the close also ends the user-close lockout
            released = any(r.d.reason == "user-forced-on" and r.user.forced_on for r in between)
        assert released, (rows[lock], rows[i])


@given(configs())
def test_f_starts_closed_and_fault_always_closes(cfg):
    c = Controller(cfg)
    assert not c.is_open and c.last.reason == "start"
    assert c.step(0.0, 1.0, 0.0, FORCE).open
    d = c.fault(0.5)
    assert d == Decision(False, "fault", None) and not c.is_open
    assert c.fault(0.6, "camera thread died").reason == "camera thread died"


def replay_steps() -> list[tuple[float, float | None, float, bool, bool]]:
    """(now, prob, frame_time, forced_on, closed): needs coming and going, missing probabilities,
    stale frames, user presses and closes."""
    steps = []
    for k in range(400):
        now = 0.25 * k
        prob = None if k % 17 == 0 else (0.9 if (k // 20) % 2 == 0 else 0.05) + 0.01 * (k % 3)
        frame_time = now - 5.0 if k % 29 == 0 else now
        steps.append((now, prob, frame_time, k % 53 == 0, k % 71 == 0))
    return steps


def replay(steps) -> list[dict]:
    c = Controller()
    return [asdict(c.step(now, prob, ft, UserInput(forced_on=f, closed=x))) for now, prob, ft, f, x in steps]


REPLAY_CHILD = """
import json, sys
from dataclasses import asdict
from autosink.edge.controller import Controller, UserInput
c = Controller()
print(json.dumps([asdict(c.step(now, p, ft, UserInput(forced_on=f, closed=x)))
                  for now, p, ft, f, x in json.load(sys.stdin)]))
"""


def test_replays_identically_in_a_fresh_process_and_beside_another_controller():
    """Replayable from a log: the same steps give the same decisions in another interpreter (other
    string-hash seeds, so no set or dict order leaks in) and while another controller runs in
    between (no state shared between instances)."""
    steps = replay_steps()
    expected = replay(steps)
    reasons = {d["reason"] for d in expected}
    assert {
        "model",
        "hold-min-on",
        "hold-min-off",
        "user-forced-on",
        "user-closed",
        "stale-frame",
        "model-error",
    } <= reasons

    a, b = Controller(), Controller(FAST)
    interleaved = []
    for now, prob, ft, f, x in steps:
        b.step(now, None if prob is None else 1.0 - prob, now, UserInput(forced_on=x, closed=f))
        interleaved.append(asdict(a.step(now, prob, ft, UserInput(forced_on=f, closed=x))))
    assert interleaved == expected

    for seed in ("1", "2"):
        child = subprocess.run(
            [sys.executable, "-c", REPLAY_CHILD],
            input=json.dumps(steps),
            text=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert child.returncode == 0, child.stderr
        assert json.loads(child.stdout) == expected, f"decisions differ in a fresh process (PYTHONHASHSEED={seed})"


# -- examples -------------------------------------------------------------------------------

FAST = ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=1.0, min_on_s=0.5, min_off_s=0.5)


def feed(c: Controller, t0: float, probs, dt: float = 1.0, user: UserInput = NONE):
    """Fresh frames every dt seconds from t0; returns the decisions."""
    return [c.step(t0 + k * dt, p, t0 + k * dt, user) for k, p in enumerate(probs)]


def test_hysteresis_band_keeps_the_current_state():
    c = Controller(FAST)
    ds = feed(c, 0, [0.5, 0.59, 0.6, 0.5, 0.41, 0.4, 0.5, 0.59, 0.6])
    assert [d.open for d in ds] == [False, False, True, True, True, False, False, False, True]
    assert {d.reason for d in ds} == {"model"}


def test_smoothing_is_an_exponential_moving_average():
    c = Controller(ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=0.5))
    ds = feed(c, 0, [1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    assert [d.smoothed for d in ds] == [1.0, 0.5, 0.75, 0.875, 0.4375, 0.21875]
    assert [d.open for d in ds] == [True, True, True, True, True, False]


def test_smoothing_filters_a_single_frame_spike():
    c = Controller(ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=0.3))
    ds = feed(c, 0, [0.0, 0.0, 1.0, 0.0, 0.0])
    assert not any(d.open for d in ds) and max(d.smoothed for d in ds) == pytest.approx(0.3)


def test_min_on_and_min_off_dwell():
    c = Controller(ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=1.0, min_on_s=2.0, min_off_s=3.0))
    assert c.step(0.0, 0.9, 0.0).reason == "model" and c.is_open
    assert c.step(1.0, 0.0, 1.0) == Decision(True, "hold-min-on", 0.0)
    assert c.step(2.0, 0.0, 2.0) == Decision(False, "model", 0.0)
    assert c.step(3.0, 0.9, 3.0) == Decision(False, "hold-min-off", 0.9)
    assert c.step(4.9, 0.9, 4.9).reason == "hold-min-off"
    assert c.step(5.0, 0.9, 5.0) == Decision(True, "model", 0.9)


def test_user_overrides_ignore_the_dwell_times():
    c = Controller(ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=1.0, min_on_s=5.0, min_off_s=5.0))
    c.step(0.0, 0.9, 0.0)
    assert c.step(0.1, 0.9, 0.1, CLOSE) == Decision(False, "user-closed", 0.9)
    assert c.step(0.2, 0.0, 0.2, FORCE) == Decision(True, "user-forced-on", 0.0)


def test_max_open_closes_and_locks_until_the_model_saw_no_need():
    c = Controller(ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=1.0, max_open_s=10.0))
    ds = feed(c, 0, [0.9] * 12)
    assert [d.open for d in ds] == [True] * 10 + [False] * 2 and ds[10].reason == ds[11].reason == "max-open"
    assert c.step(12, 0.5, 12).reason == "max-open"  # in the band: not yet
    assert c.step(13, 0.4, 13) == Decision(False, "model", 0.4)  # the model saw no need: released
    assert c.step(14, 0.9, 14) == Decision(True, "model", 0.9)


def test_max_open_caps_a_held_forced_on_until_released():
    c = Controller(
        ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=1.0, max_open_s=10.0, forced_on_hold_s=3.0)
    )
    ds = feed(c, 0, [0.0] * 13, user=FORCE)
    assert all(d.open and d.reason == "user-forced-on" for d in ds[:10])
    assert ds[10].reason == "max-open" and not any(d.open for d in ds[10:])  # held: ignored
    assert c.step(13, 0.0, 13) == Decision(False, "model", 0.0)  # released
    assert c.step(14, 0.0, 14, FORCE) == Decision(True, "user-forced-on", 0.0)  # a new press


def test_forced_on_hold_restarts_while_forced_and_then_the_model_decides():
    c = Controller(ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=1.0, forced_on_hold_s=3.0))
    assert c.step(0, 0.0, 0, FORCE).open
    assert c.step(2, 0.0, 2).reason == "user-forced-on"
    assert c.step(2.5, 0.0, 2.5, FORCE).reason == "user-forced-on"  # restarted: until 5.5
    assert c.step(5.4, 0.0, 5.4) == Decision(True, "user-forced-on", 0.0)
    assert c.step(5.5, 0.0, 5.5) == Decision(False, "model", 0.0)
    c.step(6.0, 0.0, 6.0, FORCE)
    assert c.step(9.5, 0.5, 9.5) == Decision(True, "model", 0.5)  # hold over; band keeps it open


def test_user_close_blocks_the_model_until_the_scene_changed():
    c = Controller(ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=1.0, min_off_s=0.5))
    c.step(0, 0.9, 0)
    assert c.step(1, 0.9, 1, CLOSE).reason == "user-closed"
    for t in range(2, 20):  # the model keeps seeing "water": it may not reopen, however long
        assert c.step(t, 0.9, t) == Decision(False, "user-closed", 0.9)
    assert c.step(20, 0.3, 20) == Decision(False, "model", 0.3)  # scene changed
    assert c.step(21, 0.9, 21) == Decision(True, "model", 0.9)


def test_user_close_lockout_survives_stalls_and_faults_and_a_force_ends_it():
    c = Controller(ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=1.0))
    c.step(0, 0.9, 0)
    c.step(1, 0.9, 1, CLOSE)
    assert c.step(2, 0.9, None).reason == "stale-frame"
    c.fault(3)
    assert c.step(5, 0.9, 5).reason == "user-closed"
    assert c.step(6, 0.9, 6, FORCE).reason == "user-forced-on"
    assert c.step(30, 0.9, 30) == Decision(True, "model", 0.9)  # hold over, the model agrees


def test_close_and_force_at_once_closes():
    assert Controller().step(0, 0.9, 0, UserInput(forced_on=True, closed=True)).reason == "user-closed"


@pytest.mark.parametrize("frame_time", [None, -1.01, 1.01, math.nan, math.inf])
def test_stale_or_missing_frame_closes_and_resets_smoothing(frame_time):
    c = Controller(FAST)
    c.step(-0.5, 0.9, -0.5)
    assert c.step(0.0, 0.9, frame_time, FORCE) == Decision(False, "stale-frame", None)
    assert c.step(0.5, 0.2, 0.5).smoothed == 0.2  # restarts from the first fresh probability


def test_numpy_scalars_are_numbers():
    import numpy as np

    c = Controller(FAST)
    d = c.step(np.float64(5.0), np.float32(0.75), np.float64(4.5))
    assert d == Decision(True, "model", 0.75) and type(d.smoothed) is float
    assert c.step(np.float64(6.0), np.float32(np.nan), 6.0).reason == "model-error"


def test_frame_exactly_stale_frame_s_old_is_still_fresh():
    assert Controller(FAST).step(10.0, 0.9, 9.0).open


@pytest.mark.parametrize("prob", [None, math.nan, -0.01, 1.01, math.inf, "0.9", True])
def test_invalid_probability_closes(prob):
    c = Controller(FAST)
    c.step(0.0, 0.9, 0.0)
    assert c.step(1.0, prob, 1.0, FORCE) == Decision(False, "model-error", None)


def test_time_going_backwards_or_nan_is_a_fault():
    c = Controller(FAST)
    c.step(10.0, 0.9, 10.0)
    assert c.step(9.0, 0.9, 9.0) == Decision(False, "fault", None)
    assert c.step(9.4, 0.9, 9.4).reason == "hold-min-off"  # re-based at 9.0, then the usual rules
    assert c.step(10.0, 0.9, 10.0).open
    assert c.step(math.nan, 0.9, 10.0) == Decision(False, "fault", None)


def test_fault_resets_smoothing():
    c = Controller(ControllerConfig(on_threshold=0.6, off_threshold=0.4, smoothing=0.5))
    c.step(0, 1.0, 0)
    c.fault(1)
    assert c.step(3, 0.2, 3).smoothed == 0.2


# -- config ---------------------------------------------------------------------------------


def test_config_from_dict_round_trip_and_int_coercion():
    cfg = ControllerConfig.from_dict({"on_threshold": 1, "off_threshold": 0, "max_open_s": 90})
    assert cfg.on_threshold == 1.0 and isinstance(cfg.max_open_s, float)
    assert ControllerConfig.from_dict(asdict(ControllerConfig())) == ControllerConfig()


def test_config_unknown_keys_are_named():
    with pytest.raises(ValueError, match="max_open, on_treshold"):
        ControllerConfig.from_dict({"on_treshold": 0.7, "max_open": 3, "min_on_s": 2})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"on_threshold": 0.15}, "off_threshold < on_threshold"),
        ({"off_threshold": -0.1}, "off_threshold"),
        ({"on_threshold": 1.5}, "on_threshold <= 1"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"smoothing": 1.5}, "smoothing"),
        ({"min_on_s": 0}, "min_on_s"),
        ({"min_off_s": -1}, "min_off_s"),
        ({"max_open_s": math.inf}, "max_open_s"),
        ({"stale_frame_s": math.nan}, "stale_frame_s"),
        ({"forced_on_hold_s": "10"}, "forced_on_hold_s"),
        ({"min_on_s": True}, "min_on_s"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        ControllerConfig.from_dict(bad)
    with pytest.raises(ValueError, match="mapping"):
        ControllerConfig.from_dict([("min_on_s", 1.0)])
