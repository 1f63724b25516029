"""The current model, the valve, and the simulated user who corrects them; the closed loop.

Per frame ``i`` (time ``t = i / fps``), :meth:`ClosedLoop.step`:

1. takes the scripted scene of frame ``i`` and shows the water as the faucet was left after
   frame ``i-1`` (``water_on = magnetic_status[i-1]``; off at the start): the valve acts
   after the frame that caused it;
2. renders the frame if the model needs pixels, and asks the model for ``p = model(state, frame)``;
3. ``model_output = int(p >= threshold)``: the model's decision, which the valve follows;
4. the user (:meth:`SimUser.step`) looks at what they want (``wants_water``) and at the water
   and may intervene; ``magnetic_status`` is the faucet state as the user left it, i.e. the
   water the user ends up with.

Recorded semantics (the labeling stage derives labels from exactly these):

* no intervention: ``magnetic_status == model_output``.
* **forced on**: the user wants water, the model keeps it off, and that wrong state has lasted
  at least the user's reaction delay (sampled per event from the user's range, e.g.
  0.5-2.5 s): the user opens the faucet. From that frame ``magnetic_status = 1``; rows where the
  model still says 0 have ``model_output 0, magnetic_status 1``. It lasts until the user no
  longer wants water (they let go, the water returns to the model's state); if the model turns
  on meanwhile, rows are ``1/1`` (no disagreement) while the user still holds it.
* **closed**: water runs (the model says 1) while the user does not want it, for at least the
  reaction delay: the user closes the faucet. ``magnetic_status = 0`` with ``model_output 1``
  until the model goes off (the close ends, both 0) or the user wants water again (they reopen:
  both 1).
* wrong states shorter than the reaction delay are tolerated (no row disagrees).

So the rows where ``model_output != magnetic_status`` are exactly the overridden frames; the
Pi saves an episode around each run of them (:mod:`autosink.sim.lake`).

Models are callables ``(state, frame_or_None) -> probability`` with an optional
``needs_frame`` attribute (default True: pass rendered RGB frames, e.g. an ONNX model) and an
optional ``reset(seed)`` called at the start of every session.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from autosink.sim.scene import ROI, H, SceneState, W, render
from autosink.sim.session import SessionScript, Truth, label_of, wants_water

Model = Callable[[SceneState, "np.ndarray | None"], float]

# --------------------------------------------------------------------------- current models

_GX, _GY = np.meshgrid(np.linspace(ROI[0] + 5, ROI[2] - 5, 20), np.linspace(ROI[1] + 5, ROI[3] - 5, 20))
_GX, _GY = _GX.ravel(), _GY.ravel()


def roi_coverage(state: SceneState) -> float:
    """Fraction of the ROI covered by anything (dish, resting dishes, hands, scrubber), from
    the state's geometry (an idealised 'objectness')."""
    cov = np.zeros(_GX.shape, bool)
    discs: list[tuple[float, float, float]] = []
    for d in ((state.dish,) if state.dish is not None else ()) + state.resting:
        discs.append((d.x, d.y, d.r))
    s = state.look.hand_scale
    for h in state.hands:  # palm, fingers, and the forearm towards the user's shoulder
        a = math.radians(h.angle)
        ux, uy = math.cos(a), math.sin(a)
        discs += [(h.x, h.y, 30 * s), (h.x + ux * 36 * s, h.y + uy * 36 * s, 22 * s)]
        wx, wy = h.x - ux * 30 * s, h.y - uy * 30 * s
        sx = (W * 0.5 - 170 if h.side == "L" else W * 0.5 + 170) + (h.x - W * 0.5) * 0.35
        vx, vy = sx - wx, H + 170 - wy
        n = math.hypot(vx, vy) or 1.0
        discs += [(wx + vx / n * k, wy + vy / n * k, 20 * s) for k in (0.0, 35.0, 70.0, 105.0)]
    if state.scrubber is not None:
        discs.append((state.scrubber.x, state.scrubber.y, 32))
    for x, y, r in discs:
        cov |= (_GX - x) ** 2 + (_GY - y) ** 2 < r * r
    return float(cov.mean())


class RoiPresence:
    """The earlier system's weak heuristic: water on when 'something' covers the ROI.
    p = sigmoid(slope * (coverage - c0) + z) with temporally correlated noise z (AR(1)), so
    its errors come in runs (small dishes are missed; skin is salient, so hands under the
    faucet and scrubbing there turn water on)."""

    needs_frame = False

    def __init__(
        self, c0: float = 0.4, slope: float = 14.0, noise: float = 1.4, rho: float = 0.85, hand_bonus: float = 1.5
    ) -> None:
        self.c0, self.slope, self.noise, self.rho, self.hand_bonus = c0, slope, noise, rho, hand_bonus
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.z = 0.0

    def __call__(self, state: SceneState, frame: np.ndarray | None = None) -> float:
        self.z = self.rho * self.z + math.sqrt(1 - self.rho**2) * self.noise * float(self.rng.standard_normal())
        x = self.slope * (roi_coverage(state) - self.c0) + self.hand_bonus * state.hand_in_roi + self.z
        return 1.0 / (1.0 + math.exp(-x))


class Constant:
    needs_frame = False

    def __init__(self, p: float) -> None:
        self.p = p

    def reset(self, seed: int) -> None:
        pass

    def __call__(self, state: SceneState, frame: np.ndarray | None = None) -> float:
        return self.p


