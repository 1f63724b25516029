"""The edge hardware layer against fakes: GPIO relay, Arduino serial relay, debounced inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from autosink.edge import devices
from autosink.edge.devices import (
    DEFAULT_VALVE_PIN,
    DebouncedInput,
    FakeInput,
    FakeValve,
    GpioValve,
    SerialValve,
    Valve,
    make_input,
    make_valve,
)
from tests.fake_gpio import FakeGPIO


class FakeSerial:
    """pyserial's ``Serial`` as far as SerialValve uses it."""

    def __init__(self, port: str, baudrate: int = 9600) -> None:
        self.port, self.baudrate = port, baudrate
        self.written: list[bytes] = []
        self.is_open = True
        self.fail_writes = False

    def write(self, data: bytes) -> int:
        if not self.is_open:
            raise OSError("port closed")
        if self.fail_writes:
            raise OSError("device disconnected")
        self.written.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.is_open = False


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# -- GPIO valve -----------------------------------------------------------------------------


@pytest.mark.parametrize("active_high, closed, opened", [(True, 0, 1), (False, 1, 0)])
def test_gpio_valve_sets_up_closed_first_then_drives_and_cleans_up(active_high, closed, opened):
    g = FakeGPIO()
    v = GpioValve(5, active_high=active_high, gpio=g)
    assert g.calls[:2] == [("setmode", g.BCM), ("setup", 5, g.OUT, {"pull_up_down": g.PUD_OFF, "initial": closed})]
    assert g.level_log == [(5, closed)] and not v.is_open  # never at the open level before set(True)
    v.set(True)
    assert v.is_open and g.levels[5] == opened
    v.set(False)
    assert not v.is_open and g.levels[5] == closed
    v.set(True)
    v.close()
    assert not v.is_open and g.levels[5] == closed
    assert g.calls[-2:] == [("output", 5, closed), ("cleanup", 5)]
    n = len(g.calls)
    v.close()  # idempotent: no second cleanup
    v.set(False)  # closing a closed valve is harmless
    assert len(g.calls) == n
    with pytest.raises(RuntimeError, match="refusing to open"):
        v.set(True)
    assert 5 not in g.directions and len(g.calls) == n


def test_gpio_valve_is_a_valve_and_a_context_manager():
    g = FakeGPIO()
    with GpioValve(17, gpio=g) as v:
        assert isinstance(v, Valve)
        v.set(True)
    assert ("cleanup", 17) in g.calls and g.levels[17] == 0


def test_gpio_valve_imports_rpi_gpio_lazily(monkeypatch):
    g = FakeGPIO()
    rpi = types.ModuleType("RPi")
    rpi.GPIO = g
    monkeypatch.setitem(sys.modules, "RPi", rpi)
    monkeypatch.setitem(sys.modules, "RPi.GPIO", g)
    v = GpioValve(22)
    assert v._gpio is g and g.calls[0] == ("setmode", g.BCM)


def test_gpio_missing_library_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "RPi", None)
    with pytest.raises(ImportError, match="rpi-lgpio"):
        GpioValve(17)
    with pytest.raises(ImportError, match="RPi.GPIO"):
        DebouncedInput(27)


@pytest.mark.parametrize("pin", [-1, 28, 3.0, "17", True])
def test_gpio_valve_rejects_bad_pins(pin):
    with pytest.raises(ValueError, match="BCM"):
        GpioValve(pin, gpio=FakeGPIO())


def test_two_devices_share_the_gpio_module_and_release_only_their_pins():
    g = FakeGPIO()
    v, b = GpioValve(17, gpio=g), DebouncedInput(27, gpio=g)
    v.close()
    assert 27 in g.directions and 17 not in g.directions
    b.close()
    b.close()
    assert g.calls.count(("cleanup", 27)) == 1


# -- serial valve ---------------------------------------------------------------------------


def _serial_valve(**kw):
    made = []

    def factory(port, baudrate):
        made.append(FakeSerial(port, baudrate))
        return made[-1]

    return SerialValve("/dev/ttyACM0", serial_factory=factory, **kw), made


