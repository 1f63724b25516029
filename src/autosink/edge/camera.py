"""Frame sources for the edge runtime: the Pi camera, a V4L2/USB camera, and replays.

``open_camera(spec, ...)`` parses the ``--camera`` value:

==================  ================================================================================
``picamera2``       the Raspberry Pi camera through libcamera (``picamera2`` imported only here)
``opencv:<index>``  a V4L2 / USB camera through OpenCV (``opencv:0`` = /dev/video0)
``video:<path>``    a video file, frame by frame (replay)
``folder:<path>``   the images of a folder in natural order (``1.png, 2.png, ..., 10.png``)
``episode:<zip>``   the frames of a data-lake episode (zip or unzipped folder), in order
==================  ================================================================================

Every source returns :class:`Frame` objects: an RGB uint8 HxWx3 image (the colour order the
model card speaks of, and the one :func:`autosink.core.episode.write_episode` expects) with its
capture time on the runtime's monotonic clock. ``read(timeout)`` returns ``None`` when no new
frame came within ``timeout`` (a stall: the runtime fails closed) and sets ``finished`` when a
replay ran out. A ``folder:`` image that cannot be decoded (or is not a regular file) is a
missed frame, as a real camera's corrupt frame is: logged with the source, index and file name,
counted in ``bad_frames``, and ``read`` returns ``None`` for it, so the run goes on and the
stale-frame rule still closes the valve when no good frame comes in time. Live cameras are
read by a background thread that keeps only the newest frame, so the control loop never works
on a frame that waited in a driver queue, and a camera that hangs inside its driver cannot
block the loop (or the SIGTERM that closes the valve).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autosink.core.fileio import not_regular

__all__ = [
    "Frame",
    "BadFrame",
    "CameraError",
    "Camera",
    "IteratorCamera",
    "ThreadedCamera",
    "open_camera",
    "natural_key",
    "IMAGE_SUFFIXES",
]

log = logging.getLogger("autosink.edge.camera")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class CameraError(RuntimeError):
    """A camera that cannot be opened or a spec that makes no sense."""


@dataclass(frozen=True)
class Frame:
    """One camera frame: RGB uint8 HxWx3, its capture time (runtime monotonic clock) and index."""

    image: np.ndarray
    t: float
    index: int


@dataclass(frozen=True)
class BadFrame:
    """What a replay yields in place of an image it could not read: ``what`` names it (a file
    name), ``problem`` says why. :class:`IteratorCamera` skips it as a missed frame."""

    what: str
    problem: str


def natural_key(name: str) -> list[Any]:
    """``"10.png"`` after ``"9.png"``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"([0-9]+)", name)]


def _fit(image: np.ndarray, size: tuple[int, int] | None, warned: list[bool], what: str) -> np.ndarray:
    """Resize to ``size`` (width, height) if needed, warning once per source."""
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return image
    if not warned[0]:
        log.warning(
            "%s delivers %dx%d frames, the model expects %dx%d: resizing (set the camera's resolution "
            "to avoid the cost)",
            what,
            image.shape[1],
            image.shape[0],
            size[0],
            size[1],
        )
        warned[0] = True
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)


