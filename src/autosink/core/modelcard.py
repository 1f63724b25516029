"""The model card: what an exported ONNX model expects and returns, shared by export and edge.

A model ``model.onnx`` travels with its card ``model.json`` (:func:`card_path_for`). The
card is the contract between the training side (the ONNX export writes it) and the Pi (the
edge runtime reads it and feeds the model exactly what it says), so it lives in one module
that imports only the standard library: the Pi imports it without torch.

Format ``autosink-model-card/1``::

    {
      "format": "autosink-model-card/1",
      "classes": ["water_off", "water_on"],
      "input": {"name": "frames", "dtype": "uint8", "layout": "NHWC", "color": "RGB",
                "height": 480, "width": 640},
      "output": {"name": "p_water", "kind": "probability"},
      "threshold": 0.5,
      "backbone": "mobilenet_v3_small",
      "model_sha256": "<sha256 of the .onnx file's bytes>",
      "version": "<any non-empty id, e.g. a git describe or a run id>",
      ...                                   # any further keys (metrics, created, ...) are kept
    }

* ``input``: one tensor of shape ``[N, height, width, 3]`` (NHWC) or ``[N, 3, height, width]``
  (NCHW) of ``dtype``, channels in ``color`` order. The edge runtime feeds raw camera frames
  (uint8, NHWC, camera resolution): resizing and normalising are the graph's job, so what
  was trained is what runs (:func:`check_card_supported` says whether a card fits that).
* ``output``: a tensor with one probability of ``classes[1]`` (water needed) per image,
  shape ``[N]`` or ``[N, 1]``, values in [0, 1].
* ``threshold``: the operating point chosen on validation data: water when ``p >= threshold``.
* ``model_sha256``: ties the card to one model file; a card next to another file is an error.

Errors are :class:`CardError` (a ValueError) naming the file, the field and the problem, e.g.
``models/production/model.json: input.height: expected a positive integer, got "480"``;
:func:`validate_card` reports every problem at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from autosink.core.fileio import atomic_write, json_type, sha256_file

__all__ = [
    "FORMAT",
    "CLASSES",
    "CardError",
    "card_path_for",
    "validate_card",
    "read_card",
    "write_card",
    "check_card_supported",
    "sha256_file",
    "sha256_bytes",
    "make_card",
]

FORMAT = "autosink-model-card/1"
CLASSES = ["water_off", "water_on"]

_FORMAT_RE = re.compile(r"autosink-model-card/([0-9]+)")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_DTYPES = ("uint8", "float32", "float16")
_LAYOUTS = ("NHWC", "NCHW")
_COLORS = ("RGB", "BGR")
_KINDS = ("probability",)
_MAX_SIDE = 8192
_MAX_CARD_BYTES = 1024 * 1024

StrPath = str | os.PathLike[str]


class CardError(ValueError):
    """A bad or unsupported model card: ``path``, and ``problems`` as ``(field, problem)`` pairs.

    The message lists every problem, one ``path: field: problem`` per line.
    """

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        super().__init__("\n".join(f"{self.path}: {f}: {p}" for f, p in self.problems))

    @property
    def field(self) -> str:
        return self.problems[0][0] if self.problems else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problems))


def card_path_for(model_path: StrPath) -> Path:
    """``models/x/model.onnx`` -> ``models/x/model.json`` (the card beside its model)."""
    p = Path(model_path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.json")


def _show(value: object) -> str:
    """A short JSON-ish rendering of a bad value for an error message."""
    try:
        text = json.dumps(value, default=lambda o: f"<{type(o).__name__}>")
    except (ValueError, RecursionError):
        text = json_type(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_card(obj: object, path: StrPath = "<card>") -> dict[str, Any]:
    """Check every field of a decoded card; return it unchanged, or raise :class:`CardError`
    listing every problem (so one run of the export shows everything that is wrong)."""
    problems: list[tuple[str, str]] = []
    add = lambda f, p: problems.append((f, p))  # noqa: E731

    if not isinstance(obj, dict):
        raise CardError(str(path), [("card", f"top level must be an object, got {json_type(obj)}")])
    for key in ("format", "classes", "input", "output", "threshold", "backbone", "model_sha256", "version"):
        if key not in obj:
            add(key, "missing")

    if "format" in obj:
        fmt = obj["format"]
        if not isinstance(fmt, str) or not _FORMAT_RE.fullmatch(fmt):
            add("format", f'expected "autosink-model-card/<n>", got {_show(fmt)}')

    if "classes" in obj and obj["classes"] != CLASSES:
        add(
            "classes",
            f"must be {json.dumps(CLASSES)} (the output is the probability of classes[1]), got {_show(obj['classes'])}",
        )

    def text(where: str, value: object) -> None:
        if not isinstance(value, str):
            add(where, f"expected a string, got {json_type(value)}")
        elif not value.strip():
            add(where, "empty")

    def choice(where: str, value: object, choices: tuple[str, ...]) -> None:
        if value not in choices or not isinstance(value, str):
            add(where, f"must be one of {', '.join(choices)}, got {_show(value)}")

    inp = obj.get("input")
    if "input" in obj and not isinstance(inp, dict):
        add("input", f"expected an object, got {json_type(inp)}")
    elif isinstance(inp, dict):
        for key in ("name", "dtype", "layout", "color", "height", "width"):
            if key not in inp:
                add(f"input.{key}", "missing")
        if "name" in inp:
            text("input.name", inp["name"])
        if "dtype" in inp:
            choice("input.dtype", inp["dtype"], _DTYPES)
        if "layout" in inp:
            choice("input.layout", inp["layout"], _LAYOUTS)
        if "color" in inp:
            choice("input.color", inp["color"], _COLORS)
        for key in ("height", "width"):
            if key in inp:
                v = inp[key]
                if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= _MAX_SIDE:
                    add(f"input.{key}", f"expected a positive integer <= {_MAX_SIDE}, got {_show(v)}")

    out = obj.get("output")
    if "output" in obj and not isinstance(out, dict):
        add("output", f"expected an object, got {json_type(out)}")
    elif isinstance(out, dict):
        for key in ("name", "kind"):
            if key not in out:
                add(f"output.{key}", "missing")
        if "name" in out:
            text("output.name", out["name"])
        if "kind" in out:
            choice("output.kind", out["kind"], _KINDS)

    if "threshold" in obj:
        thr = obj["threshold"]
        if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not math.isfinite(thr) or not 0.0 < thr < 1.0:
            add("threshold", f"expected a number strictly between 0 and 1, got {_show(thr)}")
    if "backbone" in obj:
        text("backbone", obj["backbone"])
    if "version" in obj:
        text("version", obj["version"])
    if "model_sha256" in obj:
        sha = obj["model_sha256"]
        if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
            add("model_sha256", f"expected 64 lowercase hex characters, got {_show(sha)}")

    if problems:
        raise CardError(str(path), problems)
    return obj


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_card(path: StrPath) -> dict[str, Any]:
    """Read and validate a card file (strict UTF-8 JSON, no duplicate keys); CardError otherwise."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(_MAX_CARD_BYTES + 1)
    except OSError as e:
        raise CardError(str(p), [("file", f"cannot read ({e.strerror or e})")]) from None
    if len(data) > _MAX_CARD_BYTES:
        raise CardError(str(p), [("file", f"larger than {_MAX_CARD_BYTES} bytes")])
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as e:
        raise CardError(str(p), [("json", f"not valid UTF-8 ({e.reason} at byte {e.start})")]) from None
    except json.JSONDecodeError as e:
        raise CardError(str(p), [("json", f"invalid JSON: {e.msg} (line {e.lineno} column {e.colno})")]) from None
    except (ValueError, RecursionError) as e:
        raise CardError(str(p), [("json", f"invalid JSON: {e}")]) from None
    return validate_card(obj, p)


