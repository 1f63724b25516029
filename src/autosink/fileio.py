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


def sha256_file(path: StrPath, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
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
