"""Workspaces: a project folder, as git, DVC and the pipeline leave it.

- :func:`copy_project`: a fresh git+DVC scratch copy of the project (the benchmarks', the closed
  loop's and the end-to-end tests' sandbox), :func:`tool_env` the environment its commands run
  with (this interpreter's tools first on PATH), :func:`clone_episode` a distinct episode for its lake;
- :func:`read_metrics`, :func:`read_run_record`: what a `dvc repro` there wrote;
- :func:`is_git`, :func:`git`, :func:`is_dvc`: is a folder a git / DVC repository of its own.

Every command runs through :mod:`autosink.core.proc`. The top level imports only the standard
library and that module: :mod:`autosink.ops.bench` imports this one, and the bench's edge worker
(a process that must not import torch) imports the bench.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

from autosink.core.proc import CommandError, output, run

__all__ = [
    "tool_env",
    "copy_project",
    "clone_episode",
    "read_metrics",
    "read_run_record",
    "is_git",
    "git",
    "is_dvc",
]


def tool_env() -> dict[str, str]:
    """This process's environment with this interpreter's tools (autosink, dvc) first on PATH."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }


def copy_project(
    src_root: Path, dst: Path, conf_overrides: dict[str, dict] | None = None, remote: Path | None = None
) -> dict:
    """A fresh git+DVC copy of the project's files (as a clone would have them), its configs shrunk.

    ``conf_overrides`` maps a file under conf/ to the keys to change in it (top-level keys of that
    file; a nested mapping replaces the whole value). Returns the environment to run the copy's
    commands with (:func:`tool_env`, wandb offline, a private DVC remote).
    """
    import yaml

    files = output(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=src_root).split()
    for rel in files:
        if (src_root / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_root / rel, dst / rel)
    env = {
        **tool_env(),
        "WANDB_MODE": "offline",
        "AUTOSINK_DVC_REMOTE": str(remote or dst.parent / "dvc-remote"),
    }
    for name, changes in (conf_overrides or {}).items():
        conf_file = dst / "conf" / name
        conf = yaml.safe_load(conf_file.read_text())
        unknown = set(changes) - set(conf)
        if unknown:
            raise KeyError(f"{conf_file}: no such keys to override: {sorted(unknown)}")
        conf.update(changes)
        conf_file.write_text(yaml.safe_dump(conf, sort_keys=False))
    for cmd in (
        ["autosink", "params", "compose"],
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.email", "bench@autosink.invalid"],
        ["git", "config", "user.name", "autosink bench"],
        ["autosink", "remote", "init"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "scratch copy"],
    ):
        run(cmd, cwd=dst, env=env)
    return env


def clone_episode(src: Path, lake: Path, shift: timedelta) -> Path:
    """Write a copy of an episode shifted in time: a distinct episode with the same frames."""
    from autosink.core.episode import episode_stem, read_episode, write_episode

    ep = read_episode(src, check_frames=False)
    meta = ep.meta
    meta.dishwashing_start = meta.dishwashing_start + shift
    for it in meta.interactions:
        it.timestamp = it.timestamp + shift
    stem = episode_stem(meta.interactions[0].timestamp if meta.interactions else meta.dishwashing_start)
    return write_episode(
        lake / f"{stem}.zip", meta, [ep.read_frame_bytes(n) for n in ep.frame_names], expected_size=None
    )


def read_metrics(root: Path, name: str) -> dict:
    """``<root>/metrics/<name>.json``: a stage's headline numbers."""
    return json.loads((root / "metrics" / f"{name}.json").read_text())


def read_run_record(root: Path, stage: str) -> dict:
    """What a stage's last run in ``root`` did (:data:`autosink.stages.RUNS`)."""
    from autosink.stages import RUNS

    return json.loads((root / RUNS / f"{stage}.json").read_text())


def is_git(root: Path) -> bool:
    """Whether ``root`` is the top of a git repository (not merely inside a parent's)."""
    try:
        done = run(["git", "rev-parse", "--show-toplevel"], cwd=root, check=False)
    except CommandError:  # no git
        return False
    return done.returncode == 0 and Path(done.stdout.strip()).resolve() == Path(root).resolve()


def git(root: Path, *args: str) -> str | None:
    """A git query's output, or None outside a git repository (root itself, not a parent's) or
    when it fails."""
    if not is_git(root):
        return None
    try:
        return output(["git", *args], cwd=root) or None
    except CommandError:
        return None


def is_dvc(root: Path) -> bool:
    """Whether ``root`` is a DVC repository (has its own ``.dvc``)."""
    return (root / ".dvc").is_dir()
