"""DDP through the real ``autosink train`` entry point: two CPU processes (gloo) on a tiny store.

Lightning's DDP launcher starts rank 1 by running the same command again (``LOCAL_RANK=1
autosink train``); both ranks train, and only rank 0 writes the results: the checkpoint,
``metrics/train.json``, the run record, the wandb run, and the threshold chosen once in the
closed loop. Both ranks' output lands in one stdout (rank 1 inherits rank 0's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from autosink.learn.decision import DEFAULT_THRESHOLDS
from autosink.learn.training import load_trained
from tests.train_fixtures import tiny_params, write_store

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend (DDP on CPU)",
)


def ddp_project(repo_root: Path, root: Path) -> None:
    """A project folder as the train stage reads it: feature store, splits, params.yaml, the edge
    config (the closed loop's controller), and a dvc.yaml marking the project root."""
    store, splits = write_store(root / "tiny")
    (root / "data").mkdir()
    shutil.move(store, root / "data/feature-store")
    shutil.move(splits, root / "data/splits")
    (root / "edge").mkdir()
    shutil.copy(repo_root / "edge/config.toml", root / "edge/config.toml")
    (root / "dvc.yaml").write_text("stages: {}\n")
    params = tiny_params(repo_root)
    params["train"].update(strategy="ddp", accelerator="cpu", devices=2, num_nodes=1, threshold="closed-loop")
    params["train"]["replay"]["share"] = 0  # weights=none: no base model, nothing to replay
    params["train"]["decision"]["sessions"] = 1
    params["train"]["wandb"].update(mode="offline", dir=".", log_model=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def ddp_run(repo_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    ddp_project(repo_root, root)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "DVC_EXP_NAME")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    for key in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # keep W&B's staging out of ~
        env[key] = str(root / key.lower())
    # a launcher's variables (torchrun's, a SLURM job's) would make Lightning wait for ranks it
    # did not start: this run is Lightning's own launcher on one machine, as `dvc exp run` gives
    launcher = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in env.items() if k not in launcher and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    # the console script DVC's stage runs; Lightning starts rank 1 by running it again
    script = shutil.which("autosink", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "autosink.cli"]
    started = time.perf_counter()
    proc = subprocess.run(
        [*command, "train", "--quiet"], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, proc.stdout, proc.stderr, seconds


def test_both_ranks_train(ddp_run):
    root, out, err, seconds = ddp_run
    print(f"ddp train: {seconds:.1f} s")
    assert "Starting with 2 processes" in err, err  # Lightning: both ranks joined the process group
    assert "distributed_backend=gloo" in err, err
    assert out.count("train: rank 1/2 done; rank 0 writes the results") == 1, out
    assert "rank 0/2" not in out, out


def test_only_rank_zero_writes_the_results(ddp_run):
    root, out, err, _ = ddp_run
    # one summary line: the code path that writes the checkpoint, metrics and run record ran once
    assert out.count("train: mobilenet_v3_small 1 epochs") == 1, out
    assert out.count("epoch 0: train loss") == 1, out
    metrics = json.loads((root / "metrics/train.json").read_text())
    record = json.loads((root / "runs/stages/train.json").read_text())
    assert record["wandb_run_id"] == metrics["wandb_run_id"] and metrics["wandb_run_id"].startswith("train-")
    # one wandb run (rank 1's logger is Lightning's dummy), the one the metrics name
    runs = sorted(root.rglob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(metrics["wandb_run_id"]), runs
    # one checkpoint, holding what the metrics say; Lightning's state saved once
    _, meta = load_trained(root / "models/model.ckpt")
    assert meta["threshold"] == metrics["threshold"] and meta["wandb_run_id"] == metrics["wandb_run_id"]
    assert sorted(p.name for p in (root / "models").iterdir()) == ["checkpoints", "model.ckpt"]
    assert sorted(p.name for p in (root / "models/checkpoints").iterdir()) == ["best.ckpt", "last.ckpt", "run.json"]
    assert json.loads((root / "models/checkpoints/run.json").read_text())["complete"] is True
    history = pd.read_csv(root / "metrics/train/history.csv")
    assert list(history["epoch"]) == [0]


def test_threshold_is_chosen_once(ddp_run):
    root, out, _, _ = ddp_run
    assert out.count("train: threshold ") == 1, out
    assert "closed loop on 1 tuning sessions" in out
    decision = pd.read_csv(root / "metrics/train/decision.csv")
    assert list(decision["threshold"]) == [float(t) for t in DEFAULT_THRESHOLDS]  # one sweep, written once
    _, meta = load_trained(root / "models/model.ckpt")
    assert meta["threshold_rule"].startswith("closed loop on 1 tuning sessions")
    assert float(meta["threshold"]) in set(decision["threshold"])


@pytest.mark.parametrize(
    "env, zero",
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
        ({"RANK": "3"}, False),  # torchrun, any rank but the first
        ({"SLURM_PROCID": "1"}, False),  # srun
        ({"LOCAL_RANK": "1"}, False),  # a rank Lightning's own launcher started
        ({"NODE_RANK": "1"}, False),  # the main process of the second node
    ],
)
def test_only_global_rank_zero_clears_a_finished_run(env, zero):
    from autosink.learn.training import _launched_as_rank_zero

    assert _launched_as_rank_zero(env) is zero
