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

The clock is injectable (:class:`~autosink.edge.clock.SimClock`): with it a replay runs as
fast as the CPU allows, with simulated frame times and wall times (tests, simulations);
``feedback`` (:mod:`.feedback`) lets a simulation play the user instead of the GPIO inputs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from autosink.edge.camera import Camera
from autosink.edge.clock import SystemClock
from autosink.edge.controller import Controller, ControllerConfig, Decision, UserInput
from autosink.edge.feedback import Feedback, FeedbackContext, NoFeedback
from autosink.edge.inference import ModelReloader, Predictor, normalize_probability
from autosink.edge.stats import RunStats

__all__ = ["EdgeRuntime"]

log = logging.getLogger("autosink.edge")


class _StaticModel:
    """A fixed predictor (tests, or a model object built elsewhere) in the reloader's shape."""

    def __init__(self, model: Predictor) -> None:
        self.model = model

    def offer_frame(self, frame: np.ndarray) -> None:
        pass

    def check(self) -> bool:
        return False


class EdgeRuntime:
    """One run of the loop; see the module docstring. Build it with
    :func:`~autosink.edge.wiring.build_runtime` (from a config) or directly (tests inject every
    part)."""

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
