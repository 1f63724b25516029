"""Putting a downloaded model in place safely: verify it, swap it in, record where it came from.

A download is verified in its temp folder beside the target (same filesystem) before anything is
replaced (:func:`verify_model_files`):

1. both files present; the card valid (:func:`autosink.core.modelcard.read_card`) and one this edge
   can serve (:func:`autosink.core.modelcard.check_card_supported`), of the precision the file's
   name says (``model.int8.onnx``: ``precision: int8``; ``model.onnx``: ``fp32`` or none);
2. sha256 of the ``.onnx`` equals the card's ``model_sha256`` (a corrupted or partial download,
   or a card of another model, is refused);
3. onnxruntime loads it (:func:`autosink.edge.inference.load_model`, which checks the graph
   against the card) and a self-test on a stored frame (the newest camera frame when the runtime
   is running, else ``model.selftest_png``, else grey) gives a finite probability in [0, 1]
   within ``model.selftest_max_s``; with a running runtime, the input size must also be the
   running camera resolution.

The files keep their names in the download (``model.onnx`` or ``model.int8.onnx``, see
:func:`autosink.edge.sources.promoted_files`) until the swap: ``os.replace`` of the model, then
of its card, each fsynced, under a file lock (one fetch or recovery per model folder, across
processes). Inside ``run.py`` the periodic fetcher holds
the runtime's model checks off while it swaps (:attr:`autosink.edge.fetch.PeriodicFetcher.swap_lock`)
so the hot reload (:class:`autosink.edge.inference.ModelReloader`) only ever sees a complete pair;
another process (``python edge/run.py fetch`` beside a running service) may catch the moment
between the two renames: the reloader then refuses the mismatched pair once and loads the new one
when the card lands. A power cut between the two renames leaves the new card in the temp folder
with a marker; :func:`recover_install` (run before every fetch and at runtime start) finishes the
swap.

``<stem>.fetch.json`` beside the model records where the installed model came from (source,
commit or artifact version, version, sha256, time).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autosink.core.fileio import atomic_write, fsync_dir, not_regular, sha256_file
from autosink.core.modelcard import CardError, card_path_for, check_card_supported, read_card
from autosink.edge.sources import CARD_FILE, MODEL_FILE, PROMOTION_FILE, FetchError, Latest

__all__ = ["Verified", "verify_model_files", "installed_model", "recover_install", "record_path_for"]

log = logging.getLogger("autosink.edge.install")

_MARKER = "INSTALLING"


# --------------------------------------------------------------------------- what is installed


def record_path_for(model_path: str | os.PathLike[str]) -> Path:
    """``models/production/model.onnx`` -> ``models/production/model.fetch.json``."""
    p = Path(model_path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.fetch.json")


def installed_model(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model at ``model_path``: ``version``, ``model_sha256`` (both None unless the card is
    valid and describes the file), ``problem`` (why not) and ``record`` (the fetch record)."""
    path = Path(model_path)
    info: dict[str, Any] = {"path": str(path), "version": None, "model_sha256": None, "problem": None, "record": None}
    with contextlib.suppress(OSError, ValueError):
        info["record"] = json.loads(record_path_for(path).read_text())
    for p in (path, card_path_for(path)):
        if kind := not_regular(p):  # never read: a FIFO blocks, a device never ends
            info["problem"] = f"{p}: is {kind}, not a regular file"
            return info
    if not path.is_file():
        info["problem"] = f"{path}: missing"
        return info
    try:
        card = read_card(card_path_for(path))
    except CardError as e:
        info["problem"] = str(e).splitlines()[0]
        return info
    sha = sha256_file(path)
    if sha != card["model_sha256"]:
        info["problem"] = f"{path}: sha256 does not match {card_path_for(path).name}"
        return info
    info.update(version=str(card["version"]), model_sha256=sha)
    return info


# --------------------------------------------------------------------------- verification


@dataclass
class Verified:
    version: str
    model_sha256: str
    probability: float
    card: dict[str, Any] = field(repr=False)


def verify_model_files(
    onnx: Path,
    card_file: Path,
    *,
    threads: int = 1,
    frame: Any = None,
    selftest_png: str | os.PathLike[str] | None = None,
    selftest_max_s: float = 1.0,
    expect_size: tuple[int, int] | None = None,
    precision: str | None = None,
) -> Verified:
    """Check a downloaded model and card before use (see the module doc); FetchError(kind="refused")
    naming the file (by its name) and the problem. ``expect_size`` = (height, width);
    ``precision``: what the card must say (None: any; a card without ``precision`` is fp32)."""
    from autosink.edge.inference import ModelError, _selftest_frame, load_model, self_test

    def where(p: Path) -> str:
        return p.name

    def clean(msg: str) -> str:  # temp paths in messages -> the file's name in the source
        for p in (onnx, card_file):
            msg = msg.replace(str(p), where(p))
        return msg

    for p in (onnx, card_file):
        if kind := not_regular(p):
            raise FetchError(f"{where(p)}: is {kind}, not a regular file", kind="refused", file=p.name)
        if not p.is_file():
            raise FetchError(f"{where(p)}: missing from the download", kind="refused", file=p.name)
    try:
        card = read_card(card_file)
        check_card_supported(card, card_file)
    except CardError as e:
        raise FetchError(clean(str(e)), kind="refused", file=card_file.name) from None
    got = card.get("precision", "fp32")
    if precision is not None and got != precision:  # e.g. an fp32 model under the int8 name
        raise FetchError(
            f"{where(card_file)}: precision {got!r}, expected {precision!r} for {where(onnx)}",
            kind="refused",
            file=card_file.name,
        )
    sha = sha256_file(onnx)
    if sha != card["model_sha256"]:
        raise FetchError(
            f"{where(onnx)}: sha256 {sha[:12]}... does not match {where(card_file)} model_sha256 "
            f"{card['model_sha256'][:12]}... (corrupted or partial download, or a card of another "
            "model)",
            kind="refused",
            file=onnx.name,
        )
    size = (int(card["input"]["height"]), int(card["input"]["width"]))
    if expect_size is not None and size != tuple(expect_size):
        raise FetchError(
            f"{where(card_file)}: input {size[1]}x{size[0]} differs from the running camera resolution "
            f"{expect_size[1]}x{expect_size[0]}",
            kind="refused",
            file=card_file.name,
        )
    try:
        model = load_model(onnx, threads=threads, card_path=card_file)
        p = self_test(
            model, _selftest_frame(*size, [frame], Path(selftest_png) if selftest_png else None), max_s=selftest_max_s
        )
    except ModelError as e:
        raise FetchError(clean(str(e)), kind="refused", file=onnx.name) from None
    except Exception as e:  # anything else from onnxruntime: refuse, never crash the caller
        raise FetchError(
            f"{where(onnx)}: self-test failed: {type(e).__name__}: {e}", kind="refused", file=onnx.name
        ) from None
    return Verified(str(card["version"]), sha, p, card)


