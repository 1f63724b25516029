"""The int8 edge model: static QDQ quantisation of a (tiny, trained) exported model, its card, and
the edge accepting it (autosink.learn.quantize; the stage itself runs in the e2e pipeline test)."""

from __future__ import annotations

import inspect
import json
import logging
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autosink.core.fileio import sha256_file
from autosink.core.modelcard import card_path_for, read_card, write_card
from autosink.edge.inference import load_model
from autosink.edge.wiring import load_regular_model
from autosink.learn.cases import evaluate_cases, list_cases
from autosink.learn.export import INPUT_NAME, OUTPUT_NAME, ExportError, export_onnx, write_model_card
from autosink.learn.frames import read_frame, read_split
from autosink.learn.quantize import (
    DEFAULTS,
    calibration_rows,
    compare_cases,
    count_qdq,
    decision_summary,
    format_cost,
    int8_path_for,
    preprocessing_nodes,
    quantize_onnx,
    with_int8_defaults,
    write_int8_card,
)
from autosink.learn.training import fit, load_trained
from tests.train_fixtures import H, W, tiny_params, write_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"))


def frames_of(store, split: str) -> np.ndarray:
    table = read_split(store[1] / f"{split}.csv")
    return np.stack([read_frame(store[0] / p, (W, H)) for p in table["path"]])


@pytest.fixture(scope="module")
def fp32(repo_root, store, tmp_path_factory):
    """A tiny trained model, exported with its card as the export stage writes them. resnet18 at
    lr 0.003 tells the yellow square apart in its two steps (p about 0.89 without, 0.985 with).
    The threshold training chose sits on the edge of the upper class (every threshold in the gap
    is perfect on 8 validation frames; the rule takes the candidate nearest 0.5); the card gets the
    middle of the gap, so agreement measures quantisation error, not a coin toss at the edge."""
    out = tmp_path_factory.mktemp("run")
    fit(
        tiny_params(repo_root, ["model=resnet18", "train.lr=0.003"]),
        splits_dir=store[1],
        store_dir=store[0],
        ckpt_dir=out / "ckpts",
        out_ckpt=out / "model.ckpt",
        logger=None,
        progress=False,
        data_version="fs-test",
    )
    net, _ = load_trained(out / "model.ckpt")
    path = export_onnx(net, out / "models" / "model.onnx", height=H, width=W)
    val = read_split(store[1] / "val.csv")
    p = run(path, frames_of(store, "val"))
    y = val["label"].to_numpy()
    threshold = float((p[y == 0].max() + p[y == 1].min()) / 2)
    assert p[y == 0].max() < threshold < p[y == 1].min()
    write_model_card(
        path,
        backbone=net.backbone_name,
        threshold=threshold,
        version="resnet18-test",
        data_version="fs-test",
        height=H,
        width=W,
        metrics={},
        extra={"checkpoint_sha256": sha256_file(out / "model.ckpt")},
        input_size=(net.preprocess.height, net.preprocess.width),
        crop=net.preprocess.crop,
    )
    return path


@pytest.fixture(scope="module")
def int8(fp32, store):
    """fp32 quantised, calibrated on the validation frames, with its card."""
    calib = frames_of(store, "val")
    path = int8_path_for(fp32)
    settings = quantize_onnx(fp32, path, calib)
    card = write_int8_card(
        path,
        fp32,
        calibration={"frames": len(calib), "data_version": "fs-calib-1", "split": "val"},
        quantization=settings,
        metrics={"gate_passed": True},
    )
    return {"path": path, "card": card, "settings": settings}


def session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(path, frames: np.ndarray) -> np.ndarray:
    return session(path).run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(frames)})[0]


# --------------------------------------------------------------------------- the file