def check_card_supported(card: dict[str, Any], path: StrPath = "<card>") -> None:
    """Raise :class:`CardError` unless this runtime can serve the (valid) card: format 1, raw
    uint8 NHWC frames in (colour order either way: the runtime converts), a probability out."""
    problems: list[tuple[str, str]] = []
    fmt = card.get("format")
    if fmt != FORMAT:
        problems.append(("format", f"this runtime reads {FORMAT}, got {_show(fmt)} (update the edge code)"))
    inp = card.get("input") or {}
    if inp.get("dtype") != "uint8":
        problems.append(
            (
                "input.dtype",
                f"the edge feeds raw uint8 frames; got {_show(inp.get('dtype'))} "
                "(put the normalisation inside the graph)",
            )
        )
    if inp.get("layout") != "NHWC":
        problems.append(
            (
                "input.layout",
                f"the edge feeds NHWC frames; got {_show(inp.get('layout'))} (put the transpose inside the graph)",
            )
        )
    if inp.get("color") not in _COLORS:
        problems.append(("input.color", f"must be one of {', '.join(_COLORS)}, got {_show(inp.get('color'))}"))
    if (card.get("output") or {}).get("kind") != "probability":
        problems.append(("output.kind", "the edge needs a probability"))
    if problems:
        raise CardError(str(path), problems)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_card(
    *,
    model_sha256: str,
    backbone: str,
    version: str,
    threshold: float = 0.5,
    height: int = 480,
    width: int = 640,
    color: str = "RGB",
    input_name: str = "frames",
    output_name: str = "p_water",
    **extra: Any,
) -> dict[str, Any]:
    """A format-1 card for a uint8 NHWC model (what the export writes); extra keys are kept."""
    card: dict[str, Any] = {
        "format": FORMAT,
        "classes": list(CLASSES),
        "input": {
            "name": input_name,
            "dtype": "uint8",
            "layout": "NHWC",
            "color": color,
            "height": int(height),
            "width": int(width),
        },
        "output": {"name": output_name, "kind": "probability"},
        "threshold": float(threshold),
        "backbone": backbone,
        "model_sha256": model_sha256,
        "version": version,
    }
    for key, value in extra.items():
        if key in card:
            raise ValueError(f"extra key {key!r} collides with a card field")
        card[key] = value
    return validate_card(card, "<make_card>")


def write_card(path: StrPath, card: dict[str, Any]) -> Path:
    """Validate and write a card atomically (temp file beside it, fsync, rename)."""
    p = Path(path)
    validate_card(card, p)
    data = (json.dumps(card, indent=2) + "\n").encode()
    return atomic_write(p, data, durable=True)
