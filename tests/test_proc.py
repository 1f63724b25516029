"""The subprocess helper (core/proc.py): errors name the command, timeouts kill the whole group,
and git_revision tells code changes from pipeline outputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from autosink.core.proc import CommandError, git_revision, output, run


def test_output_and_environment(tmp_path):
    assert output([sys.executable, "-c", "import os; print(os.environ['GIT_TERMINAL_PROMPT'])"]) == "0"
    done = run([sys.executable, "-c", "import sys; print(sys.stdin.read()[::-1])"], input="abc")
    assert done.stdout.strip() == "cba"
    done = run([sys.executable, "-c", "import os; print(os.getcwd())"], cwd=tmp_path)
    assert done.stdout.strip() == str(tmp_path)


def test_failure_names_the_command_and_shows_its_output(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('out-line'); sys.exit('err-line')"]
    with pytest.raises(CommandError) as err:
        run(cmd, cwd=tmp_path)
    assert err.value.returncode == 1 and "out-line" in err.value.output and "err-line" in err.value.output
    assert "failed (exit 1)" in str(err.value) and str(tmp_path) in str(err.value) and "err-line" in str(err.value)
    assert run(cmd, check=False).returncode == 1  # unchecked: the caller reads the exit code


def test_a_missing_program_is_named():
    with pytest.raises(CommandError, match="`no-such-program-xyz` not found"):
        run(["no-such-program-xyz", "--version"], check=False)


def test_a_timeout_kills_the_command_and_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    with pytest.raises(CommandError, match="took longer than 2 s"):
        run([sys.executable, "-c", code], timeout_s=2)
    assert time.monotonic() - t0 < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild dies with the group (it may linger as a zombie briefly)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{child}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the child of a timed-out command survived")


def test_git_revision_outside_git_is_unknown(tmp_path):
    assert git_revision(tmp_path) == "unknown"


def test_git_revision_is_dirty_for_code_not_for_pipeline_outputs(tmp_path):
    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    for rel in ("src/code.py", "dvc.lock", "metrics/eval.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("v1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "c")
    head = git_revision(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    (tmp_path / "dvc.lock").write_text("v2\n")  # what `dvc repro` changes
    (tmp_path / "metrics/eval.json").write_text("v2\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.json").write_text("{}\n")
    assert git_revision(tmp_path) == head
    (tmp_path / "src/code.py").write_text("v2\n")
    assert git_revision(tmp_path / "src") == f"{head}-dirty"  # from a subfolder too
    (tmp_path / "src/code.py").write_text("v1\n")
    (tmp_path / "new.py").write_text("untracked\n")
    assert git_revision(tmp_path) == f"{head}-dirty"
