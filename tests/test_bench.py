"""`autosink bench edge|all` (`make bench`): the edge latency worker on a tiny exported model, the
bench.json schema, the no-op `dvc repro` guard. Nothing here asserts a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from autosink.cli import build_parser, main
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
    }


def test_bench_all_writes_the_report(tmp_path, repo_root, monkeypatch, capsys):
    """`bench all --quick` plumbing with the measurements faked: bench.json's schema and the table."""

    def fake_compare(root, params, model, *, iterations, warmup, frames=16):
        edge, base = _fake_latency(2.0, "mobilenet_v3_small"), _fake_latency(24.0, "resnet50")
        return {
            **bench.latency_keys(edge, base),
            "edge": edge,
            "resnet50": base,
            "seconds": {"edge": 1.0},
            "input_mismatch": [],
        }

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
    table = capsys.readouterr().out
    assert "12.00x" in table and "200.0 images/s" in table and "1.50 s" in table


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
