"""The edge main loop: camera -> model -> controller -> valve, with feedback recording and upload.

Per frame:

1. ``camera.read`` (RGB, capture time on the monotonic clock); no frame within the read
   timeout is a stall: the controller fails closed on the stale frame time, and a camera
   stalled ``reopen_after_s`` is reopened.
2. the model (:mod:`.inference`, by its card) gives ``p``, rescaled so the card's threshold is
   0.5; a model that raises or returns garbage is a ``model-error`` step: closed.
3. a *shadow* controller fed the model alone gives ``model_output`` (what the model decided);
   the feedback source (GPIO reed switch + button, or a simulated user) gives the user's input;
   the real controller (:mod:`.controller`) decides the valve from both.
4. the valve is set (one log line per change); ``magnetic_status`` = the water the user wanted:
   valve open and the faucet handle not closed, except where only the controller's hold after a
   button release keeps it open (then it is ``model_output``: nobody asked for that water); the
   recorder (:mod:`.recorder`) gets the frame with ``model_output``, ``magnetic_status`` and the
   valve (``arduino_output``) and saves an episode around every override.
5. now and then: a cheap check whether the model file changed (hot reload, :mod:`.inference`),
   and, every ``fetch.interval_s`` when ``fetch.source`` is set, a check for a newer production
   model, fetched, verified and swapped in by a background thread (:mod:`.fetch`); the hot
   reload then picks it up.

The valve is closed by a ``try/finally`` around everything, whatever ends the loop (the replay
ran out, ``--max-frames``, SIGTERM/SIGINT, or any exception), before anything else is cleaned
up. On exit one stats line: frames, fps, inference latency p50/p99, seconds open, the
estimated litres at ``valve.flow_l_min`` (and bad frames a replay skipped, if any).

**Signals.** Any number of SIGTERM/SIGINT, at any moment, end the run the same orderly way.
The handler never raises: an exception raised there lands wherever the main thread happens to
be (inside the recorder's wait for its writer, inside interpreter shutdown) and abandons work
that native threads are still doing; the process then aborts (``terminate called without an
active exception``) and loses the episode being written. Nor does it take a lock the
interrupted main thread may hold (an ``Event.set`` there deadlocks if the signal came while the
main thread held that Event's lock; logging's locks are re-entrant, and a log line that cannot
be written then is dropped). Each signal drives the valve closed at once, from the handler,
and raises a plain flag that the loop checks every step (it then never opens the valve again;
the stop takes at most one frame period plus the camera's read timeout). The shutdown then
runs as for any stop: valve, camera, inputs, the recorder's open episode written and waited
for, upload drain. A second or later signal only hurries it: the valve is closed again and the
upload drain is skipped, but the episode in progress is still finished (the recorder waits for
its writer). ``edge/run.py`` keeps signals harmless outside the loop too (start-up, exit).

The clock is injectable (:class:`SimClock`): with it a replay runs as fast as the CPU allows,
with simulated frame times and wall times (tests, simulations); ``feedback`` lets a simulation
play the user instead of the GPIO inputs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autosink.edge.camera import Camera, Frame
from autosink.edge.controller import Controller, ControllerConfig, Decision, UserInput
from autosink.edge.inference import ModelReloader, Predictor, normalize_probability

__all__ = [
    "DEFAULT_CONFIG",
    "ConfigError",
    "load_config",
    "merge_config",
    "SystemClock",
    "SimClock",
    "FeedbackContext",
    "GpioFeedback",
    "NoFeedback",
    "EdgeRuntime",
    "RunStats",
    "LatencyHistogram",
    "build_runtime",
    "run_from_config",
    "close_valve_from_config",
    "load_regular_model",
]

log = logging.getLogger("autosink.edge")

# The defaults; edge/config.toml documents every key (and must list the same keys).
DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    "camera": {"source": "picamera2", "fps": 5.0, "read_timeout_s": 0.5, "reopen_after_s": 10.0},
    "model": {
        "path": "models/production/model.onnx",
        "threads": 2,
        "reload_check_s": 5.0,
        "selftest_png": "",
        "selftest_max_s": 1.0,
    },
    "controller": {
        "on_threshold": 0.55,
        "off_threshold": 0.2,
        "smoothing": 0.75,
        "min_on_s": 1.0,
        "min_off_s": 1.0,
        "max_open_s": 60.0,
        "stale_frame_s": 1.0,
        "forced_on_hold_s": 10.0,
    },
    "valve": {"kind": "gpio:17", "active_high": True, "flow_l_min": 6.0},
    "inputs": {
        "faucet": "gpio:27",
        "button": "gpio:22",
        "pull_up": True,
        "debounce_s": 0.05,
        "handle_open_forces_on": True,
    },
    "recorder": {
        "spool": "spool",
        "user_id": "",
        "pre_s": 3.0,
        "post_s": 3.0,
        "record_fps": 2.0,
        "max_episode_s": 120.0,
        "session_gap_s": 600.0,
    },
    "upload": {
        "to": "",
        "gdrive_credentials": "",
        "min_backoff_s": 5.0,
        "max_backoff_s": 600.0,
        "poll_s": 30.0,
        "spool_max_mb": 2048.0,
        "drain_s": 5.0,
    },
    "log": {"level": "INFO", "stats_every_s": 3600.0},
    "fetch": {
        "source": "",
        "interval_s": 900.0,
        "timeout_s": 600.0,
        "repo": "",
        "rev": "",
        "path": "models/production",
        "remote": "",
        "remote_config": [],
        "dvc_config": "",
        "artifact": "",
    },
}


class ConfigError(ValueError):
    pass


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """``override`` on top of ``base``; unknown sections/keys and wrong types are errors (typos)."""
    out = copy.deepcopy(dict(base))
    for section, values in override.items():
        if section not in out:
            raise ConfigError(f"{where}: unknown section [{section}] (known: {', '.join(out)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key, value in values.items():
            if key not in out[section]:
                raise ConfigError(f"{where}: [{section}] unknown key {key!r} (known: {', '.join(out[section])})")
            default = out[section][key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif isinstance(default, list):
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            else:
                ok = isinstance(value, type(default))
            if not ok:
                raise ConfigError(f"{where}: [{section}] {key} = {value!r}: expected {type(default).__name__}")
            out[section][key] = float(value) if isinstance(default, float) else value
    return out


def load_config(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Defaults, overridden by the TOML file at ``path`` (None: defaults only)."""
    import tomllib

    from autosink.core.fileio import NotRegularFileError, open_regular

    if path is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    try:
        with open_regular(path) as f:  # not a FIFO (blocks) or a device (endless)
            data = tomllib.load(f)
    except NotRegularFileError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    return merge_config(DEFAULT_CONFIG, data, str(path))


