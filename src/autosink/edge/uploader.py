"""Moves spooled episodes to the data lake, in a background thread.

Targets (``--upload-to``):

* a folder (a mounted NAS or synced folder): the zip is copied to a hidden temp name in the
  target (``.<name>.<random>.uploading.tmp``: ``autosink lake check`` and ``extract`` skip hidden
  entries), fsynced, then given its name without overwriting anything (a hard link, or a
  rename where the filesystem has no links) and the folder fsynced. The target folder is never
  created: a missing one is an unmounted share, i.e. unreachable, not a place to write to.
* ``gdrive://<folder-id>``: a Google Drive folder (of a Shared Drive) through a service account,
  with pydrive2, imported only when this target is used. Credentials: the key's JSON in the
  environment variable ``GDRIVE_CREDENTIALS_DATA`` (as DVC reads it), else the key file named
  by ``upload.gdrive_credentials`` in the config.

Per spooled file, oldest first: if the target already holds the name with the same size and
checksum (sha256 for folders, Drive's md5), the upload happened before (e.g. power was lost
before the local delete) and the spooled copy is just removed; if it holds the name with other
content, the file is moved to ``<spool>/conflicts/`` and logged, never overwritten, never
uploaded twice. Otherwise it is uploaded, the copy in the target verified (size + checksum),
and only then deleted from the spool. While the target is unreachable the thread retries with
exponential backoff (``min_backoff_s`` doubling up to ``max_backoff_s``, +-10% jitter), one log
line per failure. The spool is capped at ``spool_max_mb``: over it, the oldest episodes are
deleted (one log line each) whether uploaded or not: a full SD card would stop the Pi.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autosink.core.fileio import fsync_dir, open_regular

__all__ = [
    "TargetUnavailable",
    "UploadError",
    "Remote",
    "Target",
    "FolderTarget",
    "GDriveTarget",
    "make_target",
    "Uploader",
    "file_digest",
]

log = logging.getLogger("autosink.edge.uploader")

_EPISODE_RE = re.compile(r"[0-9]{8}_[0-9]{6}\.zip")
CREDENTIALS_ENV = "GDRIVE_CREDENTIALS_DATA"


class TargetUnavailable(OSError):
    """The lake cannot be reached now (unmounted, offline, auth refused): retry later."""


class UploadError(RuntimeError):
    """An upload that did not verify."""


@dataclass(frozen=True)
class Remote:
    size: int
    digest: str  # in the target's algorithm (Target.algorithm)


def file_digest(path: Path, algorithm: str) -> str:
    """Checksum of a regular file (a FIFO or device in the lake under an episode's name is an
    OSError, not a hung or endless read)."""
    h = hashlib.new(algorithm)
    with open_regular(path) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Target(Protocol):
    algorithm: str  # hashlib name of the checksum ``Remote.digest`` uses

    def describe(self) -> str: ...

    def stat(self, name: str) -> Remote | None: ...

    def put(self, local: Path, name: str) -> Remote: ...


class FolderTarget:
    """A folder data lake (see module docstring)."""

    algorithm = "sha256"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()

    def describe(self) -> str:
        return str(self.root)

    def _check(self) -> None:
        if not self.root.is_dir():
            raise TargetUnavailable(f"{self.root}: not a folder (share not mounted?)")

    def stat(self, name: str) -> Remote | None:
        self._check()
        p = self.root / name
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return None
        return Remote(size, file_digest(p, self.algorithm))

    def put(self, local: Path, name: str) -> Remote:
        self._check()
        final = self.root / name
        for stale in self.root.glob(f".{name}.*.uploading.tmp"):  # an earlier attempt that died midway
            with contextlib.suppress(OSError):
                stale.unlink()
        tmp = self.root / f".{name}.{secrets.token_hex(4)}.uploading.tmp"
        try:
            with open_regular(local) as src, open(tmp, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, final)  # fails if the name exists: never overwrites
            except FileExistsError:
                raise
            except OSError:  # no hard links here (vfat, some network shares): check, then rename
                if final.exists():
                    raise FileExistsError(str(final)) from None
                os.rename(tmp, final)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        fsync_dir(self.root)
        remote = self.stat(name)
        if remote is None:
            raise UploadError(f"{final}: missing right after the upload")
        return remote


class GDriveTarget:
    """A Google Drive folder through a service account (pydrive2, imported lazily).

    ``drive`` may be given (tests pass a fake with pydrive2's ``ListFile``/``CreateFile`` API);
    otherwise it is created on first use from ``credentials_json`` (the key's JSON text) or
    ``credentials_path`` (the key file).
    """

    algorithm = "md5"

    def __init__(
        self,
        folder_id: str,
        *,
        credentials_json: str | None = None,
        credentials_path: str | None = None,
        drive: Any = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", folder_id or ""):
            raise ValueError(f"gdrive://{folder_id}: expected a Drive folder id (letters, digits, - and _)")
        self.folder_id = folder_id
        self.credentials_json = credentials_json
        self.credentials_path = credentials_path
        self._drive = drive

    def describe(self) -> str:
        return f"gdrive://{self.folder_id}"

    def _client(self) -> Any:
        if self._drive is not None:
            return self._drive
        if not self.credentials_json and not self.credentials_path:
            raise TargetUnavailable(
                f"gdrive: no credentials (set {CREDENTIALS_ENV} to the service account key's "
                "JSON, or upload.gdrive_credentials to the key file)"
            )
        try:
            from pydrive2.auth import GoogleAuth
            from pydrive2.drive import GoogleDrive
        except ImportError as e:
            raise TargetUnavailable(f"gdrive: pydrive2 is not installed ({e}); pip install pydrive2") from None
        settings = {
            "client_config_backend": "service",
            "service_config": {
                "client_user_email": None,
                "client_json": self.credentials_json,
                "client_json_file_path": self.credentials_path,
            },
            "oauth_scope": ["https://www.googleapis.com/auth/drive"],
        }
        try:
            auth = GoogleAuth(settings=settings)
            auth.ServiceAuth()
        except Exception as e:
            raise TargetUnavailable(f"gdrive: service account authentication failed: {type(e).__name__}: {e}") from None
        self._drive = GoogleDrive(auth)
        return self._drive

    def _list(self, name: str) -> list[Any]:
        q = f"'{self.folder_id}' in parents and title = '{name}' and trashed = false"
        try:
            return list(self._client().ListFile({"q": q}).GetList())
        except TargetUnavailable:
            raise
        except Exception as e:  # ApiRequestError, network errors: unreachable for now
            raise TargetUnavailable(f"gdrive: listing failed: {type(e).__name__}: {e}") from None

    @staticmethod
    def _remote(item: Mapping[str, Any]) -> Remote:
        return Remote(int(item.get("fileSize") or -1), str(item.get("md5Checksum") or ""))

    def stat(self, name: str) -> Remote | None:
        items = self._list(name)
        if not items:
            return None
        if len(items) > 1:
            log.warning("gdrive: %d files named %s in the folder", len(items), name)
        return self._remote(items[0])

    def put(self, local: Path, name: str) -> Remote:
        client = self._client()
        try:
            item = client.CreateFile(
                {"title": name, "parents": [{"id": self.folder_id}], "mimeType": "application/zip"}
            )
            with open_regular(local) as f:
                item.content = f
                item.Upload()
        except Exception as e:
            raise TargetUnavailable(f"gdrive: upload failed: {type(e).__name__}: {e}") from None
        return self._remote(item)


def make_target(
    spec: str | None, *, credentials_path: str | None = None, env: Mapping[str, str] = os.environ
) -> FolderTarget | GDriveTarget | None:
    """``None``/``""`` (no upload), ``gdrive://<folder-id>``, or a folder path."""
    if not spec:
        return None
    if spec.startswith("gdrive://"):
        creds_json = env.get(CREDENTIALS_ENV) or None
        if creds_json is not None:
            try:
                json.loads(creds_json)
            except ValueError:
                raise ValueError(
                    f"{CREDENTIALS_ENV} is set but is not JSON (it must hold the key itself, "
                    "not its path; use upload.gdrive_credentials for a path)"
                ) from None
        return GDriveTarget(
            spec[len("gdrive://") :].strip("/"),
            credentials_json=creds_json,
            credentials_path=None if creds_json else (credentials_path or None),
        )
    return FolderTarget(spec)


class Uploader:
    """Spool -> lake (see module docstring). ``start()``/``stop()`` run the thread;
    ``run_once()`` is one synchronous pass (tests). ``target=None`` only caps the spool."""

    def __init__(
        self,
        spool: str | os.PathLike[str],
        target: Any,
        *,
        min_backoff_s: float = 5.0,
        max_backoff_s: float = 600.0,
        poll_s: float = 30.0,
        spool_max_mb: float = 2048.0,
        jitter: float = 0.1,
        rng: random.Random | None = None,
    ) -> None:
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.conflicts = self.spool / "conflicts"
        self.target = target
        self.min_backoff_s, self.max_backoff_s = float(min_backoff_s), float(max_backoff_s)
        self.poll_s = float(poll_s)
        self.spool_max_bytes = int(spool_max_mb * 1024 * 1024)
        self.jitter = float(jitter)
        self._rng = rng or random.Random()
        self.failures = 0
        self.uploaded: list[str] = []  # names confirmed in the lake (this run), in order
        self.skipped: list[str] = []  # already there with the same content
        self.conflicted: list[str] = []
        self.evicted: list[str] = []
        self.delays: list[float] = []  # every backoff delay taken (for logs and tests)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drain = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ spool

    def spooled(self) -> list[Path]:
        """Episode zips waiting in the spool, oldest (= name) first."""
        if not self.spool.is_dir():
            return []
        return sorted(p for p in self.spool.iterdir() if p.is_file() and _EPISODE_RE.fullmatch(p.name))

    def names(self) -> set[str]:
        """Stems spooled, in conflict, or uploaded this run (a new episode must not reuse one)."""
        out = {p.name[:-4] for p in self.spooled()}
        if self.conflicts.is_dir():
            out |= {p.name[:-4] for p in self.conflicts.glob("*.zip")}
        out |= {n[:-4] for n in self.uploaded + self.skipped}
        return out

    def enforce_cap(self) -> list[Path]:
        """Delete the oldest spooled episodes while the spool is over its cap."""
        files = self.spooled()
        if self.conflicts.is_dir():
            files += sorted(self.conflicts.glob("*.zip"))
        files.sort(key=lambda p: p.name)
        sizes = {}
        for p in files:
            with contextlib.suppress(OSError):
                sizes[p] = p.stat().st_size
        total = sum(sizes.values())
        removed = []
        for p in files:
            if total <= self.spool_max_bytes:
                break
            with contextlib.suppress(OSError):
                p.unlink()
                total -= sizes.get(p, 0)
                removed.append(p)
                self.evicted.append(p.name)
                log.warning(
                    "spool over %.0f MB: deleted the oldest episode %s (%.1f MB) without uploading it",
                    self.spool_max_bytes / 2**20,
                    p.name,
                    sizes.get(p, 0) / 2**20,
                )
        return removed

    # ------------------------------------------------------------------ one file / one pass

    def upload_one(self, path: Path) -> str:
        """Upload (or settle) one spooled file: ``uploaded``, ``skipped``, ``conflict`` or ``gone``.
        Raises TargetUnavailable/OSError/UploadError when the target failed (retry later)."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "gone"  # evicted meanwhile
        digest = file_digest(path, self.target.algorithm)
        name = path.name
        remote = self.target.stat(name)
        if remote is not None:
            if (remote.size, remote.digest) == (size, digest):
                path.unlink(missing_ok=True)
                self.skipped.append(name)
                log.info(
                    "upload: %s already in %s (same size and checksum): removed from the spool",
                    name,
                    self.target.describe(),
                )
                return "skipped"
            self.conflicts.mkdir(exist_ok=True)
            os.replace(path, self.conflicts / name)
            self.conflicted.append(name)
            log.error(
                "upload: %s exists in %s with other content (%d bytes, %s %s...): kept in %s, not uploaded",
                name,
                self.target.describe(),
                remote.size,
                self.target.algorithm,
                remote.digest[:12],
                self.conflicts,
            )
            return "conflict"
        try:
            remote = self.target.put(path, name)
        except FileExistsError:
            raise UploadError(f"{name}: appeared in the target during the upload; will re-check") from None
        if (remote.size, remote.digest) != (size, digest):
            raise UploadError(
                f"{name}: verification failed (target has {remote.size} bytes, "
                f"{self.target.algorithm} {remote.digest[:12]}..., local {size} bytes, {digest[:12]}...)"
            )
        path.unlink(missing_ok=True)
        self.uploaded.append(name)
        log.info("upload: %s -> %s (%.1f MB, verified)", name, self.target.describe(), size / 2**20)
        return "uploaded"

    def run_once(self) -> int:
        """Cap the spool, then upload everything spooled; return how many remain. Target errors
        propagate (the thread turns them into backoff)."""
        with self._lock:
            self.enforce_cap()
            if self.target is None:
                return 0
            for path in self.spooled():
                if self._stop.is_set() and not self._drain:
                    break
                self.upload_one(path)
            return len(self.spooled())

    def next_delay(self) -> float:
        base = min(self.max_backoff_s, self.min_backoff_s * 2 ** max(0, self.failures - 1))
        return base * (1 + self.jitter * (2 * self._rng.random() - 1)) if self.jitter else base

    # ------------------------------------------------------------------ thread

    def wake(self, *_: object) -> None:
        """A new episode is in the spool (called by the recorder)."""
        self._wake.set()

    def _pass(self) -> float:
        """One pass; return how long to wait before the next (poll interval or backoff)."""
        try:
            self.run_once()
        except Exception as e:  # unreachable target, verification failure, anything: back off
            self.failures += 1
            delay = self.next_delay()
            self.delays.append(delay)
            log.warning(
                "upload to %s failed (%d in a row), retrying in %.0f s: %s",
                self.target.describe() if self.target else "-",
                self.failures,
                delay,
                e,
            )
            return delay
        if self.failures:
            log.info("upload: %s reachable again", self.target.describe() if self.target else "-")
        self.failures = 0
        return self.poll_s

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            delay = self._pass()
            self._wake.wait(delay)
        if self._drain:  # shutdown: one last pass for what the recorder flushed at the end
            self._pass()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="uploader", daemon=True)
            self._thread.start()

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop the thread; with ``drain_s > 0`` make one last pass first (bounded by ``drain_s``)."""
        if self._thread is None:
            return
        self._drain = drain_s > 0
        self._stop.set()
        self._wake.set()
        self._thread.join(max(drain_s, 1.0))
        if self._thread.is_alive():
            log.warning("uploader still busy at shutdown; the rest stays in the spool for the next start")
        self._thread = None
