"""A tiny ONNX model with its card, for the edge runtime's tests (no torch, no training).

The model takes raw frames, uint8 NHWC ``[N, 480, 640, 3]`` RGB (what the Pi feeds), and
returns ``p_water[N] = sigmoid(scale * (mean(w * ROI) - mean(w * frame)) / 255 + bias)``: the
ROI (x 220..420, y 150..350, the region under the faucet) brighter than the whole frame means
"something is there", a crude stand-in for a trained model that is wrong often enough for
the simulated user to correct it. ``w`` weights the channels (default grey), which lets a
test see the colour order the runtime feeds.

Built with ``onnx.helper`` only (opset 17, IR 8: what onnxruntime on the Pi reads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from autosink.core.modelcard import card_path_for, make_card, sha256_file, write_card
from tests.layers import PI_LAYERS, modules_in

ROI = (220, 150, 420, 350)  # x0, y0, x1, y1
HEIGHT, WIDTH = 480, 640


def tiny_model(
    *,
    scale: float = 100.0,
    bias: float = -2.0,
    weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
    height: int = HEIGHT,
    width: int = WIDTH,
    input_name: str = "frames",
    output_name: str = "p_water",
) -> onnx.ModelProto:
    x0, y0, x1, y1 = ROI
    w = np.asarray(weights, np.float32).reshape(1, 1, 1, 3)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([y0, x0], np.int64), "starts"),
        numpy_helper.from_array(np.array([y1, x1], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(np.array(scale / 255.0, np.float32), "scale"),
        numpy_helper.from_array(np.array(bias, np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "w"], ["xw"]),
        helper.make_node("Slice", ["xw", "starts", "ends", "axes"], ["roi"]),
        helper.make_node("ReduceMean", ["roi"], ["roi_mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["xw"], ["all_mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["roi_mean", "all_mean"], ["diff"]),
        helper.make_node("Mul", ["diff", "scale"], ["z0"]),
        helper.make_node("Add", ["z0", "bias"], ["z"]),
        helper.make_node("Sigmoid", ["z"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_roi_brightness",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["N", height, width, 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="autosink-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_model(
    path: str | Path, *, threshold: float = 0.5, color: str = "RGB", version: str = "tiny-1", card: bool = True, **kw
) -> Path:
    """Write ``path`` (.onnx) and, unless ``card=False``, its card beside it; return the model path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_model(**kw).SerializeToString())
    if card:
        write_card(
            card_path_for(path),
            make_card(
                model_sha256=sha256_file(path),
                backbone="tiny-roi-brightness",
                version=version,
                threshold=threshold,
                color=color,
                height=kw.get("height", HEIGHT),
                width=kw.get("width", WIDTH),
                input_name=kw.get("input_name", "frames"),
                output_name=kw.get("output_name", "p_water"),
            ),
        )
    return path


def bright_roi_frame(level: int = 40, roi_level: int = 220, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """An RGB frame, dark with a bright ROI (the tiny model says water) or uniform (it says no)."""
    img = np.full((height, width, 3), level, np.uint8)
    x0, y0, x1, y1 = ROI
    img[y0:y1, x0:x1] = roi_level
    return img


# --------------------------------------------------------------------------- import footprint

#: ``python -c FOOTPRINT_SCRIPT <run.py args>`` (cwd: a checkout) runs edge/run.py and prints
#: ``FOOTPRINT {"code": exit code, "modules": sorted sys.modules}`` on its last line.
FOOTPRINT_SCRIPT = r"""
import runpy, sys, json
sys.argv = ["edge/run.py"] + sys.argv[1:]
code = 0
try:
    runpy.run_path("edge/run.py", run_name="__main__")
except SystemExit as e:
    code = e.code
mods = sorted(m for m in sys.modules)
print("FOOTPRINT " + json.dumps({"code": code, "modules": mods}))
"""

FORBIDDEN = (
    "torch",
    "torchvision",
    "pandas",
    "sklearn",
    "pytorch_lightning",
    "lightning",
    "hydra",
    "dvc",
    "wandb",
    "evidently",
    "pydrive2",
    "matplotlib",
)
#: the ``autosink`` modules the Pi may load: those of the Pi's layers (core and edge, tests/layers.py)
ALLOWED_AUTOSINK = modules_in(*PI_LAYERS)


def check_footprint(modules: list[str]) -> None:
    """No training stack, no pipeline module: only the core (episode format, card, files) and the edge."""
    heavy = [m for m in modules if m.split(".")[0] in FORBIDDEN]
    assert not heavy, heavy
    pipeline = [m for m in modules if m.split(".")[0] == "autosink" and m not in ALLOWED_AUTOSINK]
    assert not pipeline, pipeline
