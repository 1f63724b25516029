"""ONNX export of a trained :class:`~autosink.learn.model.WaterNet`, checked, with its model card.

:func:`export_onnx` writes ONE self-contained ``.onnx`` file (no external data) whose input is
what the Pi's camera delivers and whose output is what the controller needs::

    frames   uint8   [N, height, width, 3]   RGB, camera resolution, N dynamic
    p_water  float32 [N]                     probability of "water_on"

The crop, box filter, resize and normalisation are inside the graph (they are part of the
module), so the edge only feeds raw frames. Before the file replaces anything at ``path`` it
is checked (:func:`check_model_file`: one file, ``onnx.checker`` with shape inference, the
contract above) and run through onnxruntime next to the torch module on a few frames
(:func:`check_parity`): a broken export raises and never lands. The write is atomic (hidden
temp file in the same folder, fsync, ``os.replace``), so a reader (the Pi's hot reload, DVC)
sees the old file or the new one.

:func:`write_model_card` then writes the card beside it (``model.onnx`` -> ``model.json``,
:mod:`autosink.core.modelcard`) with the file's sha256, the threshold, the precision (``fp32``;
the int8 model of :mod:`autosink.learn.quantize` says ``int8``) and provenance: feature-store
version, opset, metrics, model input size and crop.

Exporter: the TorchScript ("legacy") exporter by default (``dynamo=False``): it handles
every op the network uses and takes well under a second; ``dynamo=True`` uses
``torch.export`` (slower, the future default) with external data switched off.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autosink.core.fileio import fsync_dir, sha256_file
from autosink.core.modelcard import card_path_for, check_card_supported, make_card, write_card

__all__ = [
    "OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "export_onnx",
    "check_parity",
    "check_model_file",
    "write_model_card",
    "jsonable",
    "parity_frames",
    "PRECISIONS",
]

OPSET = 18  # pinned: the Pi's onnxruntime must support it; change deliberately, with the edge
INPUT_NAME = "frames"
OUTPUT_NAME = "p_water"
BATCH_DIM = "N"
#: the card's ``precision``: ``fp32`` (the export) or ``int8`` (:mod:`autosink.learn.quantize`); a
#: card without the field (written before it existed) describes an fp32 model
PRECISIONS = ("fp32", "int8")

StrPath = str | os.PathLike[str]


class ExportError(RuntimeError):
    """The export produced a file that is not a valid, self-contained, faithful model."""


# --------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's known, harmless chatter; every other warning (and every error) shows.

    * the legacy exporter's deprecation notices (we choose it on purpose, see the module doc);
    * TracerWarnings raised from :mod:`autosink.learn.model`: its shape checks (``frames.shape[-1] != 3``,
      "resize only if the size differs") compare the fixed H, W, C dims, which the graph fixes
      anyway; only N is dynamic, and the parity check runs more than one batch size.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"The feature will be removed", category=DeprecationWarning, module=r"torch\.onnx"
        )
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"autosink\.learn\.model")
        yield


def _source_size(net: Any) -> tuple[int, int]:
    pre = getattr(net, "preprocess", None)
    if pre is None or not hasattr(pre, "source_height"):
        raise TypeError(f"expected an autosink WaterNet (with .preprocess), got {type(net).__name__}")
    return int(pre.source_height), int(pre.source_width)


def parity_frames(height: int, width: int, n: int = 2, seed: int = 0) -> np.ndarray:
    """``n`` deterministic random uint8 frames ``[n, height, width, 3]`` for the parity check."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def _as_batch(frames: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(
            f"expected uint8 frames [N, H, W, 3] (or one [H, W, 3]), got {frames.dtype} {list(frames.shape)}"
        )
    if height is not None and frames.shape[1:3] != (height, width):
        raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[1]}, the model takes {width}x{height}")
    return np.ascontiguousarray(frames)


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor stored in a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def check_model_file(tmp: Path, where: Path, height: int, width: int, kind: str) -> Any:
    """Check a model file just written to ``tmp``, before it replaces ``where``; return it loaded.

    One checker for every file the edge may load (the export's, and the int8 one of
    :mod:`autosink.learn.quantize`), so both keep the same contract: one self-contained file
    (external data files beside ``tmp`` are removed), ``onnx.checker`` (full check, with shape
    inference), and the input/output the edge and the card expect.
    Raises :class:`ExportError` naming ``where`` and the ``kind`` of model ("exported", "quantised").
    """
    import onnx

    stray = sorted(p for p in tmp.parent.iterdir() if p.name.startswith(tmp.name) and p.name != tmp.name)
    if stray:
        for p in stray:
            p.unlink()
        raise ExportError(
            f"{where}: the {kind} model was written with external data ({', '.join(p.name for p in stray)}); "
            "the model must be one file"
        )
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{where}: onnx.checker rejects the {kind} model: {e}") from e
    model = onnx.load(str(tmp), load_external_data=False)
    _check_graph(model, where, height, width, kind)
    return model


