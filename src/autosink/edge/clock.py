"""The clocks the edge loop runs on: :class:`SystemClock` (real time, on the Pi) and
:class:`SimClock` (simulated time that ``sleep`` advances at once, so a replay or a simulation
runs as fast as the CPU allows). The loop takes either; nothing else in it reads the time."""

from __future__ import annotations

import threading
import time

__all__ = ["SystemClock", "SimClock"]


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
