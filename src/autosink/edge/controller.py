"""The valve controller: per-frame model probability + user feedback -> open or closed.

Why it is pure (no I/O, no clock reads, no randomness): every safety rule of the faucet lives
here, so it must be testable exhaustively (``tests/test_edge_controller.py`` runs hypothesis
properties over arbitrary step sequences) and replayable from a log. The caller passes the
time ``now`` (seconds on one monotonic clock, the same clock as the frames' ``frame_time``) and
applies the returned :class:`Decision` to the valve.

Fail closed: the valve is open only on the explicit paths below; start-up, a stale or missing
frame, an invalid probability, a fault, the time going backwards, and anything else close it.

Precedence within one :meth:`Controller.step`, first match wins:

1. ``now`` not finite or earlier than the previous step -> closed, ``"fault"``.
2. Frame missing or stale (``|now - frame_time| > stale_frame_s``) -> closed, ``"stale-frame"``.
   A frame stamped in the future by more than that is as untrustworthy as an old one.
3. Probability ``None``, NaN or outside [0, 1] -> closed, ``"model-error"``.
   (2 and 3 also reset the smoothing and cancel a forced-on hold: the camera or model is
   unhealthy, so even the user's forced-on is refused; the user presses again after recovery.)
4. The user closed the faucet -> closed, ``"user-closed"`` (wins over a simultaneous forced-on,
   and over the minimum on time).
5. The user forces water on -> open, ``"user-forced-on"``, at once (ignores ``min_off_s``) and
   held ``forced_on_hold_s`` after the last step that reported it.
6. A forced-on hold still running -> open, ``"user-forced-on"`` (model ignored).
7. The model, through the smoothed probability, hysteresis and the minimum dwell times.

``max_open_s`` caps *every* continuous open, the user's included (a stuck button or a stuck
reed switch must not flood the kitchen): on reaching it the valve closes with ``"max-open"``.
Afterwards the model may not reopen until its smoothed probability fell to ``<= off_threshold``
once (a user forced-on still opens, but does not clear this lockout), and a forced-on that was
still held at the cut is ignored (as if absent) until released: a level held forever is a stuck
input, so only a new press (an edge) reopens.

**The user-close lockout (the "scene changed" rule).** After the user closed the faucet, the
model must not simply reopen it a second later on the same wrong evidence. The scene counts as
changed once the smoothed probability fell to ``<= off_threshold`` on a later step, i.e. the
model itself saw that water was no longer needed; only then may it open again. We chose this
over a timer (a wrong model stays wrong however long we wait) and over image-difference
heuristics (not the controller's business, and untestable here). A user forced-on also ends
the lockout: the user's newest wish is water. Stale frames and faults keep the lockout.

``min_off_s`` holds after every close (not at start-up: the smoothing already delays the first
open); only a user forced-on overrides it. ``min_on_s`` holds after every open; a stale frame,
model error, fault, user close or max-open override it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields

__all__ = ["ControllerConfig", "UserInput", "Decision", "Controller", "REASONS", "OPEN_REASONS"]

REASONS = (
    "model",
    "hold-min-on",
    "hold-min-off",
    "max-open",
    "user-forced-on",
    "user-closed",
    "stale-frame",
    "model-error",
    "fault",
    "start",
)
#: The only reasons that come with ``open=True`` ("model" can be either).
OPEN_REASONS = frozenset({"model", "hold-min-on", "user-forced-on"})

_TIMES = ("min_on_s", "min_off_s", "max_open_s", "stale_frame_s", "forced_on_hold_s")


def _finite(x: object) -> bool:
    """A finite real number; numpy scalars (an ONNX model's float32) included, bools excluded."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


@dataclass(frozen=True)
class ControllerConfig:
    """Tuning of :class:`Controller`; validated on construction (``ValueError``)."""

    # chosen in the closed loop (docs/water-benchmark.md): at 2 fps a smoothing of 0.5 alone kept
    # the water off for the first frame of every need, 12% of the needed water with a perfect model
    on_threshold: float = 0.55  # hysteresis: open when the smoothed probability >= this
    off_threshold: float = 0.2  # close when it falls <= this (a wide band: fewer false-offs)
    smoothing: float = 0.75  # EMA weight of the newest probability (1.0 = no smoothing)
    min_on_s: float = 1.0  # minimum dwell once opened (unless a fault or the user closes)
    min_off_s: float = 1.0  # minimum dwell once closed before the model may reopen
    max_open_s: float = 60.0  # maximum continuous open time (user's opens included)
    stale_frame_s: float = 1.0  # a frame older than this is a camera stall: fail closed
    forced_on_hold_s: float = 10.0  # user forced water on: keep it on this long, model ignored

    def __post_init__(self) -> None:
        problems = [
            f"{f.name}: must be a finite number, got {getattr(self, f.name)!r}"
            for f in fields(self)
            if not _finite(getattr(self, f.name))
        ]
        if problems:
            raise ValueError("invalid controller config: " + "; ".join(problems))
        for f in fields(self):  # ints from YAML/JSON become floats: one type downstream
            object.__setattr__(self, f.name, float(getattr(self, f.name)))
        if not 0.0 <= self.off_threshold < self.on_threshold <= 1.0:
            problems.append(
                f"need 0 <= off_threshold < on_threshold <= 1, got off_threshold="
                f"{self.off_threshold}, on_threshold={self.on_threshold}"
            )
        if not 0.0 < self.smoothing <= 1.0:
            problems.append(f"smoothing: must be in (0, 1], got {self.smoothing}")
        problems += [
            f"{name}: must be > 0, got {getattr(self, name)}" for name in _TIMES if not getattr(self, name) > 0
        ]
        if problems:
            raise ValueError("invalid controller config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: Mapping) -> ControllerConfig:
        """Build from a config mapping; unknown keys are an error (a typo must not be ignored)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"controller config must be a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(map(str, set(d) - set(known)))
        if unknown:
            raise ValueError(f"unknown controller config keys: {', '.join(unknown)} (known: {', '.join(known)})")
        return cls(**d)


@dataclass(frozen=True)
class UserInput:
    """What the user did at the faucet on this step (already debounced and interpreted)."""

    forced_on: bool = False  # forces water on now (button pressed / handle opened while closed)
    closed: bool = False  # closed the faucet now


@dataclass(frozen=True)
class Decision:
    """The valve state to apply, why (one of :data:`REASONS`), and the smoothed probability."""

    open: bool
    reason: str
    smoothed: float | None


class Controller:
    """Hysteresis + EMA + dwell times + user overrides + fail-closed rules (see module doc).

    Deterministic: the same sequence of calls gives the same decisions.
    """

    def __init__(self, cfg: ControllerConfig = ControllerConfig()) -> None:
        self.cfg = cfg
        self._open = False
        self._smoothed: float | None = None
        self._last_now: float | None = None
        self._opened_at: float | None = None
        self._closed_at: float | None = None  # None: not closed since start -> no min-off hold
        self._forced_until: float | None = None  # end of the running forced-on hold
        self._force_latched = False  # forced-on held through a max-open cut
        self._user_lockout = False  # after a user close, until the scene changed
        self._max_open_lockout = False  # after max-open, until smoothed <= off once
        self._last = Decision(False, "start", None)

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def last(self) -> Decision:
        """The latest decision (``Decision(False, "start", None)`` before the first step)."""
        return self._last

    def step(self, now: float, prob: float | None, frame_time: float | None, user: UserInput = UserInput()) -> Decision:
        """Advance to time ``now`` with the model's ``prob`` for the frame taken at ``frame_time``."""
        cfg = self.cfg
        if not _finite(now) or (self._last_now is not None and now < self._last_now):
            return self.fault(now, "fault")
        now = self._last_now = float(now)
        if not user.forced_on:
            self._force_latched = False

        stale = not _finite(frame_time) or abs(now - frame_time) > cfg.stale_frame_s
        valid = not stale and _finite(prob) and 0.0 <= prob <= 1.0
        if valid:
            prob, s = float(prob), self._smoothed
            self._smoothed = prob if s is None else cfg.smoothing * prob + (1 - cfg.smoothing) * s
            if self._smoothed <= cfg.off_threshold:  # before this step's user close: "later step"
                self._user_lockout = self._max_open_lockout = False
        else:
            self._smoothed = None
        if user.closed:
            self._user_lockout = True  # remembered even when this frame is bad

        if stale:
            return self._close(now, "stale-frame")
        if not valid:
            return self._close(now, "model-error")
        if user.closed:
            return self._close(now, "user-closed")
        if user.forced_on and not self._force_latched:
            if self._open_too_long(now):
                self._force_latched = True
                return self._max_open(now)
            self._user_lockout = False
            self._forced_until = now + cfg.forced_on_hold_s
            return self._set_open(now, "user-forced-on")
        if self._open and self._open_too_long(now):
            return self._max_open(now)
        if self._open and self._forced_until is not None and now < self._forced_until:
            return self._emit(True, "user-forced-on")
        self._forced_until = None

        s = self._smoothed
        if self._open:
            if self._max_open_lockout:  # a forced-on hold ended inside the max-open lockout
                return self._close(now, "max-open")
            if s <= cfg.off_threshold:
                if now - self._opened_at < cfg.min_on_s:
                    return self._emit(True, "hold-min-on")
                return self._close(now, "model")
            return self._emit(True, "model")
        if self._max_open_lockout:
            return self._emit(False, "max-open")
        if self._user_lockout:
            return self._emit(False, "user-closed")
        if s >= cfg.on_threshold:
            if self._closed_at is not None and now - self._closed_at < cfg.min_off_s:
                return self._emit(False, "hold-min-off")
            return self._set_open(now, "model")
        return self._emit(False, "model")

    def fault(self, now: float, reason: str = "fault") -> Decision:
        """Close at once after anything going wrong upstream; resets the smoothing. Never raises."""
        self._smoothed = None
        if _finite(now):
            self._last_now = float(now)  # a backwards clock jump re-bases here instead of faulting forever
        return self._close(self._last_now, reason if isinstance(reason, str) and reason else "fault")

    # -- internals ---------------------------------------------------------------------------

    def _open_too_long(self, now: float) -> bool:
        return self._open and now - self._opened_at >= self.cfg.max_open_s

    def _max_open(self, now: float) -> Decision:
        d = self._close(now, "max-open")
        self._max_open_lockout = True
        return d

    def _set_open(self, now: float, reason: str) -> Decision:
        if not self._open:
            self._open, self._opened_at = True, now
        return self._emit(True, reason)

    def _close(self, now: float | None, reason: str) -> Decision:
        self._forced_until = None
        if self._open:
            self._open, self._opened_at, self._closed_at = False, None, now
        return self._emit(False, reason)

    def _emit(self, open_: bool, reason: str) -> Decision:
        self._last = Decision(open_, reason, self._smoothed)
        return self._last
