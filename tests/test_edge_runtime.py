"""Tests for the edge runtime (edge/run.py, autosink.edge.*, autosink.core.modelcard).

Everything runs on a simulated clock (no sleeping) except the subprocess tests that start
``edge/run.py`` for real (import footprint, SIGTERM, a device as the camera) and the checks that
point the edge at devices, FIFOs and sockets (in a child process with a time limit: a regression
would hang). Repeated signals against ``run.py`` are in test_edge_signals.py. The controller and devices have their own
tests; here they are used as they are, with the fake valve recording every change.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from configparser import ConfigParser
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from autosink.core.episode import check_episode, episode_stem, read_episode
from autosink.core.modelcard import (
    CardError,
    card_path_for,
    check_card_supported,
    read_card,
    sha256_file,
    write_card,
)
from autosink.edge.camera import Camera, Frame, IteratorCamera, open_camera
from autosink.edge.clock import SimClock
from autosink.edge.controller import UserInput
from autosink.edge.devices import FakeInput, FakeValve
from autosink.edge.feedback import FeedbackContext, GpioFeedback
from autosink.edge.inference import ModelError, ModelReloader, load_model, normalize_probability
from autosink.edge.recorder import Recorder
from autosink.edge.runtime import EdgeRuntime
from autosink.edge.settings import DEFAULT_CONFIG, ConfigError, load_config, merge_config
from autosink.edge.uploader import FolderTarget, GDriveTarget, TargetUnavailable, Uploader, make_target
from autosink.edge.wiring import build_runtime
from tests.edge_fixtures import FOOTPRINT_SCRIPT, ROI, bright_roi_frame, check_footprint, write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "edge" / "run.py"
T0 = datetime(2024, 7, 6, 17, 25, 40).timestamp()  # local wall time of t=0 in simulations

BRIGHT = bright_roi_frame()  # the tiny model: p ~ 1
DARK = bright_roi_frame(90, 90)  # uniform: p ~ 0.12


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "model.onnx")


class Stub:
    """A predictor whose answers a test scripts: ``plan(i) -> p`` or raise."""

    threshold = 0.5
    height, width = 480, 640

    def __init__(self, plan):
        self.plan, self.i = plan, 0

    def predict(self, frame):
        i, self.i = self.i, self.i + 1
        return self.plan(i)


def frames_of(n: int, image: np.ndarray = BRIGHT) -> list[np.ndarray]:
    return [image] * n


def runtime(images, model, clock, *, fps=5.0, valve=None, **kw) -> EdgeRuntime:
    cam = IteratorCamera(iter(images), clock.monotonic, name="test")
    return EdgeRuntime(
        camera=cam,
        model=model,
        valve=valve or FakeValve(),
        clock=clock,
        fps=fps,
        install_signals=kw.pop("install_signals", False),
        **kw,
    )


def opens(valve: FakeValve) -> list[bool]:
    return [o for _, o in valve.history]


# --------------------------------------------------------------------------- model card


def test_card_roundtrip_and_every_field_checked(tmp_path, model_path):
    card = read_card(card_path_for(model_path))
    assert card["input"] == {
        "name": "frames",
        "dtype": "uint8",
        "layout": "NHWC",
        "color": "RGB",
        "height": 480,
        "width": 640,
    }
    assert card["model_sha256"] == sha256_file(model_path)
    check_card_supported(card)

    bad = json.loads(json.dumps(card))
    bad["input"]["height"] = "480"
    bad["threshold"] = 1.5
    del bad["model_sha256"]
    bad["classes"] = ["on", "off"]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(CardError) as e:
        read_card(path)
    fields = [f for f, _ in e.value.problems]
    assert set(fields) == {"input.height", "threshold", "model_sha256", "classes"}
    assert f"{path}: input.height: expected a positive integer" in str(e.value)

    path.write_text('{"format": "autosink-model-card/1", "format": "x"}')
    with pytest.raises(CardError, match="duplicate key"):
        read_card(path)
    with pytest.raises(CardError, match=r"input\.layout.*NHWC"):
        nchw = json.loads(json.dumps(card))
        nchw["input"]["layout"] = "NCHW"
        check_card_supported(nchw)
    with pytest.raises(CardError, match=r"input\.dtype"):
        write_card(tmp_path / "x.json", {**card, "input": {**card["input"], "dtype": "int64"}})


# --------------------------------------------------------------------------- inference


def test_inference_follows_the_card(tmp_path, model_path):
    m = load_model(model_path, threads=1)
    assert m.predict(BRIGHT) > 0.99 and m.predict(DARK) < 0.2
    assert normalize_probability(m.threshold, m.threshold) == 0.5
    assert normalize_probability(0.2, 0.2) == 0.5 and normalize_probability(1.0, 0.2) == 1.0

    # colour order: a model that looks at channel 0 only; a red ROI is "water" for an RGB card,
    # and not for a BGR card (the runtime then feeds blue in channel 0)
    red = np.zeros((480, 640, 3), np.uint8)
    x0, y0, x1, y1 = ROI
    red[y0:y1, x0:x1, 0] = 255
    rgb = load_model(write_tiny_model(tmp_path / "rgb" / "model.onnx", weights=(1, 0, 0), color="RGB"))
    bgr = load_model(write_tiny_model(tmp_path / "bgr" / "model.onnx", weights=(1, 0, 0), color="BGR"))
    assert rgb.predict(red) > 0.99 and bgr.predict(red) < 0.2

    with pytest.raises(ModelError, match="expected an RGB uint8 frame of 640x480"):
        m.predict(np.zeros((240, 320, 3), np.uint8))
    other = write_tiny_model(tmp_path / "other" / "model.onnx", bias=1.0)
    shutil.copy(card_path_for(model_path), card_path_for(other))  # a card of another model
    with pytest.raises(ModelError, match="does not match model.json model_sha256"):
        load_model(other)
    wrong_name = tmp_path / "wn" / "model.onnx"
    write_tiny_model(wrong_name)
    card = read_card(card_path_for(wrong_name))
    card["input"]["name"] = "images"
    write_card(card_path_for(wrong_name), card)
    with pytest.raises(ModelError, match="'images' is not a graph input"):
        load_model(wrong_name)


def _replace_model(dst: Path, tmp: Path, **kw) -> None:
    """Deploy like an operator should: write beside, then rename (model, then card)."""
    staged = write_tiny_model(tmp / "model.onnx", **kw)
    os.replace(staged, dst)
    os.replace(card_path_for(staged), card_path_for(dst))


def test_hot_reload_swaps_good_models_and_keeps_the_old_one_on_broken_files(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = write_tiny_model(tmp_path / "prod" / "model.onnx", version="v1")
    r = ModelReloader(path, background=False)
    assert r.model.version == "v1" and not r.check()  # nothing changed

    _replace_model(path, tmp_path / "stage2", version="v2", bias=-3.0)
    r.offer_frame(BRIGHT)
    assert r.check() and r.model.version == "v2" and r.reloads == 1

    # half-copied model (truncated bytes, old card): refused, v2 keeps serving, not retried
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert r.check()
    assert r.model.version == "v2" and r.rejected == 1
    assert "does not match" in r.last_error
    assert not r.check() and r.rejected == 1  # same broken file: not loaded again

    # garbage whose card matches it: onnxruntime refuses
    path.write_bytes(b"not an onnx model at all")
    card = read_card(card_path_for(path))
    card["model_sha256"] = sha256_file(path)
    write_card(card_path_for(path), card)
    assert r.check() and r.model.version == "v2" and r.rejected == 2
    assert "onnxruntime cannot load it" in r.last_error

    # a valid model for another camera resolution: refused by the self-test step
    _replace_model(path, tmp_path / "stage3", version="v3", height=240, width=320)
    assert r.check() and r.model.version == "v2" and "differs from the running camera" in r.last_error
    assert any("model reload rejected, keeping" in m for m in caplog.messages)

    _replace_model(path, tmp_path / "stage4", version="v4")
    assert r.check() and r.model.version == "v4"
    assert r.model.predict(BRIGHT) > 0.99


def test_hot_reload_inside_the_loop(tmp_path):
    path = write_tiny_model(tmp_path / "prod" / "model.onnx", version="v1")
    reloader = ModelReloader(path, background=False)
    clock = SimClock(T0)

    def feedback(ctx: FeedbackContext) -> UserInput:
        if ctx.index == 10:  # a new model that never wants water
            _replace_model(path, tmp_path / "stage", version="v2", bias=-50.0)
        if ctx.index == 20:
            path.write_bytes(b"\x00" * 10)  # broken: keep v2
        return UserInput()

    valve = FakeValve()
    rt = runtime(frames_of(40), reloader, clock, valve=valve, feedback=feedback, reload_check_s=1.0)
    stats = rt.run()
    assert stats.frames == 40 and stats.model_errors == 0
    assert reloader.model.version == "v2" and reloader.reloads == 1 and reloader.rejected == 1
    assert opens(valve) == [True, False]  # open on v1; v2 closed it; the broken file changed nothing


# --------------------------------------------------------------------------- camera


def test_replay_cameras(tmp_path):
    clock = SimClock(T0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10):  # natural order
        img = np.full((480, 640, 3), i, np.uint8)
        img[0, 0] = (255, 0, 0)  # red in RGB
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cam = open_camera(f"folder:{folder}", clock=clock.monotonic)
    got = [cam.read(0.1) for _ in range(4)]
    assert [int(f.image[1, 1, 0]) for f in got[:3]] == [1, 2, 10]
    assert tuple(got[0].image[0, 0]) == (255, 0, 0)
    assert got[3] is None and cam.finished

    small = tmp_path / "small"
    small.mkdir()
    cv2.imwrite(str(small / "1.png"), np.zeros((240, 320, 3), np.uint8))
    assert open_camera(f"folder:{small}", clock=clock.monotonic).read(0.1).image.shape == (480, 640, 3)

    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (640, 480))
    for i in range(3):
        w.write(np.full((480, 640, 3), 50 * i, np.uint8))
    w.release()
    vcam = open_camera(f"video:{video}", clock=clock.monotonic)
    assert sum(1 for _ in iter(lambda: vcam.read(0.1), None)) == 3
    vcam.close()
    with pytest.raises(Exception, match="unknown camera kind"):
        open_camera("webcam:0", clock=clock.monotonic)


def test_folder_source_skips_garbage_frames_and_the_stale_rule_still_closes(tmp_path, caplog):
    """One undecodable image in the middle is skipped (logged with the source, index and file
    name, counted) and the run goes on; a run of them longer than stale_frame_s closes the valve."""
    caplog.set_level(logging.INFO)
    folder = tmp_path / "frames"
    folder.mkdir()
    ok, png = cv2.imencode(".png", np.full((48, 64, 3), 90, np.uint8))
    garbage = {11} | set(range(21, 31))  # one alone, then 10 in a row (2 s at 5 fps)
    for i in range(1, 41):
        (folder / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image" if i in garbage else png.tobytes())
    clock = SimClock(T0)
    cam = open_camera(f"folder:{folder}", clock=clock.monotonic)
    valve = FakeValve()
    rt = EdgeRuntime(camera=cam, model=Stub(lambda i: 0.95), valve=valve, clock=clock, fps=5.0, install_signals=False)
    stats = rt.run()
    assert stats.stop_reason == "end-of-source" and stats.frames == 40 - len(garbage)
    assert cam.bad_frames == stats.bad_frames == len(garbage) and "bad_frames=11" in stats.line()
    assert any(f"folder:{folder}: frame 10 (11.png) skipped: cannot decode image" in m for m in caplog.messages)
    # open; the lone bad frame changes nothing; the 2 s without a good frame close it; back; exit
    assert opens(valve) == [True, False, True, False]
    closes = [m for m in caplog.messages if m.startswith("valve CLOSED")]
    assert len(closes) == 1 and "stale-frame" in closes[0]


def test_live_camera_thread_keeps_the_newest_frame_and_reports_stalls():
    from autosink.edge.camera import ThreadedCamera

    state = {"n": 0, "stall": threading.Event(), "opened": 0, "released": 0}

    def opener():
        state["opened"] += 1

        def grab():
            if state["stall"].is_set():
                time.sleep(0.01)
                return None
            state["n"] += 1
            time.sleep(0.002)
            return np.full((240, 320, 3), state["n"] % 256, np.uint8)  # resized to 640x480

        return grab, lambda: state.__setitem__("released", state["released"] + 1)

    cam = ThreadedCamera(opener, time.monotonic, name="fake-live", size=(640, 480))
    try:
        a = cam.read(2.0)
        b = cam.read(2.0)
        assert a is not None and b is not None and b.index > a.index and b.image.shape == (480, 640, 3)
        state["stall"].set()
        time.sleep(0.05)
        cam.read(0.0)  # drain the last frame before the stall
        assert cam.read(0.1) is None  # a stall: no new frame within the timeout
        cam.reopen()
        state["stall"].clear()
        assert cam.read(2.0) is not None and state["opened"] == 2 and state["released"] == 1
    finally:
        cam.close()
    assert state["released"] == 2 and cam.finished


# --------------------------------------------------------------------------- fault injection


class StallingCamera(Camera):
    """Frames, then a stall (each read waits ``timeout`` on the simulated clock), then frames."""

    live = True

    def __init__(self, clock: SimClock, plan: list[bool]):
        self.clock, self.plan, self.i, self.reopened = clock, plan, 0, 0
        self.name = "stalling"

    def read(self, timeout: float):
        if self.i >= len(self.plan):
            self.finished = True
            return None
        ok = self.plan[self.i]
        self.i += 1
        if not ok:
            self.clock.advance(timeout)
            return None
        return Frame(BRIGHT, self.clock.monotonic(), self.i)

    def reopen(self) -> None:
        self.reopened += 1


def test_camera_stall_closes_the_valve_and_recovers(caplog):
    caplog.set_level(logging.INFO)
    clock = SimClock(T0)
    cam = StallingCamera(clock, [True] * 10 + [False] * 8 + [True] * 10)
    valve = FakeValve()
    rt = EdgeRuntime(
        camera=cam,
        model=Stub(lambda i: 0.95),
        valve=valve,
        clock=clock,
        fps=5.0,
        read_timeout_s=0.5,
        reopen_after_s=2.0,
        install_signals=False,
    )
    stats = rt.run()
    assert opens(valve) == [True, False, True, False]  # open, stall -> closed, back, exit
    assert stats.stalls == 8 and stats.frames == 20 and cam.reopened >= 1
    assert any("valve CLOSED (stale-frame" in m for m in caplog.messages)
    assert valve.closed_cleanly and not valve.is_open


def test_model_raising_closes_the_valve_and_the_loop_goes_on(caplog):
    caplog.set_level(logging.INFO)

    def plan(i):
        if 10 <= i < 14:
            raise RuntimeError("onnxruntime exploded")
        return 0.95

    valve = FakeValve()
    stats = runtime(frames_of(30), Stub(plan), SimClock(T0), valve=valve).run()
    assert stats.model_errors == 4 and stats.frames == 30
    assert opens(valve) == [True, False, True, False]
    assert any("valve CLOSED (model-error" in m for m in caplog.messages)
    assert any("model error (valve closed): RuntimeError: onnxruntime exploded" in m for m in caplog.messages)


def test_model_returning_garbage_is_a_model_error():
    valve = FakeValve()
    stats = runtime(frames_of(10), Stub(lambda i: float("nan") if i >= 5 else 0.95), SimClock(T0), valve=valve).run()
    assert stats.model_errors == 5 and opens(valve) == [True, False]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_operation_closes_the_valve(sig):
    before = signal.getsignal(sig)
    seen = {}

    def feedback(ctx):
        if ctx.index == 15:
            seen["open_before"] = ctx.valve_open
            os.kill(os.getpid(), sig)
        return UserInput()

    valve = FakeValve()
    rt = runtime(
        frames_of(1000), Stub(lambda i: 0.95), SimClock(T0), valve=valve, feedback=feedback, install_signals=True
    )
    stats = rt.run()
    assert seen["open_before"] is True
    assert stats.stop_reason == signal.Signals(sig).name and stats.frames < 20
    assert opens(valve)[-1] is False and not valve.is_open and valve.closed_cleanly
    assert signal.getsignal(sig) == before  # handlers restored


def test_more_signals_during_the_shutdown_hurry_it_but_never_raise(tmp_path):
    """Signals while the recorder writes the open episode (where a raising handler aborted the
    process): the episode is finished, the valve stays closed, the upload drain is skipped."""
    drains = []

    class SignalledRecorder(Recorder):
        def close(self, timeout: float = 10.0) -> None:
            self.flush()  # the open episode goes to the writer thread...
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):  # ...and signals come meanwhile
                os.kill(os.getpid(), sig)
            super().close(timeout)

    class Uploader:
        _thread = object()

        def stop(self, drain_s: float = 0.0) -> None:
            drains.append(drain_s)

    def feedback(ctx):
        if ctx.index == 15:
            os.kill(os.getpid(), signal.SIGTERM)
        return UserInput(forced_on=ctx.index >= 5)

    valve = FakeValve()
    rec = SignalledRecorder(tmp_path / "spool", user_id="u", record_fps=0)
    rt = runtime(
        frames_of(100, DARK),
        Stub(lambda i: 0.1),
        SimClock(T0),
        valve=valve,
        feedback=feedback,
        recorder=rec,
        uploader=Uploader(),
        install_signals=True,
    )
    stats = rt.run()  # no KeyboardInterrupt
    assert stats.stop_reason == "SIGTERM" and rt._signals == 4 and drains == [0.0]
    assert opens(valve) == [True, False] and valve.closed_cleanly
    (episode,) = (tmp_path / "spool").glob("*.zip")
    assert check_episode(episode) == [] and not list((tmp_path / "spool").glob(".*"))
    water = [it.magnetic_status for it in read_episode(episode).meta.interactions]
    assert water[-2:] == [1, 0]  # written up to the signal's frame, where the valve was already closed


class Boom(BaseException):
    pass


def test_any_exception_closes_the_valve(tmp_path):
    def feedback(ctx):
        if ctx.index == 8:
            raise Boom()
        return UserInput()

    valve = FakeValve()
    rec = Recorder(tmp_path / "spool", user_id="u", background=False)
    rt = runtime(frames_of(50), Stub(lambda i: 0.95), SimClock(T0), valve=valve, feedback=feedback, recorder=rec)
    with pytest.raises(Boom):
        rt.run()
    assert opens(valve) == [True, False] and valve.closed_cleanly and rt.stats.stop_reason == "Boom"


def test_seconds_open_and_litres():
    # open for 20 frames at 5 fps, then the model says no: about 4 s open, 0.4 L at 6 L/min
    valve = FakeValve()
    stats = runtime(
        frames_of(20) + frames_of(20, DARK), Stub(lambda i: 0.95 if i < 20 else 0.02), SimClock(T0), valve=valve
    ).run()
    assert opens(valve) == [True, False]
    assert stats.seconds_open == pytest.approx(4.0, abs=0.25)
    assert stats.litres == pytest.approx(stats.seconds_open / 60 * 6.0)
    assert stats.fps == pytest.approx(5.0, rel=0.05)
    line = stats.line()
    for key in ("frames=40", "fps=", "latency_p50=", "latency_p99=", "open_s=", "litres=", "6 L/min"):
        assert key in line


def test_gpio_feedback_maps_reed_switch_and_button():
    faucet, button = FakeInput(True), FakeInput(False)
    fb = GpioFeedback(faucet, button)
    ctx = FeedbackContext(0.0, 0, None, 0.5, 0, False)
    assert fb(ctx) == UserInput()
    button.set(True)
    assert fb(ctx) == UserInput(forced_on=True)
    button.set(False)
    faucet.set(False)  # handle closed
    assert fb(ctx) == UserInput(closed=True)
    assert fb(ctx) == UserInput(closed=True)
    faucet.set(True)  # opened again: the user wants water
    assert fb(ctx) == UserInput(forced_on=True)
    assert fb(ctx) == UserInput()
    assert GpioFeedback(faucet, button, handle_open_forces_on=False)(ctx) == UserInput()


# --------------------------------------------------------------------------- recorder


def feed(
    rec: Recorder,
    overrides: set[int],
    n: int,
    *,
    fps: float = 2.0,
    wall=lambda t: T0 + t,
    image=None,
    model_on: set[int] = frozenset(),
) -> None:
    img = image if image is not None else np.zeros((480, 640, 3), np.uint8)
    for i in range(n):
        t = i / fps
        m = int(i in model_on)
        s = 1 - m if i in overrides else m
        rec.add(t, wall(t), img, m, s, valve=s)


def episodes(spool: Path) -> list:
    paths = sorted(spool.glob("*.zip"))
    for p in paths:
        assert check_episode(p) == [], check_episode(p)
    return [read_episode(p) for p in paths]


def test_recorder_saves_pre_and_post_frames_around_an_override(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    leftover = spool / ".20240706_172540.zip.x1y2.tmp"
    leftover.write_bytes(b"half a zip")
    rec = Recorder(spool, user_id="user_1234", pre_s=3, post_s=3, record_fps=0, background=False)
    assert not leftover.exists()  # cleaned up at start
    feed(rec, overrides={20, 21, 22, 23}, n=40)
    (ep,) = episodes(spool)
    rec.close()
    assert len(episodes(spool)) == 1
    its = ep.meta.interactions
    # frames 14 (t=7, 3 s before the first override at t=10) .. 29 (t=14.5, 3 s after the last at t=11.5)
    assert len(its) == 16
    assert ep.stem == episode_stem(datetime.fromtimestamp(T0 + 7))
    assert its[0].timestamp == datetime.fromtimestamp(T0 + 7)
    assert sum(it.model_output != it.magnetic_status for it in its) == 4
    assert [(it.model_output, it.magnetic_status) for it in its[6:10]] == [(0, 1)] * 4
    assert all(it.arduino_output in (0, 1) for it in its)
    meta = ep.meta
    assert meta.version == 2 and meta.user_id == "user_1234" and len(meta.dishwashing_id) == 10
    assert meta.dishwashing_start.tzinfo is not None and meta.dishwashing_start.microsecond == 0
    assert meta.dishwashing_start.replace(tzinfo=None) <= its[0].timestamp


def read_as_the_earlier_system(path: Path) -> dict:
    """An episode read by the construction rules of the earlier system's reader
    (autosink_data_elt's JSONFileHandler.read_file): dataclasses that take exactly the v2 fields,
    so any key more or less at the top level or in an interaction raises TypeError."""
    from dataclasses import asdict, dataclass

    @dataclass
    class EltInteraction:
        timestamp: str
        model_output: int
        arduino_output: int
        magnetic_status: int
        image: str

    @dataclass
    class EltEpisode:
        version: int
        user_id: str
        dishwashing_id: str
        dishwashing_start: str
        interactions: list

    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read(f"{path.stem}.json"))
    return asdict(EltEpisode(**{**doc, "interactions": [EltInteraction(**it) for it in doc["interactions"]]}))


def test_the_controllers_hold_is_recorded_as_the_valve_not_the_users_wish(tmp_path):
    """The user presses the button for 1 s against a model that never opens; the controller
    keeps the water on 3 s after the release. The episode says so in the v2 fields' own meaning
    (the earlier reader still reads it): magnetic_status 1 only while the user asked, the valve
    (arduino_output) open through the hold, and the label stage ignores the held frames."""
    from autosink.data.labels import IGNORE, propagate
    from autosink.edge.controller import ControllerConfig

    fps, pressed = 5.0, range(10, 15)
    rec = Recorder(tmp_path / "spool", user_id="u", pre_s=1, post_s=5, record_fps=0, background=False)
    rt = runtime(
        frames_of(60, DARK),
        Stub(lambda i: 0.0),
        SimClock(T0),
        fps=fps,
        recorder=rec,
        controller=ControllerConfig(forced_on_hold_s=3.0),
        feedback=lambda ctx: UserInput(forced_on=ctx.index in pressed),
    )
    rt.run()
    [episode] = sorted((tmp_path / "spool").glob("*.zip"))
    rows = read_as_the_earlier_system(episode)["interactions"]
    m, s, v = (np.array([r[k] for r in rows]) for k in ("model_output", "magnetic_status", "arduino_output"))
    assert not m.any() and s.sum() == len(pressed)  # the wish: exactly the pressed frames
    held = (v == 1) & (s == 0)
    assert held.sum() == pytest.approx(3.0 * fps, abs=1)  # the hold: the valve open, nobody asking
    label = propagate(m, s, fps, arduino_output=v).label
    assert (label[held] == IGNORE).all() and (label[s == 1] == 1).all()


def test_recorder_merges_close_overrides_and_splits_far_ones(tmp_path):
    a = tmp_path / "a"
    rec = Recorder(a, user_id="u", pre_s=3, post_s=3, record_fps=0, background=False)
    feed(rec, overrides={20, 21, 32, 33}, n=60)  # second pre-window reaches into the first episode
    rec.close()
    (ep,) = episodes(a)
    assert len(ep.meta.interactions) == 26  # frames 14 .. 39

    b = tmp_path / "b"
    rec = Recorder(b, user_id="u", pre_s=3, post_s=3, record_fps=0, background=False)
    feed(rec, overrides={20, 60}, n=100)
    rec.close()
    eps = episodes(b)
    assert len(eps) == 2 and eps[0].stem != eps[1].stem
    assert eps[0].meta.dishwashing_id == eps[1].meta.dishwashing_id  # one session

    c = tmp_path / "c"  # an idle gap longer than session_gap_s: two sessions
    rec = Recorder(c, user_id="u", pre_s=3, post_s=3, record_fps=0, session_gap_s=10, background=False)
    feed(rec, overrides={20, 80}, n=100)
    rec.close()
    e1, e2 = episodes(c)
    assert e1.meta.dishwashing_id != e2.meta.dishwashing_id


def test_recorder_stem_taken_delays_the_episode(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    spool = tmp_path / "spool"
    taken = {episode_stem(datetime.fromtimestamp(T0 + 7)), episode_stem(datetime.fromtimestamp(T0 + 8))}
    rec = Recorder(
        spool, user_id="u", pre_s=3, post_s=3, record_fps=0, background=False, used_stems=lambda: taken
    )  # e.g. already uploaded before a clock step back
    feed(rec, overrides={20}, n=40)
    rec.close()
    (ep,) = episodes(spool)
    assert ep.stem == episode_stem(datetime.fromtimestamp(T0 + 9))
    assert any("delayed by dropping 4 leading frame(s)" in m for m in caplog.messages)


def test_recorder_clock_set_back_keeps_timestamps_ordered(tmp_path):
    spool = tmp_path / "spool"
    rec = Recorder(spool, user_id="u", pre_s=3, post_s=3, record_fps=0, background=False)
    feed(rec, overrides={20, 21, 22}, n=40, wall=lambda t: T0 + t - (30 if t >= 10.5 else 0))  # NTP steps back 30 s
    rec.close()
    (ep,) = episodes(spool)
    ts = [it.timestamp for it in ep.meta.interactions]
    assert ts == sorted(ts)


def test_recorder_subsamples_but_keeps_every_switch(tmp_path):
    spool = tmp_path / "spool"
    rec = Recorder(spool, user_id="u", pre_s=2, post_s=2, record_fps=2, background=False)
    feed(rec, overrides={103}, n=200, fps=10.0)  # one 0.1 s override at 10 fps
    rec.close()
    (ep,) = episodes(spool)
    its = ep.meta.interactions
    assert sum(it.model_output != it.magnetic_status for it in its) == 1  # the override frame is in
    assert 8 <= len(its) <= 12  # ~4 s at 2 fps (+ the switches), not 40 frames


def test_recorder_long_override_is_cut_and_not_continued(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    spool = tmp_path / "spool"
    rec = Recorder(spool, user_id="u", pre_s=3, post_s=3, record_fps=0, max_episode_s=30, background=False)
    feed(rec, overrides=set(range(20, 420)), n=460)  # a 200 s override
    rec.close()
    (ep,) = episodes(spool)
    assert 60 <= len(ep.meta.interactions) <= 62  # 30 s at 2 fps
    assert any("the rest of it is not recorded" in m for m in caplog.messages)


def test_recorder_background_writer(tmp_path):
    written = []
    rec = Recorder(tmp_path / "spool", user_id="u", pre_s=1, post_s=1, record_fps=0, on_written=written.append)
    feed(rec, overrides={10}, n=30)
    rec.close()
    assert len(written) == 1 and check_episode(written[0]) == []


# --------------------------------------------------------------------------- uploader


def _spool_with(tmp_path: Path, n: int) -> Path:
    spool = tmp_path / "spool"
    rec = Recorder(spool, user_id="u", pre_s=1, post_s=1, record_fps=0, background=False)
    feed(rec, overrides={10 + 20 * k for k in range(n)}, n=20 * n + 10)
    rec.close()
    assert len(list(spool.glob("*.zip"))) == n
    return spool


def test_upload_to_a_folder_is_verified_idempotent_and_never_overwrites(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    spool = _spool_with(tmp_path, 3)
    names = sorted(p.name for p in spool.glob("*.zip"))
    lake = tmp_path / "lake"
    up = Uploader(spool, FolderTarget(lake), jitter=0)
    with pytest.raises(TargetUnavailable, match="not mounted"):  # the share is not there: never created
        up.run_once()
    assert not lake.exists() and len(list(spool.glob("*.zip"))) == 3

    lake.mkdir()
    shutil.copy(spool / names[0], lake / names[0])  # uploaded before, the delete was lost (power cut)
    (lake / names[1]).write_bytes(b"another Pi's file")  # same name, other content
    (lake / f".{names[2]}.dead.uploading.tmp").write_bytes(b"half")  # an upload that died midway
    assert up.run_once() == 0
    assert up.skipped == [names[0]] and up.uploaded == [names[2]] and up.conflicted == [names[1]]
    assert (lake / names[1]).read_bytes() == b"another Pi's file"  # not overwritten
    assert (spool / "conflicts" / names[1]).is_file()
    assert check_episode(lake / names[2]) == [] and not list(lake.glob(".*"))
    assert not list(spool.glob("*.zip"))
    assert any("exists in" in m and "other content" in m for m in caplog.messages)
    assert up.run_once() == 0 and up.uploaded == [names[2]]  # nothing uploaded twice


def test_upload_backoff_while_unreachable(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    spool = _spool_with(tmp_path, 1)
    lake = tmp_path / "lake"
    up = Uploader(spool, FolderTarget(lake), min_backoff_s=5, max_backoff_s=60, jitter=0)
    delays = [up._pass() for _ in range(6)]
    assert delays == [5, 10, 20, 40, 60, 60]
    assert sum("retrying in" in m for m in caplog.messages) == 6
    lake.mkdir()
    assert up._pass() == up.poll_s and up.failures == 0 and len(up.uploaded) == 1
    assert any("reachable again" in m for m in caplog.messages)


def test_upload_thread_and_spool_cap(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    spool = _spool_with(tmp_path, 4)
    sizes = sorted((p.name, p.stat().st_size) for p in spool.glob("*.zip"))
    cap_mb = (sum(s for _, s in sizes[2:]) + 1) / 2**20  # room for the newest two
    up = Uploader(spool, None, spool_max_mb=cap_mb)
    up.run_once()
    assert sorted(p.name for p in spool.glob("*.zip")) == [n for n, _ in sizes[2:]]
    assert up.evicted == [n for n, _ in sizes[:2]]
    assert sum("deleted the oldest episode" in m for m in caplog.messages) == 2

    lake = tmp_path / "lake"
    lake.mkdir()
    up = Uploader(spool, FolderTarget(lake), poll_s=60)
    up.start()
    up.stop(drain_s=10)
    assert sorted(p.name for p in lake.glob("*.zip")) == [n for n, _ in sizes[2:]]


class FakeDriveFile(dict):
    def __init__(self, drive, meta):
        super().__init__(meta)
        self.drive, self.content = drive, None

    def Upload(self, param=None):  # noqa: N802 - pydrive2's API
        if self.drive.fail:
            raise OSError("network down")
        data = self.content.read()
        import hashlib

        self["fileSize"] = str(len(data))
        self["md5Checksum"] = hashlib.md5(data).hexdigest()
        self.drive.files.append(dict(self))


class FakeDrive:
    """pydrive2's GoogleDrive as far as the uploader uses it (ListFile/CreateFile)."""

    def __init__(self):
        self.files, self.fail, self.queries = [], False, []

    def ListFile(self, param):  # noqa: N802
        self.queries.append(param["q"])
        if self.fail:
            raise OSError("network down")
        drive = self

        class L:
            def GetList(self):  # noqa: N802
                return [
                    f
                    for f in drive.files
                    if f"title = '{f['title']}'" in param["q"] and f"'{f['parents'][0]['id']}' in parents" in param["q"]
                ]

        return L()

    def CreateFile(self, meta):  # noqa: N802
        return FakeDriveFile(self, meta)


def test_upload_to_gdrive_up_to_the_pydrive2_boundary(tmp_path, monkeypatch):
    spool = _spool_with(tmp_path, 2)
    again = tmp_path / "again"
    shutil.copytree(spool, again)
    drive = FakeDrive()
    target = GDriveTarget("folder_ID-1", drive=drive)
    up = Uploader(spool, target, jitter=0)
    drive.fail = True
    with pytest.raises(TargetUnavailable):
        up.run_once()
    drive.fail = False
    assert up.run_once() == 0 and len(up.uploaded) == 2 and len(drive.files) == 2
    assert all(f["parents"] == [{"id": "folder_ID-1"}] for f in drive.files)
    assert "trashed = false" in drive.queries[-1]

    # the same episodes again (a delete lost to a power cut): found on Drive, not uploaded twice
    up2 = Uploader(again, target)
    up2.run_once()
    assert len(drive.files) == 2 and len(up2.skipped) == 2 and not list(again.glob("*.zip"))
    # another episode under a name Drive already has: kept aside, never overwritten
    other = _spool_with(tmp_path / "other", 1)
    (p,) = other.glob("*.zip")
    os.replace(p, other / sorted(up.uploaded)[0])
    up3 = Uploader(other, target)
    up3.run_once()
    assert len(drive.files) == 2 and up3.conflicted == [sorted(up.uploaded)[0]]

    # credentials: env holds the key's JSON (as DVC reads it); a path there is an error
    t = make_target(
        "gdrive://abc", env={"GDRIVE_CREDENTIALS_DATA": '{"type": "service_account"}'}, credentials_path="/nope.json"
    )
    assert isinstance(t, GDriveTarget) and t.credentials_json and t.credentials_path is None
    with pytest.raises(ValueError, match="not JSON"):
        make_target("gdrive://abc", env={"GDRIVE_CREDENTIALS_DATA": "/path/key.json"})
    with pytest.raises(TargetUnavailable, match="no credentials"):
        make_target("gdrive://abc", env={}).stat("x.zip")
    assert isinstance(make_target(str(tmp_path)), FolderTarget) and make_target("") is None


# --------------------------------------------------------------------------- config, CLI, packaging


def test_config_toml_lists_every_default():
    cfg = load_config(ROOT / "edge" / "config.toml")
    assert cfg == DEFAULT_CONFIG
    import tomllib

    data = tomllib.loads((ROOT / "edge" / "config.toml").read_text())
    assert {s: set(v) for s, v in data.items()} == {s: set(v) for s, v in DEFAULT_CONFIG.items()}
    with pytest.raises(ConfigError, match="unknown key 'fsp'"):
        merge_config(DEFAULT_CONFIG, {"camera": {"fsp": 3}})
    with pytest.raises(ConfigError, match="expected float"):
        merge_config(DEFAULT_CONFIG, {"camera": {"fps": "fast"}})


def test_systemd_unit():
    unit = ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "edge" / "autosink-edge.service")
    svc = unit["Service"]
    assert svc["KillSignal"] == "SIGTERM" and svc["Restart"] == "on-failure"
    assert svc["User"] not in ("root", "") and "edge/run.py" in svc["ExecStart"]
    assert "--close-valve" in svc["ExecStopPost"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    req = (ROOT / "edge" / "requirements.txt").read_text()
    for name in (
        "onnxruntime==",
        "numpy==",
        "opencv-python-headless==",
        "pyserial==",
        'RPi.GPIO==0.7.1; platform_machine == "aarch64" or platform_machine == "armv7l"',
    ):
        assert name in req
    assert "torch" not in req.replace("# Nothing else: no torch", "")


def test_run_py_help_and_import_footprint(tmp_path, model_path):
    help_ = subprocess.run([sys.executable, str(RUN_PY), "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0
    for opt in ("--model", "--camera", "--valve", "--spool", "--upload-to", "--max-frames", "--fps", "--config"):
        assert opt in help_.stdout

    ep_spool = _spool_with(tmp_path, 1)
    (zip_path,) = ep_spool.glob("*.zip")
    lake = tmp_path / "lake"
    lake.mkdir()
    args = [
        "--model",
        str(model_path),
        "--camera",
        f"episode:{zip_path}",
        "--valve",
        "fake",
        "--max-frames",
        "3",
        "--fps",
        "0",
        "--spool",
        str(tmp_path / "spool2"),
        "--upload-to",
        str(lake),
        "--user-id",
        "u",
    ]
    out = subprocess.run(
        [sys.executable, "-c", FOOTPRINT_SCRIPT, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("FOOTPRINT "))
    result = json.loads(line[len("FOOTPRINT ") :])
    assert result["code"] in (0, None), out.stderr
    check_footprint(result["modules"])
    assert "autosink.edge.runtime" in result["modules"] and "onnxruntime" in result["modules"]
    assert "stats: frames=3" in out.stderr and "stop=max-frames" in out.stderr

    bad = subprocess.run(
        [
            sys.executable,
            str(RUN_PY),
            "--model",
            str(tmp_path / "missing.onnx"),
            "--valve",
            "fake",
            "--camera",
            f"episode:{zip_path}",
            "--spool",
            str(tmp_path / "s3"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "missing.json" in bad.stderr


def test_run_py_sigterm_closes_the_valve(tmp_path, model_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    ok, png = cv2.imencode(".png", cv2.cvtColor(BRIGHT, cv2.COLOR_RGB2BGR))
    for i in range(300):
        (folder / f"{i + 1}.png").write_bytes(png.tobytes())
    proc = subprocess.Popen(
        [
            sys.executable,
            str(RUN_PY),
            "--model",
            str(model_path),
            "--camera",
            f"folder:{folder}",
            "--valve",
            "fake",
            "--fps",
            "10",
            "--spool",
            str(tmp_path / "spool"),
            "--upload-to",
            "",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    seen = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                ln = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(ln)
            if "valve OPEN" in ln:
                break
        else:
            pytest.fail("the valve never opened:\n" + "".join(seen))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)
    while not lines.empty():
        seen.append(lines.get())
    text = "".join(seen)
    assert "SIGTERM received" in text and "valve closed (SIGTERM)" in text
    assert "stats: frames=" in text and "stop=SIGTERM" in text


_OPEN_SPECIALS = r"""
import json, sys, time
from autosink.edge.camera import CameraError, open_camera
from autosink.edge.inference import ModelError
from autosink.edge.settings import ConfigError, load_config
from autosink.edge.wiring import load_regular_model
out = {"card": None}
try:
    load_regular_model(sys.argv[2], threads=1)
except ModelError as e:
    out["card"] = str(e)
for p in sys.argv[3:]:
    for what, fn in (("episode", lambda: open_camera("episode:" + p, clock=time.monotonic)),
                     ("video", lambda: open_camera("video:" + p, clock=time.monotonic)),
                     ("model", lambda: load_regular_model(p, threads=1)),
                     ("config", lambda: load_config(p))):
        try:
            fn()
            out[f"{what} {p}"] = "opened"
        except (CameraError, ModelError, ConfigError) as e:
            out[f"{what} {p}"] = str(e)
cam = open_camera("folder:" + sys.argv[1], clock=time.monotonic)
out["folder"] = [f.index for f in iter(lambda: cam.read(0.1), None)]
print(json.dumps(out))
"""


def test_devices_fifos_and_sockets_are_never_opened_as_camera_model_or_config(tmp_path, model_path):
    """An ``episode:``/``video:`` camera, a model (or its card) and a config that is a device, FIFO or
    socket: a clear error at once naming it, not an endless read or a hang; in a ``folder:`` source
    such an entry is not a frame."""
    from tests.special_files import KINDS, WORDS, make_special, run_isolated

    specials = {kind: make_special(tmp_path / f"x-{kind}.onnx", kind) for kind in KINDS}
    card_fifo = tmp_path / "m" / "model.onnx"  # a good model whose card is a FIFO
    card_fifo.parent.mkdir()
    shutil.copy(model_path, card_fifo)
    make_special(tmp_path / "m" / "model.json", "fifo")
    folder = tmp_path / "frames"
    folder.mkdir()
    ok, png = cv2.imencode(".png", DARK)
    (folder / "1.png").write_bytes(png.tobytes())
    make_special(folder / "2.png", "fifo")
    (folder / "3.png").write_bytes(png.tobytes())
    paths = ["/dev/zero", *map(str, specials.values())]
    res = run_isolated(_OPEN_SPECIALS, str(folder), str(card_fifo), *paths)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for kind, path in [("chardev", "/dev/zero"), *((k, str(p)) for k, p in specials.items())]:
        word = f"{path}: is {WORDS[kind]}, not a regular file"
        assert (
            out[f"episode {path}"] == f"episode:{path}: not a readable episode ({path}: path: is {WORDS[kind]}, "
            "not a regular file (an episode is a zip file or a folder))"
        )
        assert out[f"video {path}"] == f"video:{path}: is {WORDS[kind]}, not a regular file"
        assert out[f"model {path}"] == f"{word} (expected the model's .onnx file)"
        assert out[f"config {path}"] == word
    assert (
        out["card"] == f"{card_fifo.with_suffix('.json')}: is a FIFO (named pipe), not a regular file "
        "(expected the model's card)"
    )
    assert out["folder"] == [0, 1]  # 1.png and 3.png; the FIFO is no frame (and logged)
    assert "2.png (a FIFO (named pipe))" in res.stderr

    # and edge/run.py says so and exits 2 (bad configuration) with the valve never opened
    run = subprocess.run(
        [
            sys.executable,
            str(RUN_PY),
            "--model",
            str(model_path),
            "--camera",
            "episode:/dev/zero",
            "--valve",
            "fake",
            "--spool",
            str(tmp_path / "spool"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=_cap_memory,
    )
    assert run.returncode == 2 and "episode:/dev/zero: not a readable episode" in run.stderr, run.stderr
    assert "is a character device, not a regular file" in run.stderr


def _cap_memory() -> None:
    from tests.special_files import _cap_memory as cap

    cap()


# --------------------------------------------------------------------------- end to end


class SimulatedUser:
    """The pipeline simulator's user (autosink.sim.SimUser) at the faucet, as a feedback hook:
    wants what the session's truth says, reacts to the model's decision after a delay."""

    def __init__(self, rows: list[dict], reaction_delay_s, seed: int = 1):
        from autosink.sim import SimUser

        self.rows, self.user = rows, SimUser(reaction_delay_s, seed=seed)

    def __call__(self, ctx: FeedbackContext) -> UserInput:
        if ctx.frame is None:
            return UserInput()
        wants = bool(self.rows[ctx.frame.index]["wants_water"])
        s = self.user.step(ctx.now, wants, ctx.model_output)
        return UserInput(forced_on=s == 1 and ctx.model_output == 0, closed=s == 0 and ctx.model_output == 1)


def test_end_to_end_simulated_session_feeds_the_pipeline(tmp_path, model_path, capsys):
    from autosink.cli import main as autosink_main
    from autosink.data.extract import extract_lake
    from autosink.sim import make_sessions, render_session, with_defaults

    cfg = with_defaults({"users": 1, "sessions_per_user": 1, "dishes_per_session": [3, 4]})
    script = make_sessions(cfg, "heldout")[0]
    frames, rows = render_session(script, model="roi_presence")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(
            str(folder / f"{i + 1}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]
        )
    lake, spool = tmp_path / "lake", tmp_path / "spool"
    lake.mkdir()
    config = merge_config(
        DEFAULT_CONFIG,
        {
            "camera": {"source": f"folder:{folder}", "fps": float(cfg["fps"])},
            "model": {"path": str(model_path)},
            "valve": {"kind": "fake"},
            "recorder": {"spool": str(spool), "user_id": "user_sim"},
            "upload": {"to": str(lake)},
        },
    )
    clock = SimClock(script.start.timestamp())
    rt = build_runtime(
        config,
        clock=clock,
        feedback=SimulatedUser(rows, script.user.reaction_delay_s),
        background=False,
        install_signals=False,
    )
    stats = rt.run()
    assert stats.frames == len(frames) and stats.stop_reason == "end-of-source"
    assert rt.valve.closed_cleanly and not rt.valve.is_open

    uploaded = sorted(lake.glob("*.zip"))
    assert uploaded and not list(spool.glob("*.zip"))  # everything moved to the lake
    total_overrides = 0
    for p in uploaded:
        assert check_episode(p) == []
        meta = read_episode(p).meta
        assert meta.user_id == "user_sim" and meta.version == 2
        total_overrides += sum(it.model_output != it.magnetic_status for it in meta.interactions)
        with zipfile.ZipFile(p) as zf:
            assert not any(n.startswith(".") or "/" in n for n in zf.namelist())
    assert total_overrides > 0
    assert len({read_episode(p).meta.dishwashing_id for p in uploaded}) == 1  # one session

    assert autosink_main(["lake", "check", str(lake)]) == 0
    assert "BAD" not in capsys.readouterr().out
    result = extract_lake(lake, tmp_path / "extracted", expected_size=(640, 480), progress=False)
    assert result.episodes_quarantined == 0 and result.episodes_ok == len(uploaded)
    assert result.frames == sum(len(read_episode(p).frame_names) for p in uploaded)
