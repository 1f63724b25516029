"""End to end: the real `dvc repro` / `dvc exp run` / `dvc push` / `dvc pull` in a scratch copy of the repo.

The real config is composed, then shrunk (few sessions, few case frames), so the
whole module runs in a minute or two. The tests share one copy and run in order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import yaml

from autosink.core.proc import output
from autosink.data.extract import recorded_sha256
from autosink.data.labels import write_human_labels
from autosink.ops.workspace import clone_episode, copy_project
from tests.conftest import CHROMIUM

pytestmark = pytest.mark.slow

TINY_SIM = {"users": 1, "sessions_per_user": 4, "case_frames": 2}
TINY_PREPARE = {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}  # a session for each split
# One kitchen cannot pass the data gate's balance checks: report, don't block (the gate itself
# is tested in tests/test_validate_data.py).
TINY_VALIDATE = {"enforce": False, "wandb": {"mode": "disabled"}}
# Training shrunk to seconds: tiny input, one epoch of two batches, wandb offline (a real local run).
TINY_MODEL = {"input_height": 48, "input_width": 48}
TINY_TRAIN = {
    "max_epochs": 1,
    "limit_train_batches": 2,
    "limit_val_batches": 2,
    "batch_size": 8,
    "accelerator": "cpu",
    "devices": 1,
    "early_stopping_patience": 0,
    "replay": {"users": 1, "every": 8, "share": 0.5},
    "decision": {"sessions": 1},
    "wandb": {"mode": "offline", "project": "autosink", "log_model": True, "dir": "."},
}
# The base model: one kitchen to train on and one to validate on, every 8th frame, one epoch.
TINY_BASE = {
    "users": 1,
    "val_users": 1,
    "sessions_per_user": 1,
    "every": 8,
    "train": {"max_epochs": 1, "batch_size": 8, "balance": "loss"},
}
TINY_CONF = {
    "sim/default.yaml": TINY_SIM,
    "prepare/default.yaml": TINY_PREPARE,
    "validate/default.yaml": TINY_VALIDATE,
    "model/_base.yaml": TINY_MODEL,  # every backbone's input size
    "base/default.yaml": TINY_BASE,
    "train/default.yaml": TINY_TRAIN,
    "evaluate/default.yaml": {"invariance": {"sessions": 1, "every": 8}},
    "water/default.yaml": {"sessions": 2},
}
STAGES = (
    "simulate",
    "extract",
    "label",
    "prepare",
    "validate_data",
    "base",
    "train",
    "evaluate",
    "validate_model",
    "export",
    "water",
    "quantize",
)


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def metrics(root: Path, name: str) -> dict:
    return json.loads((root / "metrics" / f"{name}.json").read_text())


def report(root: Path, name: str) -> dict:
    """The stage's full result (reports/<name>.json: per case, per episode, per session...)."""
    return json.loads((root / "reports" / f"{name}.json").read_text())


def label_episode(root: Path, labels: dict[int, int]) -> str:
    """Human labels for the first extracted episode, stamped with its lake file's sha256 (as the labeler saves)."""
    episode = sorted((root / "data/extracted/episodes").glob("*.json"))[0].stem
    write_human_labels(
        root / "data/labels" / f"{episode}.csv", labels, recorded_sha256(root / "data/extracted", episode)
    )
    return episode


