"""Data-lake episodes: the one module that reads, writes, validates and extracts them.

The format is the one deployed Pis already write (documented in this module), so it lives in
exactly one place, shared by the training pipeline and the Pi edge runtime. That is why
this module imports only the standard library, numpy, cv2 and the stdlib-only autosink.core.fileio.

An episode is ``{YYYYmmdd_HHMMSS}.zip`` holding ``{stem}.json`` and frames ``1.png .. N.png``
at its root, or an unzipped folder with the same members. Episodes come from the field and
are untrusted: readers check member names, types and sizes before touching any content,
never extract blindly, and report every problem as an :class:`EpisodeError` naming the
file, the field and the problem, so a bad episode can be quarantined with a reason instead
of crashing a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autosink.core.fileio import NotRegularFileError, fsync_dir, json_type, open_regular

__all__ = [
    "FRAME_WIDTH",
    "FRAME_HEIGHT",
    "VERSIONS",
    "EpisodeError",
    "Interaction",
    "EpisodeMeta",
    "Episode",
    "parse_meta",
    "meta_to_dict",
    "encode_meta",
    "episode_stem",
    "write_episode",
    "read_episode",
    "check_episode",
    "extract_episode",
    "find_episodes",
    "format_verdict",
]

FRAME_WIDTH, FRAME_HEIGHT = 640, 480
VERSIONS = (1, 2)

# Limits for untrusted zips. Module attributes (read at call time) so tests can shrink them.
MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 20 * 1024 * 1024
MAX_TOTAL_BYTES = 2 * 1024**3
MAX_COMPRESSION_RATIO = 200
MAX_FRAME_PIXELS = 4096 * 4096  # checked from the PNG header before decoding (decompression bomb)

StrPath = str | os.PathLike[str]
Size = tuple[int, int] | None  # (width, height); None: any size
DEFAULT_SIZE: tuple[int, int] = (FRAME_WIDTH, FRAME_HEIGHT)

# [0-9], not \d: \d also matches non-ASCII digits.
_STEM_RE = re.compile(r"[0-9]{8}_[0-9]{6}")
_STEM_FORMAT = "%Y%m%d_%H%M%S"
_FRAME_RE = re.compile(r"[1-9][0-9]*\.png")
_ID_RE = re.compile(r"[0-9a-f]{10}")
_TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
# Only what Python's isoformat() writes (offset +HH:MM, optional 6-digit fraction), so that
# parse -> encode reproduces the Pi's bytes.
_START_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?[+-][0-9]{2}:[0-9]{2}")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CORE_KEYS = ("version", "user_id", "dishwashing_id", "dishwashing_start", "interactions")
_INTERACTION_KEYS = (
    "timestamp",
    "model_output",
    "arduino_output",
    "magnetic_status",
    "image",
    "user_label",
    "validation",
)
# Everything zipfile/zlib may raise on a damaged or hostile archive.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    OverflowError,
    KeyError,
)


class EpisodeError(ValueError):
    """A problem with one episode: which file, which field, what is wrong.

    A ValueError so generic callers can treat it as bad input; the three attributes let a
    quarantine record or a test say exactly what failed.
    """

    def __init__(self, path: str, field: str, problem: str) -> None:
        self.path, self.field, self.problem = str(path), field, problem
        super().__init__(f"{self.path}: {field}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across worker processes
        return (type(self), (self.path, self.field, self.problem))


@dataclass
class Interaction:
    """One saved frame and what the system and the user did at that moment.

    ``timestamp`` is the Pi's naive local time (second precision); ``user_label``/``validation``
    are added later by the labeling tool. What the fields mean (the earlier system's reader takes
    exactly these keys, so meaning is carried in them, never in new ones):

    * ``model_output``: what the model decided, without the user;
    * ``magnetic_status``: the water the user wanted: the faucet as their hand left it, or the
      model's water they let run. Where the Pi's controller alone kept water running after a
      button release (its ``forced_on_hold_s``), autosink's edge writes the model's decision here;
    * ``arduino_output`` (version 2 only): the valve the Pi commanded, 1 open. The earlier Pis
      always wrote 0. ``arduino_output`` 1 with ``magnetic_status`` 0 is water nobody asked for:
      the label stage ignores those frames (:func:`autosink.data.labels.propagate`, rule 6).
    """

    timestamp: datetime
    model_output: int
    magnetic_status: int
    image: str
    arduino_output: int | None = None
    user_label: int | None = None
    validation: bool | None = None


@dataclass
class EpisodeMeta:
    """The episode's JSON. ``extra`` keeps top-level keys added by other tools, in order,
    so they survive a read-modify-write."""

    version: int
    user_id: str
    dishwashing_id: str
    dishwashing_start: datetime
    interactions: list[Interaction]
    extra: dict[str, Any] = field(default_factory=dict)


class _Bad(Exception):
    """Internal: a problem found before the caller knows which path/field to blame."""


class _Collector:
    """Gathers EpisodeErrors; in fail-fast mode raises the first one (read_episode/parse_meta)."""

    def __init__(self, path: str, fail_fast: bool) -> None:
        self.path, self.fail_fast = path, fail_fast
        self.errors: list[EpisodeError] = []

    def add(self, field_: str, problem: str) -> None:
        err = EpisodeError(self.path, field_, problem)
        if self.fail_fast:
            raise err
        self.errors.append(err)


# --------------------------------------------------------------------------- JSON / metadata


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # bool is an int subclass


def _valid_stem(stem: str) -> str | None:
    """None if ``stem`` is a real YYYYmmdd_HHMMSS time, else the problem."""
    if not _STEM_RE.fullmatch(stem):
        return f"{stem!r} does not match YYYYmmdd_HHMMSS"
    try:
        datetime.strptime(stem, _STEM_FORMAT)
    except ValueError:
        return f"{stem!r} is not a valid date/time"
    return None


def _check_choice(item: dict[str, Any], key: str, choices: tuple[int, ...], where: str, c: _Collector) -> int | None:
    if key not in item:
        return None
    value = item[key]
    if not _is_int(value):
        c.add(where, f"expected integer, got {json_type(value)}")
    elif value not in choices:
        c.add(where, f"must be one of {', '.join(map(str, choices))}, got {value}")
    else:
        return int(value)
    return None


def _check_meta(obj: object, c: _Collector) -> tuple[EpisodeMeta | None, list[tuple[int, str]] | None]:
    """Validate a decoded JSON object against the episode format.

    Returns the meta (None if anything was wrong) and the (index, image) pairs of the
    interactions whose image name is well-formed (None if there is no interaction list),
    so the caller can cross-check frames even when other fields are bad.
    """
    n_errors = len(c.errors)
    if not isinstance(obj, dict):
        c.add("json", f"top level must be an object, got {json_type(obj)}")
        return None, None
    for key in _CORE_KEYS:
        if key not in obj:
            c.add(key, "missing")

    version = obj.get("version")
    if "version" in obj:
        if not _is_int(version):
            c.add("version", f"expected integer, got {json_type(version)}")
            version = None
        elif version not in VERSIONS:
            c.add("version", f"unsupported version {version} (known: {', '.join(map(str, VERSIONS))})")
            version = None

    user_id = obj.get("user_id")
    if "user_id" in obj:
        if not isinstance(user_id, str):
            c.add("user_id", f"expected string, got {json_type(user_id)}")
        elif not user_id.strip():
            c.add("user_id", "empty")
        elif any(ch in user_id for ch in "/\\\x00"):  # it becomes a grouping key and may name files
            c.add("user_id", f"{user_id!r} contains a path separator or NUL")

    dishwashing_id = obj.get("dishwashing_id")
    if "dishwashing_id" in obj:
        if not isinstance(dishwashing_id, str):
            c.add("dishwashing_id", f"expected string, got {json_type(dishwashing_id)}")
        elif not _ID_RE.fullmatch(dishwashing_id):
            c.add("dishwashing_id", f"{dishwashing_id!r} is not 10 lowercase hex characters")

    start: datetime | None = None
    raw_start = obj.get("dishwashing_start")
    if "dishwashing_start" in obj:
        if not isinstance(raw_start, str):
            c.add("dishwashing_start", f"expected string, got {json_type(raw_start)}")
        elif not _START_RE.fullmatch(raw_start):
            c.add("dishwashing_start", f"{raw_start!r} is not an ISO time with UTC offset (YYYY-mm-ddTHH:MM:SS+HH:MM)")
        else:
            try:
                start = datetime.fromisoformat(raw_start)
            except ValueError:
                c.add("dishwashing_start", f"{raw_start!r} is not a valid date/time")

    interactions: list[Interaction] = []
    images: list[tuple[int, str]] | None = None
    raw_list = obj.get("interactions")
    if "interactions" in obj and not isinstance(raw_list, list):
        c.add("interactions", f"expected array, got {json_type(raw_list)}")
    elif isinstance(raw_list, list):
        images = []
        prev: tuple[int, datetime] | None = None
        for i, item in enumerate(raw_list):
            where = f"interactions[{i}]"
            if not isinstance(item, dict):
                c.add(where, f"expected object, got {json_type(item)}")
                continue
            item_errors = len(c.errors)
            for key in item:
                if key not in _INTERACTION_KEYS:
                    c.add(f"{where}.{key}", "unknown key")
            required = ["timestamp", "model_output", "magnetic_status", "image"]
            if version == 2:
                required.insert(2, "arduino_output")
            for key in required:
                if key not in item:
                    c.add(f"{where}.{key}", "missing")
            if version == 1 and "arduino_output" in item:
                c.add(f"{where}.arduino_output", "not allowed in version 1")

            ts: datetime | None = None
            if "timestamp" in item:
                raw_ts = item["timestamp"]
                if not isinstance(raw_ts, str):
                    c.add(f"{where}.timestamp", f"expected string, got {json_type(raw_ts)}")
                elif not _TS_RE.fullmatch(raw_ts):
                    c.add(
                        f"{where}.timestamp",
                        f"{raw_ts!r} is not a naive ISO time with second precision (YYYY-mm-ddTHH:MM:SS)",
                    )
                else:
                    try:
                        ts = datetime.fromisoformat(raw_ts)
                    except ValueError:
                        c.add(f"{where}.timestamp", f"{raw_ts!r} is not a valid date/time")
            if ts is not None:
                if prev is not None and ts < prev[1]:
                    c.add(
                        f"{where}.timestamp",
                        f"{ts.isoformat()} is earlier than interactions[{prev[0]}] ({prev[1].isoformat()})",
                    )
                prev = (i, ts)

            model_output = _check_choice(item, "model_output", (0, 1), f"{where}.model_output", c)
            magnetic_status = _check_choice(item, "magnetic_status", (0, 1), f"{where}.magnetic_status", c)
            arduino_output = None
            if version != 1:
                arduino_output = _check_choice(item, "arduino_output", (0, 1), f"{where}.arduino_output", c)
            user_label = _check_choice(item, "user_label", (-1, 0, 1), f"{where}.user_label", c)
            validation = item.get("validation")
            if "validation" in item and not isinstance(validation, bool):
                c.add(f"{where}.validation", f"expected boolean, got {json_type(validation)}")

            image = item.get("image")
            if "image" in item:
                if not isinstance(image, str):
                    c.add(f"{where}.image", f"expected string, got {json_type(image)}")
                elif not _FRAME_RE.fullmatch(image):
                    c.add(f"{where}.image", f"{image!r} is not a frame name like '1.png'")
                else:
                    images.append((i, image))

            if len(c.errors) == item_errors:
                assert ts is not None and model_output is not None and magnetic_status is not None
                interactions.append(
                    Interaction(
                        timestamp=ts,
                        model_output=model_output,
                        magnetic_status=magnetic_status,
                        image=str(image),
                        arduino_output=arduino_output,
                        user_label=user_label,
                        validation=validation,
                    )
                )

    if len(c.errors) != n_errors:
        return None, images
    assert isinstance(version, int) and isinstance(user_id, str) and isinstance(dishwashing_id, str)
    assert start is not None
    extra = {k: v for k, v in obj.items() if k not in _CORE_KEYS}
    return EpisodeMeta(version, user_id, dishwashing_id, start, interactions, extra), images


def parse_meta(obj: dict[str, Any], path: str = "<json>") -> EpisodeMeta:
    """Validate an episode's decoded JSON and return it typed.

    Raises EpisodeError for the first problem, naming ``path`` and the field
    (e.g. ``interactions[3].model_output``). Unknown top-level keys go to ``extra``.
    """
    meta, _ = _check_meta(obj, _Collector(str(path), fail_fast=True))
    assert meta is not None
    return meta


def _iso(value: object) -> object:
    # Non-datetimes pass through so that validation, not a crash here, reports them.
    return value.isoformat() if isinstance(value, datetime) else value


def meta_to_dict(meta: EpisodeMeta) -> dict[str, Any]:
    """The JSON object, keys in the order the Pis (and the labeling tool) write them.

    Key order matters: it is what makes ``encode_meta`` reproduce the Pi's bytes.
    """
    out: dict[str, Any] = {
        "version": meta.version,
        "user_id": meta.user_id,
        "dishwashing_id": meta.dishwashing_id,
        "dishwashing_start": _iso(meta.dishwashing_start),
        "interactions": [],
    }
    for it in meta.interactions:
        d: dict[str, Any] = {"timestamp": _iso(it.timestamp), "model_output": it.model_output}
        if meta.version != 1 or it.arduino_output is not None:  # emitted so validation can flag it
            d["arduino_output"] = it.arduino_output
        d["magnetic_status"] = it.magnetic_status
        d["image"] = it.image
        if it.user_label is not None:
            d["user_label"] = it.user_label
        if it.validation is not None:
            d["validation"] = it.validation
        out["interactions"].append(d)
    for key, value in meta.extra.items():
        if key in out:
            raise EpisodeError("<meta>", f"extra.{key}", "collides with a core field")
        out[key] = value
    return out


def encode_meta(meta: EpisodeMeta) -> bytes:
    """The JSON bytes exactly as the Pi's ``json.dump`` writes them (default separators)."""
    return json.dumps(meta_to_dict(meta)).encode()


