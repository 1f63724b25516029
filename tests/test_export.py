"""ONNX export: one checked file, parity with the trained Lightning model, colour order, the card."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from autosink.core.fileio import sha256_file
from autosink.core.modelcard import card_path_for, check_card_supported, read_card, write_card
from autosink.edge.camera import open_camera
from autosink.edge.inference import ModelError, load_model
from autosink.learn.export import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    ExportError,
    check_model_file,
    check_parity,
    export_onnx,
    jsonable,
    write_model_card,
)
from autosink.learn.frames import read_frame, read_split
from autosink.learn.model import build_model
from autosink.learn.training import LitWaterNet, fit, load_trained
from autosink.ops.config import compose
from tests.train_fixtures import H, W, tiny_params, write_store

RTOL, ATOL = 1e-3, 1e-5


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def trained(repo_root, store, tmp_path_factory):
    """A real (tiny) training run: label-1 frames have a yellow square, so colour order matters.

    resnet18, not the default mobilenet_v3_small: after the tiny config's two steps at 32x32 the
    MobileNet answers the same probability for every frame in eval mode (its BatchNorm statistics
    have barely moved), which would make parity and colour checks vacuous; resnet18 learns the
    square in those two steps. The production MobileNet graph is checked separately below.
    """
    out = tmp_path_factory.mktemp("run")
    params = tiny_params(repo_root, ["model=resnet18"])
    result = fit(
        params,
        splits_dir=store[1],
        store_dir=store[0],
        ckpt_dir=out / "ckpts",
        out_ckpt=out / "model.ckpt",
        logger=None,
        progress=False,
        data_version="fs-test",
    )
    return out / "model.ckpt", result


def real_frames(store, splits=("val", "test")) -> tuple[np.ndarray, np.ndarray]:
    """All frames of the given splits, RGB uint8 [N, H, W, 3], and their labels."""
    rows = [r for s in splits for _, r in read_split(store[1] / f"{s}.csv").iterrows()]
    frames = np.stack([read_frame(store[0] / r["path"], (W, H)) for r in rows])
    return frames, np.array([int(r["label"]) for r in rows])


@pytest.fixture(scope="module")
def exported(trained, store, tmp_path_factory):
    """The trained checkpoint exported (checked on real frames too) with its card."""
    ckpt, result = trained
    net, meta = load_trained(ckpt)
    frames, _ = real_frames(store)
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    export_onnx(net, out, height=H, width=W, check_frames=frames[:4])
    card = write_model_card(
        out,
        backbone=net.backbone_name,
        threshold=meta["threshold"],
        version="test-v1",
        data_version=meta["data_version"],
        height=H,
        width=W,
        metrics={"val": meta["val"], "auroc": float("nan"), "n": np.int64(8)},
        extra={"checkpoint": ckpt.name},
        input_size=(net.preprocess.height, net.preprocess.width),
        crop=net.preprocess.crop,
    )
    return {"onnx": out, "card": card, "net": net, "meta": meta, "ckpt": ckpt}


def ort_session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_p(session: ort.InferenceSession, frames: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(frames)})[0]


# --------------------------------------------------------------------------- the file


def test_export_writes_one_checked_file_with_a_dynamic_batch(exported, tmp_path):
    out = export_onnx(exported["net"], tmp_path / "m.onnx", height=H, width=W)
    assert out == tmp_path / "m.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no external data, no temp left
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    assert OPSET == 18 and {(i.domain, i.version) for i in model.opset_import} >= {("", 18)}
    (inp,), (outp,) = model.graph.input, model.graph.output
    assert (inp.name, outp.name) == ("frames", "p_water")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch, *rest = inp.type.tensor_type.shape.dim
    assert batch.dim_param and not batch.HasField("dim_value")  # symbolic N
    assert [d.dim_value for d in rest] == [H, W, 3]
    (n_out,) = outp.type.tensor_type.shape.dim
    assert n_out.dim_param and not n_out.HasField("dim_value")

    session = ort_session(out)
    rng = np.random.default_rng(7)
    for n in (1, 3):
        p = ort_p(session, rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8))
        assert p.shape == (n,) and p.dtype == np.float32 and bool(((p >= 0) & (p <= 1)).all())


def test_export_refuses_a_frame_size_the_network_was_not_built_for(exported, tmp_path):
    with pytest.raises(ValueError, match=rf"asked for 640x480 frames.*built for {W}x{H}"):
        export_onnx(exported["net"], tmp_path / "m.onnx", height=480, width=640)
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_onnx(exported["net"], tmp_path / "m.bin", height=H, width=W)
    assert list(tmp_path.iterdir()) == []


class _BatchDependent(nn.Module):
    """A module whose Python branch on the batch size the tracer freezes: a broken export."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.preprocess = net, net.preprocess

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        p = self.net(frames)
        return p if frames.shape[0] == 2 else 0.5 * p  # traced with 2 frames