def test_serial_valve_sends_0_on_open_bytes_per_set_and_0_on_close():
    v, made = _serial_valve()
    (port,) = made
    assert (port.port, port.baudrate) == ("/dev/ttyACM0", 9600)
    assert port.written == [b"0"] and not v.is_open
    v.set(True)
    v.set(True)  # repeated on purpose: heals a byte lost while the Arduino rebooted
    v.set(False)
    assert port.written == [b"0", b"1", b"1", b"0"]
    v.set(True)
    v.close()
    assert port.written[-2:] == [b"1", b"0"] and not port.is_open and not v.is_open
    v.close()
    assert port.written[-1:] == [b"0"] and len(port.written) == 6
    with pytest.raises(RuntimeError):
        v.set(True)


def test_serial_valve_baudrate_and_write_failure_on_open_closes_the_port():
    v, made = _serial_valve(baudrate=115200)
    assert made[0].baudrate == 115200

    class Broken(FakeSerial):
        def write(self, data):
            raise OSError("gone")

    ports = []
    with pytest.raises(OSError):
        SerialValve("COM3", serial_factory=lambda port, baudrate: ports.append(Broken(port, baudrate)) or ports[-1])
    assert not ports[0].is_open


def test_serial_valve_close_releases_the_port_even_if_the_write_fails():
    v, (port,) = _serial_valve()
    v.set(True)
    port.fail_writes = True
    with pytest.raises(OSError):
        v.close()
    assert not port.is_open
    v.close()  # still idempotent


def test_serial_valve_needs_pyserial_only_when_built(monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)
    with pytest.raises(ImportError, match="pyserial"):
        SerialValve("/dev/ttyUSB0")


# -- fake valve and make_valve ---------------------------------------------------------------


def test_fake_valve_records_changes_and_clean_close():
    v = FakeValve()
    assert isinstance(v, Valve) and not v.is_open and v.history == [] and not v.closed_cleanly
    v.set(True)
    v.set(True)
    v.set(False)
    v.set(True)
    assert [o for _, o in v.history] == [True, False, True]
    times = [t for t, _ in v.history]
    assert times == sorted(times)
    v.close()
    v.close()
    assert [o for _, o in v.history] == [True, False, True, False] and v.closed_cleanly and not v.is_open
    with pytest.raises(RuntimeError):
        v.set(True)


def test_make_valve_parses_every_form():
    g = FakeGPIO()
    assert isinstance(make_valve("fake"), FakeValve)
    v = make_valve("gpio", gpio=g)
    assert isinstance(v, GpioValve) and v.pin == DEFAULT_VALVE_PIN
    v = make_valve("gpio:4", gpio=g, active_high=False)
    assert (v.pin, v.active_high) == (4, False)
    assert make_valve("gpio", pin=6, gpio=g).pin == 6
    ports = []
    v = make_valve(
        "serial:/dev/ttyACM0",
        baudrate=19200,
        serial_factory=lambda port, baudrate: ports.append(FakeSerial(port, baudrate)) or ports[-1],
    )
    assert isinstance(v, SerialValve) and (ports[0].port, ports[0].baudrate) == ("/dev/ttyACM0", 19200)
    # one runtime config serves every spec: keywords meant for another backend are ignored
    assert isinstance(make_valve("fake", active_high=False, baudrate=9600), FakeValve)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "relay",
        "gpio:",
        "gpio:x",
        "gpio:99",
        "gpio:-1",
        "gpio:1.5",
        "serial",
        "serial:",
        "fake:1",
        "GPIO:17",
        None,
        17,
    ],
)
def test_make_valve_rejects_bad_specs_naming_the_accepted_forms(spec):
    with pytest.raises(ValueError, match=r'"gpio:<bcm pin>", "serial:<port>" or "fake"'):
        make_valve(spec, gpio=FakeGPIO())


def test_make_valve_rejects_contradictions_and_unknown_keywords():
    with pytest.raises(ValueError, match="contradicts"):
        make_valve("gpio:4", pin=5, gpio=FakeGPIO())
    with pytest.raises(TypeError, match="activ_high"):
        make_valve("fake", activ_high=True)


# -- inputs ---------------------------------------------------------------------------------