# --------------------------------------------------------------------------- clocks


class SystemClock:
    """Real time: ``monotonic`` for control, ``time`` (epoch) for episode timestamps."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    @staticmethod
    def sleep(seconds: float, interrupt: threading.Event | None = None) -> None:
        if seconds > 0:
            if interrupt is not None:
                interrupt.wait(seconds)
            else:
                time.sleep(seconds)


class SimClock:
    """Simulated time: ``sleep`` advances it at once. ``start`` is the epoch of t=0."""

    def __init__(self, start: float = 1720279540.0, t0: float = 0.0) -> None:
        self.start, self.t = float(start), float(t0)

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return self.start + self.t

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> None:
        if seconds > 0:
            self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


# --------------------------------------------------------------------------- feedback (the user)


@dataclass(frozen=True)
class FeedbackContext:
    """What a feedback source may look at: the step's time, frame (None during a stall), the
    model's probability and decision, and the valve as it is before this step."""

    now: float
    index: int
    frame: Frame | None
    prob: float | None
    model_output: int
    valve_open: bool


Feedback = Callable[[FeedbackContext], UserInput]


class NoFeedback:
    """No inputs wired: the user never overrides."""

    def __call__(self, ctx: FeedbackContext) -> UserInput:
        return UserInput()

    def close(self) -> None:
        pass


