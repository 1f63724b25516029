"""Files that are not regular files, and a guarded way to point code at them.

Only regular files may be opened as episodes or models: reading ``/dev/zero`` never ends (and
grows memory by GBs), opening a FIFO blocks until a writer comes, a unix socket cannot be
opened at all. A regression would hang or eat the test machine, so the checks run in a child
process (:func:`run_isolated`) with a time limit and a memory cap.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("chardev", "fifo", "socket")
WORDS = {"chardev": "a character device", "fifo": "a FIFO (named pipe)", "socket": "a socket"}


def make_special(path: Path, kind: str) -> Path:
    """``path`` as a FIFO, a unix socket, or a symlink to ``/dev/zero`` (no root needed for a device)."""
    path = Path(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":  # bound where the path is short (108-byte limit), then moved: it stays a socket
        short = Path(tempfile.mkdtemp(prefix="as-", dir="/tmp"))
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(str(short / "s"))
            os.replace(short / "s", path)
        finally:
            shutil.rmtree(short, ignore_errors=True)
    elif kind == "chardev":
        path.symlink_to("/dev/zero")
    else:
        raise ValueError(kind)
    return path


def _cap_memory() -> None:
    limit = 3 * 1024**3  # a child that reads /dev/zero fails with MemoryError instead of eating the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_isolated(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """``python -c code *args`` in the checkout, killed after ``timeout`` s (a hang is a failure)."""
    try:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_cap_memory,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"still running after {timeout} s (reading a FIFO or a device?): {(e.stderr or b'')[-2000:]!r}"
        ) from None