def episode_stem(start_time: datetime) -> str:
    """``YYYYmmdd_HHMMSS`` of ``start_time``'s wall-clock time: the episode's file stem."""
    return start_time.strftime(_STEM_FORMAT)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would silently keep the last of two equal keys; for field data that hides tampering.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _decode_json(data: bytes, c: _Collector) -> object:
    """Bytes -> decoded JSON, or ``_MISSING`` after reporting why not (strict UTF-8, no duplicate keys)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        c.add("json", f"not valid UTF-8 ({e.reason} at byte {e.start})")
        return _MISSING
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        c.add("json", f"duplicate key {e.args[0]!r}")
    except json.JSONDecodeError as e:
        c.add("json", f"invalid JSON: {e.msg} (line {e.lineno} column {e.colno})")
    except (ValueError, RecursionError) as e:
        c.add("json", f"invalid JSON: {e}")
    return _MISSING


_MISSING: Any = object()


# --------------------------------------------------------------------------- frames


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from the IHDR chunk, or None if not a PNG."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def _decode_frame(data: bytes, expected_size: Size) -> np.ndarray:
    """PNG bytes -> BGR uint8 HxWx3, or _Bad.

    Size is checked from the header first, so a hostile PNG cannot make us allocate gigabytes.
    IMREAD_UNCHANGED so that a grey or RGBA frame is reported, not silently converted.
    """
    header = _png_header(data)
    if header is None:
        raise _Bad("not a PNG file")
    width, height = header[:2]
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise _Bad(f"frame is {width}x{height}, expected {expected_size[0]}x{expected_size[1]}")
    if width * height > MAX_FRAME_PIXELS:
        raise _Bad(f"frame is {width}x{height}, over the {MAX_FRAME_PIXELS}-pixel limit")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise _Bad(f"PNG cannot be decoded ({e.err})") from None
    if img is None:
        raise _Bad("PNG cannot be decoded")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        channels = 1 if img.ndim == 2 else img.shape[2]
        raise _Bad(f"expected an 8-bit 3-channel colour image, got {channels} channel(s) of {img.dtype}")
    if (img.shape[1], img.shape[0]) != (width, height):
        raise _Bad("decoded size differs from the PNG header")
    return img


def _encode_frame(frame: object, expected_size: Size) -> bytes:
    """An RGB uint8 HxWx3 array (encoded as BGR PNG, as OpenCV on the Pi does) or PNG bytes."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        data = bytes(frame)
        header = _png_header(data)
        if header is None:
            raise _Bad("bytes are not a PNG file")
        width, height, depth, colour = header
        if depth != 8 or colour != 2:
            raise _Bad(f"PNG must be 8-bit RGB (bit depth 8, colour type 2), got depth {depth} type {colour}")
        if expected_size is not None and (width, height) != tuple(expected_size):
            raise _Bad(f"frame is {width}x{height}, expected {expected_size[0]}x{expected_size[1]}")
        return data
    if not isinstance(frame, np.ndarray):
        raise _Bad(f"expected an RGB uint8 array or PNG bytes, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise _Bad(f"expected an RGB uint8 HxWx3 array, got {frame.dtype} array of shape {frame.shape}")
    height, width = frame.shape[:2]
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise _Bad(f"frame is {width}x{height}, expected {expected_size[0]}x{expected_size[1]}")
    bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise _Bad("cv2.imencode failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- sources (zip / folder)


@dataclass
class _Member:
    name: str
    size: int
    compressed: int
    mode: int  # st_mode bits (0 when the zip did not record any)
    encrypted: bool = False


def _member_problem(m: _Member) -> str | None:
    """Why a member may not be read at all (path tricks, links, bombs), or None."""
    name = m.name
    if not name:
        return "empty member name"
    if name.startswith("/") or _DRIVE_RE.match(name):
        return "absolute path"
    if "\\" in name:
        return "backslash in member name"
    if ".." in name.split("/"):
        return "'..' in member path"
    if "/" in name:
        return "directory component (all members must be at the root)"
    if stat.S_ISLNK(m.mode):
        return "symlink"
    if stat.S_ISDIR(m.mode):
        return "directory (all members must be files at the root)"
    if stat.S_IFMT(m.mode) not in (0, stat.S_IFREG):
        return "not a regular file"
    if m.encrypted:
        return "encrypted member"
    if m.size > MAX_MEMBER_BYTES:
        return f"uncompressed size {m.size} bytes over the {MAX_MEMBER_BYTES}-byte limit"
    if m.size > MAX_COMPRESSION_RATIO * max(m.compressed, 1):
        ratio = m.size / max(m.compressed, 1)
        return f"compression ratio {ratio:.0f} over {MAX_COMPRESSION_RATIO} (zip bomb?)"
    return None


def _read_limited(f: Any) -> bytes:
    data: bytes = f.read(MAX_MEMBER_BYTES + 1)  # never trust the recorded size alone
    if len(data) > MAX_MEMBER_BYTES:
        raise _Bad(f"larger than the {MAX_MEMBER_BYTES}-byte limit")
    return data


class _ZipSource:
    kind = "zip"

    def __init__(self, path: Path) -> None:
        try:
            self._f = open_regular(path)
        except NotRegularFileError as e:
            raise EpisodeError(str(path), "path", _not_regular_problem(e.kind)) from None
        except OSError as e:
            raise EpisodeError(str(path), "zip", f"cannot open ({type(e).__name__}: {e})") from None
        try:
            self._zf = zipfile.ZipFile(self._f)
        except BaseException as e:
            self._f.close()
            if isinstance(e, zipfile.BadZipFile):
                raise EpisodeError(str(path), "zip", f"not a zip file or corrupt ({e})") from None
            if isinstance(e, _ZIP_ERRORS):
                raise EpisodeError(str(path), "zip", f"cannot open ({type(e).__name__}: {e})") from None
            raise
        infos = self._zf.infolist()
        self._infos = {i.filename: i for i in infos}
        self.members = [
            _Member(i.filename, i.file_size, i.compress_size, i.external_attr >> 16, bool(i.flag_bits & 0x1))
            for i in infos
        ]

    def read(self, name: str) -> bytes:
        try:
            with self._zf.open(self._infos[name]) as f:
                return _read_limited(f)
        except _ZIP_ERRORS as e:
            raise _Bad(f"corrupt member ({type(e).__name__}: {e})") from None

    def close(self) -> None:
        try:
            self._zf.close()
        finally:
            self._f.close()  # a ZipFile does not close a file object it was given

    def __enter__(self) -> _ZipSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DirSource:
    """An unzipped episode folder. Sidecar files that are not episode members (e.g. the
    pipeline's ``source.json``) are ignored; members are read without following symlinks."""

    kind = "folder"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: list[_Member] = []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    self.members.append(_Member(entry.name, st.st_size, st.st_size, st.st_mode))
        except OSError as e:
            raise EpisodeError(str(path), "path", f"cannot list folder ({e.strerror})") from None
        self.members.sort(key=lambda m: m.name)

    def read(self, name: str) -> bytes:
        try:
            with open_regular(self.path / name, follow_symlinks=False) as f:  # a member swapped for a FIFO
                return _read_limited(f)
        except NotRegularFileError as e:
            raise _Bad(_not_regular_problem(e.kind)) from None
        except OSError as e:
            raise _Bad(f"cannot read ({e.strerror})") from None

    def close(self) -> None:
        pass

    def __enter__(self) -> _DirSource:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _not_regular_problem(kind: str) -> str:
    return f"is {kind}, not a regular file (an episode is a zip file or a folder)"


def _open_source(path: Path) -> _ZipSource | _DirSource:
    """Only a folder or a regular file is opened (a FIFO would block, ``/dev/zero`` never end)."""
    if path.is_dir():
        return _DirSource(path)
    if not path.exists():
        raise EpisodeError(str(path), "path", "does not exist")
    return _ZipSource(path)


def _is_member_name(name: str) -> bool:
    """Names an episode folder may hold as episode members (everything else is a sidecar)."""
    return bool(_FRAME_RE.fullmatch(name)) or (name.endswith(".json") and _STEM_RE.fullmatch(name[:-5]) is not None)


def _folder_stem(path: Path, members: list[_Member]) -> str:
    """A folder named like a stem is that stem; otherwise (e.g. an extraction target) the
    stem comes from its one ``YYYYmmdd_HHMMSS.json``."""
    if _valid_stem(path.name) is None:
        return path.name
    jsons = [m.name[:-5] for m in members if m.name.endswith(".json") and _STEM_RE.fullmatch(m.name[:-5])]
    return jsons[0] if len(jsons) == 1 else path.name


def _frame_number(name: str) -> int:
    return int(name[:-4])


# --------------------------------------------------------------------------- Episode


@dataclass
class Episode:
    """A validated episode. Frames are read lazily, from the zip or the folder, on demand.

    ``frame_names[i]`` is the frame of ``meta.interactions[i]``.
    """

    path: Path
    stem: str
    meta: EpisodeMeta
    frame_names: list[str]

    def _name(self, key: int | str) -> str:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError(f"frame key must be an interaction index or a frame name, not {type(key).__name__}")
        name = self.frame_names[key] if isinstance(key, int) else key
        if name not in self.frame_names:  # also keeps arbitrary paths out of the reader
            raise KeyError(f"{self.path}: no frame {name!r} in this episode")
        return name

    def read_frame_bytes(self, name: str) -> bytes:
        """The frame's PNG bytes exactly as stored (no re-encoding)."""
        name = self._name(name)
        with _open_source(self.path) as src:
            try:
                return src.read(name)
            except _Bad as e:
                raise EpisodeError(str(self.path), name, str(e)) from None

    def load_frame(self, key: int | str) -> np.ndarray:
        """RGB uint8 HxWx3 of an interaction index (0-based, like ``frame_names``) or a frame name.

        Decoded with OpenCV (BGR) and converted to RGB: the model is trained and served on RGB.
        """
        name = self._name(key)
        return self._decode(name, self.read_frame_bytes(name))

    def iter_frames(self) -> Iterator[tuple[Interaction, np.ndarray]]:
        """(interaction, RGB frame) pairs in order, opening the zip once (cheaper than load_frame per frame)."""
        with _open_source(self.path) as src:
            for it, name in zip(self.meta.interactions, self.frame_names, strict=True):
                try:
                    data = src.read(name)
                except _Bad as e:
                    raise EpisodeError(str(self.path), name, str(e)) from None
                yield it, self._decode(name, data)

    def _decode(self, name: str, data: bytes) -> np.ndarray:
        try:
            bgr = _decode_frame(data, expected_size=None)
        except _Bad as e:
            raise EpisodeError(str(self.path), name, str(e)) from None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _inspect(
    path: StrPath, *, check_frames: bool, expected_size: Size, fail_fast: bool
) -> tuple[Episode | None, list[EpisodeError]]:
    """The one validation routine behind read_episode (fail fast) and check_episode (collect all)."""
    p = Path(path)
    c = _Collector(str(p), fail_fast)
    try:
        src = _open_source(p)
    except EpisodeError as e:
        if fail_fast:
            raise
        return None, [e]
    with src:
        is_zip = isinstance(src, _ZipSource)
        if is_zip:
            stem = p.name[:-4] if p.name.endswith(".zip") else p.name
            if not p.name.endswith(".zip"):
                c.add("name", f"{p.name!r} is not named YYYYmmdd_HHMMSS.zip")
            elif (problem := _valid_stem(stem)) is not None:
                c.add("name", f"zip name {problem}")
            members = src.members
        else:
            members = [m for m in src.members if _is_member_name(m.name)]
            stem = _folder_stem(p, members)
            if (problem := _valid_stem(stem)) is not None:
                c.add("name", f"folder has no episode json (folder name {problem})")

        if len(members) > MAX_MEMBERS:
            c.add(src.kind, f"too many members ({len(members)} > {MAX_MEMBERS})")
            return None, c.errors
        total = sum(m.size for m in members)
        if total > MAX_TOTAL_BYTES:
            c.add(src.kind, f"total uncompressed size {total} bytes over the {MAX_TOTAL_BYTES}-byte limit")
            return None, c.errors

        counts: dict[str, int] = {}
        for m in members:
            counts[m.name] = counts.get(m.name, 0) + 1
        safe: set[str] = set()
        reported: set[str] = set()
        for m in members:
            problem = _member_problem(m)
            if problem is None and counts[m.name] > 1:
                problem = f"duplicate member name ({counts[m.name]} times)"
            if problem is not None:
                if m.name not in reported:
                    reported.add(m.name)
                    c.add(m.name or "<empty name>", problem)
            else:
                safe.add(m.name)

        json_name = f"{stem}.json"
        frames: list[str] = []
        other_jsons: list[str] = []
        for name in sorted(safe):
            if _FRAME_RE.fullmatch(name):
                frames.append(name)
            elif name == json_name:
                pass
            elif name.lower().endswith(".json"):
                other_jsons.append(name)
            else:
                c.add(name, f"unexpected member (an episode holds only {json_name} and 1.png .. N.png)")
        frames.sort(key=_frame_number)
        for other in other_jsons:
            c.add("json", f"json name {other!r} does not match the {src.kind} stem {stem!r} (expected {json_name!r})")

        meta: EpisodeMeta | None = None
        images: list[tuple[int, str]] | None = None
        if json_name in safe:
            try:
                data = src.read(json_name)
            except _Bad as e:
                c.add(json_name, str(e))
            else:
                obj = _decode_json(data, c)
                if obj is not _MISSING:
                    meta, images = _check_meta(obj, c)
        elif json_name not in counts and not other_jsons:
            c.add("json", f"missing {json_name}")

        if images is not None:
            used: dict[str, int] = {}
            for i, image in images:
                where = f"interactions[{i}].image"
                if image in used:
                    c.add(where, f"{image} already used by interactions[{used[image]}]")
                    continue
                used[image] = i
                if image not in safe and image not in counts:
                    c.add(where, f"{image} not found in the {src.kind}")
            for name in frames:
                if name not in used:
                    c.add(name, "frame not referenced by any interaction")

        if check_frames:
            for name in frames:
                try:
                    _decode_frame(src.read(name), expected_size)
                except _Bad as e:
                    c.add(name, str(e))

    if c.errors or meta is None:
        return None, c.errors
    return Episode(p, stem, meta, [it.image for it in meta.interactions]), []


def read_episode(path: StrPath, *, check_frames: bool = True, expected_size: Size = DEFAULT_SIZE) -> Episode:
    """Open and validate an episode zip or unzipped episode folder; raise the first problem.

    ``check_frames`` decodes every frame and checks it is an 8-bit 3-channel image of
    ``expected_size`` (width, height; None accepts any size). Structure, safety and JSON are
    always checked.
    """
    episode, _ = _inspect(path, check_frames=check_frames, expected_size=expected_size, fail_fast=True)
    assert episode is not None
    return episode


def check_episode(
    path: StrPath, *, check_frames: bool = True, expected_size: Size = DEFAULT_SIZE
) -> list[EpisodeError]:
    """Every problem found in an episode (empty list = ok). Never raises for a bad episode,
    so one broken upload cannot stop a run; it gets quarantined with its reasons instead."""
    try:
        return _inspect(path, check_frames=check_frames, expected_size=expected_size, fail_fast=False)[1]
    except Exception as e:  # a hostile file found a path we did not foresee: still a verdict, not a crash
        return [EpisodeError(str(path), "episode", f"unexpected {type(e).__name__} while checking: {e}")]


# --------------------------------------------------------------------------- writing / extracting


def _zip_date_time(meta: EpisodeMeta) -> tuple[int, int, int, int, int, int]:
    """Member timestamps from the episode itself (not the clock) so the zip bytes are reproducible."""
    when = meta.interactions[0].timestamp if meta.interactions else meta.dishwashing_start
    if when.year < 1980:  # the zip format cannot store earlier dates (a Pi with no RTC may say 1970)
        return (1980, 1, 1, 0, 0, 0)
    if when.year > 2107:
        return (2107, 12, 31, 23, 59, 58)
    return (when.year, when.month, when.day, when.hour, when.minute, when.second)


def _zip_info(name: str, date_time: tuple[int, int, int, int, int, int], compress_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = compress_type
    info.create_system = 3  # unix, on every platform: same bytes everywhere
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def write_episode(
    zip_path: StrPath, meta: EpisodeMeta, frames: Iterable[np.ndarray | bytes], *, expected_size: Size = DEFAULT_SIZE
) -> Path:
    """Write an episode zip atomically and reproducibly; return its path.

    ``frames[i]`` is the frame of ``meta.interactions[i]``, whose image must be ``f"{i+1}.png"``.
    A frame is an RGB uint8 HxWx3 array (converted to BGR and encoded with cv2.imencode, so
    the PNG holds the true colours exactly as the Pi's OpenCV writes camera frames) or
    already-encoded 8-bit RGB PNG bytes (stored as given). The meta is validated first.

    Same input, same bytes: member times come from the episode, attributes are fixed, PNGs
    are stored (already compressed) and the JSON deflated. The zip is written to a hidden
    ``.*.tmp`` file beside the target and renamed over it, so readers never see half a zip
    and a failure leaves nothing behind (an existing zip at ``zip_path`` is kept).
    """
    zip_path = Path(zip_path)
    where = str(zip_path)
    if not zip_path.name.endswith(".zip"):
        raise EpisodeError(where, "name", f"{zip_path.name!r} is not named YYYYmmdd_HHMMSS.zip")
    stem = zip_path.name[:-4]
    if (problem := _valid_stem(stem)) is not None:
        raise EpisodeError(where, "name", f"zip name {problem}")
    meta_dict = meta_to_dict(meta)
    parse_meta(meta_dict, where)
    for i, it in enumerate(meta.interactions):
        if it.image != f"{i + 1}.png":
            raise EpisodeError(
                where,
                f"interactions[{i}].image",
                f"expected '{i + 1}.png' (frames are written in order), got {it.image!r}",
            )
    json_bytes = json.dumps(meta_dict).encode()
    date_time = _zip_date_time(meta)
    n = len(meta.interactions)

    zip_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".tmp", dir=zip_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w") as zf:
                zf.writestr(_zip_info(f"{stem}.json", date_time, zipfile.ZIP_DEFLATED), json_bytes)
                count = 0
                for i, frame in enumerate(frames):
                    if i >= n:
                        raise EpisodeError(where, "frames", f"more frames than the {n} interactions")
                    try:
                        png = _encode_frame(frame, expected_size)
                    except _Bad as e:
                        raise EpisodeError(where, f"frames[{i}]", str(e)) from None
                    zf.writestr(_zip_info(f"{i + 1}.png", date_time, zipfile.ZIP_STORED), png)
                    count = i + 1
                if count != n:
                    raise EpisodeError(where, "frames", f"{count} frames for {n} interactions")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the lake is read by other users/tools
        os.replace(tmp_name, zip_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(zip_path.parent)
    return zip_path


def extract_episode(
    path: StrPath,
    dest_dir: StrPath,
    *,
    check_frames: bool = True,
    expected_size: Size = DEFAULT_SIZE,
    overwrite: bool = False,
) -> Episode:
    """Validate an episode, then copy its json and frames (bytes unchanged) into ``dest_dir``.

    Never ZipFile.extractall: only the validated member names are written, as plain files,
    into a fresh hidden ``.*.tmp`` folder beside ``dest_dir`` that is renamed into place, so
    a failure leaves no half-extracted episode. ``dest_dir`` must be absent or empty unless
    ``overwrite``. Returns the extracted folder's Episode.
    """
    src_path, dest = Path(path), Path(dest_dir)
    episode = read_episode(src_path, check_frames=check_frames, expected_size=expected_size)
    if dest.exists() and src_path.is_dir() and dest.resolve() == src_path.resolve():
        return episode
    if dest.exists() and not overwrite and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest}: destination exists and is not an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with _open_source(src_path) as src:
            for name in [f"{episode.stem}.json", *episode.frame_names]:
                try:
                    data = src.read(name)
                except _Bad as e:
                    raise EpisodeError(str(src_path), name, str(e)) from None
                with open(tmp / name, "xb") as f:
                    f.write(data)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        if dest.exists() or dest.is_symlink():  # overwrite: swap, then drop the old one
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", suffix=".tmp", dir=dest.parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Episode(dest, episode.stem, episode.meta, list(episode.frame_names))


# --------------------------------------------------------------------------- discovery / reporting


def _is_special(entry: os.DirEntry | Path) -> bool:
    """A device, FIFO or socket (a Path: symlinks followed; a DirEntry: not), found so that it
    gets a verdict instead of being skipped in silence."""
    try:
        mode = entry.stat(follow_symlinks=False).st_mode if isinstance(entry, os.DirEntry) else entry.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def _is_episode_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(
                e.name.endswith(".json")
                and _STEM_RE.fullmatch(e.name[:-5])
                and (e.is_file(follow_symlinks=False) or _is_special(e))
                for e in entries
            )
    except OSError:
        return False


def find_episodes(paths: StrPath | Iterable[StrPath]) -> list[Path]:
    """Expand arguments into episode paths, sorted by name (that is, by time).

    Each argument is a zip (or any file: given explicitly, it gets a verdict), an episode
    folder (one holding a ``YYYYmmdd_HHMMSS.json``), or a folder searched recursively for
    ``*.zip`` and episode folders. Hidden entries (``.*``, e.g. temp files) are skipped. A
    ``*.zip`` that is a device, FIFO or socket is found too: it gets a verdict ("not a regular
    file") instead of being skipped in silence. A missing argument raises FileNotFoundError.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()

    def walk(directory: Path) -> None:
        for child in sorted(directory.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                if _is_episode_dir(child):
                    found.add(child)
                else:
                    walk(child)
            elif child.name.endswith(".zip") and (child.is_file() or _is_special(child)):
                found.add(child)

    for arg in paths:
        p = Path(arg)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_dir():
            if _is_episode_dir(p):
                found.add(p)
            else:
                walk(p)
        else:
            found.add(p)
    return sorted(found, key=lambda q: (q.name, str(q)))


def format_verdict(
    path: StrPath, problems: Sequence[EpisodeError], *, episode: Episode | None = None, name: str | None = None
) -> str:
    """One line per episode for humans and logs.

    ``OK   <name>  (<n> frames, v2, user_1234)`` or ``BAD  <name>  <first problem> (+k more)``.
    For an OK verdict the episode's JSON is read (cheaply, no frame decoding) unless given.
    ``name`` replaces the file's name (e.g. the whole path).
    """
    name = Path(path).name if name is None else name
    if not problems and episode is None:
        try:
            episode = read_episode(path, check_frames=False)
        except EpisodeError as e:
            problems = [e]
    if problems:
        first = problems[0]
        text = f"{first.field}: {first.problem}" if isinstance(first, EpisodeError) else str(first)
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"BAD  {name}  {text}{more}"
    assert episode is not None
    meta = episode.meta
    return f"OK   {name}  ({len(episode.frame_names)} frames, v{meta.version}, {meta.user_id})"