class GpioFeedback:
    """The reed switch on the faucet handle and the push button, as :class:`UserInput`.

    * button pressed -> ``forced_on`` (the controller holds water ``forced_on_hold_s`` after release);
    * handle closed (reed switch inactive) -> ``closed``, every step while it stays closed (water
      cannot flow anyway; the controller keeps the valve shut and remembers the user's "no");
    * handle opened again -> ``forced_on`` on that step if ``handle_open_forces_on`` (the user
      opened the faucet: they want water now).

    Inputs come from :func:`autosink.edge.devices.make_input` (``read()`` True = active:
    handle open / button pressed); either may be None (not wired).
    """

    def __init__(self, faucet: Any = None, button: Any = None, *, handle_open_forces_on: bool = True) -> None:
        self.faucet, self.button = faucet, button
        self.handle_open_forces_on = handle_open_forces_on
        self._was_open: bool | None = None

    def __call__(self, ctx: FeedbackContext) -> UserInput:
        forced = bool(self.button.read()) if self.button is not None else False
        closed = False
        if self.faucet is not None:
            is_open = bool(self.faucet.read())
            closed = not is_open
            if is_open and self._was_open is False and self.handle_open_forces_on:
                forced = True
            self._was_open = is_open
        return UserInput(forced_on=forced and not closed, closed=closed)

    def close(self) -> None:
        for inp in (self.faucet, self.button):
            if inp is not None:
                with contextlib.suppress(Exception):
                    inp.close()


class EpisodeFeedback:
    """A recorded user's hand, replayed from a data-lake episode, frame by frame: where the user
    had water the model did not give (``magnetic_status`` 1, ``model_output`` 0) the button is
    pressed; where they stopped water the model gave (0 / 1) the handle is closed. With the same
    episode as the camera (``--camera episode:<zip> --replay-user``) a run records feedback as the
    Pi did: the README's demo, and a check that replaying an episode reproduces its overrides."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from autosink.core.episode import read_episode

        self.path = str(path)
        self.actions = [
            (it.model_output, it.magnetic_status) for it in read_episode(path, check_frames=False).meta.interactions
        ]

    def __call__(self, ctx: FeedbackContext) -> UserInput:
        if ctx.index >= len(self.actions):
            return UserInput()
        model_output, faucet = self.actions[ctx.index]
        return UserInput(forced_on=bool(faucet and not model_output), closed=bool(model_output and not faucet))

    def close(self) -> None:
        pass


def replay_user(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], EpisodeFeedback]:
    """The config and feedback for replaying the user of the episode ``camera.source`` names
    (``episode:<zip>``). The replayed presses stand for the recorded wish frame by frame, so the
    replay's own hold after a release is cut to nothing: they give exactly the recorded water."""
    kind, _, path = str(cfg["camera"]["source"]).partition(":")
    if kind != "episode" or not path:
        raise ConfigError(
            f"replaying the user needs the camera to replay an episode (episode:<zip>), got {cfg['camera']['source']!r}"
        )
    out = merge_config(cfg, {"controller": {"forced_on_hold_s": 1e-6}}, "replay")
    return out, EpisodeFeedback(path)


# --------------------------------------------------------------------------- stats


class LatencyHistogram:
    """Percentiles of latencies in constant memory (1% wide log bins, 10 us .. 100 s)."""

    _LO, _RATIO = 1e-5, 1.01

    def __init__(self) -> None:
        self._n_bins = int(math.ceil(math.log(100.0 / self._LO) / math.log(self._RATIO))) + 2
        self.counts = np.zeros(self._n_bins, np.int64)
        self.n = 0

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= self._LO else int(math.log(seconds / self._LO) / math.log(self._RATIO)) + 1
        self.counts[min(i, self._n_bins - 1)] += 1
        self.n += 1

    def percentile(self, q: float) -> float | None:
        if not self.n:
            return None
        i = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q / 100 * self.n)))
        return self._LO * self._RATIO**i  # upper edge of the bin