def test_int8_file_is_qdq_and_keeps_the_uint8_camera_input(fp32, int8):
    path = int8["path"]
    assert path.name == "model.int8.onnx" and path.parent == fp32.parent
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "model.int8.json",
        "model.int8.onnx",
        "model.json",
        "model.onnx",
    ]  # one file each, no temp or external data left
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    qdq = count_qdq(model)
    assert qdq["QuantizeLinear"] > 0 and qdq["DequantizeLinear"] > 0
    assert {k: int8["settings"][k] for k in qdq} == qdq
    assert int8["settings"]["format"] == "QDQ" and int8["settings"]["per_channel"] is True
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("frames", "p_water")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8  # the camera's frames stay the input
    batch, *rest = inp.type.tensor_type.shape.dim
    assert batch.dim_param and [d.dim_value for d in rest] == [H, W, 3]
    weights = {t.name: t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.INT8 in weights.values()  # int8 weights
    assert path.stat().st_size < fp32.stat().st_size

    rng = np.random.default_rng(5)
    for n in (1, 3):
        p = run(path, rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8))
        assert p.shape == (n,) and p.dtype == np.float32 and bool(((p >= 0) & (p <= 1)).all())


def test_int8_agrees_with_fp32_on_most_frames(fp32, int8, store):
    frames = np.concatenate([frames_of(store, "val"), frames_of(store, "test")])
    threshold = read_card(card_path_for(fp32))["threshold"]
    p32, p8 = run(fp32, frames), run(int8["path"], frames)
    assert np.ptp(p32) > 0.05 and len(set(p32 >= threshold)) == 2  # the model tells the frames apart
    summary = decision_summary(p32, p8, threshold)
    assert summary["frames"] == len(frames) and summary["decision_agreement"] >= 0.9, summary
    assert summary["mean_abs_diff"] < 0.05, summary


def test_preprocessing_stays_float(fp32, int8, tmp_path):
    """Crop, resize and normalisation (every node before the first Conv) take no quantised input;
    the first QuantizeLinear quantises what the first convolution reads."""
    pre = preprocessing_nodes(onnx.load(str(fp32)))
    assert pre and all(n for n in pre)
    model = onnx.load(str(int8["path"]))
    produced_by = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in pre:
            assert all(
                produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in node.input
            ), node.name
    assert int8["settings"]["excluded_nodes"] == len(pre)
    # left to onnxruntime's own rules the preprocessing is not quantised either
    noise = noise_frames()
    other = quantize_onnx(fp32, tmp_path / "all.onnx", noise, exclude_preprocessing=False)
    assert other["excluded_nodes"] == 0 and run(tmp_path / "all.onnx", noise).shape == (len(noise),)


def noise_frames() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (8, H, W, 3), dtype=np.uint8)


def test_quantisation_is_deterministic(fp32, store, int8, tmp_path):
    again = quantize_onnx(fp32, tmp_path / "again.onnx", frames_of(store, "val"))
    assert again == int8["settings"]
    assert (tmp_path / "again.onnx").read_bytes() == int8["path"].read_bytes()


def test_a_failed_quantisation_never_lands(fp32, tmp_path, monkeypatch):
    target = tmp_path / "model.int8.onnx"
    target.write_bytes(b"the good int8 model")

    def broken(*args, **kwargs):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr("onnxruntime.quantization.quantize_static", broken)
    with pytest.raises(ExportError, match=r"model\.int8\.onnx: onnxruntime's quantize_static failed.*exploded"):
        quantize_onnx(fp32, target, noise_frames())
    assert target.read_bytes() == b"the good int8 model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]


def test_a_quantised_file_failing_the_export_checker_never_lands(fp32, tmp_path, monkeypatch):
    """The int8 file goes through the export's own checker; its errors name the file and say int8."""
    target = tmp_path / "model.int8.onnx"
    target.write_bytes(b"the good int8 model")

    def reject(path, full_check=False):
        raise onnx.checker.ValidationError("Field 'shape' of 'type' is required but missing.")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(ExportError, match=r"model\.int8\.onnx: onnx\.checker rejects the quantised model: Field"):
        quantize_onnx(fp32, target, noise_frames())
    assert target.read_bytes() == b"the good int8 model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]


