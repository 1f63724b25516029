"""Bring the production model onto the Pi: download, verify, swap in atomically.

Sources (:func:`make_source`, the ``[fetch]`` config section):

* ``dvc``: ``dvc get <repo> models/production --rev <commit> -o <temp>``, the promoted folder of
  the DVC project itself, at a revision (the repository's default branch unless ``rev`` says
  otherwise). ``remote`` / ``remote_config`` / ``dvc_config`` point it at a remote other than the
  committed default (a plain ``dvc get`` of a git URL knows only the committed ``.dvc/config``).
  The ``dvc`` and ``git`` commands run as subprocesses: nothing of DVC is imported here.
* ``wandb``: the W&B artifact ``<entity>/<project>/autosink-model:production`` (what
  ``autosink promote`` logs), via ``wandb.Api().artifact(...).download(...)``; needs
  ``WANDB_API_KEY``. ``wandb`` is imported only by this source.
* ``folder:<path>``: a folder holding ``model.onnx`` and ``model.json`` (a mounted share, a USB
  stick, tests).

:func:`fetch_model` asks the source cheaply what it would deliver (a git commit, an artifact
version and the card's sha256) and stops there when that is what is installed. Otherwise it
downloads into a temp folder beside the target (same filesystem), verifies there and only then
swaps the files in:

1. both files present; the card valid (:func:`autosink.core.modelcard.read_card`) and one this edge
   can serve (:func:`autosink.core.modelcard.check_card_supported`);
2. sha256 of the ``.onnx`` equals the card's ``model_sha256`` (a corrupted or partial download,
   or a card of another model, is refused);
3. onnxruntime loads it (:func:`autosink.edge.inference.load_model`, which checks the graph
   against the card) and a self-test on a stored frame (the newest camera frame when the runtime
   is running, else ``model.selftest_png``, else grey) gives a finite probability in [0, 1]
   within ``model.selftest_max_s``; with a running runtime, the input size must also be the
   running camera resolution.

The swap: ``os.replace`` of the model, then of its card, each fsynced. Inside ``run.py`` the
periodic fetcher holds the runtime's model checks off while it swaps (:attr:`PeriodicFetcher.swap_lock`)
so the hot reload (:class:`autosink.edge.inference.ModelReloader`) only ever sees a complete pair;
another process (``python edge/run.py fetch`` beside a running service) may catch the moment
between the two renames: the reloader then refuses the mismatched pair once and loads the new one
when the card lands. A power cut between the two renames leaves the new card in the temp folder
with a marker; :func:`recover_install` (run before every fetch and at runtime start) finishes the
swap. A failure at any step leaves the installed model untouched and says which file and why.

``<stem>.fetch.json`` beside the model records where the installed model came from (source,
commit or artifact version, version, sha256, time).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autosink.core.fileio import NotRegularFileError, atomic_write, fsync_dir, not_regular, open_regular, sha256_file
from autosink.core.modelcard import CardError, card_path_for, check_card_supported, read_card

__all__ = [
    "FetchError",
    "FetchResult",
    "Latest",
    "Source",
    "DvcSource",
    "WandbSource",
    "FolderSource",
    "make_source",
    "fetch_model",
    "verify_model_files",
    "installed_model",
    "recover_install",
    "record_path_for",
    "PeriodicFetcher",
    "MODEL_FILE",
    "CARD_FILE",
]

log = logging.getLogger("autosink.edge.fetch")

MODEL_FILE = "model.onnx"  # the names inside a promoted folder / artifact
CARD_FILE = "model.json"
PROMOTION_FILE = "promotion.json"
_MARKER = "INSTALLING"
_HEX40 = re.compile(r"[0-9a-f]{40}")


class FetchError(RuntimeError):
    """A fetch that did not install anything. ``kind``: ``config`` (bad settings), ``failed``
    (could not download: network, credentials, tool missing), ``refused`` (the download is not a
    model this edge may run); ``file``: the file at fault, when there is one."""

    def __init__(self, message: str, *, kind: str = "failed", file: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.file = kind, file


@dataclass(frozen=True)
class Latest:
    """What a source would deliver, as far as it can tell without downloading.

    ``ref``: the exact thing to download (a commit, an artifact version) or None; ``model_sha256``:
    the model's sha256 when the source knows it (a W&B artifact's metadata is its card)."""

    ref: str | None
    model_sha256: str | None = None
    version: str | None = None


class Source(Protocol):
    def describe(self) -> str: ...

    def latest(self) -> Latest: ...

    def download(self, dest: Path, latest: Latest) -> dict[str, Any]:
        """Put ``model.onnx`` and ``model.json`` into the new folder ``dest``; return provenance."""
        ...


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


# --------------------------------------------------------------------------- subprocesses


def _run(
    cmd: list[str],
    *,
    timeout_s: float,
    cwd: str | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` without a terminal (never waits for a password or a browser), in its own
    process group, at a lower CPU priority than the faucet, killed with its children after
    ``timeout_s``."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "DVC_NO_ANALYTICS": "1"}
    if shutil.which(cmd[0]) is None:
        raise FetchError(f"`{cmd[0]}` not found")
    nice = shutil.which("nice")
    try:
        proc = subprocess.Popen(
            [nice, "-n", "10", *cmd] if nice else cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise FetchError(f"`{cmd[0]}` not found") from None
    if on_start is not None:
        on_start(proc)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise FetchError(f"`{' '.join(cmd[:2])} ...` took longer than {timeout_s:g} s (killed)") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group this Popen created (start_new_session)


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip() and "dvc.org/support" not in ln]
    return "\n".join(kept[-lines:])


# --------------------------------------------------------------------------- sources


def _find_dvc() -> str | None:
    """``dvc`` beside this interpreter (the venv's bin, not on a systemd unit's PATH), else on PATH."""
    return shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")


class DvcSource:
    """``dvc get <repo> <path> --rev <commit>``; the commit comes from ``git ls-remote``.
    ``repo`` "" = the ``origin`` of the git checkout in the current directory (looked up at the
    first fetch, so a missing git never stops the runtime from starting)."""

    def __init__(
        self,
        repo: str,
        *,
        rev: str = "",
        path: str = "models/production",
        remote: str = "",
        remote_config: list[str] | tuple[str, ...] = (),
        dvc_config: str = "",
        dvc: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self.repo, self.rev, self.path = repo, rev, path.strip("/")
        self.remote, self.remote_config, self.dvc_config = remote, list(remote_config), dvc_config
        self.dvc, self.timeout_s = dvc, timeout_s
        self._proc: subprocess.Popen | None = None
        for item in self.remote_config:
            if "=" not in item:
                raise FetchError(f"fetch.remote_config: {item!r} is not <option>=<value>", kind="config")

    def describe(self) -> str:
        return f"dvc {self.repo or '<origin>'} {self.path}@{self.rev or 'HEAD'}"

    def latest(self) -> Latest:
        if not self.repo:
            self.repo = _default_repo()
        rev = self.rev or "HEAD"
        if _HEX40.fullmatch(rev):
            return Latest(rev)
        proc = _run(["git", "ls-remote", self.repo, rev], timeout_s=min(self.timeout_s, 120.0), on_start=self._started)
        if proc.returncode != 0:
            raise FetchError(
                f"cannot reach {self.repo} (`git ls-remote` exit {proc.returncode}): {_tail(proc.stderr, 3)}"
            )
        refs = {}
        for line in proc.stdout.splitlines():
            sha, _, ref = line.partition("\t")
            refs[ref.strip()] = sha.strip()
        for name in (rev, f"refs/heads/{rev}", f"refs/tags/{rev}^{{}}", f"refs/tags/{rev}"):
            if name in refs:
                return Latest(refs[name])
        if re.fullmatch(r"[0-9a-f]{4,39}", rev):  # an abbreviated commit: dvc get resolves it
            return Latest(None)
        raise FetchError(f"{self.repo} has no branch or tag {rev!r}", kind="config")

    def download(self, dest: Path, latest: Latest) -> dict[str, Any]:
        if not self.repo:
            self.repo = _default_repo()
        dest = Path(dest).absolute()
        dvc = self.dvc or _find_dvc()
        if not dvc:
            raise FetchError("the dvc command is not installed (pip install -r edge/requirements-fetch-dvc.txt)")
        rev = latest.ref or self.rev
        cmd = [dvc, "get", self.repo, self.path, "-o", str(dest)]
        if rev:
            cmd += ["--rev", rev]
        if self.dvc_config:
            if not Path(self.dvc_config).is_file():
                raise FetchError(f"fetch.dvc_config {self.dvc_config}: no such file", kind="config")
            cmd += ["--config", str(Path(self.dvc_config).resolve())]
        if self.remote:
            cmd += ["--remote", self.remote]
        if self.remote_config:
            cmd += ["--remote-config", *self.remote_config]
        # cwd: a neutral folder, so that a DVC project around the current directory plays no part
        proc = _run(cmd, timeout_s=self.timeout_s, cwd=str(dest.parent), on_start=self._started)
        if proc.returncode != 0:
            raise FetchError(
                f"`dvc get {self.repo} {self.path}` failed (exit {proc.returncode}): {_tail(proc.stderr + proc.stdout)}"
            )
        return {"repo": self.repo, "path": self.path, "rev": self.rev or None, "commit": latest.ref}

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    def cancel(self) -> None:
        """Kill a running git/dvc command (the runtime is stopping)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _kill_group(proc)


