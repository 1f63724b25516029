"""Case validation sets and the case gate: does a model get the situations that matter right?

A hold-out accuracy can look fine while the model fails the one case where water is needed
(the earlier system: 96.6 % overall, 4.4 % on "rinse, dish close"). So every candidate model is
also run on fixed *cases*, ``CASEnn-<label>-<description>/`` folders of PNG frames (the label is
in the folder's name: every frame of a case has that one label), and promoted only if every case passes.

* :func:`list_cases` reads the folders (strictly: a misnamed folder is an error, not skipped,
  so a case cannot silently drop out of the gate).
* :func:`evaluate_cases` runs any ``predict`` callable (uint8 RGB ``[N, H, W, 3]`` ->
  probabilities ``[N]``) on them and scores each case (:func:`case_score`); :func:`onnx_predictor`
  makes one from an exported model and its card, so the gate judges the very file that would be deployed.
* :func:`gate` checks per-case minimum accuracies and, against the production model's results
  (the champion), that no case regressed by more than a tolerance.
* :func:`format_report` renders the outcome as a small table for the stage's log.

Accuracies are plain floats and the results plain dicts, so they go to a metrics JSON as is.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autosink.core.modelcard import card_path_for

__all__ = [
    "Case",
    "CaseError",
    "parse_case_name",
    "list_cases",
    "evaluate_cases",
    "case_score",
    "onnx_predictor",
    "OnnxCasePredictor",
    "gate",
    "format_report",
    "DEFAULT_MIN_ACCURACY",
    "DEFAULT_MAX_REGRESSION",
]

CASE_PATTERN = "CASEnn-<0|1>-<description> (e.g. CASE03-1-rinse-dish-close-water)"
_NAME_RE = re.compile(r"CASE([0-9]{2,})-([^-]*)-(.+)")
_PREFIX_RE = re.compile(r"CASE([0-9]{2,})")
DEFAULT_MIN_ACCURACY = 0.90
DEFAULT_MAX_REGRESSION = 0.05
_EPS = 1e-9  # accuracies are ratios of small counts: 0.95 must not fail "1.00 - 0.05"

Predict = Callable[[np.ndarray], Any]


class CaseError(ValueError):
    """A case folder, frame or result that cannot be used (the message names it)."""


@dataclass(frozen=True)
class Case:
    """One case folder: ``frames`` are its PNG files, sorted by name."""

    name: str
    number: int
    label: int
    description: str
    frames: tuple[Path, ...]


def parse_case_name(name: str) -> tuple[int, int, str]:
    """``"CASE03-1-rinse-dish-close-water"`` -> ``(3, 1, "rinse-dish-close-water")``.

    The label is the second ``-``-separated field (the description may itself hold ``-``).
    Anything else raises :class:`CaseError` naming the folder and the expected pattern: a
    folder the gate cannot read must stop the gate, not be skipped.
    """
    m = _NAME_RE.fullmatch(name)
    if m is None:
        raise CaseError(f"{name}: not a case folder name; expected {CASE_PATTERN}")
    number, label, description = m.groups()
    if label not in ("0", "1"):
        raise CaseError(f"{name}: label {label!r} (second '-'-separated field) must be 0 or 1; expected {CASE_PATTERN}")
    if description != description.strip():
        raise CaseError(f"{name}: description has leading/trailing whitespace; expected {CASE_PATTERN}")
    return int(number), int(label), description


def list_cases(root: str | os.PathLike[str]) -> list[Case]:
    """Every case folder under ``root``, sorted by case number.

    Hidden entries (``.name``) and plain files are ignored; every other subfolder must be a
    case with at least one ``.png`` frame, and case numbers must be unique (two ``CASE03``
    would make per-case settings and reports ambiguous). Errors name the folder.
    """
    root = Path(root)
    hint = "run `dvc repro simulate` (writes the sample cases) or add CASEnn-<label>-<description>/ folders"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no case folder; {hint}")
    cases: list[Case] = []
    seen: dict[int, str] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            number, label, description = parse_case_name(d.name)
        except CaseError as e:
            raise CaseError(f"{root}/{e}") from None
        if number in seen:
            raise CaseError(
                f"{d}: case number {number:02d} is also used by {root / seen[number]}; case numbers must be unique"
            )
        seen[number] = d.name
        frames = tuple(
            sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith("."))
        )
        if not frames:
            raise CaseError(f"{d}: case folder holds no .png frames")
        cases.append(Case(d.name, number, label, description, frames))
    if not cases:
        raise CaseError(f"{root}: no case folders; {hint}")
    return sorted(cases, key=lambda c: c.number)


def _probabilities(predict: Predict, batch: np.ndarray, case: Case, first: int) -> np.ndarray:
    """Call ``predict`` and check it kept its promise: one finite probability per frame."""
    try:
        y = np.asarray(predict(batch), dtype=np.float64)
    except CaseError:
        raise
    except Exception as e:  # name the case: "predict failed" alone is useless in a stage log
        raise CaseError(
            f"{case.name}: predict failed on {case.frames[first].name} and the next "
            f"{len(batch) - 1} frame(s): {type(e).__name__}: {e}"
        ) from e
    if y.size != len(batch) or (y.ndim > 1 and y.shape[0] != len(batch)):
        raise CaseError(
            f"{case.name}: predict returned shape {y.shape} for {len(batch)} frames, expected one probability per frame"
        )
    y = y.reshape(-1)
    bad = ~(np.isfinite(y) & (y >= 0.0) & (y <= 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise CaseError(f"{case.frames[first + i]}: predict returned {y[i]!r}, not a probability in [0, 1]")
    return y


def evaluate_cases(
    predict: Predict,
    cases: Iterable[Case],
    threshold: float,
    frame_size: tuple[int, int] | None = (640, 480),
    batch_size: int = 16,
) -> dict[str, dict]:
    """Run ``predict`` on every frame of every case; per case name, its :func:`case_score`.

    ``predict`` takes uint8 RGB frames ``[N, H, W, 3]`` (read as the camera delivered them,
    ``frame_size`` = (width, height), checked) and returns ``p(water_on)`` ``[N]``.
    """
    from autosink.learn.frames import read_frame  # here: it pulls in torch, which the gate alone does not need

    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cases = list(cases)
    if not cases:
        raise CaseError("no cases to evaluate")
    out: dict[str, dict] = {}
    for case in cases:
        if case.name in out:
            raise CaseError(f"{case.name}: case given twice")
        ps = []
        for start in range(0, len(case.frames), int(batch_size)):
            batch = np.stack([read_frame(p, frame_size) for p in case.frames[start : start + int(batch_size)]])
            ps.append(_probabilities(predict, batch, case, start))
        out[case.name] = case_score(np.concatenate(ps) if ps else np.zeros(0), case.label, threshold)
    return out


def case_score(p: np.ndarray, label: int, threshold: float) -> dict[str, Any]:
    """One case's result from its frames' probabilities ``p``: ``{"label", "n", "accuracy",
    "wilson_low", "wilson_high", "mean_p", "correct"}``.

    A frame is correct when ``(p >= threshold)`` equals the case ``label``; ``correct`` is their
    count, ``accuracy`` their share and ``wilson_low``/``wilson_high`` its 95% interval
    (:func:`wilson_interval`). ``mean_p`` shows how far a failing case is from the threshold.
    The one rule for every model: :func:`evaluate_cases` and the int8 comparison
    (:func:`autosink.learn.quantize.compare_cases`) both score with it, so their results compare.
    """
    p = np.asarray(p, dtype=np.float64)
    correct = int(((p >= threshold).astype(int) == label).sum())
    n = int(p.size)
    low, high = wilson_interval(correct, n)
    return {
        "label": int(label),
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "wilson_low": low,
        "wilson_high": high,
        "mean_p": float(p.mean()) if n else None,
        "correct": correct,
    }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion: with few frames a case's accuracy is a
    coin toss (12 frames: one error is 0.917, two are 0.833), and the interval says how much."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class OnnxCasePredictor:
    """``predict(frames [N, H, W, 3] uint8 RGB) -> p [N]`` for an exported model; ``card`` is its card.

    Wraps the edge's own :class:`~autosink.edge.inference.OnnxModel` (card checks, sha256, session
    signature: what the Pi would accept), but sends the whole batch to onnxruntime in one call
    (the export declares a dynamic batch axis). Colour order follows the card.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.path, self.card, self.threshold = model.path, model.card, model.threshold

    def __repr__(self) -> str:
        return f"OnnxCasePredictor({self.path}, version={self.card.get('version')!r})"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        m = self.model
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (m.height, m.width, 3):
            raise ValueError(
                f"{self.path}: expected uint8 RGB frames [N, {m.height}, {m.width}, 3] "
                f"(the card's size), got {frames.dtype} {tuple(frames.shape)}"
            )
        x = frames[..., ::-1] if m.bgr else frames
        y = np.asarray(m.session.run([m.output_name], {m.input_name: np.ascontiguousarray(x)})[0])
        if y.size != len(frames):
            raise ValueError(
                f"{self.path}: output {m.output_name!r} has shape {y.shape} for {len(frames)} "
                "frames, expected one probability per frame"
            )
        return y.reshape(-1).astype(np.float64)