# --------------------------------------------------------------------------- install (the swap)


class _FileLock:
    """An exclusive ``flock`` on ``path`` (one fetch/recovery per model folder, across processes)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, None

    def acquire(self, wait_s: float = 0.0) -> bool:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.1)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _lock_for(target: Path) -> _FileLock:
    return _FileLock(target.with_name(f".{target.name}.fetch.lock"))


def _temp_dirs(target: Path) -> list[Path]:
    return sorted(p for p in target.parent.glob(f".{target.name}.fetch-*.tmp") if p.is_dir())


def _recover(target: Path) -> list[str]:
    """(Under the lock.) Finish an install a crash interrupted between the two renames; remove
    leftover temp folders. Returns what was done."""
    done = []
    card_target = card_path_for(target)
    for tmp in _temp_dirs(target):
        marker = tmp / _MARKER
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, CardError):
            staged = json.loads(marker.read_text()) if marker.is_file() else {}
            want = staged["model_sha256"]
            model_name, card_name = staged.get("files") or (MODEL_FILE, CARD_FILE)  # older markers: fp32 names
            staged_card = tmp / Path(card_name).name
            if (
                staged_card.is_file()
                and not (tmp / Path(model_name).name).exists()
                and target.is_file()
                and sha256_file(target) == want
                and read_card(staged_card)["model_sha256"] == want
            ):
                os.replace(staged_card, card_target)
                fsync_dir(target.parent)
                done.append(f"finished an interrupted install: {card_target} now describes {target} ({want[:12]})")
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed {tmp.name}")
    return done


def recover_install(model_path: str | os.PathLike[str], *, wait_s: float = 0.0) -> list[str]:
    """Finish an install that a crash or power cut interrupted, and clean temp folders; a no-op
    when another fetch holds the folder (after ``wait_s``). Returns what it did (logged)."""
    target = Path(model_path)
    if not target.parent.is_dir():
        return []
    lock = _lock_for(target)
    if not _temp_dirs(target) or not lock.acquire(wait_s):
        return []
    try:
        done = _recover(target)
    finally:
        lock.release()
    _log_recovery(done)
    return done


def _log_recovery(lines: list[str]) -> None:
    for line in lines:
        (log.warning if line.startswith("finished") else log.info)("model fetch: %s", line)


def _durable(path: Path) -> None:
    os.chmod(path, 0o644)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _install(
    tmp: Path,
    target: Path,
    sha: str,
    guard: Callable[[], contextlib.AbstractContextManager] | None = None,
    files: tuple[str, str] = (MODEL_FILE, CARD_FILE),
) -> None:
    """Swap ``tmp/<files>`` (the verified model and card, e.g. ``model.onnx`` + ``model.json``) into
    ``target`` and its card: model first, then card, each rename fsynced, a marker (naming the
    staged files) making a crash in between recoverable. ``guard`` wraps the two renames."""
    model_name, card_name = files
    card_target = card_path_for(target)
    for name in files:
        _durable(tmp / name)
    atomic_write(tmp / _MARKER, json.dumps({"model_sha256": sha, "files": list(files)}), durable=True)
    with guard() if guard is not None else contextlib.nullcontext():
        os.replace(tmp / model_name, target)
        fsync_dir(target.parent)
        os.replace(tmp / card_name, card_target)
        fsync_dir(target.parent)


# --------------------------------------------------------------------------- the record


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _write_record(
    target: Path, desc: str, latest: Latest, provenance: dict[str, Any], ok: Verified, download: Path
) -> None:
    record: dict[str, Any] = {
        "fetched_at": _now(),
        "source": desc,
        "ref": latest.ref,
        **provenance,
        "version": ok.version,
        "model_sha256": ok.model_sha256,
    }
    with contextlib.suppress(OSError, ValueError):
        promo = json.loads((download / PROMOTION_FILE).read_text())
        if isinstance(promo, dict):
            record["promotion"] = {
                k: promo.get(k) for k in ("promoted_at", "experiment", "git_revision", "data_version") if k in promo
            }
    with contextlib.suppress(OSError):
        atomic_write(record_path_for(target), json.dumps(record, indent=2) + "\n", durable=True)