@dataclass
class RunStats:
    frames: int = 0
    stalls: int = 0
    model_errors: int = 0
    valve_changes: int = 0
    seconds_open: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    stop_reason: str = ""
    flow_l_min: float = 6.0
    bad_frames: int = 0  # replay frames the camera could not decode (skipped as missed frames)

    @property
    def fps(self) -> float:
        dt = self.ended - self.started
        return self.frames / dt if dt > 0 else 0.0

    @property
    def litres(self) -> float:
        return self.seconds_open / 60.0 * self.flow_l_min

    def line(self) -> str:
        p50, p99 = self.latency.percentile(50), self.latency.percentile(99)
        ms = lambda x: "-" if x is None else f"{x * 1000:.1f}ms"  # noqa: E731
        return (
            f"stats: frames={self.frames} fps={self.fps:.2f} latency_p50={ms(p50)} latency_p99={ms(p99)} "
            f"open_s={self.seconds_open:.1f} litres={self.litres:.2f} (at {self.flow_l_min:g} L/min) "
            f"valve_changes={self.valve_changes} stalls={self.stalls} model_errors={self.model_errors}"
            + (f" bad_frames={self.bad_frames}" if self.bad_frames else "")
            + (f" stop={self.stop_reason}" if self.stop_reason else "")
        )


# --------------------------------------------------------------------------- the loop


class _StaticModel:
    """A fixed predictor (tests, or a model object built elsewhere) in the reloader's shape."""

    def __init__(self, model: Predictor) -> None:
        self.model = model

    def offer_frame(self, frame: np.ndarray) -> None:
        pass

    def check(self) -> bool:
        return False