def test_debounced_input_setup_and_polarity():
    g = FakeGPIO()
    b = DebouncedInput(27, gpio=g, clock=Clock())
    assert ("setup", 27, g.IN, {"pull_up_down": g.PUD_UP, "initial": -1}) in g.calls
    assert b.read() is False  # pulled up, switch open: inactive
    g2 = FakeGPIO()
    d = DebouncedInput(26, pull_up=False, gpio=g2, clock=Clock())
    assert ("setup", 26, g2.IN, {"pull_up_down": g2.PUD_DOWN, "initial": -1}) in g2.calls
    assert d.read() is False
    g3 = FakeGPIO()
    g3.setmode(g3.BCM)
    g3.set_input(27, 0)  # already active at start-up: trusted at once
    assert DebouncedInput(27, gpio=g3, clock=Clock()).read() is True


def test_debounce_ignores_short_bounces_and_reports_a_stable_change_once():
    # dyadic times (exact in binary floating point) so the debounce boundary is tested exactly
    deb, tick = 1 / 16, 1 / 64
    g, clock = FakeGPIO(), Clock()
    b = DebouncedInput(27, pull_up=True, debounce_s=deb, gpio=g, clock=clock)
    assert b.changed() is None and b.read() is False

    def at(dt, level=None):
        clock.t += dt
        if level is not None:
            g.set_input(27, level)

    # a bounce: active (LOW) for 3 ticks < debounce_s, sampled every tick: never reported
    at(0, 0)
    for _ in range(3):
        assert b.changed() is None
        at(tick)
    at(0, 1)
    for _ in range(10):
        assert b.changed() is None and b.read() is False
        at(tick)
    # contacts bouncing while pressed, then held: reported once, debounce_s after the last bounce
    for level in (0, 1, 0, 1, 0):
        at(tick / 4, level)
        assert b.changed() is None
    at(deb - tick / 4)
    assert b.changed() is None
    at(tick / 4)
    assert b.changed() is True
    for _ in range(5):
        at(tick)
        assert b.changed() is None and b.read() is True
    # release: reported once as False
    at(0, 1)
    assert b.changed() is None
    at(deb)
    assert b.changed() is False and b.changed() is None and b.read() is False


def test_debounce_zero_follows_the_pin_and_closed_input_refuses_reads():
    g, clock = FakeGPIO(), Clock()
    b = DebouncedInput(27, pull_up=False, debounce_s=0, gpio=g, clock=clock)
    g.set_input(27, 1)
    assert b.changed() is True
    b.close()
    with pytest.raises(RuntimeError):
        b.read()
    with pytest.raises(ValueError):
        DebouncedInput(27, debounce_s=-1, gpio=FakeGPIO())


def test_fake_input_and_make_input():
    f = make_input("fake")
    assert isinstance(f, FakeInput) and f.read() is False and f.changed() is None
    f.set(True)
    assert f.read() is True and f.changed() is True and f.changed() is None
    f.set(False)
    f.set(True)
    assert f.changed() is None  # net change since the last call
    assert make_input("fake", value=True, debounce_s=0.1).read() is True
    assert make_input(None) is None
    g, clock = FakeGPIO(), Clock()
    b = make_input("gpio:27", gpio=g, pull_up=False, debounce_s=0.2, clock=clock)
    assert isinstance(b, DebouncedInput) and (b.pin, b.pull_up, b.debounce_s) == (27, False, 0.2)
    f.close()


@pytest.mark.parametrize("spec", ["", "gpio", "gpio:", "gpio:abc", "gpio:40", "serial:/dev/x", "fake:2", 3])
def test_make_input_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match=r'"gpio:<bcm pin>", "fake" or None'):
        make_input(spec, gpio=FakeGPIO())


# -- import footprint -----------------------------------------------------------------------


def test_edge_modules_import_no_training_stack(repo_root):
    code = (
        "import json, sys\n"
        "import autosink.edge.controller, autosink.edge.devices\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    mods = set(json.loads(out.stdout))
    heavy = {
        "torch",
        "pandas",
        "torchvision",
        "pytorch_lightning",
        "lightning",
        "sklearn",
        "RPi",
        "serial",
    }  # hardware libraries only when a device is built
    assert not {m.split(".")[0] for m in mods} & heavy
    ours = {m for m in mods if m.split(".")[0] == "autosink"}
    assert ours == {"autosink", "autosink.edge", "autosink.edge.controller", "autosink.edge.devices"}


def test_controller_module_reads_no_clock():
    import autosink.edge.controller as c

    assert not {"time", "datetime", "random", "os"} & set(vars(c))
    assert devices.time is not None  # devices may: FakeValve stamps history with time.monotonic
