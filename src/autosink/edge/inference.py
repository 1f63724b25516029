"""ONNX inference on the Pi, by the model card; hot reload with a self-test.

:class:`OnnxModel` feeds the raw camera frame (uint8, NHWC, ``[1, H, W, 3]`` at the camera
resolution, colour order as the card says) to onnxruntime and returns the probability of
``water_on``: resizing and normalisation are the graph's job, so what was trained is what runs.
The card (:mod:`autosink.core.modelcard`, ``model.json`` beside ``model.onnx``) must match
the file: its ``model_sha256`` is checked against the very bytes the session is built from,
so a half-copied model or a card left over from another model is refused, not run.

:class:`ModelReloader` watches the model and its card (mtime, size, inode: a cheap ``stat``
per check). When they change it loads the new pair, runs it on a stored frame (the newest
camera frame it was given, else ``edge/selftest.png`` if present, else a grey frame) and
swaps it in only if that gives a finite probability in [0, 1] within the time limit. A
broken file keeps the old model running, logs why, and is not retried until it changes
again. Loading runs in a background thread so the control loop never stalls on it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from autosink.core.modelcard import CardError, card_path_for, check_card_supported, read_card, sha256_bytes

__all__ = ["ModelError", "Predictor", "OnnxModel", "load_model", "normalize_probability", "ModelReloader", "self_test"]

log = logging.getLogger("autosink.edge.inference")


class ModelError(RuntimeError):
    """A model that cannot be loaded or served (message says which file and why)."""


class Predictor(Protocol):
    """Anything the runtime can ask for ``p(water_on)`` of one RGB uint8 HxWx3 frame."""

    threshold: float

    def predict(self, frame: np.ndarray) -> float: ...


def normalize_probability(p: float, threshold: float) -> float:
    """Map ``p`` monotonically so that the card's ``threshold`` lands on 0.5 (0 -> 0, 1 -> 1).

    The controller's hysteresis (e.g. on 0.6 / off 0.4) is set around 0.5; rescaling puts it
    around each model's own operating point, so a hot-reloaded model with another threshold
    needs no controller change.
    """
    if p < threshold:
        return 0.5 * p / threshold
    return 0.5 + 0.5 * (p - threshold) / (1.0 - threshold)


@dataclass(frozen=True)
class _Signature:
    """What a cheap stat says about the model and its card (None: file missing)."""

    model: tuple[int, int, int] | None
    card: tuple[int, int, int] | None


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class OnnxModel:
    """One loaded model + card. ``predict(rgb_frame) -> p`` (raw probability, see the card)."""

    def __init__(self, path: Path, card: dict[str, Any], session: Any, sha256: str) -> None:
        self.path, self.card, self.session, self.sha256 = path, card, session, sha256
        inp, out = card["input"], card["output"]
        self.input_name: str = inp["name"]
        self.output_name: str = out["name"]
        self.height: int = int(inp["height"])
        self.width: int = int(inp["width"])
        self.bgr: bool = inp["color"] == "BGR"
        self.threshold: float = float(card["threshold"])
        self.version: str = str(card["version"])

    def __repr__(self) -> str:
        return f"OnnxModel({self.path.name}, version={self.version!r}, sha256={self.sha256[:12]})"

    def predict(self, frame: np.ndarray) -> float:
        """``p(water_on)`` of one RGB uint8 frame of the card's size. Raises ModelError on a
        bad frame or a bad output (not finite, outside [0, 1], wrong shape)."""
        if frame.dtype != np.uint8 or frame.shape != (self.height, self.width, 3):
            raise ModelError(
                f"{self.path}: expected an RGB uint8 frame of {self.width}x{self.height}, "
                f"got {frame.dtype} {tuple(frame.shape)}"
            )
        x = frame[:, :, ::-1] if self.bgr else frame
        batch = np.ascontiguousarray(x)[None]  # [1, H, W, 3]
        outputs = self.session.run([self.output_name], {self.input_name: batch})
        y = np.asarray(outputs[0])
        if y.size != 1:
            raise ModelError(
                f"{self.path}: output {self.output_name!r} has shape {y.shape}, expected one value per image"
            )
        p = float(y.reshape(-1)[0])
        if not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise ModelError(f"{self.path}: output {p!r} is not a probability")
        return p


def _check_session(path: Path, card: dict[str, Any], session: Any) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    inp, out = card["input"], card["output"]
    if inp["name"] not in inputs:
        raise ModelError(f"{path}: card input.name {inp['name']!r} is not a graph input (graph has {sorted(inputs)})")
    if len(inputs) != 1:
        raise ModelError(f"{path}: the graph has {len(inputs)} inputs {sorted(inputs)}; the edge feeds exactly one")
    if out["name"] not in outputs:
        raise ModelError(
            f"{path}: card output.name {out['name']!r} is not a graph output (graph has {sorted(outputs)})"
        )
    arg = inputs[inp["name"]]
    if arg.type != "tensor(uint8)":
        raise ModelError(f"{path}: graph input {arg.name!r} is {arg.type}, the card says uint8")
    shape = list(arg.shape)
    expected = [None, inp["height"], inp["width"], 3]
    if len(shape) != 4:
        raise ModelError(f"{path}: graph input {arg.name!r} has rank {len(shape)}, expected NHWC rank 4")
    for axis, (got, want) in enumerate(zip(shape, expected)):
        if want is not None and isinstance(got, int) and got != want:
            raise ModelError(f"{path}: graph input {arg.name!r} dim {axis} is {got}, the card says {want} (NHWC)")


def load_model(
    path: str | os.PathLike[str], *, threads: int = 2, card_path: str | os.PathLike[str] | None = None
) -> OnnxModel:
    """Read card and model, check they belong together and fit this runtime, build a session.

    The session is created from the bytes that were hashed (no second read of a file that may
    be changing). Every failure is a :class:`ModelError` naming the file and the reason.
    """
    import onnxruntime as ort  # here, so that importing this module stays cheap

    path = Path(path)
    cpath = Path(card_path) if card_path is not None else card_path_for(path)
    try:
        card = read_card(cpath)
        check_card_supported(card, cpath)
    except CardError as e:
        raise ModelError(str(e)) from None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read model ({e.strerror or e})") from None
    sha = sha256_bytes(data)
    if sha != card["model_sha256"]:
        raise ModelError(
            f"{path}: sha256 {sha[:12]}... does not match {cpath.name} model_sha256 "
            f"{card['model_sha256'][:12]}... (half-copied file, or a card of another model)"
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ModelError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {str(e).strip()[:300]})") from None
    _check_session(path, card, session)
    return OnnxModel(path, card, session, sha)


def _selftest_frame(height: int, width: int, candidates: list[np.ndarray | None], png: Path | None) -> np.ndarray:
    for frame in candidates:
        if frame is not None and frame.shape == (height, width, 3) and frame.dtype == np.uint8:
            return frame
    if png is not None and png.is_file():
        import cv2

        bgr = cv2.imread(str(png), cv2.IMREAD_COLOR)
        if bgr is not None:
            if bgr.shape[:2] != (height, width):
                bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return np.full((height, width, 3), 128, np.uint8)


def self_test(model: Predictor, frame: np.ndarray, *, max_s: float = 1.0) -> float:
    """Run ``model`` on ``frame`` twice (the first run warms up, the second is timed); return
    the probability or raise ModelError (not a probability, not deterministic, or the second
    run slower than ``max_s``: a model slower than the controller's stale-frame limit could
    never open the valve)."""
    try:
        p1 = model.predict(frame)
        t0 = time.perf_counter()
        p2 = model.predict(frame)
        elapsed = time.perf_counter() - t0
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"self-test raised {type(e).__name__}: {e}") from None
    if not (isinstance(p1, float) and math.isfinite(p1) and 0.0 <= p1 <= 1.0):
        raise ModelError(f"self-test output {p1!r} is not a probability")
    if abs(p1 - p2) > 1e-4:
        raise ModelError(f"self-test is not deterministic ({p1} then {p2})")
    if elapsed > max_s:
        raise ModelError(f"self-test took {elapsed:.2f} s per frame (limit {max_s} s)")
    return p1


class ModelReloader:
    """Holds the serving model; swaps in a changed model file after it passed a self-test.

    ``model`` is the one to use now (reading it is atomic). ``check()`` (call it often: one
    ``stat`` of two files unless something changed) starts a load when the files changed;
    with ``background=False`` the load runs inline (tests, simulations). ``offer_frame``
    keeps the newest camera frame as the self-test input.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int = 2,
        selftest_png: str | os.PathLike[str] | None = None,
        selftest_max_s: float = 1.0,
        background: bool = True,
        loader: Any = None,
        initial: Predictor | None = None,
    ) -> None:
        self.path = Path(path)
        self.card_path = card_path_for(self.path)
        self.threads = threads
        self.selftest_png = Path(selftest_png) if selftest_png else None
        self.selftest_max_s = selftest_max_s
        self.background = background
        self._loader = loader or (lambda p: load_model(p, threads=self.threads))
        self._lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.rejected = 0
        self.last_error: str | None = None
        self._sig = self._signature()
        self._failed_sig: _Signature | None = None
        if initial is None:
            initial = self._loader(self.path)
            shape = (getattr(initial, "height", 480), getattr(initial, "width", 640))
            self_test(initial, _selftest_frame(*shape, [], self.selftest_png), max_s=selftest_max_s)
        self.model: Predictor = initial

    def _signature(self) -> _Signature:
        return _Signature(_stat(self.path), _stat(self.card_path))

    def offer_frame(self, frame: np.ndarray) -> None:
        """Keep ``frame`` (no copy: camera frames are not modified afterwards) for the next self-test."""
        self._frame = frame

    @property
    def busy(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def check(self) -> bool:
        """Start a reload if the files changed since the last load/attempt; True if one started."""
        if self.busy:
            return False
        sig = self._signature()
        if sig == self._sig or sig == self._failed_sig:
            return False
        if sig.model is None or sig.card is None:  # mid-replacement (or removed): keep serving, look again later
            if self._failed_sig != sig:
                missing = self.path if sig.model is None else self.card_path
                log.warning("model reload: %s is missing; keeping %r", missing, self.model)
                self._failed_sig = sig
            return False
        if self.background:
            self._thread = threading.Thread(target=self._reload, args=(sig,), name="model-reload", daemon=True)
            self._thread.start()
        else:
            self._reload(sig)
        return True

    def wait(self, timeout: float | None = None) -> None:
        t = self._thread
        if t is not None:
            t.join(timeout)

    def _reload(self, sig: _Signature) -> None:
        old = self.model
        try:
            new = self._loader(self.path)
            shape = (getattr(new, "height", 480), getattr(new, "width", 640))
            old_shape = (getattr(old, "height", shape[0]), getattr(old, "width", shape[1]))
            if shape != old_shape:
                raise ModelError(
                    f"{self.path}: input {shape[1]}x{shape[0]} differs from the running camera "
                    f"resolution {old_shape[1]}x{old_shape[0]} (restart the service to change it)"
                )
            p = self_test(new, _selftest_frame(*shape, [self._frame], self.selftest_png), max_s=self.selftest_max_s)
        except Exception as e:  # anything: the old model keeps running
            with self._lock:
                self._failed_sig = sig
                self.rejected += 1
                self.last_error = str(e)
            log.error("model reload rejected, keeping %r: %s", old, e)
            return
        with self._lock:
            self.model = new
            self._sig = sig
            self._failed_sig = None
            self.reloads += 1
            self.last_error = None
        log.info("model reloaded: %r -> %r (self-test p=%.3f)", old, new, p)