def test_a_broken_export_raises_and_never_lands(exported, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the good model")
    disagree = r"model\.onnx: onnxruntime and torch disagree"
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(ExportError, match=disagree):  # warning not hidden
        export_onnx(_BatchDependent(exported["net"]), target, height=H, width=W)
    assert target.read_bytes() == b"the good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # the temp file is gone


def test_a_checker_failure_names_the_file_and_leaves_nothing(exported, tmp_path, monkeypatch):
    def reject(path, full_check=False):
        raise onnx.checker.ValidationError("Field 'shape' of 'type' is required but missing.")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    target = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"model\.onnx: onnx\.checker rejects the exported model: Field 'shape'"):
        export_onnx(exported["net"], target, height=H, width=W)
    assert list(tmp_path.iterdir()) == []


def test_check_model_file_names_the_file_the_kind_and_the_problem(exported, tmp_path):
    """The one checker of export and quantisation: it returns the model, or says what is wrong with
    which file (the target, not the temp file) and leaves no external data behind."""
    tmp = tmp_path / ".model.onnx.x.tmp"
    shutil.copy(exported["onnx"], tmp)
    model = check_model_file(tmp, tmp_path / "model.onnx", H, W, "exported")
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    with pytest.raises(ExportError, match=rf"model\.onnx: input 'frames' has shape \['N', {H}, {W}, 3\], expected"):
        check_model_file(tmp, tmp_path / "model.onnx", H + 1, W, "exported")

    (tmp_path / f"{tmp.name}.weights").write_bytes(b"external data")
    with pytest.raises(
        ExportError, match=r"model\.int8\.onnx: the quantised model was written with external data \(.*\.weights\)"
    ):
        check_model_file(tmp, tmp_path / "model.int8.onnx", H, W, "quantised")
    assert sorted(p.name for p in tmp_path.iterdir()) == [tmp.name]

    other = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N"])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N"])],
        )
    )
    onnx.save(other, tmp)
    with pytest.raises(ExportError, match=r"model\.onnx: graph inputs \['x'\] / outputs \['y'\], expected"):
        check_model_file(tmp, tmp_path / "model.onnx", H, W, "exported")


def test_jsonable_gives_plain_json_and_names_what_is_not():
    value = {"a": np.float32(0.5), "b": (np.int64(2), [np.nan]), "c": np.array([[1.0, np.inf]]), 3: None}
    assert jsonable(value, "m") == {"a": 0.5, "b": [2, [None]], "c": [[1.0, None]], "3": None}
    with pytest.raises(TypeError, match=r"model card metrics\.b\[1\]: object is not JSON"):
        jsonable({"b": [1, object()]}, "model card metrics")


# --------------------------------------------------------------------------- parity


