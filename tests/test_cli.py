"""The `autosink` console command: --help everywhere, clear errors, lake check verdicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autosink.cli import build_parser, main

SUBCOMMANDS = [
    [],
    ["simulate"],
    ["extract"],
    ["label"],
    ["label", "build"],
    ["label", "serve"],
    ["prepare"],
    ["validate-data"],
    ["lake"],
    ["lake", "check"],
    ["params"],
    ["params", "compose"],
    ["params", "check"],
    ["remote"],
    ["remote", "init"],
    ["bench"],
    ["bench", "incremental"],
    ["bench", "train"],
    ["base"],
    ["train"],
    ["evaluate"],
    ["validate-model"],
    ["export"],
    ["promote"],
    ["water"],
    ["quantize"],
    ["bench", "edge"],
    ["bench", "all"],
    ["loop"],
    ["plots"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "autosink")
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0
    assert "usage: autosink" in capsys.readouterr().out


def test_every_subcommand_is_listed():
    parser = build_parser()
    listed = {w[0] for w in SUBCOMMANDS if w}
    actions = [a for a in parser._actions if a.dest == "command"]
    assert set(actions[0].choices) == listed


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "autosink.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "lake" in out.stdout
    exe = subprocess.run([str(Path(sys.executable).parent / "autosink"), "--help"], capture_output=True, text=True)
    assert exe.returncode == 0 and "simulate" in exe.stdout


def test_missing_params_file_is_a_clear_error(tmp_path, capsys):
    assert main(["extract", "--params", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "make params" in err


def test_loop_refuses_a_used_workdir_and_bad_settings(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "x").write_text("a previous run")
    assert main(["loop", "--workdir", str(tmp_path / "old")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "old" / "x").read_text() == "a previous run"  # nothing touched
    assert main(["loop", "--rounds", "0", "--workdir", str(tmp_path / "new")]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_lake_check_on_missing_path(tmp_path, capsys):
    assert main(["lake", "check", str(tmp_path / "missing.zip")]) == 1
    assert "BAD" in capsys.readouterr().out


def test_lake_check_verdicts_and_exit_codes(tmp_path, capsys):
    from datetime import datetime

    from tests.lakes import make_episode

    good = make_episode(tmp_path, datetime(2024, 7, 6, 17, 25, 40), [0, 1], [1, 1], size=(640, 480))
    assert main(["lake", "check", str(good)]) == 0
    assert capsys.readouterr().out.startswith("OK")
    (tmp_path / "20240707_000000.zip").write_bytes(b"junk")
    assert main(["lake", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("OK") and out[1].startswith("BAD")
    assert "20240707_000000.zip" in out[1]
    small = make_episode(tmp_path / "s", datetime(2024, 7, 8, 0, 0, 0), [0], [0])
    assert main(["lake", "check", str(small)]) == 1  # 16x12 frames are not camera frames
    assert main(["lake", "check", "--any-size", str(small)]) == 0


def test_label_serve_refuses_network_bind_without_token(monkeypatch, capsys):
    monkeypatch.delenv("AUTOSINK_LABEL_TOKEN", raising=False)
    assert main(["label", "serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "token" in capsys.readouterr().err


def test_lake_check_names_devices_fifos_and_sockets_at_once(tmp_path):
    """`autosink lake check /dev/zero` read forever (GBs), a FIFO hung: now one BAD line each."""
    from tests.special_files import WORDS, make_special, run_isolated

    fifo, sock = make_special(tmp_path / "fifo.zip", "fifo"), make_special(tmp_path / "sock.zip", "socket")
    res = run_isolated(
        "import sys; from autosink.cli import main; sys.exit(main(sys.argv[1:]))",
        "lake",
        "check",
        "/dev/zero",
        str(fifo),
        str(sock),
        timeout=60,
    )
    assert res.returncode == 1, res.stderr
    lines = sorted(res.stdout.splitlines())
    why = "not a regular file (an episode is a zip file or a folder)"
    assert lines == sorted(
        f"BAD  {name}  path: is {WORDS[kind]}, {why}"
        for name, kind in (("/dev/zero", "chardev"), (fifo, "fifo"), (sock, "socket"))
    )
    assert "0 ok, 3 bad" in res.stderr
