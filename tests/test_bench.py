"""`autosink bench edge|all` (`make bench`): the edge latency worker on a tiny exported model, the
decision worker (the edge loop on a fake RPi.GPIO), the int8 row, the bench.json schema, the no-op
`dvc repro` guard. Nothing here asserts a time: only that things were measured and reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from autosink.cli import build_parser, main
from autosink.edge.controller import REASONS
from autosink.ops import bench
from autosink.ops.workspace import tool_env

H, W = 48, 64  # a tiny "camera"
TINY = {
    "model": {
        "backbone": "mobilenet_v3_small",
        "input_height": 32,
        "input_width": 32,
        "crop": [8, 4, 56, 44],
        "weights": "none",
    },
    "data": {"frame_height": H, "frame_width": W},
    "export": {"opset": 18},
}
LATENCY_KEYS = {
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "min_ms",
    "max_ms",
    "fps",
    "iterations",
    "warmup",
    "threads",
    "peak_rss_mb",
    "rss_after_imports_mb",
    "rss_after_load_mb",
    "torch_imported",
    "frame_source",
    "distinct_frames",
    "model_mb",
    "input",
    "model_input",
    "crop",
    "backbone",
    "precision",
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A WaterNet exported by the same function as the ResNet-50 baseline (with its card)."""
    return bench.export_baseline(TINY, tmp_path_factory.mktemp("model"), backbone="mobilenet_v3_small")


def _png(path: Path, h: int, w: int, seed: int) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_baseline_export_has_the_configured_input(tiny_model):
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    assert card["input"]["height"] == H and card["input"]["width"] == W
    assert card["input_size"] == [32, 32] and card["crop"] == [8, 4, 56, 44]
    assert card["backbone"] == "mobilenet_v3_small"


def test_edge_latency_on_real_frames(tiny_model, tmp_path):
    frames = [_png(tmp_path / f"{i}.png", H, W, i) for i in range(3)]
    wrong = _png(tmp_path / "big.png", H * 2, W * 2, 9)  # not the model's size: skipped
    r = bench.edge_latency(tiny_model, [*frames, wrong], iterations=20, warmup=2)
    assert LATENCY_KEYS <= set(r)
    assert r["frame_source"] == "real" and r["distinct_frames"] == 3
    assert r["threads"] == 1 and r["iterations"] == 20 and r["input"] == [H, W]
    assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["fps"] == pytest.approx(1000 / r["mean_ms"], rel=0.01)
    assert 0 < r["rss_after_imports_mb"] <= r["peak_rss_mb"]
    assert r["torch_imported"] is False  # the edge process is the edge's imports only
    lo, hi = r["p_water_range"]
    assert 0.0 <= lo <= hi <= 1.0


def test_edge_latency_falls_back_to_synthetic_frames(tiny_model):
    r = bench.edge_latency(tiny_model, [], iterations=3, warmup=0)
    assert r["frame_source"] == "synthetic" and r["iterations"] == 3


def test_missing_model_says_to_run_make_repro(tmp_path, repo_root, monkeypatch, capsys):
    with pytest.raises(FileNotFoundError, match="make repro"):
        bench.edge_latency(tmp_path / "model.onnx")
    monkeypatch.chdir(repo_root)
    assert main(["bench", "edge", "--model", str(tmp_path / "model.onnx")]) == 2
    assert "make repro" in capsys.readouterr().err


def test_bench_frames_prefers_the_feature_store(tmp_path):
    assert bench.bench_frames(tmp_path) == ([], "synthetic")
    cases = [_png(tmp_path / f"data/cases/CASE0{i}/000.png", H, W, i) for i in range(2)]
    assert bench.bench_frames(tmp_path) == (cases, "data/cases")
    store = tmp_path / "data/feature-store"
    paths = [_png(store / f"{i % 2}/f{i:03d}.png", H, W, i) for i in range(40)]
    (store / "manifest.csv").write_text("episode,path\n" + "".join(f"e,{p.relative_to(store)}\n" for p in paths))
    picked, source = bench.bench_frames(tmp_path, n=8)
    assert source == "data/feature-store" and len(picked) == 8 and len(set(picked)) == 8
    assert picked[0] == paths[0] and picked[-1] != paths[7]  # spread over the store, not its first rows