def test_onnx_matches_the_trained_lightning_model_on_real_frames(exported, store):
    lit = LitWaterNet.load_from_checkpoint(exported["ckpt"], map_location="cpu", weights_only=False)
    lit.eval()
    frames, labels = real_frames(store)
    assert len(frames) >= 8 and set(labels) == {0, 1}
    with torch.no_grad():  # the training path: resize once, then logits_from_resized
        x = lit.net.preprocess.resize(torch.from_numpy(frames))
        p_train = torch.sigmoid(lit.net.logits_from_resized(x)).numpy()
    p_onnx = ort_p(ort_session(exported["onnx"]), frames)
    np.testing.assert_allclose(p_onnx, p_train, rtol=RTOL, atol=ATOL)
    assert np.ptp(p_onnx) > 1e-3  # the frames really differ to the model: not a constant-vs-constant match
    # check_parity (what the export runs) agrees and reports a small difference
    assert check_parity(exported["net"], exported["onnx"], frames) <= ATOL + RTOL


def test_production_geometry_with_crop_box_filter_and_resize(repo_root, tmp_path):
    """640x480 camera, the configured input size and a crop: avg_pool + bilinear resize in the graph."""
    params = compose(repo_root, [])
    model_cfg = {**params["model"], "weights": "none", "crop": [80, 0, 560, 480]}
    net = build_model(model_cfg, params["data"])
    assert net.preprocess.pool >= 2  # the box filter is exercised
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (4, 480, 640, 3), dtype=np.uint8)
    frames[1] //= 4  # darker
    frames[2, :, :, 0] = 255  # red
    for m in net.modules():  # BatchNorm statistics from these frames (cumulative average), not
        if isinstance(m, nn.BatchNorm2d):  # their init: else an untrained MobileNet answers a constant
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(frames))
    out = export_onnx(net, tmp_path / "prod.onnx", height=480, width=640, check_frames=frames)
    diff = check_parity(net, out, frames)
    assert diff <= ATOL + RTOL
    p = ort_p(ort_session(out), frames)
    assert np.ptp(p) > 1e-4


# --------------------------------------------------------------------------- colour order