class Camera:
    """Interface: ``read(timeout) -> Frame | None``, ``finished``, ``close()``, ``reopen()``."""

    finished = False
    name = "camera"
    live = False

    def read(self, timeout: float) -> Frame | None:  # pragma: no cover - interface
        raise NotImplementedError

    def reopen(self) -> None:
        """Try to recover a stalled camera (live sources); replays do nothing."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IteratorCamera(Camera):
    """A replay: frames from an iterator of RGB images, stamped with ``clock()`` when read.

    Never stalls; ``finished`` becomes True after the last frame. ``clock`` is the runtime's
    monotonic clock, so a simulated clock gives simulated capture times. A :class:`BadFrame`
    from the iterator is a missed frame: logged, counted in ``bad_frames``, ``read`` returns
    None for it (the runtime sees a stall) and its index is not reused.
    """

    def __init__(
        self,
        images: Iterator[np.ndarray | BadFrame],
        clock: Callable[[], float],
        *,
        name: str = "replay",
        size: tuple[int, int] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._images = images
        self._clock = clock
        self._index = 0
        self._size = size
        self._warned = [False]
        self._on_close = on_close
        self.name = name
        self.bad_frames = 0

    def read(self, timeout: float) -> Frame | None:
        if self.finished:
            return None
        try:
            image = next(self._images)
        except StopIteration:
            self.finished = True
            return None
        if isinstance(image, BadFrame):
            self.bad_frames += 1
            log.warning(
                "camera %s: frame %d (%s) skipped: %s (%d bad so far)",
                self.name,
                self._index,
                image.what,
                image.problem,
                self.bad_frames,
            )
            self._index += 1
            return None
        image = _fit(image, self._size, self._warned, self.name)
        frame = Frame(image, self._clock(), self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        self.finished = True
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


class ThreadedCamera(Camera):
    """A live camera: ``grab()`` (blocking, returns an RGB image or None) runs in a thread that
    keeps only the newest frame; ``read(timeout)`` waits for a frame newer than the last one read.

    ``opener()`` returns ``(grab, release)``; ``reopen()`` releases and opens again (after a
    stall). Errors in ``grab`` are logged (rate-limited) and look like a stall to the caller.
    """

    live = True

    def __init__(
        self,
        opener: Callable[[], tuple[Callable[[], np.ndarray | None], Callable[[], None]]],
        clock: Callable[[], float],
        *,
        name: str,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self._opener = opener
        self._clock = clock
        self._size = size
        self._warned = [False]
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._delivered = -1
        self._index = 0
        self._stop = threading.Event()
        self._grab, self._release = opener()
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, args=(self._grab,), name=f"camera-{self.name}", daemon=True)
        t.start()
        return t

    def _run(self, grab: Callable[[], np.ndarray | None]) -> None:
        last_error = 0.0
        while not self._stop.is_set():
            try:
                image = grab()
            except Exception as e:  # driver hiccup: report, back off a little, keep trying
                now = time.monotonic()
                if now - last_error > 30:
                    log.error("camera %s: read failed: %s: %s", self.name, type(e).__name__, e)
                    last_error = now
                self._stop.wait(0.2)
                continue
            if image is None:
                self._stop.wait(0.05)
                continue
            image = _fit(image, self._size, self._warned, self.name)
            with self._cond:
                self._latest = Frame(image, self._clock(), self._index)
                self._index += 1
                self._cond.notify_all()

    def read(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._latest is None or self._latest.index <= self._delivered:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame = self._latest
            self._delivered = frame.index
            return frame

    def reopen(self) -> None:
        log.warning("camera %s: reopening after a stall", self.name)
        self._shutdown(join_s=2.0)
        try:
            self._grab, self._release = self._opener()
        except Exception as e:
            log.error("camera %s: reopen failed: %s: %s", self.name, type(e).__name__, e)
            self._grab, self._release = (lambda: None), (lambda: None)
        self._stop = threading.Event()
        self._thread = self._start()

    def _shutdown(self, join_s: float) -> None:
        self._stop.set()
        self._thread.join(join_s)
        try:
            self._release()
        except Exception as e:
            log.warning("camera %s: release failed: %s", self.name, e)

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._shutdown(join_s=2.0)


# --------------------------------------------------------------------------- sources


def _read_image_rgb(path: Path) -> np.ndarray:
    if kind := not_regular(path):  # swapped for a FIFO after listing: imread would block on it
        raise CameraError(f"{path}: is {kind}, not a regular file")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CameraError(f"{path}: cannot decode image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _folder_frames(files: list[Path]) -> Iterator[np.ndarray | BadFrame]:
    for p in files:
        try:
            yield _read_image_rgb(p)
        except Exception as e:  # CameraError, or cv2.error on a hostile file: one missed frame
            yield BadFrame(p.name, str(e).replace(f"{p}: ", "", 1))


def _folder_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CameraError(f"folder:{folder}: not a folder")
    files, special = [], []
    for p in folder.iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        if p.is_file():
            files.append(p)
        elif (kind := not_regular(p)) and kind != "a folder":
            special.append(f"{p.name} ({kind})")
    if special:
        log.warning("folder:%s: not regular files, not used as frames: %s", folder, ", ".join(sorted(special)))
    if not files:
        raise CameraError(f"folder:{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(files, key=lambda p: natural_key(p.name))


def _video_frames(cap: Any) -> Iterator[np.ndarray]:
    while True:
        ok, bgr = cap.read()
        if not ok or bgr is None:
            return
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _opencv_opener(index: int, width: int, height: int, fps: float):
    def opener():
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            raise CameraError(f"opencv:{index}: cannot open /dev/video{index}")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)

        def grab() -> np.ndarray | None:
            ok, bgr = cap.read()
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok and bgr is not None else None

        return grab, cap.release

    return opener


def _picamera2_opener(width: int, height: int, fps: float):
    def opener():
        try:
            from picamera2 import Picamera2  # only on the Pi (apt: python3-picamera2)
        except ImportError as e:
            raise CameraError(
                f"picamera2: not importable ({e}); on Raspberry Pi OS: sudo apt install "
                "python3-picamera2 and create the venv with --system-site-packages"
            ) from None
        cam = Picamera2()
        # libcamera names formats by little-endian word order: "BGR888" is R,G,B bytes per
        # pixel in numpy, i.e. the RGB array the model card asks for.
        config = cam.create_video_configuration(
            main={"size": (width, height), "format": "BGR888"}, controls={"FrameRate": float(fps)}, buffer_count=2
        )
        cam.configure(config)
        cam.start()

        def grab() -> np.ndarray:
            return np.ascontiguousarray(cam.capture_array("main")[:, :, :3])

        def release() -> None:
            try:
                cam.stop()
            finally:
                cam.close()

        return grab, release

    return opener


def open_camera(
    spec: str, *, clock: Callable[[], float], width: int = 640, height: int = 480, fps: float = 5.0
) -> Camera:
    """Open the source named by ``spec`` (see module docstring); frames come at ``width`` x
    ``height`` (resized once-warned if the source delivers another size)."""
    kind, _, arg = spec.partition(":")
    size = (int(width), int(height))
    if kind == "picamera2":
        return ThreadedCamera(_picamera2_opener(width, height, fps), clock, name="picamera2", size=size)
    if kind == "opencv":
        try:
            index = int(arg or "0")
        except ValueError:
            raise CameraError(f"{spec}: expected opencv:<index>, e.g. opencv:0") from None
        return ThreadedCamera(_opencv_opener(index, width, height, fps), clock, name=spec, size=size)
    if not arg:
        raise CameraError(f"{spec!r}: expected picamera2, opencv:<index>, video:<path>, folder:<path> or episode:<zip>")
    path = Path(arg).expanduser()
    if kind == "folder":
        files = _folder_images(path)
        return IteratorCamera(_folder_frames(files), clock, name=spec, size=size)
    if kind == "video":
        if what := not_regular(path):  # OpenCV would block on a FIFO or read a device forever
            raise CameraError(f"{spec}: is {what}, not a regular file")
        if not path.is_file():
            raise CameraError(f"{spec}: no such file")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise CameraError(f"{spec}: OpenCV cannot open it")
        return IteratorCamera(_video_frames(cap), clock, name=spec, size=size, on_close=cap.release)
    if kind == "episode":
        from autosink.core.episode import EpisodeError, read_episode

        try:
            episode = read_episode(path, check_frames=False, expected_size=None)
        except EpisodeError as e:
            raise CameraError(f"{spec}: not a readable episode ({e})") from None
        log.info("replaying episode %s (%d frames)", episode.stem, len(episode.frame_names))
        return IteratorCamera((img for _, img in episode.iter_frames()), clock, name=spec, size=size)
    raise CameraError(
        f"{spec!r}: unknown camera kind {kind!r} (picamera2, opencv:<index>, video:<path>, "
        "folder:<path>, episode:<zip>)"
    )
