"""Hardware behind two small interfaces: a :class:`Valve` (the relay) and inputs (reed switch, button).

Why this shape (gpiozero's pin-factory idea): the runtime talks to ``Valve``/input objects built
from a spec string (``make_valve("gpio:17")``, ``make_input("gpio:27")``), so the same loop runs
on a Pi, against the older Arduino relay, or fully simulated (``"fake"``) in tests and on a
laptop. Hardware libraries (``RPi.GPIO``, provided on a Pi 5 by ``rpi-lgpio``; ``pyserial``) are
imported lazily, only when such a device is built, and can be injected (``gpio=``,
``serial_factory=``) so every backend is tested here without hardware.

Fail closed: every valve starts closed (the GPIO pin is configured with the closed level as its
*initial* level, so it never glitches open; the Arduino is sent ``b'0'`` as soon as the port
opens), ``close()`` drives it closed before releasing the hardware, and a closed valve refuses to
open again. The relay is normally open and the solenoid normally closed, so a released pin or
a dead Pi also means no water.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Valve",
    "FakeValve",
    "GpioValve",
    "SerialValve",
    "make_valve",
    "DEFAULT_VALVE_PIN",
    "DebouncedInput",
    "FakeInput",
    "make_input",
]

#: BCM pin used by the bare ``"gpio"`` spec (physical pin 11); use ``"gpio:<pin>"`` for another.
DEFAULT_VALVE_PIN = 17
_VALVE_FORMS = '"gpio", "gpio:<bcm pin>", "serial:<port>" or "fake"'
_INPUT_FORMS = '"gpio:<bcm pin>", "fake" or None'


@runtime_checkable
class Valve(Protocol):
    """A valve. ``set`` drives it; ``close`` = ``set(False)`` + release the hardware (idempotent)."""

    is_open: bool

    def set(self, open: bool) -> None: ...

    def close(self) -> None: ...


class _ValveBase:
    """Shared bookkeeping: state, idempotent close, refusing to open once closed."""

    def __init__(self) -> None:
        self.is_open = False
        self._released = False

    def set(self, open: bool) -> None:
        open = bool(open)
        if self._released:
            if open:
                raise RuntimeError(f"{self!r} was closed (hardware released); refusing to open it")
            return
        self._write(open)  # written every call, not only on change: self-heals a lost write
        self.is_open = open

    def close(self) -> None:
        if self._released:
            return
        try:
            self._write(False)
            self.is_open = False
        finally:
            self._released = True
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, open: bool) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _release(self) -> None:
        pass


class FakeValve(_ValveBase):
    """In-memory valve for tests and simulation: ``history`` lists every change as (monotonic, open)."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[float, bool]] = []
        self.closed_cleanly = False

    def _write(self, open: bool) -> None:
        if open != self.is_open:
            self.history.append((time.monotonic(), open))

    def _release(self) -> None:
        self.closed_cleanly = True

    def __repr__(self) -> str:
        return f"FakeValve(is_open={self.is_open})"


def _import_gpio() -> Any:
    try:
        import RPi.GPIO as GPIO  # noqa: N814 - the library's own name
    except ImportError as e:  # (on a non-Pi the real package raises RuntimeError: left as is)
        raise ImportError(
            "RPi.GPIO is needed for GPIO devices: on a Pi 4 install RPi.GPIO, on a "
            "Pi 5 rpi-lgpio (it provides `import RPi.GPIO`)"
        ) from e
    return GPIO


class GpioValve(_ValveBase):
    """The relay on a GPIO pin (BCM numbering), through ``RPi.GPIO``.

    ``active_high=False`` for the common relay boards that switch on a LOW input. The pin is set
    up as an output with the closed level as its initial level (no open glitch at start), and
    ``close()`` drives it closed, then ``cleanup(pin)`` (the pin becomes an input: relay boards
    then read their idle level through their own pull resistor, i.e. no water).
    """

    def __init__(self, pin: int, active_high: bool = True, gpio: Any = None) -> None:
        super().__init__()
        self.pin = _check_pin(pin)
        self.active_high = bool(active_high)
        self._gpio = gpio if gpio is not None else _import_gpio()
        g = self._gpio
        self._levels = {True: g.HIGH if self.active_high else g.LOW, False: g.LOW if self.active_high else g.HIGH}
        g.setmode(g.BCM)
        g.setup(self.pin, g.OUT, initial=self._levels[False])

    def _write(self, open: bool) -> None:
        self._gpio.output(self.pin, self._levels[open])

    def _release(self) -> None:
        self._gpio.cleanup(self.pin)

    def __repr__(self) -> str:
        return f"GpioValve(pin={self.pin}, active_high={self.active_high}, is_open={self.is_open})"