def _check_graph(model: Any, where: Path, height: int, width: int, kind: str) -> None:
    """Self-contained, and the input/output the edge and the card expect."""
    import onnx

    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model.graph)):
        raise ExportError(f"{where}: the {kind} model refers to external data; the model must be one file")
    g = model.graph
    inputs = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in g.output] != [OUTPUT_NAME]:
        raise ExportError(
            f"{where}: graph inputs {[i.name for i in inputs]} / outputs {[o.name for o in g.output]}, "
            f"expected [{INPUT_NAME!r}] / [{OUTPUT_NAME!r}]"
        )

    def dims(v: Any) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]

    inp, out = inputs[0], g.output[0]
    if inp.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise ExportError(f"{where}: input {INPUT_NAME!r} is not uint8")
    in_dims = dims(inp)
    if len(in_dims) != 4 or isinstance(in_dims[0], int) or in_dims[1:] != [height, width, 3]:
        raise ExportError(
            f"{where}: input {INPUT_NAME!r} has shape {in_dims}, expected "
            f"[{BATCH_DIM}, {height}, {width}, 3] with a symbolic batch dimension"
        )
    if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError(f"{where}: output {OUTPUT_NAME!r} is not float32")
    out_dims = dims(out)
    if len(out_dims) != 1 or isinstance(out_dims[0], int):
        raise ExportError(f"{where}: output {OUTPUT_NAME!r} has shape {out_dims}, expected [{BATCH_DIM}]")


def export_onnx(
    net: Any,
    path: StrPath,
    *,
    height: int,
    width: int,
    opset: int = OPSET,
    check_frames: np.ndarray | None = None,
    dynamo: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-5,
) -> Path:
    """Export ``net`` (a :class:`~autosink.learn.model.WaterNet`) to ``path`` (``*.onnx``), checked.

    ``height`` x ``width`` is the camera frame the graph takes (the module's source size; a
    mismatch is an error). Parity with torch is checked on 2 deterministic random frames and on
    ``check_frames`` (uint8 ``[k, height, width, 3]``, e.g. real validation frames) with
    ``rtol``/``atol``. Only a file that passed every check replaces ``path``. Returns ``path``.
    Raises :class:`ExportError` (naming the file) when the exported graph is invalid.
    """
    import torch

    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the model file must end in .onnx (its card is <stem>.json beside it)")
    height, width = int(height), int(width)
    if _source_size(net) != (height, width):
        sh, sw = _source_size(net)
        raise ValueError(
            f"{path}: asked for {width}x{height} frames, but the network was built for "
            f"{sw}x{sh} camera frames (data.frame_width/frame_height)"
        )
    extra = None if check_frames is None else _as_batch(check_frames, height, width)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    was_training = net.training
    net.eval()
    try:
        example = torch.from_numpy(parity_frames(height, width, 2))
        try:
            with _quiet_exporter(), torch.no_grad():
                if dynamo:
                    torch.onnx.export(
                        net,
                        (example,),
                        str(tmp),
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},),
                        opset_version=int(opset),
                        dynamo=True,
                        external_data=False,
                        verbose=False,
                    )
                else:
                    torch.onnx.export(
                        net,
                        (example,),
                        str(tmp),
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
                        opset_version=int(opset),
                        do_constant_folding=True,
                        dynamo=False,
                    )
        except Exception as e:
            raise ExportError(f"{path}: torch.onnx.export failed ({type(e).__name__}: {e})") from e
        got_opset = _default_opset(check_model_file(tmp, path, height, width, "exported"))
        if got_opset != int(opset):
            raise ExportError(f"{path}: exported with opset {got_opset}, asked for {opset}")

        try:
            check_parity(net, tmp, parity_frames(height, width, 2), rtol=rtol, atol=atol)
            check_parity(net, tmp, parity_frames(height, width, 1, seed=1), rtol=rtol, atol=atol)
            if extra is not None:
                check_parity(net, tmp, extra, rtol=rtol, atol=atol)
        except AssertionError as e:
            raise ExportError(
                f"{path}: onnxruntime and torch disagree on the exported model (rtol={rtol}, atol={atol}):\n{e}"
            ) from None
        except Exception as e:  # onnxruntime raises its own types (Fail, InvalidGraph, ...)
            raise ExportError(
                f"{path}: onnxruntime cannot run the exported model ({type(e).__name__}: {str(e).strip()[:500]})"
            ) from e

        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        net.train(was_training)
    fsync_dir(path.parent)
    return path


