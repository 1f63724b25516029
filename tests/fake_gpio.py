"""A stand-in for the ``RPi.GPIO`` module: records every call, lets a test set input levels.

Constants have RPi.GPIO's values; misuse that the real library rejects (a second numbering
mode, output on an input pin, touching a pin that was not set up) raises here too.
"""

from __future__ import annotations


class FakeGPIO:
    BOARD, BCM = 10, 11
    OUT, IN = 0, 1
    LOW, HIGH = 0, 1
    PUD_OFF, PUD_DOWN, PUD_UP = 20, 21, 22

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.mode: int | None = None
        self.directions: dict[int, int] = {}  # pins currently set up
        self.levels: dict[int, int] = {}  # current level per pin (outputs and inputs)
        self.level_log: list[tuple[int, int]] = []  # every level an output pin took, in order

    def setmode(self, mode: int) -> None:
        self.calls.append(("setmode", mode))
        if self.mode is not None and self.mode != mode:
            raise ValueError("A different mode has already been set!")
        self.mode = mode

    def getmode(self) -> int | None:
        return self.mode

    def setup(self, pin: int, direction: int, pull_up_down: int = PUD_OFF, initial: int = -1) -> None:
        self.calls.append(("setup", pin, direction, {"pull_up_down": pull_up_down, "initial": initial}))
        if self.mode is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode")
        self.directions[pin] = direction
        if direction == self.OUT:
            level = self.LOW if initial == -1 else int(initial)  # real pins come up low-ish
            self.levels[pin] = level
            self.level_log.append((pin, level))
        elif pin not in self.levels:
            self.levels[pin] = self.HIGH if pull_up_down == self.PUD_UP else self.LOW

    def output(self, pin: int, value: int) -> None:
        self.calls.append(("output", pin, value))
        if self.directions.get(pin) != self.OUT:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        self.levels[pin] = int(value)
        self.level_log.append((pin, int(value)))

    def input(self, pin: int) -> int:
        self.calls.append(("input", pin))
        if pin not in self.directions:
            raise RuntimeError("You must setup() the GPIO channel first")
        return self.levels[pin]

    def cleanup(self, pin: int | None = None) -> None:
        self.calls.append(("cleanup", pin))
        for p in list(self.directions) if pin is None else [pin]:
            self.directions.pop(p, None)

    # -- for tests ---------------------------------------------------------------------------

    def set_input(self, pin: int, level: int) -> None:
        """The electrical level a test puts on an input pin."""
        self.levels[pin] = int(level)

    def calls_for(self, pin: int) -> list[tuple]:
        return [c for c in self.calls if len(c) > 1 and c[1] == pin]
