"""Small file helpers shared by the pipeline and the Pi (standard library only).

Every file inside a DVC output, the spool or the lake is replaced, never rewritten in
place: DVC may share an output file with its cache, and a reader (or a crash) must see
either the old file or the new one, never half of one. Temp files are hidden
(``.<name>.<random>.tmp``) so readers and the leftover cleanups (``.*.tmp``) agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Union

StrPath = Union[str, "os.PathLike[str]"]


def atomic_write(path: StrPath, data: bytes | str, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temp file beside it and a rename.

    ``durable`` also fsyncs the file and its folder (for the Pi, which may lose power).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are read by other users and tools
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def fsync_dir(directory: StrPath) -> None:
    """Make a rename in ``directory`` durable. Best effort."""
    if sys.platform == "win32":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class NotRegularFileError(OSError):
    """A path that names a device, FIFO, socket or folder where a regular file was expected.

    An OSError, so callers that already handle unreadable files handle this too; the message
    names the path and what it is (``/dev/zero: is a character device, not a regular file``).
    """

    def __init__(self, path: StrPath, kind: str) -> None:
        super().__init__(f"{path}: is {kind}, not a regular file")
        self.path, self.kind = str(path), kind  # (not OSError.filename: that would change str(e))


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words (for error messages)."""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def not_regular(path: StrPath) -> str | None:
    """What ``path`` is if it exists and is not a regular file (symlinks followed), else None.

    A cheap ``stat``: it never opens the path, so a FIFO cannot block and a device cannot be read.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # missing or unreadable: the caller's open reports it as before
    return None if stat.S_ISREG(mode) else file_kind(mode)


def open_regular(path: StrPath, *, follow_symlinks: bool = True):
    """Open ``path`` for reading in binary mode, only if it is a regular file.

    Why: ``open`` on a FIFO blocks until a writer appears, reading a character device
    (``/dev/zero``) never ends, and opening some devices has effects (a serial port resets an
    Arduino). So: a ``stat`` first (nothing is opened unless it is a regular file), then a
    non-blocking open checked again with ``fstat`` (no race with a swap). Raises
    :class:`NotRegularFileError`, or the open's own OSError (missing, permission).
    """
    try:
        mode = (os.stat if follow_symlinks else os.lstat)(path).st_mode
    except OSError:
        mode = None  # missing etc.: the open below raises the usual error
    if mode is not None and not stat.S_ISREG(mode) and not (stat.S_ISLNK(mode) and not follow_symlinks):
        raise NotRegularFileError(path, file_kind(mode))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, file_kind(mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: StrPath, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file's bytes, read in chunks (:class:`NotRegularFileError` for a
    device, FIFO or socket: they have no bytes to hash, or endless ones)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_version(*modules) -> str:
    """A short hash of the source of the modules whose logic a cached result depends on."""
    h = hashlib.sha256()
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def json_type(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