def _config(path: Path, **controller) -> Path:
    """An edge config TOML overriding ``[controller]`` keys (everything else: the edge's defaults)."""
    path.write_text("[controller]\n" + "".join(f"{k} = {v}\n" for k, v in controller.items()))
    return path


def test_decision_worker_runs_the_edge_loop(tiny_model, tmp_path, repo_root):
    """Camera JPEG -> model -> controllers -> valve, through the real EdgeRuntime: the valve's pin
    was written on the fake RPi.GPIO every step and agrees with the controller's decisions."""
    frames = [_png(tmp_path / f"{i}.png", H, W, i) for i in range(3)]
    n, warm = 25, 3
    r = bench.decision_latency(tiny_model, frames, config=repo_root / "edge/config.toml", iterations=n, warmup=warm)
    for key in ("p50_ms", "p99_ms", "decode_p50_ms", "model_p50_ms", "control_p50_ms", "max_ms"):
        assert r[key] > 0, key
    assert r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["frame_source"] == "real" and r["distinct_frames"] == 3 and r["camera"] == [H, W]
    assert r["jpeg_quality"] == bench.JPEG_QUALITY and r["jpeg_kb_mean"] > 0
    assert r["threads"] == 1 and r["opencv_threads"] == 1 and r["torch_imported"] is False
    assert r["config"].endswith("edge/config.toml") and r["controller"]["on_threshold"] == 0.55
    # the loop ran every frame, the model answered every one
    assert r["frames_run"] == n + warm and r["timed_steps"] == n and r["stop_reason"] == "max-frames"
    assert r["model_errors"] == 0 and r["stalls"] == 0
    # the configured GpioValve (gpio:17) drove its pin on every step, and was closed and released at the end
    assert r["valve"].startswith("GpioValve(pin=17") and r["valve_pin"] == 17
    assert r["valve_pin_writes"] >= n + warm and r["valve_closed_at_exit"] is True
    assert r["valve_matches_controller"] is True
    assert r["gpio_input_reads"] >= 2 * (n + warm)  # the reed switch and the button, every step
    assert sum(r["reasons"].values()) == n and set(r["reasons"]) <= set(REASONS)
    lo, hi = r["p_water_range"]
    assert 0.0 <= lo <= hi <= 1.0


def test_decision_worker_follows_the_controller_config(tiny_model, tmp_path):
    """The controller's config decides the valve: eager thresholds open it, impossible ones never."""
    frames = [_png(tmp_path / f"{i}.png", H, W, i) for i in range(2)]
    eager = _config(tmp_path / "eager.toml", on_threshold=0.001, off_threshold=0.0, smoothing=1.0)
    opened = bench.decision_latency(tiny_model, frames, config=eager, iterations=10, warmup=0)
    assert opened["valve_open_steps"] > 0, opened["p_water_range"]
    assert {"model", "hold-min-on"} & set(opened["reasons"])
    never = _config(tmp_path / "never.toml", on_threshold=1.0, off_threshold=0.99)
    shut = bench.decision_latency(tiny_model, [], config=never, iterations=10, warmup=0)
    assert shut["frame_source"] == "synthetic" and shut["valve_open_steps"] == 0
    assert shut["valve_matches_controller"] is True and shut["valve_changes"] == 0


def _project(root: Path, tiny_model: Path) -> Path:
    """A project folder with the tiny model as models/model.onnx and two real frames in data/cases."""
    (root / "models").mkdir(parents=True)
    model = root / "models/model.onnx"
    shutil.copy(tiny_model, model)
    shutil.copy(tiny_model.with_suffix(".json"), root / "models/model.json")
    for i in range(2):
        _png(root / f"data/cases/CASE0{i}/000.png", H, W, i)
    return model