def test_quantize_refuses_bad_frames_and_paths(fp32, tmp_path):
    with pytest.raises(ValueError, match=rf"frames are 640x480, the model takes {W}x{H}"):
        quantize_onnx(fp32, tmp_path / "q.onnx", np.zeros((2, 480, 640, 3), np.uint8))
    with pytest.raises(ValueError, match="expected uint8 frames"):
        quantize_onnx(fp32, tmp_path / "q.onnx", np.zeros((2, H, W, 3), np.float32))
    with pytest.raises(ValueError, match="would overwrite the fp32 model"):
        quantize_onnx(fp32, fp32, noise_frames())
    with pytest.raises(ValueError, match="activation_type must be one of"):
        quantize_onnx(fp32, tmp_path / "q.onnx", noise_frames(), activation_type="QInt4")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the card, the edge


def test_the_int8_card(fp32, int8):
    card = read_card(int8["card"])
    fp32_card = read_card(card_path_for(fp32))
    assert int8["card"] == card_path_for(int8["path"]) == int8["path"].with_name("model.int8.json")
    assert card["precision"] == "int8" and fp32_card["precision"] == "fp32"  # the export writes fp32 now
    assert card["model_sha256"] == sha256_file(int8["path"])
    assert card["quantized_from"] == sha256_file(fp32) == fp32_card["model_sha256"]
    assert card["calibration"] == {"frames": 8, "data_version": "fs-calib-1", "split": "val"}
    assert card["quantization"]["format"] == "QDQ" and card["quantization"]["weight_type"] == "QInt8"
    assert card["version"] == "resnet18-test-int8" and card["fp32_version"] == "resnet18-test"
    for key in ("format", "classes", "input", "output", "threshold", "backbone", "data_version", "opset", "crop"):
        assert card[key] == fp32_card[key], key  # the same contract: nothing the Pi would refuse
    assert card["input_size"] == fp32_card["input_size"]
    assert card["checkpoint_sha256"] == fp32_card["checkpoint_sha256"]
    assert card["metrics"] == {"gate_passed": True}