class EdgeRuntime:
    """One run of the loop; see the module docstring. Build it with :func:`build_runtime`
    (from a config) or directly (tests inject every part)."""

    def __init__(
        self,
        *,
        camera: Camera,
        model: ModelReloader | Predictor,
        valve: Any,
        controller: ControllerConfig | Mapping[str, Any] | None = None,
        feedback: Feedback | None = None,
        recorder: Any = None,
        uploader: Any = None,
        clock: Any = None,
        fps: float = 5.0,
        max_frames: int | None = None,
        read_timeout_s: float = 0.5,
        reopen_after_s: float = 10.0,
        reload_check_s: float = 5.0,
        flow_l_min: float = 6.0,
        stats_every_s: float = 0.0,
        drain_s: float = 5.0,
        install_signals: bool = True,
        fetcher: Any = None,
    ) -> None:
        self.camera = camera
        self.models = model if hasattr(model, "check") and hasattr(model, "model") else _StaticModel(model)
        self.valve = valve
        if controller is None:
            ccfg = ControllerConfig()
        elif isinstance(controller, ControllerConfig):
            ccfg = controller
        else:
            ccfg = ControllerConfig.from_dict(controller)
        self.controller = Controller(ccfg)
        self.shadow = Controller(ccfg)  # the model alone: model_output
        self.feedback = feedback or NoFeedback()
        self.recorder = recorder
        self.uploader = uploader
        self.clock = clock or SystemClock()
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self.max_frames = max_frames
        self.read_timeout_s = float(read_timeout_s)
        self.reopen_after_s = float(reopen_after_s)
        self.reload_check_s = float(reload_check_s)
        self.stats_every_s = float(stats_every_s)
        self.drain_s = float(drain_s)
        self.install_signals = install_signals
        self.fetcher = fetcher  # a PeriodicFetcher (autosink.edge.fetch) or None
        self.stats = RunStats(flow_l_min=float(flow_l_min))
        self._stop = threading.Event()
        self._signals = 0  # signals received (plain attributes: the handler takes no lock)
        self._signalled = False  # a signal asked to stop: the loop ends, the valve stays closed
        self._hurry = False  # a second signal: shut down without the upload drain
        self._open_since: float | None = None
        self._last_error_log = -math.inf

    # -- control ----------------------------------------------------------------------------

    def stop(self, reason: str = "stop") -> None:
        """Ask the loop to end after the current step (thread-safe; a signal handler must not call
        it: ``Event.set`` takes a lock the interrupted main thread may hold)."""
        if not self.stats.stop_reason:
            self.stats.stop_reason = reason
        self._stop.set()

    def _stopping(self) -> bool:
        return self._signalled or self._stop.is_set()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """SIGTERM/SIGINT: close the valve, ask the loop to stop; never raises, takes no lock
        (see the module docstring). Later signals also hurry the shutdown."""
        try:
            self._signals += 1
            name = signal.Signals(signum).name
            if not self.stats.stop_reason:
                self.stats.stop_reason = name
            self._signalled = True
            if self._signals > 1:
                self._hurry = True
            try:
                self.valve.set(False)
            except Exception as e:
                log.critical("%s: could not close the valve: %s: %s", name, type(e).__name__, e)
            if self._signals == 1:
                log.info("%s received: closing the valve and stopping", name)
            else:
                log.warning(
                    "%s received again (%d signals): valve closed again; the episode in progress is still "
                    "written, the upload drain is skipped",
                    name,
                    self._signals,
                )
        except BaseException:  # e.g. a log write re-entering the stream the main thread was writing: drop it
            pass

    def _apply(self, now: float, d: Decision, prob: float | None) -> bool:
        """Drive the valve as decided, unless a signal asked to stop; returns whether it is open."""
        is_open = d.open and not self._signalled
        if is_open != self.valve.is_open:
            self.stats.valve_changes += 1
            sm = "-" if d.smoothed is None else f"{d.smoothed:.2f}"
            p = "-" if prob is None else f"{prob:.2f}"
            reason = d.reason if is_open == d.open else "stopping"
            log.info("valve %s (%s, p=%s, smoothed=%s)", "OPEN" if is_open else "CLOSED", reason, p, sm)
            if is_open:
                self._open_since = now
            elif self._open_since is not None:
                self.stats.seconds_open += max(0.0, now - self._open_since)
                self._open_since = None
        self.valve.set(is_open)
        return is_open

    def _rate_limited_error(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            log.error(msg, *args)
            self._last_error_log = now

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> RunStats:
        """Run until the source ends, ``max_frames``, a signal or :meth:`stop`; returns the stats.
        Exceptions propagate after the valve was closed."""
        previous: dict[int, Any] = {}
        if self.install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        clock = self.clock
        self.stats.started = clock.monotonic()
        try:
            self.valve.set(False)
            self._loop()
        except BaseException as e:
            if not self.stats.stop_reason:
                self.stats.stop_reason = type(e).__name__
            raise
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                with contextlib.suppress(Exception):
                    signal.signal(sig, handler)
        return self.stats

    def _loop(self) -> None:
        clock, cam = self.clock, self.camera
        next_due = clock.monotonic()
        next_reload = clock.monotonic() + self.reload_check_s
        next_stats = clock.monotonic() + self.stats_every_s if self.stats_every_s > 0 else math.inf
        last_frame_t: float | None = None
        last_frame_seen = clock.monotonic()
        index = 0
        while not self._stopping():
            if self.max_frames is not None and self.stats.frames >= self.max_frames:
                self.stop("max-frames")
                break
            if self.period:
                wait = next_due - clock.monotonic()
                if wait > 0:
                    clock.sleep(wait, self._stop)  # a signal does not wake it (no lock in the handler): <= 1 period
                    if self._stopping():
                        break
                next_due = max(next_due + self.period, clock.monotonic() - self.period)
            try:
                frame = cam.read(self.read_timeout_s)
            except Exception as e:  # a camera error is a stall: fail closed, keep trying
                self._rate_limited_error("camera %s: %s: %s", getattr(cam, "name", "?"), type(e).__name__, e)
                frame = None
            if frame is None and getattr(cam, "finished", False):
                self.stop("end-of-source")
                break

            prob: float | None = None
            if frame is not None:
                last_frame_t, last_frame_seen = frame.t, clock.monotonic()
                holder = self.models
                model = holder.model
                holder.offer_frame(frame.image)
                t0 = time.perf_counter()
                try:
                    raw = model.predict(frame.image)
                    prob = normalize_probability(float(raw), float(model.threshold))
                    if not math.isfinite(prob):
                        raise ValueError(f"probability {raw!r}")
                except Exception as e:
                    prob = None
                    self.stats.model_errors += 1
                    self._rate_limited_error("model error (valve closed): %s: %s", type(e).__name__, e)
                self.stats.latency.add(time.perf_counter() - t0)
            else:
                self.stats.stalls += 1
            now = clock.monotonic()
            frame_time = frame.t if frame is not None else last_frame_t
            if frame is None and frame_time is not None and now - frame_time <= self.controller.cfg.stale_frame_s:
                continue  # a late frame, not yet stale: the valve keeps its state until it is
            m = self.shadow.step(now, prob, frame_time).open
            try:
                user = self.feedback(FeedbackContext(now, index, frame, prob, int(m), bool(self.valve.is_open)))
            except Exception as e:  # a broken input must not keep water running
                self._rate_limited_error("feedback/inputs failed (treated as no input): %s: %s", type(e).__name__, e)
                user = UserInput()
            d = self.controller.step(now, prob, frame_time, user)
            is_open = self._apply(now, d, prob)

            if frame is not None:
                index += 1
                self.stats.frames += 1
                if self.recorder is not None:
                    # the water the user asked for or let the model give; where only the
                    # controller's post-release hold keeps it running it is the model's decision,
                    # and the valve (arduino_output) tells the label stage to ignore those frames
                    held = d.reason == "user-forced-on" and not user.forced_on
                    s = int(is_open and not user.closed and (bool(m) or not held))
                    try:
                        self.recorder.add(frame.t, clock.time(), frame.image, int(m), s, is_open)
                    except Exception as e:
                        self._rate_limited_error("recorder failed: %s: %s", type(e).__name__, e)
            elif getattr(cam, "live", False) and now - last_frame_seen >= self.reopen_after_s:
                last_frame_seen = now
                with contextlib.suppress(Exception):
                    cam.reopen()

            if now >= next_reload:
                next_reload = now + self.reload_check_s
                if self.fetcher is not None:
                    try:
                        self.fetcher.poll(now)
                    except Exception as e:
                        self._rate_limited_error("model fetch could not start: %s", e)
                try:
                    self._check_models()
                except Exception as e:
                    self._rate_limited_error("model reload check failed: %s", e)
            if now >= next_stats:
                next_stats = now + self.stats_every_s
                self.stats.ended = now
                log.info(self.stats.line())

    def _check_models(self) -> None:
        lock = getattr(self.fetcher, "swap_lock", None)
        if lock is None:
            self.models.check()
        elif lock.acquire(blocking=False):  # else a fetched model is being swapped in: look next time
            try:
                self.models.check()
            finally:
                lock.release()

    def _shutdown(self) -> None:
        """Valve first, then everything else; each step on its own so one failure skips nothing."""
        now = self.clock.monotonic()
        try:
            self.valve.set(False)
        except Exception as e:
            log.critical("could not close the valve: %s: %s", type(e).__name__, e)
        try:
            self.valve.close()
        except Exception as e:
            log.critical("could not release the valve: %s: %s", type(e).__name__, e)
        if self._open_since is not None:
            self.stats.seconds_open += max(0.0, now - self._open_since)
            self._open_since = None
        log.info("valve closed (%s)", self.stats.stop_reason or "exit")
        self.stats.ended = now
        self.stats.bad_frames = int(getattr(self.camera, "bad_frames", 0) or 0)
        for what, fn in (
            ("model fetch", lambda: self.fetcher is not None and self.fetcher.stop()),
            ("camera", lambda: self.camera.close()),
            ("inputs", lambda: getattr(self.feedback, "close", lambda: None)()),
            ("recorder", lambda: self.recorder is not None and self.recorder.close()),
            ("uploader", self._stop_uploader),
        ):
            try:
                fn()
            except Exception as e:
                log.error("shutdown: %s: %s: %s", what, type(e).__name__, e)
        log.info(self.stats.line())

    def _stop_uploader(self) -> None:
        up = self.uploader
        if up is None:
            return
        drain_s = 0.0 if self._hurry else self.drain_s  # signalled twice: what is spooled waits for the next start
        if getattr(up, "_thread", None) is not None:
            up.stop(drain_s=drain_s)
        elif drain_s > 0:
            try:
                up.run_once()
            except Exception as e:
                log.warning("upload at shutdown failed (kept in the spool): %s", e)


# --------------------------------------------------------------------------- from a config


def _default_user_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "") or "pi"
    return name