def test_compare_edge_times_the_int8_model_beside_the_model(tiny_model, tmp_path, monkeypatch):
    """With models/model.int8.onnx and its card there, the same run times it too (here a copy of
    the fp32 file: the plumbing, not quantisation), and the full decision latency."""
    model = _project(tmp_path, tiny_model)
    shutil.copy(model, tmp_path / "models/model.int8.onnx")
    card = json.loads((tmp_path / "models/model.json").read_text())
    (tmp_path / "models/model.int8.json").write_text(json.dumps({**card, "precision": "int8"}))

    def tiny_baseline(params, out):  # the ResNet-50 export takes a while: the tiny model stands in
        shutil.copy(tiny_model.with_suffix(".json"), Path(out) / "resnet50.json")
        return Path(shutil.copy(tiny_model, Path(out) / "resnet50.onnx"))

    monkeypatch.setattr(bench, "export_baseline", tiny_baseline)
    report = bench.compare_edge(tmp_path, TINY, Path("models/model.onnx"), iterations=5, warmup=1)
    assert set(bench.REQUIRED_KEYS) <= set(report)
    int8, base, edge = report["int8"], report["resnet50"], report["edge"]
    assert int8["precision"] == "int8" and int8["model"].endswith("model.int8.onnx") and edge["precision"] == "fp32"
    assert int8["frames_from"] == "data/cases" and int8["distinct_frames"] == edge["distinct_frames"] == 2
    assert report["int8_p50_ms"] == int8["p50_ms"] > 0 and report["int8_p99_ms"] > 0
    assert report["int8_speedup_vs_resnet50"] == round(base["p50_ms"] / int8["p50_ms"], 2) > 0
    assert report["int8_speedup_vs_fp32"] == round(edge["p50_ms"] / int8["p50_ms"], 2) > 0
    assert report["int8_target_met"] is (report["int8_speedup_vs_resnet50"] >= bench.INT8_TARGET_SPEEDUP)
    assert report["decision_p50_ms"] > 0 and report["decision_p99_ms"] >= report["decision_p50_ms"]
    assert report["decision"]["frames_from"] == "data/cases" and report["decision"]["config"] == "defaults"
    assert {"int8", "decision", "edge", "resnet50"} <= set(report["seconds"])


def test_compare_edge_without_an_int8_model_says_so(tiny_model, tmp_path, monkeypatch):
    model = _project(tmp_path, tiny_model)
    (tmp_path / "models/model.int8.onnx").write_bytes(model.read_bytes())  # no card: not an int8 model
    timed = []

    def fake_latency(path, frames, *, iterations, warmup):
        timed.append(Path(path).name)
        return _fake_latency(24.0 if "resnet" in str(path) else 2.0, Path(path).stem)

    monkeypatch.setattr(bench, "export_baseline", lambda params, out: Path(out) / "resnet50.onnx")
    monkeypatch.setattr(bench, "edge_latency", fake_latency)
    monkeypatch.setattr(bench, "decision_latency", lambda *a, **k: _fake_decision(3.0, 6.0))
    report = bench.compare_edge(tmp_path, TINY, model, iterations=5, warmup=1)
    assert timed == ["model.onnx", "resnet50.onnx"]
    assert report["int8"] is None and report["int8_speedup_vs_resnet50"] is None and report["int8_p50_ms"] is None
    assert report["int8_target_met"] is None and "model.int8.json missing" in report["int8_note"]
    assert report["decision_p99_ms"] == 6.0 and report["decision_target_met"] is False
    assert report["speedup_vs_resnet50"] == 12.0


def test_format_edge_prints_the_targets():
    edge, base = _fake_latency(2.0, "mobilenet_v3_small"), _fake_latency(60.0, "resnet50")
    fast = bench.edge_report(edge, base, int8=_fake_latency(1.0, "model.int8"), decision=_fake_decision(2.0, 3.0))
    assert fast["int8_speedup_vs_resnet50"] == 60.0 and fast["int8_speedup_vs_fp32"] == 2.0
    assert fast["int8_target_met"] is True and fast["int8_note"] is None
    text = "\n".join(bench.format_edge(fast))
    assert "model.int8.onnx (model.int8)" in text and " int8 " in text
    assert "int8: 60.00x faster than resnet50 fp32 (target >= 25x: met), 2.00x vs the fp32 model" in text
    assert "p50 2.00 ms, p99 3.00 ms (target p99 <= 5 ms on this machine: met)" in text
    assert "decode 0.80 ms, model 1.10 ms, controller+valve 0.100 ms" in text
    assert "valve pin 17 written 15 times, open in 4 of 10 steps; decisions: model 8, hold-min-on 2" in text

    slow = bench.edge_report(edge, base, int8=_fake_latency(3.0, "model.int8"), decision=_fake_decision(4.0, 9.0))
    assert slow["int8_speedup_vs_resnet50"] == 20.0 and slow["int8_target_met"] is False
    text = "\n".join(bench.format_edge(slow))
    assert "(target >= 25x: NOT met)" in text and "(target p99 <= 5 ms on this machine: NOT met)" in text
    assert "int8 is not faster than fp32 on this CPU: p50 3.000 ms (int8) vs 2.000 ms (fp32)" in text

    none = bench.edge_report(edge, base, int8_note="no int8 model beside model.onnx")
    text = "\n".join(bench.format_edge(none))
    assert "int8: no int8 model beside model.onnx" in text and "decision latency: not measured" in text
    assert none["decision_p50_ms"] is None and none["decision_target_met"] is None


