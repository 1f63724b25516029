"""Where the production model comes from: the sources a fetch downloads from (:func:`make_source`,
the ``[fetch]`` config section).

* ``dvc``: ``dvc get <repo> models/production --rev <commit> -o <temp>``, the promoted folder of
  the DVC project itself, at a revision (the repository's default branch unless ``rev`` says
  otherwise). ``remote`` / ``remote_config`` / ``dvc_config`` point it at a remote other than the
  committed default (a plain ``dvc get`` of a git URL knows only the committed ``.dvc/config``).
  The ``dvc`` and ``git`` commands run as subprocesses (:mod:`autosink.core.proc`, at a lower CPU
  priority than the faucet): nothing of DVC is imported here.
* ``wandb``: the W&B artifact ``<entity>/<project>/autosink-model:production`` (what
  ``autosink promote`` logs), via ``wandb.Api().artifact(...).download(...)``; needs
  ``WANDB_API_KEY``. ``wandb`` is imported only by this source.
* ``folder:<path>``: a folder holding ``model.onnx`` and ``model.json`` (a mounted share, a USB
  stick, tests).

Which pair a fetch takes from the promoted folder follows the name ``model.path`` gives the
model (:func:`promoted_files`): ``model.onnx`` + ``model.json`` (fp32), or ``model.int8.onnx`` +
``model.int8.json`` for a Pi configured for the int8 model (promote publishes both pairs).

Each source says cheaply what it would deliver (:class:`Latest`: a git commit, an artifact
version, the card's sha256) and downloads it into a new folder. :class:`FetchError`, the error of
every step of a fetch, lives here, below the other fetch modules.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autosink.core.fileio import NotRegularFileError, not_regular, open_regular
from autosink.core.modelcard import CardError, card_path_for, read_card
from autosink.core.proc import CommandError, kill_group, run

__all__ = [
    "FetchError",
    "Latest",
    "Source",
    "DvcSource",
    "WandbSource",
    "FolderSource",
    "make_source",
    "promoted_files",
    "precision_of",
    "MODEL_FILE",
    "CARD_FILE",
    "PROMOTION_FILE",
]

MODEL_FILE = "model.onnx"  # the names inside a promoted folder / artifact
CARD_FILE = "model.json"
PROMOTION_FILE = "promotion.json"
_HEX40 = re.compile(r"[0-9a-f]{40}")
_PROMOTED_NAME = re.compile(r"model(?:\.(int8))?\.onnx")  # model.onnx, model.int8.onnx: what promote publishes


def promoted_files(model_path: str | os.PathLike[str]) -> tuple[str, str]:
    """The model file and its card to take from a promoted folder for a Pi whose ``model.path`` is
    ``model_path``: its own name when it is one the folder holds (``model.onnx``, or
    ``model.int8.onnx`` -> ``model.int8.onnx`` + ``model.int8.json``); any other name
    (``sink.onnx``) gets the fp32 ``model.onnx`` + ``model.json``, as it always did."""
    name = Path(model_path).name
    if _PROMOTED_NAME.fullmatch(name):
        return name, card_path_for(name).name
    return MODEL_FILE, CARD_FILE


def precision_of(model_file: str) -> str:
    """The precision a promoted file name stands for: ``model.int8.onnx`` -> ``int8``,
    ``model.onnx`` -> ``fp32`` (a card without ``precision`` is fp32)."""
    m = _PROMOTED_NAME.fullmatch(model_file)
    return (m.group(1) if m else None) or "fp32"


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
    the model's sha256 when the source knows it (a W&B artifact's metadata is its card);
    ``files``: the model and its card to deliver (:func:`promoted_files`; the fetch sets it)."""

    ref: str | None
    model_sha256: str | None = None
    version: str | None = None
    files: tuple[str, str] = (MODEL_FILE, CARD_FILE)


class Source(Protocol):
    def describe(self) -> str: ...

    def latest(self, files: tuple[str, str] = (MODEL_FILE, CARD_FILE)) -> Latest:
        """What the source would deliver of ``files`` (the model and its card)."""
        ...

    def download(self, dest: Path, latest: Latest) -> dict[str, Any]:
        """Put ``latest.files`` (at least) into the new folder ``dest``; return provenance."""
        ...