def load_regular_model(path: str | os.PathLike[str], *, threads: int = 2) -> Any:
    """:func:`~autosink.edge.inference.load_model`, for regular files only: a model or card that
    is a device, FIFO or socket is a :class:`ModelError` at once (reading ``/dev/zero`` never
    ends, a FIFO blocks). Here rather than in ``inference`` so the training stage, which depends
    on that module, is not invalidated."""
    from autosink.core.fileio import not_regular
    from autosink.core.modelcard import card_path_for
    from autosink.edge.inference import ModelError, load_model

    for p, what in ((path, "the model's .onnx file"), (card_path_for(path), "the model's card")):
        if kind := not_regular(p):
            raise ModelError(f"{p}: is {kind}, not a regular file (expected {what})")
    return load_model(path, threads=threads)


def recorder_from_config(c_rec: Mapping[str, Any], spool: Any, user_id: str, **kw: Any) -> Any:
    """A :class:`~autosink.edge.recorder.Recorder` with the ``[recorder]`` section's episode
    settings (``kw``: the recorder's other arguments, e.g. ``background``)."""
    from autosink.edge.recorder import Recorder

    return Recorder(
        spool,
        user_id=user_id,
        pre_s=c_rec["pre_s"],
        post_s=c_rec["post_s"],
        record_fps=c_rec["record_fps"],
        max_episode_s=c_rec["max_episode_s"],
        session_gap_s=c_rec["session_gap_s"],
        **kw,
    )


