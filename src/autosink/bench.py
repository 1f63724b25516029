"""Benchmarks that run the real pipeline in a scratch copy of the project.

``autosink bench incremental`` answers: does the cost of ``dvc repro`` after one new
episode track the new data, or the size of the lake? It builds lakes of several sizes
(copies of the sample lake's episodes, shifted in time so each is a distinct episode),
runs the pipeline once, adds one episode, and times the second run. It prints measured
numbers; nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import yaml

from autosink.episode import episode_stem, find_episodes, read_episode, write_episode


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> str:
    """Run a command, returning stdout+stderr; on failure raise with the whole output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}) in {cwd}:\n{out}")
    return out


def copy_project(src_root: Path, dst: Path, conf_overrides: dict[str, dict] | None = None,
                 remote: Path | None = None) -> dict:
    """A fresh git+DVC copy of the project's files (as a clone would have them), its configs shrunk.

    ``conf_overrides`` maps a file under conf/ to the keys to change in it (top-level keys of that
    file; a nested mapping replaces the whole value). Returns the environment to run the copy's
    commands with (this interpreter's tools first on PATH, wandb offline, a private DVC remote).
    """
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=src_root,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (src_root / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_root / rel, dst / rel)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "WANDB_MODE": "offline", "DVC_NO_ANALYTICS": "1",
           "AUTOSINK_DVC_REMOTE": str(remote or dst.parent / "dvc-remote")}
    for name, changes in (conf_overrides or {}).items():
        conf_file = dst / "conf" / name
        conf = yaml.safe_load(conf_file.read_text())
        unknown = set(changes) - set(conf)
        if unknown:
            raise KeyError(f"{conf_file}: no such keys to override: {sorted(unknown)}")
        conf.update(changes)
        conf_file.write_text(yaml.safe_dump(conf, sort_keys=False))
    run(["autosink", "params", "compose"], dst, env)
    run(["git", "init", "-q", "-b", "main"], dst, env)
    run(["git", "config", "user.email", "bench@autosink.invalid"], dst, env)
    run(["git", "config", "user.name", "autosink bench"], dst, env)
    run(["autosink", "remote", "init"], dst, env)
    run(["git", "add", "-A"], dst, env)
    run(["git", "commit", "-q", "-m", "scratch copy"], dst, env)
    return env


def clone_episode(src: Path, lake: Path, shift: timedelta) -> Path:
    """Write a copy of an episode shifted in time: a distinct episode with the same frames."""
    ep = read_episode(src, check_frames=False)
    meta = ep.meta
    meta.dishwashing_start = meta.dishwashing_start + shift
    for it in meta.interactions:
        it.timestamp = it.timestamp + shift
    stem = episode_stem(meta.interactions[0].timestamp if meta.interactions else meta.dishwashing_start)
    return write_episode(lake / f"{stem}.zip", meta, [ep.read_frame_bytes(n) for n in ep.frame_names],
                         expected_size=None)


def _metrics(root: Path, name: str) -> dict:
    return json.loads((root / "metrics" / f"{name}.json").read_text())


def incremental(repo_root: Path, sizes: list[int], work: Path) -> list[dict]:
    """Time `dvc repro` after adding one episode to lakes of each size (real-data mode, `dvc add`ed lake)."""
    # A tiny sample lake (only its cases and a few templates are used), and the data gate off:
    # cloned episodes are near-duplicates by construction.
    tiny = {"sim/default.yaml": {"users": 1, "sessions_per_user": 2, "case_frames": 2},
            "validate/default.yaml": {"enforce": False, "wandb": {"mode": "disabled"}}}
    results = []
    for size in sizes:
        root = work / f"lake-{size}" / "autosink"
        root.mkdir(parents=True)
        env = copy_project(repo_root, root, tiny)
        run(["autosink", "params", "compose", "data=real"], root, env)
        run(["dvc", "repro", "simulate"], root, env)
        templates = find_episodes([root / "data/sample-lake"])
        lake = root / "data/data-lake"
        lake.mkdir(parents=True, exist_ok=True)
        for i in range(size + 1):
            clone_episode(templates[i % len(templates)], lake if i < size else root, timedelta(days=1 + i))
        extra = sorted(root.glob("*.zip"))[0]
        run(["dvc", "add", "data/data-lake"], root, env)
        t0 = time.perf_counter()
        run(["dvc", "repro"], root, env)
        first = time.perf_counter() - t0
        frames = _metrics(root, "extract")["frames"]

        shutil.move(str(extra), lake / extra.name)
        t0 = time.perf_counter()
        run(["dvc", "add", "data/data-lake"], root, env)
        add_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run(["dvc", "repro"], root, env)
        again = time.perf_counter() - t0
        ext, lab = _metrics(root, "extract"), _metrics(root, "labels")
        results.append({
            "episodes": size, "frames": frames, "full_repro_s": round(first, 2), "dvc_add_s": round(add_s, 2),
            "repro_after_one_s": round(again, 2), "extracted": ext["episodes_extracted"],
            "extract_reused": ext["episodes_reused"], "relabelled": lab["episodes_relabelled"],
            "label_reused": lab["episodes_reused"],
        })
        print(_row(results[-1]), flush=True)
    return results