class WandbSource:
    """The W&B artifact ``entity/project/name:alias`` (``autosink promote`` logs
    ``autosink-model`` with alias ``production``). ``api`` builds the API object (tests inject a
    fake); by default ``wandb.Api``, imported here only."""

    def __init__(self, artifact: str, *, timeout_s: float = 600.0, api: Callable[[], Any] | None = None) -> None:
        name = artifact.strip()
        if not name:
            raise FetchError(
                'fetch.artifact is empty (e.g. "my-team/autosink/autosink-model:production")', kind="config"
            )
        if ":" not in name.rsplit("/", 1)[-1]:
            name += ":production"
        self.artifact, self.timeout_s, self._api_factory = name, timeout_s, api
        self._art: Any = None

    def describe(self) -> str:
        return f"wandb {self.artifact}"

    def _api(self) -> Any:
        if self._api_factory is not None:
            return self._api_factory()
        if not os.environ.get("WANDB_API_KEY"):
            raise FetchError("WANDB_API_KEY is not set (on the Pi: /etc/autosink/edge.env)")
        try:
            import wandb
        except ImportError as e:
            raise FetchError(
                f"wandb is not installed (pip install -r edge/requirements-fetch-wandb.txt): {e}"
            ) from None
        return wandb.Api(timeout=max(1, int(self.timeout_s)))

    def latest(self) -> Latest:
        api = self._api()
        try:
            art = api.artifact(self.artifact, type="model")
        except FetchError:
            raise
        except Exception as e:  # wandb raises CommError, ValueError, requests errors, ...
            raise FetchError(f"cannot look up {self.artifact}: {type(e).__name__}: {_first_line(e)}") from None
        self._art = art
        meta = getattr(art, "metadata", None) or {}
        sha = meta.get("model_sha256") if isinstance(meta, Mapping) else None
        ref = f"{getattr(art, 'version', '?')}@{getattr(art, 'digest', '?')}"
        return Latest(
            ref,
            sha if isinstance(sha, str) else None,
            str(meta.get("version")) if isinstance(meta, Mapping) and meta.get("version") else None,
        )

    def download(self, dest: Path, latest: Latest) -> dict[str, Any]:
        art, self._art = self._art, None
        if art is None:
            self.latest()
            art, self._art = self._art, None
        dest.mkdir(parents=True, exist_ok=True)
        try:
            art.download(root=str(dest), skip_cache=True)
        except Exception as e:
            raise FetchError(f"downloading {self.artifact} failed: {type(e).__name__}: {_first_line(e)}") from None
        return {
            "artifact": self.artifact,
            "artifact_version": getattr(art, "version", None),
            "digest": getattr(art, "digest", None),
        }


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