def build_runtime(
    cfg: Mapping[str, Any],
    *,
    clock: Any = None,
    feedback: Feedback | None = None,
    valve: Any = None,
    camera: Camera | None = None,
    model: Any = None,
    max_frames: int | None = None,
    background: bool = True,
    install_signals: bool = True,
    fetch_source: Any = None,
) -> EdgeRuntime:
    """Wire every part from a merged config (see :data:`DEFAULT_CONFIG`). Parts passed in are used
    as they are (tests, simulations; ``fetch_source`` replaces the source ``[fetch]`` names). The
    valve is made first and closed again if anything after it fails, so a bad config never leaves
    it open."""
    from autosink.edge.camera import open_camera
    from autosink.edge.devices import make_input, make_valve
    from autosink.edge.fetch import FetchError, PeriodicFetcher, fetch_model, make_source, recover_install
    from autosink.edge.uploader import Uploader, make_target

    clock = clock or SystemClock()
    c_cam, c_model, c_valve, c_in = cfg["camera"], cfg["model"], cfg["valve"], cfg["inputs"]
    c_rec, c_up, c_fetch = cfg["recorder"], cfg["upload"], cfg["fetch"]
    controller_cfg = ControllerConfig.from_dict(cfg["controller"])  # validate before touching hardware
    if fetch_source is None and c_fetch["source"]:
        try:
            fetch_source = make_source(c_fetch)
        except FetchError as e:
            raise ConfigError(str(e)) from None
    if valve is None:
        valve = make_valve(c_valve["kind"], active_high=c_valve["active_high"])
    made: list[Any] = []  # inputs and recorder, closed again if a later part fails
    try:
        if model is None:
            recover_install(c_model["path"], wait_s=10.0)  # a fetch cut off between its two renames
            selftest = c_model["selftest_png"] or None
            if fetch_source is not None and not os.path.exists(c_model["path"]):  # a fresh Pi: fetch it first
                log.warning(
                    "no model at %s: fetching the production model from %s", c_model["path"], fetch_source.describe()
                )
                res = fetch_model(
                    fetch_source,
                    c_model["path"],
                    threads=1,
                    selftest_png=selftest,
                    selftest_max_s=c_model["selftest_max_s"],
                )
                (log.info if res.ok else log.error)("model fetch %s: %s", res.status, res.message)
            threads = int(c_model["threads"])
            model = ModelReloader(
                c_model["path"],
                threads=threads,
                selftest_png=selftest,
                selftest_max_s=c_model["selftest_max_s"],
                background=background,
                loader=lambda p: load_regular_model(p, threads=threads),
            )
            log.info(
                "model %s loaded (card version %s, threshold %.3f)",
                c_model["path"],
                model.model.version,
                model.model.threshold,
            )
        current = model.model if hasattr(model, "model") else model
        width, height = int(getattr(current, "width", 640)), int(getattr(current, "height", 480))
        if feedback is None:
            kw = {"pull_up": c_in["pull_up"], "debounce_s": c_in["debounce_s"]}
            specs = {"faucet": c_in["faucet"] or None, "button": c_in["button"] or None}
            if str(c_valve["kind"]).strip() == "fake":  # a simulation: no GPIO at all
                for name, spec in specs.items():
                    if spec and spec.startswith("gpio"):
                        log.info("valve is fake: input %s (%s) not used", name, spec)
                        specs[name] = None
            faucet = make_input(specs["faucet"], **kw)
            made.append(faucet)
            button = make_input(specs["button"], **kw)
            made.append(button)
            feedback = GpioFeedback(faucet, button, handle_open_forces_on=c_in["handle_open_forces_on"])
        target = make_target(c_up["to"] or None, credentials_path=c_up["gdrive_credentials"] or None)
        uploader = Uploader(
            c_rec["spool"],
            target,
            min_backoff_s=c_up["min_backoff_s"],
            max_backoff_s=c_up["max_backoff_s"],
            poll_s=c_up["poll_s"],
            spool_max_mb=c_up["spool_max_mb"],
        )
        recorder = recorder_from_config(
            c_rec,
            c_rec["spool"],
            c_rec["user_id"] or _default_user_id(),
            background=background,
            used_stems=uploader.names,
            on_written=uploader.wake,
        )
        made.append(recorder)
        if camera is None:
            camera = open_camera(c_cam["source"], clock=clock.monotonic, width=width, height=height, fps=c_cam["fps"])
        fetcher = None
        if fetch_source is not None and c_fetch["interval_s"] > 0:
            fetcher = PeriodicFetcher(
                fetch_source,
                c_model["path"],
                interval_s=c_fetch["interval_s"],
                reloader=model,
                threads=1,
                selftest_png=c_model["selftest_png"] or None,
                selftest_max_s=c_model["selftest_max_s"],
                background=background,
            )
        if background:
            uploader.start()
        log.info(
            "edge runtime: camera %s, valve %r, spool %s, upload %s, user %s, model fetch %s",
            c_cam["source"],
            valve,
            c_rec["spool"],
            target.describe() if target else "off",
            recorder.user_id,
            f"every {c_fetch['interval_s']:g} s from {fetch_source.describe()}" if fetcher else "off",
        )
        return EdgeRuntime(
            camera=camera,
            model=model,
            valve=valve,
            controller=controller_cfg,
            feedback=feedback,
            recorder=recorder,
            uploader=uploader,
            clock=clock,
            fps=c_cam["fps"],
            max_frames=max_frames,
            read_timeout_s=c_cam["read_timeout_s"],
            reopen_after_s=c_cam["reopen_after_s"],
            reload_check_s=c_model["reload_check_s"],
            flow_l_min=c_valve["flow_l_min"],
            stats_every_s=cfg["log"]["stats_every_s"],
            drain_s=c_up["drain_s"],
            install_signals=install_signals,
            fetcher=fetcher,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            valve.set(False)
        with contextlib.suppress(Exception):
            valve.close()
        for part in made:
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()
        raise


def run_from_config(cfg: Mapping[str, Any], *, max_frames: int | None = None, **kw: Any) -> RunStats:
    """Build and run (what ``edge/run.py`` does)."""
    return build_runtime(cfg, max_frames=max_frames, **kw).run()


def close_valve_from_config(cfg: Mapping[str, Any]) -> None:
    """Drive the configured valve closed and release it (systemd ``ExecStopPost``: whatever
    happened to the main process, the relay ends up off)."""
    from autosink.edge.devices import make_valve

    valve = make_valve(cfg["valve"]["kind"], active_high=cfg["valve"]["active_high"])
    try:
        valve.set(False)
    finally:
        valve.close()
    log.info("valve %s closed", cfg["valve"]["kind"])