def run_record(root: Path, stage: str) -> dict:
    """What the stage's last run did (runs/stages/: work counters and times, not DVC outputs)."""
    return json.loads((root / "runs/stages" / f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def project(repo_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    root = base / "autosink"
    env = copy_project(repo_root, root, TINY_CONF, remote=base / "remote")
    return root, env, base / "remote"


def test_repro_runs_every_stage_then_nothing(project):
    root, env, _ = project
    out = output(["dvc", "repro"], cwd=root, env=env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out, out
    sim, ext, prep, val = (metrics(root, n) for n in ("simulate", "extract", "prepare", "data_validation"))
    lab = report(root, "labels")
    assert sim["episodes"] > 0 and ext["episodes_ok"] == sim["episodes"]
    assert ext["frames"] == sim["frames"] and ext["episodes_quarantined"] == 0
    assert len(pd.read_csv(root / "data/extracted/frames.csv")) == sim["frames"]
    assert any((root / "data/cases").iterdir())
    # labels: every frame, scored against the hidden truth
    assert lab["frames"] == sim["frames"] and lab["truth_episodes"] == sim["episodes"]
    assert 0.5 < lab["auto_label_agreement"] <= 1.0
    assert lab["frames_labeled"] == lab["per_class"]["0"] + lab["per_class"]["1"]
    manifest = pd.read_csv(root / "data/feature-store/manifest.csv", dtype={"episode": str})
    positives = sorted((root / "data/feature-store/1").iterdir())
    assert len(positives) == lab["per_class"]["1"]
    # frames are written out of the lake once: into the store, not into data/extracted
    assert not list((root / "data/extracted").rglob("*.png"))
    # splits: no session in two splits
    sessions = [
        set(pd.read_csv(root / f"data/splits/{s}.csv", dtype=str)["dishwashing_id"]) for s in ("train", "val", "test")
    ]
    assert not (sessions[0] & sessions[1] or sessions[0] & sessions[2] or sessions[1] & sessions[2])
    assert prep["train"]["frames"] > 0 and len(manifest) == lab["frames"]
    assert val["n_frames"] == lab["frames_labeled"] and "passed" in val
    assert "window.drawDashboard(" in (root / "reports/data_validation.html").read_text()  # evidently's HTML

    # training, evaluation, case gate and export: real files with real content
    train = metrics(root, "train")
    ev, cases = report(root, "eval"), report(root, "cases")
    assert run_record(root, "train")["epochs"] == 1 and 0 < train["threshold"] < 1
    base = metrics(root, "base")  # the base model trained on its own rendered kitchens
    assert base["epochs"] == 1 and base["train_pairs"] > 0 and (root / "models/base/model.ckpt").stat().st_size
    # the threshold was chosen in the closed loop, and the choice is on record (in the model card)
    assert json.loads((root / "models/model.json").read_text())["threshold_rule"].startswith("closed loop")
    assert len(pd.read_csv(root / "metrics/train/decision.csv")) > 5 and "tune_withheld_pct" in train
    # metrics hold numbers only; measured times live outside DVC's outputs
    assert all(isinstance(v, (int, float)) for k, v in {**train, **base}.items() if k != "wandb_run_id")
    # the wandb run that logged the training is on record, in the metrics and the model card
    assert train["wandb_run_id"].startswith("train-") and list((root / "wandb").glob(f"*-{train['wandb_run_id']}"))
    assert json.loads((root / "models/model.json").read_text())["wandb_run_id"] == train["wandb_run_id"]
    assert run_record(root, "train")["images_per_s"] > 0
    inv = ev["water_invariance"]
    assert inv["pairs"] > 0 and 0 <= inv["mean_abs_diff"] <= 1 and 0 <= inv["accuracy_water_off"] <= 1
    assert ev["n"] == prep["test"]["frames"] and {"accuracy", "f1", "auroc"} <= set(ev)
    assert set(ev["per_episode"]) == set(pd.read_csv(root / "data/splits/test.csv", dtype=str)["episode"])
    assert len(pd.read_csv(root / "metrics/eval/confusion.csv")) == ev["n"]
    assert len(pd.read_csv(root / "metrics/train/history.csv")) == 1
    case_names = sorted(p.name for p in (root / "data/cases").iterdir())
    assert sorted(cases["cases"]) == case_names and isinstance(cases["passed"], bool)
    assert list((root / "wandb").glob("offline-run-*")), "no offline wandb run recorded"
    card = json.loads((root / "models/model.json").read_text())
    assert card["model_sha256"] == hashlib.sha256((root / "models/model.onnx").read_bytes()).hexdigest()
    assert card["version"] == f"{card['backbone']}-{card['model_sha256'][:10]}"  # stable across retrains
    assert card["metrics"]["eval"]["accuracy"] == ev["accuracy"] and card["data_version"] == lab["version"]
    sess = ort.InferenceSession(str(root / "models/model.onnx"), providers=["CPUExecutionProvider"])
    p = sess.run(None, {"frames": np.zeros((2, 480, 640, 3), "uint8")})[0]
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()
    water = report(root, "water")["total"]
    assert water["litres_always_on"] > water["litres_oracle"] > 0 and "savings_pct" in water
    # the water headline never shows savings alone: withheld need, false-offs and the verdict beside it
    assert {"savings_pct", "withheld_pct", "false_offs_per_10min", "passed"} <= set(metrics(root, "water"))
    assert (root / "reports/water_session.png").stat().st_size > 10_000
    plots = output(["dvc", "plots", "show", "--json"], cwd=root, env=env)
    for name in ("training_loss", "confusion", "roc"):
        assert name in plots

    again = output(["dvc", "repro"], cwd=root, env=env)
    assert "Running stage" not in again, again
    shown = output(["dvc", "metrics", "show", "--json"], cwd=root, env=env)
    assert "auto_label_agreement" in shown and "episodes_quarantined" in shown
    # each metrics file holds a few headline numbers: `dvc metrics show` fits a 120-column terminal
    declared = sorted(
        {
            p
            for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values()
            for m in stage.get("metrics", [])
            for p in (m if isinstance(m, dict) else {m: None})
        }
    )
    assert len(declared) >= 8
    for path in declared:
        table = output(["dvc", "metrics", "show", path], cwd=root, env=env).rstrip("\n").splitlines()
        assert max(map(len, table)) <= 120, "\n".join(table)
    output(["git", "add", "-A"], cwd=root, env=env)
    output(["git", "commit", "-q", "-m", "repro"], cwd=root, env=env)


def test_a_fresh_clone_reproduces_every_output_byte_for_byte(project, tmp_path):
    """The committed dvc.lock is what a fresh run makes: a git clone in another folder (other
    absolute paths, new mtimes, a new wandb run) reruns the whole pipeline and every DVC output
    hash, metrics file and the model card come out identical, so git sees no change."""
    root, env, _ = project
    clone = tmp_path / "clone"
    output(["git", "clone", "-q", str(root), str(clone)], cwd=tmp_path, env=env)
    out = output(["dvc", "repro"], cwd=clone, env=env)
    # every stage whose outputs live in DVC's cache (not in git) reran; the stages after them found
    # their inputs byte-identical to the lock and their git-tracked outputs present: nothing to do
    for stage in ("simulate", "extract", "label", "prepare", "validate_data", "base", "train", "export"):
        assert f"Running stage '{stage}'" in out, stage
    assert output(["git", "status", "--porcelain"], cwd=clone, env=env) == "", output(
        ["git", "diff", "--stat"], cwd=clone, env=env
    )


def _drawn_charts(browser, page_file: Path) -> list[int]:
    """Open the page in headless Chromium with the network cut; the inked pixels of each chart."""
    ink = """() => Array.from(document.querySelectorAll('canvas')).map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && Math.min(d[i], d[i + 1], d[i + 2]) < 200) n++;
        return n; })"""
    context = browser.new_context(offline=True)
    try:
        page = context.new_page()
        page.goto(page_file.resolve().as_uri())
        page.wait_for_timeout(2000)
        return page.evaluate(ink)
    finally:
        context.close()


def test_plots_page_draws_offline(project, tmp_path, request):
    """`autosink plots` (make plots): every plot draws with no network; DVC's own page does not."""
    root, env, _ = project
    pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no `chromium` on PATH (apt-get install -y chromium)")
    # pytest-playwright's session browser: a second sync_playwright() beside it cannot start
    browser = request.getfixturevalue("browser")
    try:
        output(["autosink", "plots", "-o", str(tmp_path / "plots")], cwd=root, env=env)
    except RuntimeError as e:
        if "cannot download" in str(e):
            pytest.skip(f"the npm registry is out of reach and nothing is cached: {e}")
        raise
    charts = _drawn_charts(browser, tmp_path / "plots/index.html")
    declared = yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
    assert len(charts) == len(declared) and all(n > 500 for n in charts), charts
    output(["dvc", "plots", "show", "-o", str(tmp_path / "cdn")], cwd=root, env=env)
    assert _drawn_charts(browser, tmp_path / "cdn/index.html") == []  # scripts from a CDN: blank offline


def test_human_label_reruns_label_stage_only_for_that_episode(project):
    root, env, _ = project
    episode = label_episode(root, {0: 1, 1: 1})
    out = output(["dvc", "repro"], cwd=root, env=env)
    assert "Running stage 'label'" in out and "Running stage 'extract'" not in out
    lab, work = metrics(root, "labels"), run_record(root, "label")
    assert work["episodes_relabelled"] == 1 and lab["frames_human"] == 2
    # without the human labels the pipeline's outputs are the committed ones again, byte for byte
    (root / "data/labels" / f"{episode}.csv").unlink()
    output(["dvc", "repro"], cwd=root, env=env)
    assert output(["git", "status", "--porcelain"], cwd=root, env=env) == "", output(
        ["git", "diff", "--stat"], cwd=root, env=env
    )


def test_exp_run_reruns_only_what_reads_the_key(project):
    root, env, _ = project
    # case_frames changes only the case sets: simulate reruns, the lake comes out
    # byte-identical, so extract and everything after it are skipped.
    out = output(["dvc", "exp", "run", "-S", f"sim.case_frames={TINY_SIM['case_frames'] + 1}"], cwd=root, env=env)
    assert "Running stage 'simulate'" in out, out
    for stage in ("extract", "label", "prepare", "validate_data"):
        assert f"Running stage '{stage}'" not in out, out
    out = output(["dvc", "exp", "run", "-S", "prepare.seed=7"], cwd=root, env=env)
    assert "Running stage 'prepare'" in out and "Running stage 'label'" not in out, out
    # back to the committed splits: Hydra composes each experiment's params from conf/, so the next
    # one asks for the default seed again, and the seed-7 splits in the workspace would rerun prepare
    output(["git", "checkout", "--", "."], cwd=root, env=env)
    output(["dvc", "checkout", "--force"], cwd=root, env=env)
    # training experiments: a learning rate, another backbone (a Hydra group) -> train onwards only
    for override in ("train.lr=0.0005", "model=resnet18"):
        out = output(["dvc", "exp", "run", "-S", override], cwd=root, env=env)
        assert "Running stage 'train'" in out and "Running stage 'export'" in out, out
        assert "Running stage 'prepare'" not in out and "Running stage 'validate_data'" not in out, out
    assert json.loads((root / "models/model.json").read_text())["backbone"] == "resnet18"
    table = output(["dvc", "exp", "show", "--no-pager", "--csv"], cwd=root, env=env)
    assert "sim.case_frames" in table and "prepare.seed" in table
    assert "train.lr" in table and "model.backbone" in table and "accuracy" in table
    output(["git", "checkout", "--", "."], cwd=root, env=env)
    output(["dvc", "checkout", "--force"], cwd=root, env=env)


def test_push_delete_cache_pull(project):
    root, env, remote = project
    before = tree_digest(root / "data/data-lake")
    store_before = tree_digest(root / "data/feature-store")
    output(["dvc", "push"], cwd=root, env=env)
    assert any(remote.rglob("*")), "nothing reached the local remote"
    for path in (".dvc/cache", "data/data-lake", "data/extracted", "data/feature-store"):
        shutil.rmtree(root / path)
    output(["dvc", "pull"], cwd=root, env=env)
    assert tree_digest(root / "data/data-lake") == before
    assert tree_digest(root / "data/feature-store") == store_before
    assert "up to date" in output(["dvc", "status"], cwd=root, env=env)


def test_round_trip_push_clone_pull_and_an_older_snapshot(project, tmp_path):
    """dvc push, then a second clone: `dvc pull` gives a complete workspace with `dvc status`
    clean, and `git checkout <older rev> && dvc checkout` brings back that snapshot's data."""
    root, env, _ = project
    output(["git", "add", "-A"], cwd=root, env=env)
    output(["git", "commit", "-q", "--allow-empty", "-m", "snapshot A"], cwd=root, env=env)
    output(["dvc", "push"], cwd=root, env=env)
    store_a = tree_digest(root / "data/feature-store")
    episode = label_episode(root, {0: 1, 1: 1})  # snapshot B: other labels
    output(["dvc", "repro"], cwd=root, env=env)
    output(["git", "add", "-A"], cwd=root, env=env)
    output(["git", "commit", "-q", "-m", "snapshot B"], cwd=root, env=env)
    store_b = tree_digest(root / "data/feature-store")
    assert store_b != store_a
    output(["dvc", "push"], cwd=root, env=env)

    clone = tmp_path / "clone"
    output(["git", "clone", "-q", str(root), str(clone)], cwd=tmp_path, env=env)
    output(["autosink", "remote", "init"], cwd=clone, env=env)  # the same remote ($AUTOSINK_DVC_REMOTE)
    output(["dvc", "pull"], cwd=clone, env=env)
    assert "up to date" in output(["dvc", "status"], cwd=clone, env=env)
    assert tree_digest(clone / "data/feature-store") == store_b
    for path in ("models/model.onnx", "models/model.ckpt", "models/base/model.ckpt", "data/data-lake"):
        assert (clone / path).exists(), path
    output(["git", "checkout", "-q", "HEAD~1"], cwd=clone, env=env)
    output(["dvc", "pull"], cwd=clone, env=env)  # the clone's cache has only B: fetch A, then check it out
    assert tree_digest(clone / "data/feature-store") == store_a
    assert "up to date" in output(["dvc", "status"], cwd=clone, env=env)
    # where both snapshots are in the cache, a checkout alone moves between them
    output(["git", "checkout", "-q", "HEAD~1"], cwd=root, env=env)
    output(["dvc", "checkout"], cwd=root, env=env)
    assert tree_digest(root / "data/feature-store") == store_a
    output(["git", "checkout", "-q", "main"], cwd=root, env=env)
    output(["dvc", "checkout"], cwd=root, env=env)
    assert tree_digest(root / "data/feature-store") == store_b
    # back to the labels of snapshot A for the tests after this one
    (root / "data/labels" / f"{episode}.csv").unlink()
    output(["dvc", "repro"], cwd=root, env=env)


def test_closed_loop_round_records_retrains_gates_and_promotes(project, tmp_path):
    """`autosink loop`: weak start, one round of the fleet through the edge, dvc repro, promote.
    The tiny models cannot pass real floors, so this run's gate is opened (floor 0, no
    regression check) to exercise promotion; the gate's rules have their own tests."""
    root, env, _ = project
    work, out_json, out_png = tmp_path / "loop", tmp_path / "loop.json", tmp_path / "loop.png"
    log = output(
        [
            "autosink",
            "loop",
            "--rounds",
            "1",
            "--households",
            "1",
            "--workdir",
            str(work),
            "--regime",
            "warm-dim",
            "--min-case-accuracy",
            "0",
            "--set",
            "validate_model.max_regression=null",
            "--set",
            "validate_model.min_frames=1",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ],
        cwd=root,
        env=env,
    )
    report = json.loads(out_json.read_text())
    (r1,) = report["rounds"]
    assert r1["retrain"] == "scratch" and 0 < r1["round_minutes"] * 60 <= r1["seconds"]  # round 1: from base
    assert r1["fleet"]["sessions"] == 1 and r1["fleet"]["user_interventions"] > 0 and r1["fleet"]["episodes"] > 0
    # dvc repro took in exactly the uploaded episodes; the earlier ones were reused
    assert r1["lake"]["extracted_now"] == r1["fleet"]["episodes"] and r1["lake"]["reused"] > 0
    cand = r1["candidate"]
    assert r1["promoted"] and cand["gate_passed"] and cand["version"] != r1["serving"]["version"]
    copy = work / "project"
    assert len(cand["case_accuracy"]) == len(list((copy / "data/cases").iterdir())) > 0
    assert set(cand["water"]) >= {"savings_pct", "withheld_pct", "false_offs_per_10min", "missed_needs_pct"}
    production = json.loads((copy / "models/production/model.json").read_text())
    assert production["model_sha256"] == cand["sha256"] == report["final"]["sha256"]
    history = output(["git", "log", "--format=%s"], cwd=copy, env=env)
    assert "loop round 1: promote" in history and "loop round 0: starting model (base)" in history
    # the fleet's kitchens and the held-out water sessions under the new light
    assert yaml.safe_load((copy / "params.yaml").read_text())["water"]["regime"] == "warm-dim"
    assert "round 1" in log and "candidate" in log
    assert cv2.imread(str(out_png)).shape[0] > 100


def test_real_lake_switch_is_incremental_and_quarantines(project):
    """Move to data=real with a `dvc add`ed lake, then add one good and one broken episode."""
    root, env, _ = project
    lake = root / "data/data-lake"
    output(["autosink", "params", "compose", "data=real"], cwd=root, env=env)
    output(["dvc", "add", "data/data-lake"], cwd=root, env=env)
    output(["dvc", "repro"], cwd=root, env=env)
    n_before = metrics(root, "extract")["episodes_ok"]

    clone_episode(sorted(lake.glob("*.zip"))[0], lake, timedelta(days=400))
    (lake / "20310101_000000.zip").write_bytes(b"not a zip at all")
    output(["dvc", "add", "data/data-lake"], cwd=root, env=env)
    out = output(["dvc", "repro"], cwd=root, env=env)
    ext, work, lab = metrics(root, "extract"), run_record(root, "extract"), run_record(root, "label")
    assert (work["episodes_extracted"], work["episodes_reused"]) == (1, n_before), work
    assert ext["episodes_ok"] == n_before + 1 and ext["episodes_quarantined"] == 1
    assert (lab["episodes_relabelled"], lab["episodes_reused"]) == (1, n_before), lab
    record = json.loads((root / "data/extracted/quarantine/20310101_000000.json").read_text())
    assert "20310101_000000.zip" in record["reasons"][0]
    assert "quarantined" in out and "20310101_000000" in out
