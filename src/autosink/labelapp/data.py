"""What the labeling app reads and writes: episodes, automatic labels, human labels, frames.

Sources (all folder paths are constructor arguments, so tests never touch the repo's data):

- ``<extracted>/frames.csv``: one row per frame of every good episode (the frame list and the
  lake file each frame is read from).
- automatic labels: recomputed per episode with the ``label`` stage's own function
  (:func:`autosink.data.featurestore.label_episode`) *without* human labels, using the rules the
  feature store was built with (``<store>/labels/<episode>.key``). The manifest cannot be used
  as is: once a human label is in the store, its row says ``source=human, review=False`` and
  the automatic label and the review flag the human answered are gone.
- ``<labels>/<episode>.csv``: human labels, read and written only through
  :func:`autosink.data.labels.parse_human_labels` / :func:`autosink.data.labels.write_human_labels`. The
  file records the sha256 of the episode file the labels were given for; the episode's current
  sha256 is the one ``<extracted>/episodes/<episode>.json`` records (what the ``label`` stage
  compares too). Labels given for another file of the episode (a re-upload with other frames) are
  reported and not loaded as the episode's labels; older files without the sha load, flagged
  ``unverified``. Saving holds :func:`autosink.data.labels.human_labels_lock` (``fcntl.flock``) over
  the version check and the write, so two servers on one labels folder never interleave.
- frames: the PNG bytes from the lake episode (:func:`autosink.core.episode.read_episode`);
  thumbnails are made with OpenCV and kept in an in-memory LRU cache.

Every name that comes from a request is checked against what the data holds (episode names
against ``frames.csv``, frame names against that episode's frames) before any file is opened.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from autosink.core.episode import read_episode
from autosink.data.extract import episode_record, recorded_sha256, sha256_source
from autosink.data.featurestore import label_episode
from autosink.data.labels import (
    IGNORE,
    LABELS_MISMATCH,
    LABELS_UNVERIFIED,
    LabelRules,
    human_labels_lock,
    parse_human_labels,
    write_human_labels,
)

# Episode keys are lake stems (YYYYmmdd_HHMMSS) or folder names; frame members are N.png.
EPISODE_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")
IMAGE_RE = re.compile(r"[1-9][0-9]{0,6}\.png")
LABEL_VALUES = (0, 1, IGNORE)
NO_VERSION = "none"
#: HumanLabels.check when the episode has no labels file
NO_FILE = "none"


def short(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (request data echoed in an error stays short)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class NotFound(LookupError):
    """An episode or frame that is not in the data (the server answers 404)."""


class Conflict(Exception):
    """The labels file changed since the client read it (the server answers 409)."""

    def __init__(self, current: str) -> None:
        super().__init__(f"labels changed since they were read (now {current})")
        self.current = current


class Invalid(ValueError):
    """A request body that does not describe valid labels (the server answers 400)."""


class Unreadable(ValueError):
    """A labels file that cannot be parsed: the message names it (relative to the project) and the line."""


class NoData(FileNotFoundError):
    """No extracted data to label yet (the server answers 503 with this message)."""


@dataclass(frozen=True)
class HumanLabels:
    labels: dict[int, int]  # the labels that hold for the episode as it is ({} on a mismatch)
    version: str  # sha256 of the file's bytes, or "none" when there is no file
    saved_at: str | None  # ISO time of the file's last modification
    #: "none" (no file), "ok", "unverified" (an older file: no episode sha recorded) or "mismatch"
    #: (given for another file of the episode: its labels are in ``stale``, not in ``labels``)
    check: str = NO_FILE
    labels_for_sha256: str | None = None  # the episode sha the file records
    episode_sha256: str | None = None  # the episode's sha now
    stale: int = 0  # labels in the file not loaded (a mismatch)

    @property
    def warning(self) -> str | None:
        """What the page says about labels it did not load, or loaded unchecked."""
        if self.check == LABELS_MISMATCH:
            return (
                f"the labels file holds {self.stale} label{'s' if self.stale != 1 else ''} given for another "
                f"file of this episode (sha256 {(self.labels_for_sha256 or '')[:12]}..., the lake's is now "
                f"{(self.episode_sha256 or '')[:12]}...: re-uploaded with other frames?). They are not shown "
                "and the label stage does not apply them; saving replaces them with your labels"
            )
        if self.check == LABELS_UNVERIFIED:
            return (
                "the labels file records no episode sha256 (an older file), so nothing shows its labels were "
                "given for these frames; check them and save to record it"
            )
        return None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def make_thumbnail(png: bytes, size: tuple[int, int] = (160, 120), quality: int = 82) -> bytes:
    """A JPEG no larger than ``size`` (aspect kept). OpenCV decodes to BGR and encodes from BGR,
    so the colours come out as they went in."""
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("frame cannot be decoded")
    h, w = bgr.shape[:2]
    scale = min(size[0] / w, size[1] / h, 1.0)
    if scale < 1.0:
        bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cv2.imencode failed")
    return buf.tobytes()


class LabelData:
    """The data behind the labeling app. Thread-safe; re-reads files when they change on disk."""

    def __init__(
        self,
        extracted_dir: Path | str = "data/extracted",
        labels_dir: Path | str = "data/labels",
        store_dir: Path | str = "data/feature-store",
        root: Path | str | None = None,
        rules: LabelRules | None = None,
        default_fps: float = 2.0,
        thumb_size: tuple[int, int] = (160, 120),
        thumb_cache: int = 4096,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else Path.cwd().resolve()
        self.extracted_dir = self._under_root(extracted_dir)
        self.labels_dir = self._under_root(labels_dir)
        self.store_dir = self._under_root(store_dir)
        self.rules = rules or LabelRules()
        self.default_fps = float(default_fps)
        self.thumb_size = thumb_size
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._frames_stamp: tuple[int, int] | None = None
        self._episodes: dict[str, pd.DataFrame] = {}
        self._auto = _LRU(256)
        self._thumbs = _LRU(thumb_cache)
        self._readers = _LRU(32)
        self._shas = _LRU(1024)
        self._warming: set[str] = set()

    def _under_root(self, path: Path | str) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    # ------------------------------------------------------------------ episodes and frames

    def display(self, path: Path) -> str:
        """A path as messages show it: relative to the project root when inside it."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.name

    def _load(self) -> dict[str, pd.DataFrame]:
        table = self.extracted_dir / "frames.csv"
        stamp = _stamp(table)
        if stamp is None:
            raise NoData(f"{self.display(table)}: not found; run `dvc repro` (the extract stage) first")
        with self._lock:
            if stamp != self._frames_stamp:
                frames = pd.read_csv(table, dtype={"episode": str, "image": str, "source": str})
                self._episodes = {
                    str(e): rows.sort_values("frame_index").reset_index(drop=True)
                    for e, rows in frames.groupby("episode", sort=True)
                    if EPISODE_RE.fullmatch(str(e))
                }
                self._frames_stamp = stamp
            return self._episodes

    def episode_names(self) -> list[str]:
        return list(self._load())

    def _rows(self, episode: str) -> pd.DataFrame:
        if not isinstance(episode, str) or not EPISODE_RE.fullmatch(episode):
            raise NotFound(f"no episode {episode!r}")
        rows = self._load().get(episode)
        if rows is None:
            raise NotFound(f"no episode {episode!r}")
        return rows

    def _store_key(self, episode: str) -> dict | None:
        try:
            return json.loads((self.store_dir / "labels" / f"{episode}.key").read_text())
        except (OSError, ValueError):
            return None

    def _rules_for(self, episode: str) -> tuple[LabelRules, float]:
        """The rules the feature store labelled this episode with (else the app's defaults)."""
        key = self._store_key(episode)
        try:
            rules = dict(json.loads(key["rules"]))
            fps = float(rules.pop("default_fps"))
            return LabelRules(**{k: float(v) for k, v in rules.items()}), fps
        except (TypeError, KeyError, ValueError):
            return self.rules, self.default_fps

    def auto_labels(self, episode: str) -> pd.DataFrame:
        """The automatic label of every frame (no human labels applied), as the label stage computes it."""
        rows = self._rows(episode)
        rules, fps = self._rules_for(episode)
        cache_key = (episode, self._frames_stamp, rules, fps)
        auto = self._auto.get(cache_key)
        if auto is None:
            auto = label_episode(rows, {}, rules, fps).reset_index(drop=True)
            self._auto.put(cache_key, auto)
        return auto

    def source(self, episode: str) -> Path:
        """The lake file (zip or folder) of an episode, as frames.csv records it."""
        rows = self._rows(episode)
        path = Path(str(rows["source"].iloc[0]))
        path = path if path.is_absolute() else self.root / path
        if path.name not in (f"{episode}.zip", episode):  # frames.csv names the episode's own file
            raise NotFound(f"episode {episode}: unexpected source {path.name!r}")
        return path

    def episode_sha256(self, episode: str) -> str:
        """sha256 of the episode's lake file as the extract stage recorded it (the one the label
        stage checks human label files against), else hashed from the file itself."""
        record = episode_record(self.extracted_dir, episode)
        source = self.source(episode)
        key = ("sha", str(record), _stamp(record), str(source), _stamp(source) if source.is_file() else None)
        sha = self._shas.get(key)
        if sha is None:
            sha = recorded_sha256(self.extracted_dir, episode)
            if sha is None:
                try:
                    sha = sha256_source(source)
                except OSError:
                    sha = None
                if not sha:
                    raise NotFound(f"episode {episode}: its lake file cannot be read") from None
            self._shas.put(key, sha)
        return sha

    def images(self, episode: str) -> list[str]:
        return [str(x) for x in self._rows(episode)["image"]]

    def _reader(self, episode: str):
        path = self.source(episode)
        stamp = _stamp(path) if path.is_file() else None
        key = (str(path), stamp)
        reader = self._readers.get(key)
        if reader is None:
            try:
                reader = read_episode(path, check_frames=False, expected_size=None)
            except ValueError as e:  # EpisodeError: the lake file changed or vanished
                raise NotFound(str(e)) from None
            self._readers.put(key, reader)
        return reader

    def _check_image(self, episode: str, image: str) -> None:
        if not isinstance(image, str) or not IMAGE_RE.fullmatch(image) or image not in self.images(episode):
            raise NotFound(f"episode {episode}: no frame {image!r}")

    def frame_png(self, episode: str, image: str) -> bytes:
        """The frame's PNG bytes exactly as stored in the lake."""
        self._check_image(episode, image)
        try:
            return self._reader(episode).read_frame_bytes(image)
        except (KeyError, ValueError) as e:
            raise NotFound(str(e)) from None

    def thumbnail(self, episode: str, image: str) -> bytes:
        self._check_image(episode, image)
        key = (str(self.source(episode)), image, self.thumb_size)
        thumb = self._thumbs.get(key)
        if thumb is None:
            thumb = make_thumbnail(self.frame_png(episode, image), self.thumb_size)
            self._thumbs.put(key, thumb)
        return thumb

    def warm_thumbnails(self, episode: str) -> None:
        """Make an episode's thumbnails in the background (once at a time per episode)."""
        with self._lock:
            if episode in self._warming:
                return
            self._warming.add(episode)

        def work() -> None:
            try:
                for image in self.images(episode):
                    self.thumbnail(episode, image)
            except Exception:  # best effort: the request path reports real errors
                pass
            finally:
                with self._lock:
                    self._warming.discard(episode)

        threading.Thread(target=work, name=f"thumbs-{episode}", daemon=True).start()

    # ------------------------------------------------------------------ human labels

    def labels_path(self, episode: str) -> Path:
        self._rows(episode)  # only episodes of the data
        return self.labels_dir / f"{episode}.csv"

    def human(self, episode: str) -> HumanLabels:
        """The episode's human labels, checked against the episode's sha256 (:class:`HumanLabels`);
        :class:`Unreadable` for a malformed file."""
        path = self.labels_path(episode)
        for _ in range(5):  # a save between the two reads: read again
            try:
                before = path.read_bytes()
            except FileNotFoundError:
                return HumanLabels({}, NO_VERSION, None)
            try:
                mtime = path.stat().st_mtime
                after = path.read_bytes()
            except FileNotFoundError:
                continue
            if before == after:
                break
        else:
            raise RuntimeError(f"{path}: keeps changing while being read")
        try:
            doc = parse_human_labels(after.decode("utf-8"), self.display(path))
        except UnicodeDecodeError:
            raise Unreadable(f"{self.display(path)}: not UTF-8 text") from None
        except ValueError as e:
            raise Unreadable(str(e)) from None
        saved = datetime.fromtimestamp(mtime, tz=UTC).isoformat(timespec="seconds")
        current = self.episode_sha256(episode)
        check = doc.check(current)
        labels, stale = ({}, len(doc.labels)) if check == LABELS_MISMATCH else (doc.labels, 0)
        return HumanLabels(labels, _sha(after), saved, check, doc.episode_sha256, current, stale)

    def version(self, episode: str) -> str:
        try:
            return _sha(self.labels_path(episode).read_bytes())
        except FileNotFoundError:
            return NO_VERSION

    def validate(self, episode: str, labels: object) -> dict[int, int]:
        """``{"frame_index": label}`` from a request body -> ``{int: int}``, or :class:`Invalid`."""
        if not isinstance(labels, dict):
            raise Invalid("labels must be an object {frame_index: label}")
        indices = set(int(i) for i in self._rows(episode)["frame_index"])
        out: dict[int, int] = {}
        for key, value in labels.items():
            if not isinstance(key, str) or not re.fullmatch(r"[0-9]{1,7}", key):
                raise Invalid(f"frame index {short(key)} is not a number")
            idx = int(key)
            if idx not in indices:
                raise Invalid(f"episode {episode} has no frame {idx}")
            if isinstance(value, bool) or value not in LABEL_VALUES:
                raise Invalid(f"frame {idx}: label must be 0, 1 or -1, got {short(value)}")
            out[idx] = int(value)
        return out

    def save(self, episode: str, labels: dict[int, int], base_version: str, lock_timeout: float = 10.0) -> HumanLabels:
        """Replace the episode's human labels, unless the file changed since ``base_version``.

        The file records the episode's sha256 (:meth:`episode_sha256`). The version check and the
        write run under the file's lock (other servers, processes) and this server's own lock
        (threads); :class:`TimeoutError` if another save holds it over ``lock_timeout`` seconds.
        """
        path = self.labels_path(episode)
        sha = self.episode_sha256(episode)
        with self._save_lock:  # threads of this server
            if not labels and not path.exists():  # nothing to write: no lock file, no folder
                current = self.version(episode)
                if current != base_version:
                    raise Conflict(current)
            else:
                with human_labels_lock(path, timeout=lock_timeout):  # other servers and processes
                    current = self.version(episode)
                    if current != base_version:
                        raise Conflict(current)
                    write_human_labels(path, labels, sha, lock=False)
        return self.human(episode)

    # ------------------------------------------------------------------ views for the API

    def store_state(self, episode: str, human_version: str) -> str:
        """``current``: the feature store holds these human labels; ``stale``: run `dvc repro`;
        ``missing``: the episode is not in the store yet."""
        key = self._store_key(episode)
        if key is None:
            return "missing"
        stored = key.get("human") or NO_VERSION
        return "current" if stored == human_version else "stale"

    def summary(self, episode: str) -> dict:
        auto = self.auto_labels(episode)
        rows = self._rows(episode)
        try:
            human = self.human(episode)
            error = None
        except Unreadable as e:
            human, error = HumanLabels({}, NO_VERSION, None), str(e)
        review = auto["review"].astype(bool).to_numpy()
        idx = auto["frame_index"].astype(int).to_numpy()
        labelled = np.array([int(i) in human.labels for i in idx], dtype=bool)
        return {
            "episode": episode,
            "frames": int(len(auto)),
            "review": int(review.sum()),
            "reviewed": int((review & labelled).sum()),
            "human": len(human.labels),
            "saved_at": human.saved_at,
            "store": self.store_state(episode, human.version),
            "user_id": str(rows["user_id"].iloc[0]),
            "start": str(rows["timestamp"].iloc[0]),
            "error": error,
            "labels_check": human.check,
            "warning": human.warning,
        }

    def episodes(self) -> list[dict]:
        return [self.summary(e) for e in self.episode_names()]

    def episode(self, episode: str) -> dict:
        auto = self.auto_labels(episode)
        human = self.human(episode)
        frames = [
            {
                "index": int(r.frame_index),
                "image": str(r.image),
                "timestamp": str(r.timestamp),
                "model_output": int(r.model_output),
                "magnetic_status": int(r.magnetic_status),
                "auto_label": int(r.label),
                "confidence": round(float(r.confidence), 3),
                "review": bool(r.review),
                "rule": str(r.rule),
            }
            for r in auto.itertuples(index=False)
        ]
        return {
            "episode": episode,
            "version": human.version,
            "saved_at": human.saved_at,
            "store": self.store_state(episode, human.version),
            "labels": {str(i): v for i, v in sorted(human.labels.items())},
            "labels_check": human.check,
            "labels_for_sha256": human.labels_for_sha256,
            "episode_sha256": human.episode_sha256,
            "stale_labels": human.stale,
            "warning": human.warning,
            "frames": frames,
        }