class SerialValve(_ValveBase):
    """The earlier build's relay: an Arduino on USB serial that switches on ``b'1'``, off on ``b'0'``.

    ``serial_factory(port, baudrate=...)`` opens the port (default: ``serial.Serial`` from pyserial,
    imported only here, with a 1 s write timeout so a hung Arduino raises instead of stalling the
    loop). Opening the port resets most Arduinos (DTR) and bytes sent during their ~2 s boot are
    lost; that is why ``set`` writes on every call, not only on changes: the next frame repeats it.
    """

    WRITE_TIMEOUT_S = 1.0

    def __init__(self, port: str, baudrate: int = 9600, serial_factory: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.port, self.baudrate = port, baudrate
        if serial_factory is None:
            try:
                import serial  # pyserial
            except ImportError as e:
                raise ImportError("SerialValve needs pyserial (pip install pyserial)") from e

            def serial_factory(port: str, baudrate: int) -> Any:
                return serial.Serial(port, baudrate=baudrate, write_timeout=self.WRITE_TIMEOUT_S)

        self._serial = serial_factory(port, baudrate=baudrate)
        try:
            self._write(False)
        except BaseException:
            self._serial.close()
            raise

    def _write(self, open: bool) -> None:
        self._serial.write(b"1" if open else b"0")
        self._serial.flush()

    def _release(self) -> None:
        self._serial.close()

    def __repr__(self) -> str:
        return f"SerialValve(port={self.port!r}, is_open={self.is_open})"


def _check_pin(pin: Any) -> int:
    if isinstance(pin, bool) or not isinstance(pin, int) or not 0 <= pin <= 27:
        raise ValueError(f"GPIO pin must be a BCM number 0..27, got {pin!r}")
    return pin


def _parse_pin(text: str, spec: str, forms: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"bad device spec {spec!r}: pin must be a BCM number; accepted: {forms}")
    try:
        return _check_pin(int(text))
    except ValueError as e:
        raise ValueError(f"bad device spec {spec!r}: {e}; accepted: {forms}") from None


def _pick(kw: dict, allowed: set[str], all_known: set[str], what: str) -> dict:
    """Keyword args for the chosen backend; those meant for another backend are ignored (so the
    runtime can pass one config whatever the spec), unknown ones are an error (typos)."""
    unknown = set(kw) - all_known
    if unknown:
        raise TypeError(f"{what}: unknown keyword arguments {sorted(unknown)}")
    return {k: v for k, v in kw.items() if k in allowed}


_GPIO_VALVE_KW = {"pin", "active_high", "gpio"}
_SERIAL_VALVE_KW = {"baudrate", "serial_factory"}


def make_valve(spec: str, **kw: Any) -> Valve:
    """Build a valve from ``"gpio"`` (pin ``kw['pin']`` or :data:`DEFAULT_VALVE_PIN`),
    ``"gpio:<pin>"``, ``"serial:<port>"`` or ``"fake"``; a bad spec is a ``ValueError``."""
    if not isinstance(spec, str):
        raise ValueError(f"bad valve spec {spec!r}; accepted: {_VALVE_FORMS}")
    kind, sep, arg = spec.strip().partition(":")
    known = _GPIO_VALVE_KW | _SERIAL_VALVE_KW
    if kind == "fake" and not sep:
        _pick(kw, set(), known, "make_valve")
        return FakeValve()
    if kind == "gpio":
        args = _pick(kw, _GPIO_VALVE_KW, known, "make_valve")
        if sep:
            pin = _parse_pin(arg, spec, _VALVE_FORMS)
            if "pin" in args and args["pin"] != pin:
                raise ValueError(f"valve spec {spec!r} contradicts pin={args['pin']!r}")
            args["pin"] = pin
        args.setdefault("pin", DEFAULT_VALVE_PIN)
        return GpioValve(**args)
    if kind == "serial" and arg:
        return SerialValve(arg, **_pick(kw, _SERIAL_VALVE_KW, known, "make_valve"))
    raise ValueError(f"bad valve spec {spec!r}; accepted: {_VALVE_FORMS}")


class _InputBase:
    """``changed()`` on top of ``read()``: the net change of the stable value since the last call."""

    def __init__(self, initial: bool) -> None:
        self._reported = initial

    def read(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def changed(self) -> bool | None:
        """The new stable value if it differs from the one at the previous call, else ``None``.

        A change that reverted between two calls (press and release) is not reported: poll
        faster than the shortest press you need to see (one call per frame is plenty).
        """
        value = self.read()
        if value == self._reported:
            return None
        self._reported = value
        return value

    def close(self) -> None:
        pass


class DebouncedInput(_InputBase):
    """A switch on a GPIO input, debounced by polling.

    ``read()`` is True while the switch is *active*, gpiozero-style: with ``pull_up=True`` the
    switch connects the pin to ground, so active means LOW; with ``pull_up=False`` it connects
    to 3.3 V and active means HIGH. The runtime maps active to "handle open"/"button pressed".

    Polling (each ``read``/``changed`` samples the pin) rather than edge interrupts: it behaves
    the same under RPi.GPIO and rpi-lgpio, and with an injected ``clock`` it is deterministic to
    test. A new level becomes the stable value once it was sampled unchanged for ``debounce_s``;
    a bounce shorter than that is ignored.
    """

    def __init__(
        self,
        pin: int,
        pull_up: bool = True,
        debounce_s: float = 0.05,
        gpio: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not debounce_s >= 0:
            raise ValueError(f"debounce_s must be >= 0, got {debounce_s!r}")
        self.pin = _check_pin(pin)
        self.pull_up, self.debounce_s, self._clock = bool(pull_up), float(debounce_s), clock
        self._gpio = gpio if gpio is not None else _import_gpio()
        g = self._gpio
        g.setmode(g.BCM)
        g.setup(self.pin, g.IN, pull_up_down=g.PUD_UP if self.pull_up else g.PUD_DOWN)
        self._released = False
        self._stable = self._candidate = self._sample()  # trust the level at start-up
        self._since = self._clock()
        super().__init__(self._stable)

    def _sample(self) -> bool:
        level = bool(self._gpio.input(self.pin))
        return not level if self.pull_up else level

    def read(self) -> bool:
        if self._released:
            raise RuntimeError(f"GPIO input {self.pin} was closed")
        now, value = self._clock(), self._sample()
        if value != self._candidate:
            self._candidate, self._since = value, now
        if self._candidate != self._stable and now - self._since >= self.debounce_s:
            self._stable = self._candidate
        return self._stable

    def close(self) -> None:
        """Release the pin (idempotent)."""
        if not self._released:
            self._released = True
            self._gpio.cleanup(self.pin)


class FakeInput(_InputBase):
    """An input whose (already debounced) value a test or simulation sets with :meth:`set`."""

    def __init__(self, value: bool = False) -> None:
        self.value = bool(value)
        super().__init__(self.value)

    def set(self, value: bool) -> None:
        self.value = bool(value)

    def read(self) -> bool:
        return self.value


_GPIO_INPUT_KW = {"pull_up", "debounce_s", "gpio", "clock"}
_FAKE_INPUT_KW = {"value"}


def make_input(spec: str | None, **kw: Any) -> DebouncedInput | FakeInput | None:
    """Build an input from ``"gpio:<pin>"``, ``"fake"`` or ``None`` (no such input: returns None)."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise ValueError(f"bad input spec {spec!r}; accepted: {_INPUT_FORMS}")
    kind, sep, arg = spec.strip().partition(":")
    known = _GPIO_INPUT_KW | _FAKE_INPUT_KW
    if kind == "fake" and not sep:
        return FakeInput(**_pick(kw, _FAKE_INPUT_KW, known, "make_input"))
    if kind == "gpio" and sep:
        pin = _parse_pin(arg, spec, _INPUT_FORMS)
        return DebouncedInput(pin, **_pick(kw, _GPIO_INPUT_KW, known, "make_input"))
    raise ValueError(f"bad input spec {spec!r}; accepted: {_INPUT_FORMS}")
