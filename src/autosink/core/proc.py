"""Running other programs: the one helper behind every subprocess autosink starts (git, dvc,
the bench's worker interpreter, the Pi's model fetch).

Every command runs without a terminal (git and dvc never wait for a password or a browser), in
its own process group (a timeout kills it with its children), with its output captured. Errors
are :class:`CommandError` naming the command and showing the end of its output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: added to every command's environment: no prompt, no analytics
QUIET_ENV = {"GIT_TERMINAL_PROMPT": "0", "DVC_NO_ANALYTICS": "1"}

#: What the pipeline itself writes into tracked files: changes there do not make the code dirty
#: (after every `dvc repro` dvc.lock and the metrics differ from the commit).
PIPELINE_OUTPUTS = ("dvc.lock", "metrics", "reports", "models", "data")


class CommandError(RuntimeError):
    """A command that was not found, failed, or ran past its timeout."""

    def __init__(self, message: str, cmd: Sequence[str], returncode: int | None = None, output: str = "") -> None:
        super().__init__(message)
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output


def _shown(cmd: Sequence[str]) -> str:
    return " ".join(str(part) for part in cmd)


def run(
    cmd: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout_s: float | None = None,
    check: bool = True,
    nice: bool = False,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` and return the finished process (text stdout and stderr).

    ``env``: the whole environment (default: this process's), plus :data:`QUIET_ENV`. ``nice``:
    at a lower CPU priority (the Pi's faucet loop comes first). ``on_start`` gets the running
    process (to kill it from elsewhere). ``check``: raise :class:`CommandError` on a non-zero
    exit. A missing program or a timeout always raises.
    """
    cmd = [str(part) for part in cmd]
    full_env = {**(os.environ if env is None else env), **QUIET_ENV}
    argv = cmd
    if nice and (nice_bin := shutil.which("nice")):
        argv = [nice_bin, "-n", "10", *cmd]
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise CommandError(f"`{cmd[0]}` not found", cmd) from None
    if on_start is not None:
        on_start(proc)
    try:
        out, err = proc.communicate(input=input, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.communicate()
        raise CommandError(f"`{_shown(cmd[:2])} ...` took longer than {timeout_s:g} s (killed)", cmd) from None
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and done.returncode != 0:
        output = (out + err).strip()
        where = f" in {cwd}" if cwd is not None else ""
        raise CommandError(
            f"`{_shown(cmd)}` failed (exit {done.returncode}){where}:\n{output}", cmd, done.returncode, output
        )
    return done


def output(cmd: Sequence[str], **kwargs) -> str:
    """stdout and stderr of :func:`run` (checked), stripped."""
    done = run(cmd, **kwargs)
    return (done.stdout + done.stderr).strip()


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a process started by :func:`run` with all its children (its own process group)."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding ``cwd`` (default: this package's source),
    plus ``-dirty`` when files other than the pipeline's outputs (:data:`PIPELINE_OUTPUTS`)
    changed or untracked, not-ignored ones exist; ``unknown`` outside git (or without git)."""
    where = str(cwd) if cwd is not None else str(Path(__file__).resolve().parent)
    # --no-optional-locks: a status must not take index.lock under a concurrent git command
    git = ["git", "--no-optional-locks"]
    try:
        head = run([*git, "rev-parse", "--verify", "HEAD"], cwd=where, timeout_s=30).stdout.strip()
        status = run(
            [*git, "status", "--porcelain", "--", ":(top)", *(f":(top,exclude){p}" for p in PIPELINE_OUTPUTS)],
            cwd=where,
            timeout_s=30,
        )
    except (CommandError, OSError):
        return "unknown"
    return f"{head}-dirty" if status.stdout.strip() else head