def _default_opset(model: Any) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def check_parity(net: Any, onnx_path: StrPath, frames: np.ndarray, rtol: float = 1e-3, atol: float = 1e-5) -> float:
    """Run the same raw uint8 frames ``[N, H, W, 3]`` through ``net`` (eval mode, torch) and
    through onnxruntime (CPU) on ``onnx_path``; ``np.testing.assert_allclose`` the
    probabilities (AssertionError when they differ); return the largest absolute difference."""
    import onnxruntime as ort
    import torch

    batch = _as_batch(frames)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            expected = net(torch.from_numpy(batch)).detach().cpu().numpy().astype(np.float32)
    finally:
        net.train(was_training)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    got = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
    if got.shape != expected.shape:
        raise AssertionError(f"{onnx_path}: onnxruntime output shape {got.shape}, torch {expected.shape}")
    np.testing.assert_allclose(
        got, expected, rtol=rtol, atol=atol, err_msg=f"{onnx_path}: onnxruntime vs torch p_water"
    )
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))


# --------------------------------------------------------------------------- card


def jsonable(value: Any, where: str) -> Any:
    """Plain JSON values: numpy scalars/arrays unpacked, tuples as lists, NaN/inf as null
    (strict JSON has no NaN; e.g. AUROC of a one-class split). For the card and for metrics
    that go beside it (the quantize stage's). ``where`` names the value in the TypeError
    raised for anything else."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{where}: {type(value).__name__} is not JSON")


def _graph_input_dims(onnx_path: Path) -> tuple[list[int | str], int | None]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    g = model.graph
    inits = {t.name for t in g.initializer}
    inp = next((i for i in g.input if i.name == INPUT_NAME and i.name not in inits), None)
    if inp is None:
        raise ValueError(f"{onnx_path}: no graph input {INPUT_NAME!r}; not a file from export_onnx")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in inp.type.tensor_type.shape.dim]
    return dims, _default_opset(model)


def write_model_card(
    onnx_path: StrPath,
    *,
    backbone: str,
    threshold: float,
    version: str,
    data_version: str,
    height: int,
    width: int,
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    input_size: Sequence[int] | None = None,
    crop: Sequence[int] | None = None,
    precision: str = "fp32",
) -> Path:
    """Write ``<stem>.json`` beside ``onnx_path`` (a file from :func:`export_onnx`); return its path.

    ``height`` x ``width``: the camera frame the graph takes (checked against the file).
    ``input_size`` ([h, w] the network resizes to) and ``crop`` ([x0, y0, x1, y1] of the camera
    frame) are recorded for people and tools (the graph does both); pass them from
    ``net.preprocess`` (``height``/``width``, ``crop``). ``metrics``/``extra`` must be JSON-like
    (numpy scalars are fine; NaN is written as null). The opset is read from the file.
    ``precision``: one of :data:`PRECISIONS` (``int8``: the quantised model, whose card also
    records its calibration and the fp32 file it came from in ``extra``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no model file to describe")
    dims, opset = _graph_input_dims(onnx_path)
    if len(dims) != 4 or dims[1:] != [int(height), int(width), 3]:
        raise ValueError(f"{onnx_path}: graph input is {dims}, the card would say [N, {height}, {width}, 3]")
    fields: dict[str, Any] = {
        # no creation time or git revision: the card is a DVC output and must come out the same on
        # every machine and clone (`autosink promote` records when and from which commit)
        "data_version": str(data_version),
        "precision": precision,
        "opset": opset,
        "metrics": jsonable(dict(metrics), "model card metrics"),
        "input_size": None if input_size is None else [int(v) for v in input_size],
        "crop": None if crop is None else [int(v) for v in crop],
    }
    for key, value in (extra or {}).items():
        if key in fields:
            raise ValueError(f"extra key {key!r} collides with a card field")
        fields[str(key)] = jsonable(value, f"model card {key}")
    card = make_card(
        model_sha256=sha256_file(onnx_path),
        backbone=str(backbone),
        version=str(version),
        threshold=float(threshold),
        height=int(height),
        width=int(width),
        color="RGB",
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        **fields,
    )
    cpath = card_path_for(onnx_path)
    check_card_supported(card, cpath)
    return write_card(cpath, card)
