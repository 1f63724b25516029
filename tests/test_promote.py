"""Promotion of the candidate model to models/production, and rollback (autosink.ops.promote).

The candidate files are fabricated (a tiny ONNX model, its card, a fake checkpoint, a case
verdict): no pipeline runs. The fast tests use a plain folder (no git, no DVC, W&B disabled);
the slow one a scratch git+DVC copy of the project with a private remote and offline W&B.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from autosink.core.modelcard import make_card, sha256_file, write_card
from autosink.ops.promote import PromotionError, _run, production_status, promote, rollback
from autosink.ops.workspace import copy_project, git, is_dvc, is_git
from tests.edge_fixtures import write_tiny_model

CASES = {"tap_on_hands": {"accuracy": 0.96, "frames": 40}, "dishes_in_sink": {"accuracy": 0.9, "frames": 30}}


def make_candidate(
    root: Path,
    version: str,
    *,
    scale: float = 100.0,
    passed: bool = True,
    failures: tuple[str, ...] = (),
    judged: str | None = None,
    card_sha: str | None = None,
    card_ckpt: str | None = None,
) -> dict:
    """Write models/model.onnx, model.json, model.ckpt and reports/cases.json as the pipeline would."""
    models = root / "models"
    onnx = write_tiny_model(models / "model.onnx", card=False, scale=scale)
    ckpt = models / "model.ckpt"
    ckpt.write_bytes(f"fake lightning checkpoint for {version}".encode() * 100)
    ckpt_sha = sha256_file(ckpt)
    onnx_sha = sha256_file(onnx)
    write_card(
        models / "model.json",
        make_card(
            model_sha256=card_sha or onnx_sha,
            backbone="tiny-roi-brightness",
            version=version,
            threshold=0.4,
            data_version="data-abc123",
            git_revision="0123abcd",
            metrics={"test_f1": 0.91},
            checkpoint_sha256=card_ckpt or ckpt_sha,
        ),
    )
    (root / "reports").mkdir(parents=True, exist_ok=True)
    production = root / "models" / "production" / "model.onnx"  # the champion the gate compared with
    champion = {"model_sha256": sha256_file(production)} if production.is_file() else None
    (root / "reports" / "cases.json").write_text(
        json.dumps(
            {
                "passed": passed,
                "failures": list(failures),
                "checkpoint_sha256": judged or ckpt_sha,
                "cases": CASES,
                "champion": champion,
            }
        )
    )
    return {"onnx": onnx_sha, "ckpt": ckpt_sha, "version": version}


@pytest.fixture
def plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder that is neither a git nor a DVC repository; W&B off."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    root = tmp_path / "plain"
    root.mkdir()
    return root


def test_refuses_missing_candidate(plain: Path) -> None:
    make_candidate(plain, "v-a")
    (plain / "models" / "model.ckpt").unlink()
    (plain / "reports" / "cases.json").unlink()
    with pytest.raises(PromotionError) as e:
        promote(plain)
    msg = str(e.value)
    assert "models/model.ckpt" in msg and "reports/cases.json" in msg and "models/model.onnx" not in msg
    assert "dvc repro" in msg
    assert not (plain / "models" / "production").exists()


def test_refuses_failed_gate_listing_failures(plain: Path) -> None:
    make_candidate(
        plain,
        "v-a",
        passed=False,
        failures=["tap_on_hands: accuracy 0.71 < 0.90", "dishes_in_sink: accuracy 0.55 < 0.85"],
    )
    with pytest.raises(PromotionError, match="failed the case gate") as e:
        promote(plain)
    assert "tap_on_hands: accuracy 0.71 < 0.90" in str(e.value)
    assert "dishes_in_sink: accuracy 0.55 < 0.85" in str(e.value)
    # and the way forward: what to look at, what to change, how to try the candidate anyway
    assert "next steps" in str(e.value) and "python edge/run.py --model models/model.onnx" in str(e.value)
    assert not (plain / "models" / "production").exists()


def test_refuses_gate_verdict_about_another_checkpoint(plain: Path) -> None:
    make_candidate(plain, "v-a", judged="f" * 64)
    with pytest.raises(PromotionError, match="judged another model") as e:
        promote(plain)
    assert "f" * 64 in str(e.value)
    assert not (plain / "models" / "production").exists()


def test_refuses_a_verdict_against_another_production_model(plain: Path) -> None:
    """The gate compared with no production model; production changed since: re-gate first."""
    make_candidate(plain, "v-a")
    promote(plain)
    make_candidate(plain, "v-b", scale=50.0)
    cases = json.loads((plain / "reports" / "cases.json").read_text())
    (plain / "reports" / "cases.json").write_text(json.dumps({**cases, "champion": None}))
    with pytest.raises(PromotionError, match=r"compared the candidate with production model none.*validate_model"):
        promote(plain)


def test_refuses_card_exported_from_another_checkpoint(plain: Path) -> None:
    make_candidate(plain, "v-a", card_ckpt="e" * 64)
    with pytest.raises(PromotionError, match="exported from checkpoint e{64}"):
        promote(plain)


def test_refuses_card_that_describes_another_onnx(plain: Path) -> None:
    make_candidate(plain, "v-a", card_sha="a" * 64)
    with pytest.raises(PromotionError, match="describes another model") as e:
        promote(plain)
    assert "a" * 64 in str(e.value)
    assert not (plain / "models" / "production").exists()


def test_rollback_without_previous_refuses(plain: Path) -> None:
    with pytest.raises(PromotionError, match="no previous production model to roll back to"):
        rollback(plain)
    make_candidate(plain, "v-a")
    promote(plain)
    with pytest.raises(PromotionError, match="no previous production model to roll back to"):
        rollback(plain)


def test_refuses_when_tracked_models_are_not_pulled(plain: Path) -> None:
    (plain / ".dvc").mkdir()  # looks like a DVC repo (no DVC command runs before the check)
    (plain / "models").mkdir()
    (plain / "models" / "previous.dvc").write_text("outs: []\n")
    make_candidate(plain, "v-a")
    for action in (promote, rollback):
        with pytest.raises(PromotionError, match=r"dvc pull models/previous.dvc"):
            action(plain)
    assert not (plain / "models" / "production").exists()


@pytest.mark.parametrize("swap", ["renameat2", "three renames"])
def test_promote_rollback_cycle_in_a_plain_folder(plain: Path, monkeypatch: pytest.MonkeyPatch, swap: str) -> None:
    if swap == "three renames":  # no renameat2 (not Linux): the fallback swap
        monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    a = make_candidate(plain, "v-a", scale=100.0)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    res = promote(plain)
    assert res["status"] == "promoted" and res["dvc"] is None and res["wandb"] == {"mode": "disabled"}
    prod, prev = plain / "models" / "production", plain / "models" / "previous"
    rec = json.loads((prod / "promotion.json").read_text())
    assert rec["experiment"] == "exp-a" and rec["git_revision"] is None and rec["version"] == "v-a"

    assert promote(plain)["status"] == "unchanged"  # same model again: a no-op

    b = make_candidate(plain, "v-b", scale=50.0)
    assert a["onnx"] != b["onnx"]
    promote(plain, experiment="exp-b")
    assert sha256_file(prod / "model.onnx") == b["onnx"] and sha256_file(prev / "model.onnx") == a["onnx"]

    c = make_candidate(plain, "v-c", scale=25.0)
    promote(plain)  # previous is replaced by the last production (b); a is gone
    assert sha256_file(prod / "model.onnx") == c["onnx"] and sha256_file(prev / "model.onnx") == b["onnx"]
    assert sorted(p.name for p in (plain / "models").iterdir()) == [
        "model.ckpt",
        "model.json",
        "model.onnx",
        "previous",
        "production",
    ]  # no temp folders left

    res = rollback(plain)
    assert res["version"] == "v-b" and sha256_file(prod / "model.onnx") == b["onnx"]
    assert json.loads((prod / "promotion.json").read_text())["experiment"] == "exp-b"
    rollback(plain)
    assert sha256_file(prod / "model.onnx") == c["onnx"] and sha256_file(prev / "model.onnx") == b["onnx"]

    status = production_status(plain)
    assert status["production"]["version"] == "v-c" and status["production"]["model_sha256"] == c["onnx"]
    assert status["previous"]["version"] == "v-b" and status["previous"]["experiment"] == "exp-b"
    assert status["production"]["promoted_at"].endswith("Z")


def test_workspace_checks_and_command_errors(tmp_path: Path) -> None:
    """git/DVC checks are about the folder itself, not a parent; a failing command is a
    PromotionError naming it and showing its output."""
    root, sub = tmp_path / "repo", tmp_path / "repo" / "sub"
    sub.mkdir(parents=True)
    assert not is_git(root) and git(root, "rev-parse", "HEAD") is None and not is_dvc(root)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    assert is_git(root) and not is_git(sub) and git(sub, "rev-parse", "--show-toplevel") is None
    assert git(root, "rev-parse", "--show-toplevel") == str(root.resolve())
    assert git(root, "rev-parse", "HEAD") is None  # no commit yet: fails, None
    with pytest.raises(PromotionError, match=r"(?s)`git no-such-subcommand` failed \(exit 1\):\n.*no-such-subcommand"):
        _run(["git", "no-such-subcommand"], root)
    with pytest.raises(PromotionError, match="`no-such-program-xyz add x` failed: `no-such-program-xyz` not found"):
        _run(["no-such-program-xyz", "add", "x"], root)


# --------------------------------------------------------------------------- git + DVC + W&B


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def _shas(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def _dvc(root: Path, *args: str) -> str:
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_promote_and_rollback_in_a_dvc_project(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, remote = tmp_path / "p", tmp_path / "remote"
    env = copy_project(repo_root, root, remote=remote)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # keep W&B's staging out of ~
        monkeypatch.setenv(key, str(tmp_path / key.lower()))
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    prod, prev = root / "models" / "production", root / "models" / "previous"

    # first promotion: files, record, DVC tracking, push, git staging, offline W&B artifact
    a = make_candidate(root, "v-a", scale=100.0)
    res = promote(root)
    assert res["status"] == "promoted"
    assert {n: sha256_file(prod / n) for n in ("model.onnx", "model.ckpt")} == {
        "model.onnx": a["onnx"],
        "model.ckpt": a["ckpt"],
    }
    assert (prod / "model.json").read_bytes() == (root / "models" / "model.json").read_bytes()
    rec = json.loads((prod / "promotion.json").read_text())
    first = _shas(prod)
    head = _git(root, "rev-parse", "HEAD").strip()
    assert rec["experiment"] == "main" and rec["git_revision"] == head and rec["data_version"] == "data-abc123"
    assert rec["version"] == "v-a" and rec["model_sha256"] == a["onnx"]
    assert rec["gate"] == {
        "passed": True,
        "failures": [],
        "case_accuracy": {"tap_on_hands": 0.96, "dishes_in_sink": 0.9},
    }
    assert (root / "models" / "production.dvc").is_file() and not (root / "models" / "previous.dvc").exists()
    assert res["dvc"]["pushed"] is True
    assert "/production" in (root / "models" / ".gitignore").read_text().split()
    staged = set(_git(root, "diff", "--cached", "--name-only").split())
    assert staged == {"models/production.dvc", "models/.gitignore"}
    assert res["git_hint"] == "git commit -m 'Promote model v-a to production' models/production.dvc models/.gitignore"
    assert "in sync" in _dvc(root, "status", "-c", "models/production.dvc")
    assert len([p for p in (remote / "files" / "md5").rglob("*") if p.is_file()]) >= 5  # 4 files + dir listing

    wb = res["wandb"]
    assert "wandb_error" not in res, res.get("wandb_error")
    assert wb["mode"] == "offline" and wb["artifact"] == "autosink-model" and wb["aliases"] == ["production", "v-a"]
    run_dir = Path(wb["run_dir"])
    assert run_dir.parent == root / "wandb" and run_dir.name.startswith("offline-run-")
    log = next(run_dir.glob("run-*.wandb")).read_bytes()  # the offline run's record log (protobuf)
    for needle in (b"autosink-model", b"production", b"v-a", wb["digest"].encode(), b"model.onnx"):
        assert needle in log, needle

    # second promotion: the first becomes previous
    monkeypatch.setenv("WANDB_MODE", "disabled")
    b = make_candidate(root, "v-b", scale=50.0)
    res = promote(root, experiment="exp-b")
    assert res["previous"]["model_sha256"] == a["onnx"] and res["production"]["model_sha256"] == b["onnx"]
    assert (root / "models" / "previous.dvc").is_file()
    assert "in sync" in _dvc(root, "status", "-c", "models/production.dvc", "models/previous.dvc")
    assert promote(root)["status"] == "unchanged"

    # rollback restores the first exactly; a second rollback returns to the second
    _git(root, "commit", "-q", "-m", "promote v-b")
    res = rollback(root)
    assert res["version"] == "v-a"
    assert _shas(prod) == first  # every file as it was promoted, promotion.json included
    assert sha256_file(prev / "model.onnx") == b["onnx"]
    assert set(_git(root, "diff", "--cached", "--name-only").split()) == {
        "models/production.dvc",
        "models/previous.dvc",
    }
    _dvc(root, "status", "models/production.dvc", "models/previous.dvc")
    rollback(root)
    assert sha256_file(prod / "model.onnx") == b["onnx"] and sha256_file(prev / "model.onnx") == a["onnx"]
    assert _git(root, "diff", "--cached", "--name-only").strip() == ""  # back to the committed state

    # a push failure leaves the promotion in place and says so
    _dvc(root, "remote", "modify", "--local", "local", "url", str(tmp_path / "remote-file"))
    (tmp_path / "remote-file").write_text("not a folder")
    c = make_candidate(root, "v-c", scale=25.0)
    with pytest.raises(PromotionError, match="push failed") as e:
        promote(root)
    assert "in place locally" in str(e.value) and "dvc push" in str(e.value)
    assert e.value.result["dvc"]["pushed"] is False
    assert sha256_file(prod / "model.onnx") == c["onnx"] and sha256_file(prev / "model.onnx") == b["onnx"]
    assert os.path.isfile(root / "models" / "production.dvc")


def test_production_keeps_the_image_features_of_its_training_frames(plain: Path) -> None:
    """validate_data's drift reference: the features of the frames the model was trained on only."""
    (plain / "data" / "validation").mkdir(parents=True)
    (plain / "data" / "splits").mkdir(parents=True)
    (plain / "data" / "validation" / "image_features.csv").write_text(
        "path,brightness\n0/a.png,10\n1/b.png,20\n0/c.png,30\n"
    )
    (plain / "data" / "splits" / "train.csv").write_text("path,label\n0/a.png,0\n0/c.png,0\n")
    make_candidate(plain, "v-a")
    promote(plain)
    assert (plain / "models" / "production" / "data_features.csv").read_text().splitlines() == [
        "path,brightness",
        "0/a.png,10",
        "0/c.png,30",
    ]


