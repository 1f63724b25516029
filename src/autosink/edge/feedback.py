"""The user's side of the loop: what a feedback source sees each step (:class:`FeedbackContext`)
and the sources that turn it into a :class:`~autosink.edge.controller.UserInput`: nobody
(:class:`NoFeedback`), the Pi's GPIO inputs, the faucet handle's reed switch and the push button
(:class:`GpioFeedback`), or a recorded user replayed from an episode (:class:`EpisodeFeedback`,
:func:`replay_user`). Simulations pass their own callable of the same shape (:data:`Feedback`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autosink.edge.camera import Frame
from autosink.edge.controller import UserInput
from autosink.edge.settings import ConfigError, merge_config

__all__ = ["FeedbackContext", "Feedback", "NoFeedback", "GpioFeedback", "EpisodeFeedback", "replay_user"]


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