class FolderSource:
    """A folder that holds ``model.onnx`` and ``model.json`` (a mounted share, a USB stick)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def describe(self) -> str:
        return f"folder {self.folder}"

    def latest(self) -> Latest:
        if not self.folder.is_dir():
            raise FetchError(f"{self.folder}: no such folder")
        stats = []
        for name in (MODEL_FILE, CARD_FILE):
            with contextlib.suppress(OSError):
                st = os.stat(self.folder / name)
                stats.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        ref = ",".join(stats) or None  # the same files again: not downloaded (nor refused) again
        if not_regular(self.folder / CARD_FILE):  # a FIFO would block read_card; download() refuses it
            return Latest(ref)
        try:
            card = read_card(self.folder / CARD_FILE)
        except CardError:
            return Latest(ref)  # verification says what is wrong, with the rest
        return Latest(ref, card["model_sha256"], str(card["version"]))

    def download(self, dest: Path, latest: Latest) -> dict[str, Any]:
        dest.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, CARD_FILE, PROMOTION_FILE):
            src = self.folder / name
            if not src.exists():
                continue
            try:  # regular files only: copying /dev/zero would fill the disk, a FIFO would block
                with open_regular(src) as fsrc, open(dest / name, "wb") as fdst:
                    shutil.copyfileobj(fsrc, fdst, 1 << 20)
            except NotRegularFileError as e:
                raise FetchError(str(e), kind="refused", file=name) from None
        return {"folder": str(self.folder)}


def _default_repo() -> str:
    """The ``origin`` of the checkout in the current directory (the service runs in it; the checkout
    may belong to another user, hence safe.directory)."""
    cwd = os.getcwd()
    try:
        proc = _run(["git", "-c", f"safe.directory={cwd}", "remote", "get-url", "origin"], timeout_s=30.0, cwd=cwd)
    except FetchError:
        proc = None
    url = proc.stdout.strip() if proc is not None and proc.returncode == 0 else ""
    if not url:
        raise FetchError(
            "fetch.repo is empty and the current directory is not a git checkout with an `origin` "
            "(set fetch.repo to the autosink repository's URL)",
            kind="config",
        )
    return url


def make_source(fetch_cfg: Mapping[str, Any], *, wandb_api: Callable[[], Any] | None = None) -> Source:
    """The source the ``[fetch]`` config section names; FetchError(kind="config") when it is wrong."""
    spec = str(fetch_cfg.get("source", "")).strip()
    timeout_s = float(fetch_cfg.get("timeout_s", 600.0))
    if spec == "dvc":
        return DvcSource(
            str(fetch_cfg.get("repo") or "").strip(),
            rev=str(fetch_cfg.get("rev", "")),
            path=str(fetch_cfg.get("path") or "models/production"),
            remote=str(fetch_cfg.get("remote", "")),
            remote_config=[str(x) for x in fetch_cfg.get("remote_config") or []],
            dvc_config=str(fetch_cfg.get("dvc_config", "")),
            timeout_s=timeout_s,
        )
    if spec == "wandb":
        return WandbSource(str(fetch_cfg.get("artifact", "")), timeout_s=timeout_s, api=wandb_api)
    if spec.startswith("folder:") and spec[len("folder:") :].strip():
        return FolderSource(spec[len("folder:") :].strip())
    raise FetchError(f"fetch.source {spec!r}: expected dvc, wandb or folder:<path>", kind="config")


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
) -> Verified:
    """Check a downloaded model and card before use (see the module doc); FetchError(kind="refused")
    naming the file (by its name) and the problem. ``expect_size`` = (height, width)."""
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
        marker, staged_card = tmp / _MARKER, tmp / CARD_FILE
        if marker.is_file() and staged_card.is_file() and not (tmp / MODEL_FILE).exists() and target.is_file():
            with contextlib.suppress(OSError, ValueError, CardError):
                want = json.loads(marker.read_text())["model_sha256"]
                if sha256_file(target) == want and read_card(staged_card)["model_sha256"] == want:
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


@contextlib.contextmanager
def _no_guard() -> Iterator[None]:
    yield


def _install(tmp: Path, target: Path, sha: str, guard: Callable[[], contextlib.AbstractContextManager]) -> None:
    """Swap ``tmp/model.onnx`` + ``tmp/model.json`` (verified) into ``target`` and its card:
    model first, then card, each rename fsynced, a marker making a crash in between recoverable."""
    card_target = card_path_for(target)
    for name in (MODEL_FILE, CARD_FILE):
        _durable(tmp / name)
    atomic_write(tmp / _MARKER, json.dumps({"model_sha256": sha}), durable=True)
    with guard():
        os.replace(tmp / MODEL_FILE, target)
        fsync_dir(target.parent)
        os.replace(tmp / CARD_FILE, card_target)
        fsync_dir(target.parent)


# --------------------------------------------------------------------------- fetch


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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
            latest = source.latest()
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
            for name in (MODEL_FILE, CARD_FILE):
                if (download / name).is_file():
                    os.replace(download / name, tmp / name)
        except OSError as e:
            return finish("failed", f"{desc}: cannot stage the download in {target.parent}: {e}")
        try:
            ok = verify_model_files(
                tmp / MODEL_FILE,
                tmp / CARD_FILE,
                threads=threads,
                frame=frame,
                selftest_png=selftest_png,
                selftest_max_s=selftest_max_s,
                expect_size=expect_size,
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
            _install(tmp, target, ok.model_sha256, swap_guard or _no_guard)
        except OSError as e:
            if (tmp / MODEL_FILE).exists():  # nothing was replaced
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