def onnx_predictor(onnx_path: str | os.PathLike[str], *, threads: int = 0) -> tuple[OnnxCasePredictor, float]:
    """``(predict, threshold)`` for an exported model, from it and its card (``model.json``).

    Refuses (ValueError naming the file) a model without a card or whose bytes do not hash to
    the card's ``model_sha256``: the gate must judge exactly the file that would be promoted,
    with the operating point chosen for it. Loading is the edge's :func:`load_model`.
    ``threads`` = 0: one per CPU core.
    """
    from autosink.edge.inference import ModelError, load_model

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    cpath = card_path_for(path)
    if not cpath.is_file():
        raise ValueError(
            f"{path}: no model card {cpath.name} beside it (the export writes both); "
            "refusing to evaluate a model without its threshold and input contract"
        )
    try:
        model = load_model(path, threads=int(threads) or os.cpu_count() or 1)
    except ModelError as e:
        raise ValueError(str(e)) from None
    predictor = OnnxCasePredictor(model)
    return predictor, predictor.threshold


# --------------------------------------------------------------------------- gate


def _number(name: str) -> int | None:
    try:
        return parse_case_name(name)[0]
    except CaseError:
        return None


def _sort_key(name: str) -> tuple[int, str]:
    n = _number(name)
    return (n if n is not None else 1 << 30, name)