def test_colour_order_matters_and_the_edge_feeds_rgb_per_the_card(exported, store, tmp_path):
    frames, labels = real_frames(store)
    yellow = frames[labels == 1]  # a yellow (230, 200, 40) square; swapped it is blue (40, 200, 230)
    session = ort_session(exported["onnx"])
    diffs = np.abs(ort_p(session, yellow) - ort_p(session, np.ascontiguousarray(yellow[..., ::-1])))
    assert diffs.min() > 0  # every swapped frame answers differently...
    rgb = yellow[int(np.argmax(diffs))]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # what an OpenCV camera hands over
    p_rgb, p_bgr = (float(ort_p(session, f[None])[0]) for f in (rgb, bgr))
    assert abs(p_rgb - p_bgr) > 1e-2, (p_rgb, p_bgr)  # ...and measurably: 1000x the parity atol

    assert read_card(exported["card"])["input"]["color"] == "RGB"
    model = load_model(exported["onnx"], threads=1)  # the edge's loader: card + sha + session
    # The real camera path: OpenCV delivers BGR, the camera layer converts to RGB, the model
    # feeds it per the card.
    cam_dir = tmp_path / "cam"
    cam_dir.mkdir()
    cv2.imwrite(str(cam_dir / "1.png"), bgr)  # imwrite takes BGR: the file holds the true colours
    with open_camera(f"folder:{cam_dir}", clock=time.monotonic, width=W, height=H) as cam:
        frame = cam.read(1.0)
    assert frame is not None and np.array_equal(frame.image, rgb)
    np.testing.assert_allclose(model.predict(frame.image), p_rgb, rtol=1e-5, atol=1e-6)
    # Feeding the unconverted BGR frame would be wrong: the model sees other colours.
    np.testing.assert_allclose(model.predict(bgr), p_bgr, rtol=1e-5, atol=1e-6)

    # A card saying BGR makes the edge swap the channels itself (same file, so same sha).
    bgr_dir = tmp_path / "bgr"
    bgr_dir.mkdir()
    shutil.copy(exported["onnx"], bgr_dir / "model.onnx")
    card = read_card(exported["card"])
    card["input"]["color"] = "BGR"
    write_card(bgr_dir / "model.json", card)
    swapped = load_model(bgr_dir / "model.onnx", threads=1)
    np.testing.assert_allclose(swapped.predict(rgb), p_bgr, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the card


def test_the_card_describes_the_file(exported):
    onnx_path, card_path, meta = exported["onnx"], exported["card"], exported["meta"]
    assert card_path == card_path_for(onnx_path) == onnx_path.with_name("model.json")
    card = read_card(card_path)
    check_card_supported(card, card_path)
    assert card["model_sha256"] == sha256_file(onnx_path) == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert card["input"] == {
        "name": "frames",
        "dtype": "uint8",
        "layout": "NHWC",
        "color": "RGB",
        "height": H,
        "width": W,
    }
    assert card["output"] == {"name": "p_water", "kind": "probability"}
    assert card["classes"] == ["water_off", "water_on"]
    assert card["threshold"] == meta["threshold"] and card["backbone"] == "resnet18"
    assert card["version"] == "test-v1" and card["data_version"] == "fs-test"
    assert card["opset"] == 18 and card["input_size"] == [32, 32] and card["crop"] == [0, 0, W, H]
    # nothing that differs between machines, clones or runs: the card is a DVC output
    assert "created" not in card and "git_revision" not in card
    assert card["metrics"]["auroc"] is None and card["metrics"]["n"] == 8  # strict JSON: NaN -> null
    assert card["metrics"]["val"]["accuracy"] == pytest.approx(meta["val"]["accuracy"])
    assert card["checkpoint"] == "model.ckpt"
    json.loads(card_path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert load_model(onnx_path, threads=1).sha256 == card["model_sha256"]


def test_a_card_of_another_file_is_refused_by_the_edge(exported, tmp_path):
    shutil.copy(exported["onnx"], tmp_path / "model.onnx")
    card = read_card(exported["card"])
    card["model_sha256"] = hashlib.sha256(b"another model").hexdigest()
    write_card(tmp_path / "model.json", card)
    with pytest.raises(
        ModelError,
        match=r"model\.onnx: sha256 [0-9a-f]{12}\.\.\. does not match model\.json "
        r"model_sha256 .*card of another model",
    ):
        load_model(tmp_path / "model.onnx", threads=1)
    # and the right card, but the file changed after it was written (e.g. a half copy)
    shutil.copy(exported["card"], tmp_path / "model.json")
    (tmp_path / "model.onnx").write_bytes(exported["onnx"].read_bytes()[:-100])
    with pytest.raises(ModelError, match="does not match model.json"):
        load_model(tmp_path / "model.onnx", threads=1)


def test_card_refuses_a_size_the_graph_does_not_take_and_colliding_extras(exported):
    common = dict(backbone="mobilenet_v3_small", threshold=0.5, version="v", data_version="d", metrics={})
    with pytest.raises(ValueError, match=r"graph input is \['N', 48, 64, 3\], the card would say \[N, 480, 640, 3\]"):
        write_model_card(exported["onnx"], height=480, width=640, **common)
    with pytest.raises(ValueError, match="extra key 'opset' collides"):
        write_model_card(exported["onnx"], height=H, width=W, extra={"opset": 7}, **common)


# --------------------------------------------------------------------------- the other exporter


@pytest.mark.slow
def test_dynamo_exporter_also_gives_one_checked_file(exported, store, tmp_path):
    frames, _ = real_frames(store)
    out = export_onnx(exported["net"], tmp_path / "d.onnx", height=H, width=W, dynamo=True, check_frames=frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx"]
    assert check_parity(exported["net"], out, frames) <= ATOL + RTOL
