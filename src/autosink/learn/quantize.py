"""The int8 edge model: static quantisation of the exported fp32 model, and what it costs.

:func:`quantize_onnx` turns ``models/model.onnx`` (:func:`autosink.learn.export.export_onnx`)
into ``models/model.int8.onnx`` with onnxruntime's static quantisation in the QDQ format
(``QuantizeLinear``/``DequantizeLinear`` pairs around the quantised operators, which
onnxruntime's CPU kernels fuse into integer ones). Weights are int8, per output channel by
default (MobileNet's depthwise convolutions have very different ranges per channel);
activations are 8-bit with ranges calibrated (MinMax) on real validation frames, fed exactly as
the graph takes them: raw uint8 RGB at the camera size. The graph's contract does not change:
``frames`` uint8 ``[N, H, W, 3]`` in, ``p_water`` float32 ``[N]`` out, so the edge loads it as it
loads the fp32 file.

The preprocessing inside the graph (crop, box filter, resize, normalisation: every node before
the first convolution) stays float (``exclude_preprocessing``). onnxruntime would not quantise it
anyway (the quantiser does not start a quantised chain at ``Div`` or ``Sub``, so ``AveragePool`` and
``Resize`` stay float too: on the real model both settings give the same bytes); excluding it by
name keeps it so if the quantiser's rules change. The first quantised tensor is the normalised
input of the first convolution.

The file is checked before it replaces anything (the export's own
:func:`~autosink.learn.export.check_model_file`: one file, ``onnx.checker``, the input/output
contract; then QDQ nodes present, onnxruntime runs it and gives probabilities) and written atomically.
:func:`write_int8_card` writes its card ``model.int8.json``: the fp32 card's contract and
provenance, ``precision: "int8"``, ``calibration`` (frames, feature-store version, split),
``quantized_from`` (sha256 of the fp32 file) and the int8 model's own measured metrics.

:func:`compare_frames`, :func:`compare_cases` and :func:`compare_water` measure both files the
same way (onnxruntime, the edge's own loader, one thread) on the test split against the
simulator's truth, on every case set, and on the water benchmark's held-out sessions;
:func:`format_cost` prints them side by side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autosink.core.fileio import fsync_dir, sha256_file
from autosink.core.modelcard import card_path_for, read_card
from autosink.learn.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    _as_batch,
    _default_opset,
    _graph_input_dims,
    check_model_file,
    write_model_card,
)

__all__ = [
    "DEFAULTS",
    "ACTIVATION_TYPES",
    "int8_path_for",
    "with_int8_defaults",
    "calibration_rows",
    "preprocessing_nodes",
    "quantize_onnx",
    "write_int8_card",
    "count_qdq",
    "decision_summary",
    "compare_frames",
    "compare_cases",
    "compare_water",
    "latency_ms",
    "format_cost",
]

#: Defaults of ``export.int8`` (conf/export/default.yaml, key by key: tests/test_defaults.py), and
#: of :func:`quantize_onnx`'s keywords (tests/test_quantize.py).
DEFAULTS: dict[str, Any] = {
    "calibration_frames": 64,
    "per_channel": True,
    "activation_type": "QUInt8",
    "exclude_preprocessing": True,
}
ACTIVATION_TYPES = ("QUInt8", "QInt8")
WEIGHT_TYPE = "QInt8"
#: where the first learned layer starts: everything before it in graph order is preprocessing
_FIRST_LAYER_OPS = ("Conv", "Gemm", "MatMul")
_BATCH = 16

StrPath = str | os.PathLike[str]


def int8_path_for(fp32_path: StrPath) -> Path:
    """``models/model.onnx`` -> ``models/model.int8.onnx`` (its card: ``models/model.int8.json``)."""
    p = Path(fp32_path)
    if p.suffix != ".onnx":
        raise ValueError(f"{p}: not an .onnx file")
    return p.with_name(f"{p.stem}.int8.onnx")


def with_int8_defaults(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``export.int8`` over :data:`DEFAULTS`, checked (ValueError naming the key). The stage
    passes params.yaml's section, which has every key (conf/ gives them); the defaults, which
    equal conf/, serve callers without it (tests, a notebook), so they get what the pipeline runs."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in (cfg or {}).items() if v is not None})
    unknown = sorted(set(out) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"export.int8: unknown key(s) {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    n = out["calibration_frames"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"export.int8.calibration_frames must be an integer >= 1, got {n!r}")
    if out["activation_type"] not in ACTIVATION_TYPES:
        raise ValueError(
            f"export.int8.activation_type must be one of {', '.join(ACTIVATION_TYPES)}, got {out['activation_type']!r}"
        )
    for key in ("per_channel", "exclude_preprocessing"):
        if not isinstance(out[key], bool):
            raise ValueError(f"export.int8.{key} must be true or false, got {out[key]!r}")
    return out


def calibration_rows(n_rows: int, n: int) -> np.ndarray:
    """``min(n, n_rows)`` row indices spread evenly over a split of ``n_rows`` rows (first and
    last included): the splits are sorted by episode, so this samples every part of it."""
    if n_rows < 1:
        raise ValueError("the calibration split has no frames")
    k = min(int(n), int(n_rows))
    return np.unique(np.linspace(0, n_rows - 1, k).round().astype(int))


def preprocessing_nodes(model: Any) -> list[str]:
    """Names of the nodes before the first Conv/Gemm/MatMul in graph order (the export's crop,
    box filter, resize and normalisation; the graph is topologically sorted)."""
    names = []
    for node in model.graph.node:
        if node.op_type in _FIRST_LAYER_OPS:
            return names
        if node.name:
            names.append(node.name)
    raise ValueError("the graph has no Conv, Gemm or MatMul: nothing to quantise")


def count_qdq(model: Any) -> dict[str, int]:
    """How many QuantizeLinear and DequantizeLinear nodes a graph has."""
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


def _session(path: StrPath, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantiser logs (root logger, WARNING) a hint to run its optional pre-processing (shape
    inference and graph optimisation; the export's graph has its shapes, and the edge's
    onnxruntime optimises at load). Hide that one line; every other message shows."""

    class _Hint(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing before quantization" not in record.getMessage()

    hint = _Hint()
    root = logging.getLogger()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def quantize_onnx(
    fp32_path: StrPath,
    out_path: StrPath,
    frames: np.ndarray,
    *,
    per_channel: bool = True,
    activation_type: str = "QUInt8",
    exclude_preprocessing: bool = True,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Statically quantise ``fp32_path`` (a file from :func:`~autosink.learn.export.export_onnx`) to
    ``out_path`` (QDQ; int8 weights, per channel when ``per_channel``; ``activation_type``
    activations), calibrating on ``frames`` (uint8 RGB ``[N, H, W, 3]`` at the graph's input size,
    MinMax). Only a file that passed every check replaces ``out_path``. Returns what was done:
    ``{"format", "per_channel", "activation_type", "weight_type", "calibrate_method",
    "excluded_nodes", "QuantizeLinear", "DequantizeLinear", "opset"}``. Raises
    :class:`~autosink.learn.export.ExportError` (naming the file) for a model that fails a check.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if out_path.suffix != ".onnx":
        raise ValueError(f"{out_path}: the model file must end in .onnx (its card is <stem>.json beside it)")
    if out_path.resolve() == fp32_path.resolve():
        raise ValueError(f"{out_path}: would overwrite the fp32 model it is quantised from")
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation_type must be one of {', '.join(ACTIVATION_TYPES)}, got {activation_type!r}")
    dims, _ = _graph_input_dims(fp32_path)
    if len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:3]):
        raise ValueError(f"{fp32_path}: graph input is {dims}, expected [N, height, width, 3]")
    height, width = int(dims[1]), int(dims[2])
    calib = _as_batch(frames, height, width)
    step = max(1, int(batch_size))

    class FrameReader(CalibrationDataReader):
        """The calibration frames, ``step`` at a time, as the graph's input."""

        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= len(calib):
                return None
            batch = calib[self.start : self.start + step]
            self.start += step
            return {INPUT_NAME: batch}

        def rewind(self) -> None:
            self.start = 0

    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    excluded = preprocessing_nodes(fp32) if exclude_preprocessing else []
    del fp32

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            with _quiet_quantizer():
                quantize_static(
                    str(fp32_path),
                    str(tmp),
                    FrameReader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=bool(per_channel),
                    activation_type=QuantType[activation_type],
                    weight_type=QuantType[WEIGHT_TYPE],
                    nodes_to_exclude=excluded,
                    calibrate_method=CalibrationMethod.MinMax,
                )
        except Exception as e:
            raise ExportError(f"{out_path}: onnxruntime's quantize_static failed ({type(e).__name__}: {e})") from e
        model = check_model_file(tmp, out_path, height, width, "quantised")
        qdq = count_qdq(model)
        if not qdq["QuantizeLinear"] or not qdq["DequantizeLinear"]:
            raise ExportError(f"{out_path}: no QuantizeLinear/DequantizeLinear nodes: nothing was quantised")
        opset = _default_opset(model)
        del model
        try:
            p = np.asarray(_session(tmp).run([OUTPUT_NAME], {INPUT_NAME: calib[: min(len(calib), 4)]})[0])
        except Exception as e:  # onnxruntime raises its own types
            raise ExportError(
                f"{out_path}: onnxruntime cannot run the quantised model ({type(e).__name__}: {str(e).strip()[:500]})"
            ) from e
        if p.shape != (min(len(calib), 4),) or not bool(np.all(np.isfinite(p) & (p >= 0) & (p <= 1))):
            raise ExportError(f"{out_path}: the quantised model returns {p!r}, not one probability per frame")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(out_path.parent)
    return {
        "format": "QDQ",
        "per_channel": bool(per_channel),
        "activation_type": activation_type,
        "weight_type": WEIGHT_TYPE,
        "calibrate_method": "MinMax",
        "excluded_nodes": len(excluded),
        **qdq,
        "opset": opset,
    }