def _fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"case gate: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


def _pair(a: float, b: float) -> tuple[str, str]:
    """Two accuracies with 2 decimals, more where 2 would print a failing pair as equal."""
    for digits in (2, 3, 4):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb:
            break
    return sa, sb


def _minimums(names: list[str], cfg: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Each case's minimum accuracy: ``per_case`` by full name, else by ``CASEnn`` number,
    else ``min_accuracy``. Also notes for ``per_case`` keys that match no case (likely typos)."""
    default = _fraction(cfg.get("min_accuracy", DEFAULT_MIN_ACCURACY), "min_accuracy")
    per_case = cfg.get("per_case") or {}
    if not isinstance(per_case, Mapping):
        raise ValueError(
            f"case gate: per_case must be a mapping of case name or CASEnn to a minimum, got {type(per_case).__name__}"
        )
    by_name: dict[str, float] = {}
    by_number: dict[int, tuple[str, float]] = {}
    for key, value in per_case.items():
        key = str(key)
        v = _fraction(value, f"per_case[{key!r}]")
        m = _PREFIX_RE.fullmatch(key)
        if m:
            n = int(m.group(1))
            if n in by_number:
                raise ValueError(f"case gate: per_case keys {by_number[n][0]!r} and {key!r} name the same case number")
            by_number[n] = (key, v)
        elif _number(key) is not None:
            by_name[key] = v
        else:
            raise ValueError(
                f"case gate: per_case key {key!r} is neither a case name nor CASEnn; expected {CASE_PATTERN}"
            )
    mins = {}
    used: set[str] = set()
    for name in names:
        n = _number(name)
        if name in by_name:
            mins[name] = by_name[name]
            used.add(name)
        elif n is not None and n in by_number:
            mins[name] = by_number[n][1]
            used.add(by_number[n][0])
        else:
            mins[name] = default
    notes = [
        f"per_case {key!r} matches no evaluated case; ignored"
        for key in list(by_name) + [k for k, _ in by_number.values()]
        if key not in used
    ]
    return mins, notes


def gate(
    challenger: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Mapping[str, Any]] | None,
    cfg: Mapping[str, Any] | None,
) -> dict:
    """Pass or fail the challenger's case results (:func:`evaluate_cases`), optionally against the
    production model's (``champion``, None when there is none).

    ``cfg`` keys (others are ignored, so a stage may pass its whole section):

    * ``min_accuracy`` (default 0.90): every case needs at least this accuracy;
    * ``per_case``: ``{case name or "CASEnn": minimum}`` overrides it for single cases;
    * ``max_regression`` (default 0.05; None turns the check off): a case fails when its
      accuracy is below the champion's by more than this. Only cases in both results are
      compared (the others are named in ``notes``). A champion that fails the floors itself is
      no reference (a model that never opens the water scores 1.0 on every "no water" case):
      then the check is skipped, with a note, and the floors alone decide;
    * ``min_frames`` (default 1): a case with fewer frames fails, its accuracy is not evidence;
    * ``min_gain`` (default None: off), the climb rule: while production fails the floors itself,
      a challenger that fails them too still passes when it is better than production: its mean
      case accuracy is higher by at least ``min_gain`` and its worst case is no worse. A fleet
      can then climb from a weak model (``autosink loop``); the floors are reported as notes.

    Returns ``{"passed", "failures": [message], "notes": [message], "cases": {name: {challenger
    fields, "min_accuracy", "champion_accuracy" (None where production has no result), "passed"}}}``.
    """
    cfg = cfg or {}
    max_reg = cfg.get("max_regression", DEFAULT_MAX_REGRESSION)
    if max_reg is not None:
        if isinstance(max_reg, bool) or not isinstance(max_reg, (int, float)) or not 0.0 <= max_reg <= 1.0:
            raise ValueError(f"case gate: max_regression must be a number in [0, 1] or null, got {max_reg!r}")
        max_reg = float(max_reg)
    min_frames = cfg.get("min_frames", 1)
    if isinstance(min_frames, bool) or not isinstance(min_frames, int) or min_frames < 1:
        raise ValueError(f"case gate: min_frames must be an integer >= 1, got {min_frames!r}")

    names = sorted(challenger, key=_sort_key)
    mins, notes = _minimums(names, cfg)
    failures: list[str] = []
    cases: dict[str, dict] = {}
    if not names:
        failures.append("no case results for the model: nothing to gate on")
    # cases the production model fails itself: then it is no reference for regressions
    below = (
        []
        if champion is None
        else [n for n in names if n in champion and not float(champion[n]["accuracy"]) >= mins[n] - _EPS]
    )
    if champion is None:
        notes.append("no production model: regression check skipped")
    elif max_reg is None:
        notes.append("max_regression is null: regression check off")
    elif below:
        notes.append(
            f"production fails the case floor itself ({', '.join(below)}): regression check "
            "skipped, the floors alone decide"
        )
        max_reg = None
    else:
        new = [n for n in names if n not in champion]
        gone = sorted((n for n in champion if n not in challenger), key=_sort_key)
        if new:
            notes.append(f"no production result for {', '.join(new)}: regression not checked there")
        if gone:
            notes.append(f"production results only for {', '.join(gone)}: not evaluated for this model")

    for name in names:
        r = challenger[name]
        for key in ("label", "n", "accuracy"):
            if key not in r:
                raise CaseError(f"{name}: case result lacks {key!r} (expected evaluate_cases output)")
        acc, n, floor = float(r["accuracy"]), int(r["n"]), mins[name]
        ok = True
        if n < min_frames:
            failures.append(f"{name}: only {n} frame(s) < min_frames {min_frames}: too few to judge")
            ok = False
        if not acc >= floor - _EPS:  # also catches NaN
            a, b = _pair(acc, floor)
            failures.append(f"{name}: accuracy {a} < {b}")
            ok = False
        champ_acc = None
        if champion is not None and name in champion:
            champ_acc = float(champion[name]["accuracy"])
            if max_reg is not None and acc < champ_acc - max_reg - _EPS:
                a, b = _pair(acc, champ_acc)
                failures.append(f"{name}: accuracy {a} regressed from {b} (production) by more than {max_reg:.2f}")
                ok = False
        cases[name] = {**dict(r), "min_accuracy": floor, "champion_accuracy": champ_acc, "passed": ok}
    min_gain = cfg.get("min_gain")
    if min_gain is not None and (isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or min_gain < 0):
        raise ValueError(f"case gate: min_gain must be a number >= 0 or null, got {min_gain!r}")
    if failures and champion is not None and below and min_gain is not None:
        failures, notes = _climb(challenger, champion, names, float(min_gain), min_frames, failures, notes)
    return {"passed": not failures, "failures": failures, "notes": notes, "cases": cases}


def _climb(
    challenger: Mapping,
    champion: Mapping,
    names: list[str],
    min_gain: float,
    min_frames: int,
    failures: list[str],
    notes: list[str],
) -> tuple[list[str], list[str]]:
    """The climb rule (see :func:`gate`): (failures, notes) after it. It never excuses a case
    that production has no result for, nor one with too few frames."""
    shared = [n for n in names if n in champion]
    if not shared or any(int(challenger[n]["n"]) < min_frames for n in names):
        return failures, notes
    if any(f.split(":", 1)[0] not in shared for f in failures):
        return failures + ["climb rule: not applied (a failing case has no production result)"], notes
    new = [float(challenger[n]["accuracy"]) for n in shared]
    old = [float(champion[n]["accuracy"]) for n in shared]
    mean_new, mean_old = float(np.mean(new)), float(np.mean(old))
    verdict = (
        f"climb rule: mean case accuracy {mean_old:.3f} (production) -> {mean_new:.3f}, worst case "
        f"{min(old):.2f} -> {min(new):.2f}"
    )
    if mean_new >= mean_old + min_gain - _EPS and min(new) >= min(old) - _EPS:
        return [], notes + [f"{verdict}: better than production by min_gain {min_gain:g}: passed"] + [
            f"passed by the climb rule despite: {f}" for f in failures
        ]
    return failures + [f"{verdict}: not better than production by min_gain {min_gain:g}"], notes


def format_report(result: Mapping[str, Any]) -> str:
    """The gate result as a fixed-width table, then failures, notes and one verdict line."""
    cases = result.get("cases") or {}
    width = max([len("case")] + [len(n) for n in cases])
    head = (
        f"{'case':<{width}}  {'label':>5}  {'n':>4}  {'accuracy':>8}  {'95% interval':>13}  {'production':>10}  "
        f"{'min':>5}  verdict"
    )
    lines = [head, "-" * len(head)]
    for name, c in cases.items():
        champ = c.get("champion_accuracy")
        ci = f"{float(c['wilson_low']):.2f}-{float(c['wilson_high']):.2f}" if c.get("wilson_low") is not None else "-"
        lines.append(
            f"{name:<{width}}  {c.get('label', ''):>5}  {c.get('n', ''):>4}  {float(c['accuracy']):>8.3f}  "
            f"{ci:>13}  {'-' if champ is None else f'{champ:.3f}':>10}  {float(c['min_accuracy']):>5.2f}  "
            f"{'ok' if c.get('passed') else 'FAIL'}"
        )
    lines += [f"FAIL {f}" for f in result.get("failures", [])]
    lines += [f"note {n}" for n in result.get("notes", [])]
    failed = sum(1 for c in cases.values() if not c.get("passed"))
    if result.get("passed"):
        lines.append(f"case gate: PASSED ({len(cases)} case(s))")
    else:
        lines.append(
            f"case gate: FAILED ({failed} of {len(cases)} case(s) failed, {len(result.get('failures', []))} problem(s))"
        )
    return "\n".join(lines)
