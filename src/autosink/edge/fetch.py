"""Bring the production model onto the Pi: ask a source, download, verify, swap in atomically.

Where a model comes from (``dvc``, ``wandb``, ``folder:<path>``): :mod:`autosink.edge.sources`.
How a download is verified, swapped in, recovered after a crash and recorded: :mod:`autosink.edge.install`.

:func:`fetch_model` asks the source cheaply what it would deliver (a git commit, an artifact
version and the card's sha256) and stops there when that is what is installed. Otherwise it
downloads into a temp folder beside the target (same filesystem), verifies there and only then
swaps the files in. A failure at any step leaves the installed model untouched and says which
file and why. :class:`PeriodicFetcher` repeats that inside the runtime (``run.py``).

The pair taken from the promoted folder follows ``model_path``'s name
(:func:`autosink.edge.sources.promoted_files`): a Pi configured for ``model.int8.onnx`` gets
``model.int8.onnx`` + ``model.int8.json``; a promotion without them is refused, naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from autosink.edge.install import (
    _install,
    _lock_for,
    _log_recovery,
    _recover,
    _temp_dirs,
    _write_record,
    installed_model,
    verify_model_files,
)
from autosink.edge.sources import FetchError, Source, precision_of, promoted_files

__all__ = ["FetchResult", "fetch_model", "PeriodicFetcher"]

log = logging.getLogger("autosink.edge.fetch")


@dataclass
class FetchResult:
    status: str  # installed | unchanged | refused | failed
    message: str
    source: str
    ref: str | None = None
    file: str | None = None
    old_version: str | None = None
    old_sha256: str | None = None
    new_version: str | None = None
    new_sha256: str | None = None
    seconds: float = 0.0
    repeated: bool = False  # refused before: not downloaded again

    @property
    def ok(self) -> bool:
        return self.status in ("installed", "unchanged")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- fetch


def fetch_model(
    source: Source,
    model_path: str | os.PathLike[str],
    *,
    threads: int = 1,
    frame: Any = None,
    selftest_png: str | os.PathLike[str] | None = None,
    selftest_max_s: float = 1.0,
    expect_size: tuple[int, int] | None = None,
    force: bool = False,
    refused: Mapping[str, str] | None = None,
    swap_guard: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> FetchResult:
    """Fetch the production model from ``source`` into ``model_path`` (and its card beside it),
    verified, swapped in atomically; never raises for a fetch problem: the result says
    ``installed``, ``unchanged``, ``refused`` (the download is not fit: the current model stays) or
    ``failed`` (could not download, or another fetch is running).

    ``force`` downloads and reinstalls even when the source says nothing changed. ``refused``
    maps source refs already refused to why (not downloaded again). ``swap_guard`` wraps the two
    renames (the runtime holds its model checks off meanwhile)."""
    t0 = time.monotonic()
    target = Path(model_path)
    files = promoted_files(target)  # the model file and card to take from the download
    desc = source.describe()
    lock = _lock_for(target)
    current = installed_model(target)
    result = FetchResult("failed", "", desc, old_version=current["version"], old_sha256=current["model_sha256"])

    def finish(status: str, message: str, **kw: Any) -> FetchResult:
        result.status, result.message = status, message
        for k, v in kw.items():
            setattr(result, k, v)
        result.seconds = round(time.monotonic() - t0, 3)
        return result

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not lock.acquire(wait_s=1.0):
            return finish("failed", f"another fetch into {target.parent} is running")
    except OSError as e:
        return finish("failed", f"cannot write to {target.parent}: {e}")
    tmp: Path | None = None
    keep_tmp = False
    try:
        if _temp_dirs(target):
            _log_recovery(_recover(target))
            current = installed_model(target)  # the recovery may have completed an install
            result.old_version, result.old_sha256 = current["version"], current["model_sha256"]
        try:
            latest = replace(source.latest(files), files=files)
        except FetchError as e:
            return finish("refused" if e.kind == "refused" else "failed", str(e), file=e.file)
        except Exception as e:  # a source's unexpected error: reported, never raised into the runtime
            return finish("failed", f"{desc}: {type(e).__name__}: {e}")
        result.ref = latest.ref
        if latest.ref is not None and refused and latest.ref in refused and not force:
            return finish("refused", refused[latest.ref], repeated=True)
        have = current["model_sha256"]
        record = current["record"] or {}
        if (
            have
            and not force
            and (
                latest.model_sha256 == have
                or (latest.ref is not None and record.get("ref") == latest.ref and record.get("model_sha256") == have)
            )
        ):
            return finish(
                "unchanged",
                f"{current['version']} ({have[:12]}) is installed and is the latest",
                new_version=current["version"],
                new_sha256=have,
            )

        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.fetch-", suffix=".tmp", dir=target.parent))
        except OSError as e:
            return finish("failed", f"cannot write to {target.parent}: {e}")
        download = tmp / "download"
        try:
            provenance = source.download(download, latest)
        except FetchError as e:
            return finish("refused" if e.kind == "refused" else "failed", str(e), file=e.file)
        except Exception as e:  # a source's unexpected error: reported, never raised into the runtime
            return finish("failed", f"{desc}: download failed: {type(e).__name__}: {e}")
        try:
            for name in files:
                if (download / name).is_file():
                    os.replace(download / name, tmp / name)
        except OSError as e:
            return finish("failed", f"{desc}: cannot stage the download in {target.parent}: {e}")
        try:  # a promotion without the pair model.path names: refused, "model.int8.onnx: missing ..."
            ok = verify_model_files(
                tmp / files[0],
                tmp / files[1],
                threads=threads,
                frame=frame,
                selftest_png=selftest_png,
                selftest_max_s=selftest_max_s,
                expect_size=expect_size,
                precision=precision_of(files[0]),
            )
        except FetchError as e:
            at = f" ({latest.ref})" if latest.ref else ""
            return finish("refused", f"{desc}{at}: {e}", file=e.file)
        if ok.model_sha256 == have and not force:
            _write_record(target, desc, latest, provenance, ok, download)
            return finish(
                "unchanged",
                f"{ok.version} ({have[:12]}) is installed and is the latest",
                new_version=ok.version,
                new_sha256=ok.model_sha256,
            )
        keep_tmp = True  # from here a crash is recovered from the temp folder
        try:
            _install(tmp, target, ok.model_sha256, swap_guard, files)
        except OSError as e:
            if (tmp / files[0]).exists():  # nothing was replaced
                keep_tmp = False
            return finish(
                "failed",
                f"installing into {target.parent} failed: {e}"
                + (" (the next fetch or start finishes it)" if keep_tmp else ""),
            )
        keep_tmp = False
        _write_record(target, desc, latest, provenance, ok, download)
        old = f"{current['version']} ({have[:12]})" if have else f"none ({current['problem']})"
        return finish(
            "installed",
            f"installed {ok.version} ({ok.model_sha256[:12]}, self-test p={ok.probability:.3f}) "
            f"from {desc}, replacing {old}",
            new_version=ok.version,
            new_sha256=ok.model_sha256,
        )
    finally:
        if tmp is not None and not keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        lock.release()


# --------------------------------------------------------------------------- periodic (inside run.py)


class PeriodicFetcher:
    """Checks ``source`` every ``interval_s`` (on the runtime's clock, driven by :meth:`poll` from
    the runtime loop) and installs a newer verified model beside the running one; the runtime's
    :class:`ModelReloader` then hot-reloads it. The fetch runs in a background thread (inline
    with ``background=False``). The self-test uses the reloader's newest camera frame, and a
    model for another camera resolution is refused.

    :attr:`swap_lock` is held while the files are renamed (and while a reload the reloader had
    already started is still reading them): the runtime skips its model check meanwhile.
    """

    def __init__(
        self,
        source: Source,
        model_path: str | os.PathLike[str],
        *,
        interval_s: float,
        reloader: Any = None,
        threads: int = 1,
        selftest_png: str | os.PathLike[str] | None = None,
        selftest_max_s: float = 1.0,
        background: bool = True,
    ) -> None:
        self.source, self.path = source, Path(model_path)
        self.interval_s = float(interval_s)
        self.reloader = reloader
        self.threads, self.selftest_png, self.selftest_max_s = threads, selftest_png, selftest_max_s
        self.background = background
        self.swap_lock = threading.Lock()
        self._next: float | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.refused: dict[str, str] = {}
        self.last: FetchResult | None = None
        self.installed = 0

    @property
    def busy(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def poll(self, now: float) -> bool:
        """Start a fetch when one is due (the first right away); True if one started."""
        if self._stopping.is_set() or self.busy or (self._next is not None and now < self._next):
            return False
        self._next = now + self.interval_s
        if self.background:
            self._thread = threading.Thread(target=self.run_once, name="model-fetch", daemon=True)
            self._thread.start()
        else:
            self.run_once()
        return True

    def wait(self, timeout: float | None = None) -> None:
        t = self._thread
        if t is not None:
            t.join(timeout)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop checking; kill a running download (its temp folder is cleaned at the next start)."""
        self._stopping.set()
        cancel = getattr(self.source, "cancel", None)
        if cancel is not None:
            with contextlib.suppress(Exception):
                cancel()
        self.wait(timeout)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        with self.swap_lock:
            r = self.reloader
            deadline = time.monotonic() + 30.0
            while r is not None and getattr(r, "busy", False) and time.monotonic() < deadline:
                time.sleep(0.01)  # a reload started before the lock is still reading the files
            yield

    def run_once(self) -> FetchResult:
        """One check: fetch, verify, install; logs the outcome (old and new versions)."""
        running = getattr(self.reloader, "model", None)
        frame = getattr(self.reloader, "_frame", None)
        size = (int(running.height), int(running.width)) if hasattr(running, "height") else None
        try:
            res = fetch_model(
                self.source,
                self.path,
                threads=self.threads,
                frame=frame,
                selftest_png=self.selftest_png,
                selftest_max_s=self.selftest_max_s,
                expect_size=size,
                refused=self.refused,
                swap_guard=self._guard,
            )
        except Exception as e:  # a bug must not kill the thread silently, nor the runtime
            res = FetchResult("failed", f"{type(e).__name__}: {e}", self.source.describe())
            log.exception("model fetch crashed")
        self.last = res
        serving = f"{running.version}" if running is not None and hasattr(running, "version") else "?"
        if res.status == "installed":
            self.installed += 1
            log.info("model fetch: %s; running %s, hot reload follows", res.message, serving)
        elif res.status == "unchanged":
            log.debug("model fetch: %s", res.message)
        elif res.status == "refused":
            if res.ref is not None:
                self.refused[res.ref] = res.message
            (log.debug if res.repeated else log.error)("model fetch refused, keeping %s: %s", serving, res.message)
        else:
            log.warning("model fetch failed, keeping %s: %s", serving, res.message)
        return res