def write_int8_card(
    int8_path: StrPath,
    fp32_path: StrPath,
    *,
    calibration: Mapping[str, Any],
    quantization: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> Path:
    """Write ``model.int8.json`` beside ``int8_path``: the fp32 card's contract (input, output,
    threshold, backbone, input size, crop) and provenance (training data version, checkpoint,
    training fingerprint, threshold rule), plus ``precision: "int8"``, ``calibration``
    (``frames``, ``data_version``, ``split``), ``quantization`` (the settings), ``quantized_from``
    (sha256 of ``fp32_path``) and ``metrics`` (the int8 model's own). ``version`` is the fp32
    card's with ``-int8``. Refuses (ValueError) an fp32 card that does not describe its file."""
    fp32_path = Path(fp32_path)
    fp32_card = read_card(card_path_for(fp32_path))
    fp32_sha = sha256_file(fp32_path)
    if fp32_card["model_sha256"] != fp32_sha:
        raise ValueError(
            f"{card_path_for(fp32_path)} describes another model (model_sha256 {fp32_card['model_sha256'][:12]}..., "
            f"{fp32_path} is {fp32_sha[:12]}...)"
        )
    if fp32_card.get("precision", "fp32") != "fp32":
        raise ValueError(f"{fp32_path}: its card says precision {fp32_card.get('precision')!r}; quantise an fp32 model")
    keep = ("checkpoint_sha256", "training_fingerprint", "wandb_run_id", "threshold_rule")
    extra = {k: fp32_card[k] for k in keep if k in fp32_card}
    extra.update(
        quantized_from=fp32_sha,
        fp32_version=fp32_card["version"],
        calibration=dict(calibration),
        quantization=dict(quantization),
    )
    inp = fp32_card["input"]
    return write_model_card(
        int8_path,
        backbone=fp32_card["backbone"],
        threshold=float(fp32_card["threshold"]),
        version=f"{fp32_card['version']}-int8",
        data_version=fp32_card.get("data_version", ""),
        height=int(inp["height"]),
        width=int(inp["width"]),
        metrics=metrics,
        extra=extra,
        input_size=fp32_card.get("input_size"),
        crop=fp32_card.get("crop"),
        precision="int8",
    )


# --------------------------------------------------------------------------- the cost


def _r(x: Any, digits: int = 4) -> Any:
    if x is None:
        return None
    x = float(x)
    return None if not np.isfinite(x) else round(x, digits)


def decision_summary(p32: np.ndarray, p8: np.ndarray, threshold: float) -> dict[str, Any]:
    """How far the int8 probabilities are from fp32's on the same frames, and how often the
    decision (``p >= threshold``) differs."""
    p32, p8 = np.asarray(p32, np.float64), np.asarray(p8, np.float64)
    if p32.shape != p8.shape:
        raise ValueError(f"fp32 and int8 gave {p32.shape} and {p8.shape} probabilities")
    differ = (p32 >= threshold) != (p8 >= threshold)
    diff = np.abs(p8 - p32)
    return {
        "frames": int(p32.size),
        "decisions_differ": int(differ.sum()),
        "decision_agreement": _r(1.0 - differ.mean()) if p32.size else None,
        "mean_abs_diff": _r(diff.mean()) if p32.size else None,
        "max_abs_diff": _r(diff.max()) if p32.size else None,
    }


def compare_frames(
    predictors: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    paths: Sequence[Path],
    frame_size: tuple[int, int],
    batch_size: int = _BATCH,
) -> dict[str, np.ndarray]:
    """Each predictor's ``p`` on the same frames (image files read once, RGB uint8, ``frame_size``
    = (width, height))."""
    from autosink.learn.frames import read_frame

    out: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    for start in range(0, len(paths), batch_size):
        batch = np.stack([read_frame(p, frame_size) for p in paths[start : start + batch_size]])
        for name, predict in predictors.items():
            out[name].append(np.asarray(predict(batch), np.float64).reshape(-1))
    return {name: np.concatenate(ps) if ps else np.zeros(0) for name, ps in out.items()}


def _case_results(p: np.ndarray, cases: Sequence[Any], threshold: float) -> dict[str, dict]:
    """:func:`~autosink.learn.cases.evaluate_cases`'s per-case results from probabilities already
    computed for every frame of ``cases``, in order (scored by its own
    :func:`~autosink.learn.cases.case_score`)."""
    from autosink.learn.cases import case_score

    out, start = {}, 0
    for case in cases:
        out[case.name] = case_score(p[start : start + len(case.frames)], case.label, threshold)
        start += len(case.frames)
    if start != len(p):
        raise ValueError(f"{len(p)} probabilities for {start} case frames")
    return out


def compare_cases(
    predictors: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    cases: Sequence[Any],
    threshold: float,
    frame_size: tuple[int, int],
) -> dict[str, dict[str, dict]]:
    """Per model, the results of :func:`autosink.learn.cases.evaluate_cases` on the case sets.
    Every frame is read once and given to every model (the first model's results are
    evaluate_cases' own; the others' are scored from their probabilities by the same
    :func:`~autosink.learn.cases.case_score`)."""
    from autosink.learn.cases import evaluate_cases

    seen: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    first = next(iter(predictors))

    def tee(frames: np.ndarray) -> np.ndarray:
        for name, predict in predictors.items():
            seen[name].append(np.asarray(predict(frames), np.float64).reshape(-1))
        return seen[first][-1]

    results = {first: evaluate_cases(tee, cases, threshold, frame_size)}
    p = {name: np.concatenate(ps) for name, ps in seen.items()}
    if _case_results(p[first], cases, threshold) != results[first]:  # the frames split by case as it read them
        raise AssertionError("compare_cases disagrees with evaluate_cases on the same probabilities")
    for name in predictors:
        if name != first:
            results[name] = _case_results(p[name], cases, threshold)
    return results


def compare_water(int8: Mapping[str, Any], fp32: Mapping[str, Any] | None, keys: Sequence[str]) -> dict[str, Any]:
    """The water benchmark's ``total`` of both models side by side (``keys``), and the sessions
    whose per-session numbers differ."""
    t8, t32 = int8["total"], (fp32 or {}).get("total", {})
    out: dict[str, Any] = {
        "fp32": {k: t32.get(k) for k in keys} if fp32 else None,
        "int8": {k: t8.get(k) for k in keys},
        "n_sessions": int8.get("n_sessions"),
    }
    if fp32:
        s8, s32 = int8.get("sessions", {}), fp32.get("sessions", {})
        out["sessions_that_differ"] = sorted(k for k in s8 if s8[k] != s32.get(k))
    return out


def latency_ms(path: StrPath, frame: np.ndarray, runs: int = 50, warmup: int = 5) -> float:
    """Median wall time (ms) of one frame ``[1, H, W, 3]`` through ``path`` on one onnxruntime thread."""
    session = _session(path, threads=1)
    x = {INPUT_NAME: np.ascontiguousarray(frame[None] if frame.ndim == 3 else frame[:1])}
    for _ in range(warmup):
        session.run([OUTPUT_NAME], x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run([OUTPUT_NAME], x)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def format_cost(result: Mapping[str, Any]) -> str:
    """fp32 and int8 side by side: file size, accuracy vs truth and vs labels on the test split,
    decision agreement, every case, the water totals."""

    def num(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    def delta(a: Any, b: Any, scale: float = 1.0, spec: str = "+.2f") -> str:
        return "" if a is None or b is None else format((b - a) * scale, spec)

    rows: list[tuple[str, str, str, str]] = []
    size = result["size_bytes"]
    rows.append(
        (
            "file size (MB)",
            num(size["fp32"] / 1e6, ".2f"),
            num(size["int8"] / 1e6, ".2f"),
            f"{size['fp32'] / size['int8']:.1f}x smaller",
        )
    )
    test = result["test"]
    a32, a8 = test["fp32"].get("accuracy_vs_truth"), test["int8"].get("accuracy_vs_truth")
    gain = delta(a32, a8, 100.0)
    rows.append(("accuracy vs truth (test)", num(a32), num(a8), f"{gain} pt" if gain else ""))
    l32, l8 = test["fp32"]["accuracy"], test["int8"]["accuracy"]
    rows.append(("accuracy vs labels (test)", num(l32), num(l8), delta(l32, l8, 100.0) + " pt"))
    agree = test["agreement"]
    rows.append(
        (
            "decisions differ (test)",
            "",
            f"{agree['decisions_differ']}/{agree['frames']}",
            f"mean |dp| {num(agree['mean_abs_diff'])}",
        )
    )
    cases = result["cases"]
    for name, c8 in cases["int8"].items():
        c32 = cases["fp32"][name]
        rows.append(
            (
                name,
                num(c32["accuracy"], ".3f"),
                num(c8["accuracy"], ".3f"),
                delta(c32["accuracy"], c8["accuracy"], 100.0) + " pt",
            )
        )
    water = result.get("water")
    if water:
        for key, label in (
            ("withheld_pct", "water withheld %"),
            ("false_offs_per_10min", "false-offs / 10 min"),
            ("savings_of_oracle_pct", "savings of oracle's %"),
            ("litres_autosink", "litres"),
        ):
            v32 = (water["fp32"] or {}).get(key)
            v8 = water["int8"].get(key)
            rows.append((label, num(v32, ".2f"), num(v8, ".2f"), delta(v32, v8, 1.0)))
    width = max(len(r[0]) for r in rows)
    head = f"{'':<{width}}  {'fp32':>8}  {'int8':>8}  int8 - fp32"
    lines = [head, "-" * len(head)]
    lines += [f"{a:<{width}}  {b:>8}  {c:>8}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)