HEADER = ("episodes", "frames", "full_repro_s", "dvc_add_s", "repro_after_one_s", "extracted", "relabelled")


def _row(r: dict) -> str:
    return "  ".join(f"{r[k]:>{len(k)}}" for k in HEADER)


def main_incremental(sizes: list[int], keep: Path | None, json_out: Path | None) -> int:
    from autosink.config import project_root

    repo = project_root()
    work = keep or Path(__import__("tempfile").mkdtemp(prefix="autosink-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print("  ".join(HEADER))
    try:
        results = incremental(repo, sizes, work)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if json_out:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
    print("(repro_after_one_s should stay flat as the lake grows: only the new episode is extracted and labelled)")
    return 0


def train_throughput(params: dict, backbones: list[str], batches: int = 6, warmup: int = 2,
                     threads: int | None = None) -> list[dict]:
    """Training images/s of each backbone at the configured input size (forward, backward and
    AdamW step on resized frames, as one training step does) and the per-epoch time this means
    for the current training split."""
    import torch

    from autosink.model import WaterNet

    model_cfg, data_cfg, train_cfg = params["model"], params["data"], params["train"]
    torch.set_num_threads(threads or os.cpu_count() or 1)
    h, w, bs = int(model_cfg["input_height"]), int(model_cfg["input_width"]), int(train_cfg["batch_size"])
    split = Path("data/splits/train.csv")
    n_train = sum(1 for _ in split.open()) - 1 if split.exists() else None
    rows = []
    for name in backbones:
        net = WaterNet(name, h, w, int(data_cfg["frame_height"]), int(data_cfg["frame_width"]))
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x, y = torch.rand(bs, 3, h, w), (torch.rand(bs) > 0.5).float()
        seconds = 0.0
        for i in range(warmup + batches):
            t0 = time.perf_counter()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net.logits_from_resized(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= warmup:
                seconds += time.perf_counter() - t0
        ips = batches * bs / seconds
        rows.append({"backbone": name, "input": [h, w], "batch_size": bs, "threads": torch.get_num_threads(),
                     "images_per_s": round(ips, 1), "train_frames": n_train,
                     "epoch_s": round(n_train / ips, 1) if n_train else None,
                     "parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2)})
    return rows


def main_train(backbones: list[str], batches: int, json_out: Path | None) -> int:
    from autosink.config import load_params, project_root

    os.chdir(project_root())
    params = load_params()
    print(f"training throughput, {params['model']['input_height']}x{params['model']['input_width']} input, "
          f"batch {params['train']['batch_size']}, {os.cpu_count()} CPU threads (forward + backward + AdamW)")
    print(f"  {'backbone':<20} {'params':>8} {'images/s':>9} {'s/epoch':>8}")
    rows = []
    for name in backbones:
        row = train_throughput(params, [name], batches=batches)[0]
        rows.append(row)
        epoch = f"{row['epoch_s']:.1f}" if row["epoch_s"] is not None else "n/a"
        print(f"  {name:<20} {row['parameters_m']:>7.2f}M {row['images_per_s']:>9.1f} {epoch:>8}", flush=True)
    if rows[0]["train_frames"]:
        print(f"  (s/epoch for the {rows[0]['train_frames']} frames of data/splits/train.csv)")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0