def test_the_edge_loads_the_int8_model_by_its_card(fp32, int8, store, caplog):
    model = load_model(int8["path"], threads=1)  # card, sha256, session signature: what the Pi checks
    assert model.sha256 == read_card(int8["card"])["model_sha256"] and model.card["precision"] == "int8"
    frame = frames_of(store, "test")[0]
    assert model.predict(frame) == pytest.approx(float(run(int8["path"], frame[None])[0]), abs=1e-6)
    with caplog.at_level(logging.INFO, logger="autosink.edge"):
        load_regular_model(int8["path"], threads=1)
        load_regular_model(fp32, threads=1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model loaded")]
    assert len(lines) == 2 and "model.int8.onnx" in lines[0] and ", int8, sha256" in lines[0]
    assert ", fp32, sha256" in lines[1]


def test_a_card_without_precision_is_fp32_and_a_stale_int8_card_is_refused(fp32, int8, tmp_path, caplog):
    shutil.copy(fp32, tmp_path / "model.onnx")
    card = read_card(card_path_for(fp32))
    del card["precision"]  # a card from before the field existed
    write_card(tmp_path / "model.json", card)
    with caplog.at_level(logging.INFO, logger="autosink.edge"):
        load_regular_model(tmp_path / "model.onnx", threads=1)
    assert any(", fp32, sha256" in r.getMessage() for r in caplog.records)
    # an int8 card next to another int8 file (e.g. a half-finished copy) is refused by the edge
    shutil.copy(int8["card"], tmp_path / "model.int8.json")
    (tmp_path / "model.int8.onnx").write_bytes(int8["path"].read_bytes()[:-64])
    with pytest.raises(Exception, match=r"model\.int8\.onnx: sha256 .* does not match model\.int8\.json"):
        load_model(tmp_path / "model.int8.onnx", threads=1)


def test_write_int8_card_refuses_an_fp32_card_of_another_file(fp32, int8, tmp_path):
    shutil.copy(fp32, tmp_path / "model.onnx")
    card = read_card(card_path_for(fp32))
    card["model_sha256"] = "0" * 64
    write_card(tmp_path / "model.json", card)
    shutil.copy(int8["path"], tmp_path / "model.int8.onnx")
    with pytest.raises(ValueError, match="describes another model"):
        write_int8_card(
            tmp_path / "model.int8.onnx", tmp_path / "model.onnx", calibration={}, quantization={}, metrics={}
        )
    with pytest.raises(ValueError, match="precision must be one of fp32, int8"):
        write_model_card(
            fp32,
            backbone="b",
            threshold=0.5,
            version="v",
            data_version="d",
            height=H,
            width=W,
            metrics={},
            precision="fp16",
        )


# --------------------------------------------------------------------------- small parts


def test_compare_cases_scores_every_model_as_evaluate_cases(tmp_path):
    """Each model's results are exactly what evaluate_cases gives it alone, though every frame is
    read once (the second model's are scored from its probabilities)."""
    rng = np.random.default_rng(4)
    for name, n in (("CASE01-0-off", 3), ("CASE02-1-on", 5), ("CASE03-1-dim", 1)):
        (tmp_path / name).mkdir()
        for k in range(n):
            assert cv2.imwrite(str(tmp_path / name / f"{k}.png"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    cases = list_cases(tmp_path)

    def bright(frames):
        return frames.mean(axis=(1, 2, 3)) / 255

    def red(frames):
        return frames[..., 0].mean(axis=(1, 2)) / 255

    got = compare_cases({"fp32": bright, "int8": red}, cases, 0.5, (W, H))
    assert got == {name: evaluate_cases(f, cases, 0.5, (W, H)) for name, f in (("fp32", bright), ("int8", red))}
    assert list(got["int8"]) == [c.name for c in cases]


def test_quantize_onnx_defaults_are_the_int8_defaults():
    """quantize_onnx's keyword defaults are export.int8's (DEFAULTS, which tests/test_defaults.py
    holds to conf/): a caller without settings gets what the pipeline runs."""
    params = inspect.signature(quantize_onnx).parameters
    assert {k: params[k].default for k in DEFAULTS if k in params} == {
        k: v for k, v in DEFAULTS.items() if k != "calibration_frames"
    }


def test_settings_rows_and_the_table():
    assert with_int8_defaults(None) == DEFAULTS
    assert with_int8_defaults({"calibration_frames": 8})["calibration_frames"] == 8
    for bad, match in (
        ({"calibration_frames": 0}, "calibration_frames must be an integer >= 1"),
        ({"activation_type": "QInt16"}, "activation_type must be one of QUInt8, QInt8"),
        ({"per_channel": "yes"}, "per_channel must be true or false"),
        ({"calibration_frame": 8}, "unknown key"),
    ):
        with pytest.raises(ValueError, match=match):
            with_int8_defaults(bad)
    assert calibration_rows(10, 3).tolist() == [0, 4, 9] and calibration_rows(3, 64).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="no frames"):
        calibration_rows(0, 4)
    assert int8_path_for("models/production/model.onnx").as_posix() == "models/production/model.int8.onnx"

    s = decision_summary(np.array([0.1, 0.6, 0.7, 0.2]), np.array([0.12, 0.4, 0.71, 0.2]), 0.5)
    assert s == {
        "frames": 4,
        "decisions_differ": 1,
        "decision_agreement": 0.75,
        "mean_abs_diff": 0.0575,
        "max_abs_diff": 0.2,
    }
    case = {"accuracy": 0.95, "n": 60}
    table = format_cost(
        {
            "size_bytes": {"fp32": 6_000_000, "int8": 2_000_000},
            "test": {
                "fp32": {"accuracy": 0.94, "accuracy_vs_truth": 0.9565},
                "int8": {"accuracy": 0.93, "accuracy_vs_truth": 0.9517},
                "agreement": s,
            },
            "cases": {"fp32": {"CASE01-0-x": case}, "int8": {"CASE01-0-x": {**case, "accuracy": 0.9}}},
            "water": {"fp32": {"withheld_pct": 3.18}, "int8": {"withheld_pct": 3.5}},
        }
    )
    assert "3.0x smaller" in table and "-0.48 pt" in table and "CASE01-0-x" in table and "-5.00 pt" in table
    assert json.dumps(table)  # plain text