def make_int8(root: Path, candidate: dict, *, gate_passed: bool = True, quantized_from: str | None = None) -> str:
    """models/model.int8.onnx + model.int8.json as the quantize stage writes them (a tiny model
    stands in for the quantised file); returns its sha256."""
    int8 = write_tiny_model(root / "models" / "model.int8.onnx", card=False, scale=7.0)
    sha = sha256_file(int8)
    write_card(
        root / "models" / "model.int8.json",
        make_card(
            model_sha256=sha,
            backbone="tiny-roi-brightness",
            version=f"{candidate['version']}-int8",
            threshold=0.4,
            precision="int8",
            quantized_from=quantized_from or candidate["onnx"],
            calibration={"frames": 64, "data_version": "fs-1", "split": "val"},
            metrics={"gate_passed": gate_passed},
        ),
    )
    return sha


def test_the_int8_model_goes_with_its_fp32_model(plain: Path) -> None:
    a = make_candidate(plain, "v-a")
    int8_a = make_int8(plain, a)
    res = promote(plain)
    prod, prev = plain / "models" / "production", plain / "models" / "previous"
    assert res["status"] == "promoted" and sha256_file(prod / "model.int8.onnx") == int8_a
    assert (prod / "model.int8.json").read_bytes() == (plain / "models" / "model.int8.json").read_bytes()
    rec = json.loads((prod / "promotion.json").read_text())
    assert rec["int8"]["model_sha256"] == int8_a and rec["int8"]["version"] == "v-a-int8"
    assert rec["int8"]["calibration"]["data_version"] == "fs-1" and rec["int8_skipped"] is None
    assert production_status(plain)["production"]["int8"] == {"model_sha256": int8_a, "version": "v-a-int8"}
    assert promote(plain)["status"] == "unchanged"

    # its own case gate failed: the fp32 model is promoted alone (no stale int8 beside it)
    b = make_candidate(plain, "v-b", scale=50.0)
    make_int8(plain, b, gate_passed=False)
    res = promote(plain)
    assert sha256_file(prod / "model.onnx") == b["onnx"] and not (prod / "model.int8.onnx").exists()
    assert json.loads((prod / "promotion.json").read_text())["int8"] is None
    assert "failed its case gate" in json.loads((prod / "promotion.json").read_text())["int8_skipped"]
    assert sha256_file(prev / "model.int8.onnx") == int8_a  # it left with its fp32 model
    rollback(plain)
    assert sha256_file(prod / "model.onnx") == a["onnx"] and sha256_file(prod / "model.int8.onnx") == int8_a

    # no int8 made: promoted without one
    c = make_candidate(plain, "v-c", scale=25.0)
    for name in ("model.int8.onnx", "model.int8.json"):
        (plain / "models" / name).unlink()
    promote(plain)
    assert sha256_file(prod / "model.onnx") == c["onnx"] and not (prod / "model.int8.onnx").exists()
    assert production_status(plain)["production"]["int8"] is None


def test_refuses_a_stale_or_broken_int8_model(plain: Path) -> None:
    a = make_candidate(plain, "v-a")
    make_int8(plain, a, quantized_from="d" * 64)  # quantised from an earlier model.onnx
    with pytest.raises(PromotionError, match=r"model\.int8\.onnx was quantised from d{64}.*dvc repro"):
        promote(plain)
    make_int8(plain, a)
    (plain / "models" / "model.int8.onnx").write_bytes(b"half a model")
    with pytest.raises(PromotionError, match=r"model\.int8\.json describes another model"):
        promote(plain)
    (plain / "models" / "model.int8.json").unlink()
    with pytest.raises(PromotionError, match=r"int8 model card is invalid"):
        promote(plain)
    assert not (plain / "models" / "production").exists()