def _fake_latency(p50: float, backbone: str) -> dict:
    return {
        "model": f"/x/{backbone}.onnx",
        "backbone": backbone,
        "p50_ms": p50,
        "p90_ms": p50 * 1.1,
        "p99_ms": p50 * 1.5,
        "mean_ms": p50 * 1.05,
        "min_ms": p50 * 0.9,
        "max_ms": p50 * 2,
        "fps": 1000 / p50,
        "peak_rss_mb": 100.0,
        "rss_after_imports_mb": 30.0,
        "rss_after_load_mb": 80.0,
        "torch_imported": False,
        "threads": 1,
        "iterations": 10,
        "warmup": 1,
        "frame_source": "real",
        "frames_from": "data/cases",
        "distinct_frames": 4,
        "model_mb": 6.0,
        "input": [480, 640],
        "model_input": [112, 112],
        "crop": [140, 60, 500, 420],
        "precision": "int8" if backbone.endswith("int8") else "fp32",
    }


def _fake_decision(p50: float, p99: float) -> dict:
    return {
        "threads": 1,
        "camera": [480, 640],
        "jpeg_quality": 90,
        "jpeg_kb_mean": 28.0,
        "frame_source": "real",
        "distinct_frames": 16,
        "warmup": 2,
        "timed_steps": 10,
        "p50_ms": p50,
        "p99_ms": p99,
        "decode_p50_ms": p50 * 0.4,
        "model_p50_ms": p50 * 0.55,
        "control_p50_ms": p50 * 0.05,
        "valve_pin": 17,
        "valve_pin_writes": 15,
        "valve_open_steps": 4,
        "reasons": {"model": 8, "hold-min-on": 2},
        "model_errors": 0,
    }