class RandomModel:
    """Coin flips, i.i.d. per frame."""

    needs_frame = False

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, state: SceneState, frame: np.ndarray | None = None) -> float:
        return float(self.rng.random())


class Oracle:
    """Knows what the user wants (an upper bound for benchmarks); ``by="label"`` follows the
    label convention instead (1 only for label 1)."""

    needs_frame = False

    def __init__(self, by: str = "wants") -> None:
        self.by = by

    def reset(self, seed: int) -> None:
        pass

    def __call__(self, state: SceneState, frame: np.ndarray | None = None) -> float:
        return float(wants_water(state) if self.by == "wants" else label_of(state) == 1)


MODELS: dict[str, Callable[[], Any]] = {
    "roi_presence": RoiPresence,
    "always_off": lambda: Constant(0.0),
    "always_on": lambda: Constant(1.0),
    "random": RandomModel,
    "oracle": Oracle,
}


def make_model(name: str, **kwargs: Any) -> Any:
    """A fresh current model by name: roi_presence, always_off, always_on, random, oracle."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown user_model {name!r}; choose one of {sorted(MODELS)}") from None
    return factory(**kwargs)


# --------------------------------------------------------------------------- valve + user


class Valve:
    """The solenoid valve: follows the model's decision (0/1); ``is_open`` is its state."""

    def __init__(self) -> None:
        self.is_open = 0

    def set(self, decision: int) -> int:
        self.is_open = int(bool(decision))
        return self.is_open


NONE, FORCED_ON, CLOSED = "none", "forced_on", "closed"


class SimUser:
    """A user at the faucet who corrects the model after a reaction delay (see module docstring).

    ``step(t, wants, model_output) -> magnetic_status``; ``mode`` is ``none``, ``forced_on`` or
    ``closed``; ``interventions`` counts overrides; ``last_delay`` is the delay of the last one.
    """

    def __init__(self, reaction_delay_s: tuple[float, float] = (0.5, 2.5), seed: int = 0) -> None:
        self.reaction_delay_s = (float(reaction_delay_s[0]), float(reaction_delay_s[1]))
        self.rng = np.random.default_rng(seed)
        self.mode = NONE
        self.interventions = 0
        self.last_delay: float | None = None
        self._wrong_since: float | None = None
        self._delay = 0.0

    def _new_delay(self) -> float:
        lo, hi = self.reaction_delay_s
        return float(self.rng.uniform(lo, hi)) if hi > lo else lo

    def step(self, t: float, wants: bool, model_output: int) -> int:
        model_on = bool(model_output)
        if self.mode == FORCED_ON:
            if wants:
                return 1
            self.mode = NONE  # lets go: back to the model's state
        elif self.mode == CLOSED:
            if model_on and not wants:
                return 0
            self.mode = NONE  # the model went off, or the user wants water again
        # no intervention active: is the water wrong, and for how long?
        if wants != model_on:
            if self._wrong_since is None:
                self._wrong_since, self._delay = t, self._new_delay()
            if t - self._wrong_since >= self._delay - 1e-9:
                self.mode = FORCED_ON if wants else CLOSED
                self.interventions += 1
                self.last_delay = t - self._wrong_since
                self._wrong_since = None
                return 1 if wants else 0
        else:
            self._wrong_since = None
        return int(model_on)


# --------------------------------------------------------------------------- closed loop


@dataclass
class FrameRecord:
    index: int
    t: float
    state: SceneState  # with water_on as shown in the frame
    truth: Truth
    prob: float
    model_output: int
    magnetic_status: int
    user_mode: str
    frame: np.ndarray | None = None


class ClosedLoop:
    """Drives one session frame by frame: scene -> (render) -> model -> valve -> user.

    ``render_frames``: None renders only when the model needs frames (``needs_frame``, default
    True for plain callables); ``keep_frames`` stores rendered frames in the records.
    """

    def __init__(
        self,
        script: SessionScript,
        model: Any,
        user: SimUser | None = None,
        *,
        threshold: float = 0.5,
        render_frames: bool | None = None,
        keep_frames: bool = False,
    ) -> None:
        self.script = script
        self.model = model
        self.user = user if user is not None else SimUser(script.user.reaction_delay_s, seed=script.seed + 1)
        self.threshold = threshold
        needs = bool(getattr(model, "needs_frame", True))
        self.render_frames = needs if render_frames is None else (render_frames or needs)
        self.keep_frames = keep_frames
        self.valve = Valve()
        self.water = 0
        self.i = 0
        if hasattr(model, "reset"):
            model.reset(script.seed)

    @property
    def done(self) -> bool:
        return self.i >= len(self.script.states)

    def step(self) -> FrameRecord:
        i = self.i
        state = replace(self.script.states[i], water_on=bool(self.water))
        frame = render(state) if self.render_frames else None
        prob = float(self.model(state, frame))
        decision = self.valve.set(int(prob >= self.threshold))
        truth = Truth.of(state, self.script.user.wish)
        magnetic = self.user.step(state.t, truth.wants_water, decision)
        self.water = magnetic
        self.i += 1
        return FrameRecord(
            i, state.t, state, truth, prob, decision, magnetic, self.user.mode, frame if self.keep_frames else None
        )

    def run(self) -> list[FrameRecord]:
        out = []
        while not self.done:
            out.append(self.step())
        return out