# --------------------------------------------------------------------------- subprocesses


def _command(
    cmd: list[str],
    *,
    timeout_s: float,
    cwd: str | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> subprocess.CompletedProcess:
    """:func:`autosink.core.proc.run` at a lower CPU priority than the faucet, unchecked (the
    caller reads the exit status); a missing program or a timeout is a FetchError."""
    if shutil.which(cmd[0]) is None:  # behind `nice`, a missing program would only be nice's exit 127
        raise FetchError(f"`{cmd[0]}` not found")
    try:
        return run(cmd, cwd=cwd, timeout_s=timeout_s, check=False, nice=True, on_start=on_start)
    except CommandError as e:
        raise FetchError(str(e)) from None


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

    def latest(self, files: tuple[str, str] = (MODEL_FILE, CARD_FILE)) -> Latest:
        """The commit (``dvc get`` brings the whole folder, whichever ``files`` are wanted)."""
        if not self.repo:
            self.repo = _default_repo()
        rev = self.rev or "HEAD"
        if _HEX40.fullmatch(rev):
            return Latest(rev)
        proc = _command(
            ["git", "ls-remote", self.repo, rev], timeout_s=min(self.timeout_s, 120.0), on_start=self._started
        )
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
        proc = _command(cmd, timeout_s=self.timeout_s, cwd=str(dest.parent), on_start=self._started)
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
            kill_group(proc)


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

    def latest(self, files: tuple[str, str] = (MODEL_FILE, CARD_FILE)) -> Latest:
        api = self._api()
        try:
            art = api.artifact(self.artifact, type="model")
        except FetchError:
            raise
        except Exception as e:  # wandb raises CommError, ValueError, requests errors, ...
            raise FetchError(f"cannot look up {self.artifact}: {type(e).__name__}: {_first_line(e)}") from None
        self._art = art
        ref = f"{getattr(art, 'version', '?')}@{getattr(art, 'digest', '?')}"
        meta = getattr(art, "metadata", None)
        # The metadata is model.json (the fp32 card, as promote logs it): it says nothing of another
        # file (model.int8.onnx), so the sha256 shortcut is skipped for that; an artifact version
        # already fetched (its ref in the fetch record) is still not downloaded again.
        if files[0] != MODEL_FILE or not isinstance(meta, Mapping):
            return Latest(ref)
        sha = meta.get("model_sha256")
        return Latest(ref, sha if isinstance(sha, str) else None, str(meta["version"]) if meta.get("version") else None)

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
    """A folder that holds ``model.onnx`` and ``model.json`` (a mounted share, a USB stick), and
    possibly ``model.int8.onnx`` and ``model.int8.json``; it copies only the pair wanted."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def describe(self) -> str:
        return f"folder {self.folder}"

    def latest(self, files: tuple[str, str] = (MODEL_FILE, CARD_FILE)) -> Latest:
        if not self.folder.is_dir():
            raise FetchError(f"{self.folder}: no such folder")
        stats = []
        for name in files:
            with contextlib.suppress(OSError):
                st = os.stat(self.folder / name)
                stats.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        ref = ",".join(stats) or None  # the same files again: not downloaded (nor refused) again
        card_file = self.folder / files[1]
        if not_regular(card_file):  # a FIFO would block read_card; download() refuses it
            return Latest(ref)
        try:
            card = read_card(card_file)
        except CardError:
            return Latest(ref)  # verification says what is wrong, with the rest
        return Latest(ref, card["model_sha256"], str(card["version"]))

    def download(self, dest: Path, latest: Latest) -> dict[str, Any]:
        dest.mkdir(parents=True, exist_ok=True)
        for name in (*latest.files, PROMOTION_FILE):
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
        proc = _command(["git", "-c", f"safe.directory={cwd}", "remote", "get-url", "origin"], timeout_s=30.0, cwd=cwd)
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