def test_bench_all_writes_the_report(tmp_path, repo_root, monkeypatch, capsys):
    """`bench all --quick` plumbing with the measurements faked: bench.json's schema and the table."""

    def fake_compare(root, params, model, *, iterations, warmup, frames=16):
        edge, base = _fake_latency(2.0, "mobilenet_v3_small"), _fake_latency(24.0, "resnet50")
        return bench.edge_report(
            edge,
            base,
            int8_note="no int8 model beside model.onnx (model.int8.onnx missing): not measured",
            decision=_fake_decision(2.5, 4.0),
            seconds={"edge": 1.0},
        )

    monkeypatch.setattr(bench, "compare_edge", fake_compare)
    monkeypatch.setattr(
        bench,
        "dvc_noop_repro",
        lambda root: {"up_to_date": True, "repro_s": 1.5, "status_s": 1.0, "ran_stages": [], "changed": False},
    )
    monkeypatch.setattr(
        bench,
        "train_throughput",
        lambda params, names, batches: [
            {
                "backbone": names[0],
                "input": [112, 112],
                "batch_size": 32,
                "threads": 2,
                "images_per_s": 200.0,
                "train_frames": 1000,
                "epoch_s": 5.0,
                "parameters_m": 1.5,
            }
        ],
    )
    monkeypatch.setattr(
        bench,
        "first_step",
        lambda *a: {"cold_s": 9.5, "warm_s": 0.8, "cold_decoded": 40, "warm_decoded": 0, "frames": 40},
    )
    monkeypatch.setattr(bench, "incremental", lambda *a: pytest.fail("--quick must skip the incremental benchmark"))
    monkeypatch.chdir(repo_root)
    out = tmp_path / "bench.json"
    assert main(["bench", "all", "--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(bench.REQUIRED_KEYS) <= set(report)
    assert report["speedup_vs_resnet50"] == 12.0
    assert report["edge_p50_ms"] == 2.0 and report["resnet50_p50_ms"] == 24.0
    for key in (
        "edge_p99_ms",
        "edge_fps",
        "edge_peak_rss_mb",
        "resnet50_p99_ms",
        "dvc_noop_repro_s",
        "train_images_per_s",
        "date",
        "git_revision",
        "seconds",
    ):
        assert report[key] is not None, key
    assert report["incremental"] is None and report["incremental_skipped"] == "--quick"
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert report["versions"]["onnxruntime"] and report["versions"]["torch"]
    assert report["decision_p50_ms"] == 2.5 and report["decision_p99_ms"] == 4.0
    assert report["decision_target_met"] is True and report["decision"]["valve_pin"] == 17
    assert report["int8_speedup_vs_resnet50"] is None and report["int8"] is None
    assert "model.int8.onnx missing" in report["int8_note"]
    table = capsys.readouterr().out
    assert "12.00x" in table and "200.0 images/s" in table and "1.50 s" in table
    assert "p99 4.00 ms (target p99 <= 5 ms on this machine: met)" in table
    assert "model.int8.onnx missing" in table
    if (repo_root / "data/splits/train.csv").exists():  # a workspace after `make repro`
        assert report["train_first_step_cold_s"] == 9.5 and report["train_first_step_warm_s"] == 0.8
        assert "first training step: 9.5 s with the frame cache cold (40 frames decoded), 0.8 s warm" in table
    else:
        assert report["train_first_step_cold_s"] is None and "run `make repro` first" in table


def test_first_step_decodes_every_frame_cold_and_none_warm(repo_root, tmp_path):
    from tests.train_fixtures import tiny_params, write_store

    store, splits = write_store(tmp_path)
    out = bench.first_step(tiny_params(repo_root), splits, store, tmp_path / "cache")
    n = out["frames"]
    assert n == sum(len(pd.read_csv(splits / f"{s}.csv")) for s in ("train", "val"))
    assert out["cold_decoded"] == n and out["warm_decoded"] == 0
    assert out["cold_s"] > 0 and out["warm_s"] > 0


def test_dvc_noop_repro_never_runs_a_stale_pipeline(tmp_path):
    env = tool_env()

    def sh(*cmd):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)

    sh("dvc", "init", "--no-scm", "-q")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  gen:\n    cmd: "
        + json.dumps(f"{sys.executable} -c \"open('out.txt', 'w').write('x')\"")
        + "\n    outs:\n      - out.txt\n"
    )
    stale = bench.dvc_noop_repro(tmp_path)
    assert stale["up_to_date"] is False and stale["repro_s"] is None and "gen" in " ".join(stale["stale"])
    assert not (tmp_path / "out.txt").exists()  # reported, not reproduced
    sh("dvc", "repro", "-q")
    lock = (tmp_path / "dvc.lock").read_bytes()
    noop = bench.dvc_noop_repro(tmp_path)
    assert noop["up_to_date"] is True and noop["repro_s"] >= 0 and noop["returncode"] == 0
    assert noop["ran_stages"] == [] and noop["changed"] is False
    assert (tmp_path / "dvc.lock").read_bytes() == lock


def test_machine_info_and_versions():
    m = bench.machine_info()
    assert m["cpu"] and m["cores"] >= 1 and m["usable_cores"] >= 1 and m["python"].startswith("3.")
    v = bench.versions()
    assert v["onnxruntime"] and v["onnx"] and v["torch"] and v["autosink"]


@pytest.mark.parametrize("words", [["bench", "edge"], ["bench", "all"]], ids=" ".join)
def test_bench_subcommands_have_help(words, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0
    assert "usage: autosink" in capsys.readouterr().out


def test_bench_all_defaults():
    args = build_parser().parse_args(["bench", "all"])
    assert args.quick is False and args.sizes == [10, 40] and args.model == Path("models/model.onnx")
    assert args.json is None  # -> metrics/bench.json in the repository
    assert build_parser().parse_args(["bench", "all", "--quick", "--sizes", "5"]).sizes == [5]
