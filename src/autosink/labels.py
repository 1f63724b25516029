"""Sparse to dense: one label per frame from what a feedback episode records.

An episode records, per frame, the model's decision ``m`` (model_output) and the
faucet state the user left ``s`` (magnetic_status). ``s`` equals ``m`` while the
user lets the model decide; the user overrides by forcing water on (``s=1``
while ``m=0``) or closing the faucet (``s=0`` while ``m=1``), and lets go when
the override is no longer needed. So ``s`` is the water the user wanted, seen through a reaction delay: a
user starts an override only once a wrong state has lasted their reaction
delay, but ends one (lets go, reopens) by their own decision, at once. The rules:

1. **Base label** = ``s``: during an override the user's state wins
   (``override``, confidence ``conf_override``); elsewhere the user accepted
   the model's decision (``accepted``, ``conf_accepted``).
2. **Starting an override** at frame ``k`` (``s`` changes by the user's hand to
   disagree with ``m``): the state was wrong from ``d`` seconds before, with
   ``d`` in ``[min_reaction_s, max_reaction_s]``. The last ``min_reaction_s``
   before ``k`` get the user's new state confidently (``reaction``); the
   stretch from ``max_reaction_s`` to ``min_reaction_s`` before ``k`` is
   ``uncertain`` (flagged for review, ``conf_review``), labelled by the best
   guess: from the model's switch into the corrected state if there is one
   there, else from the mean reaction delay. A window never reaches back past
   the previous user action, so overlapping overrides stay apart.
3. **Ending an override** (``s`` returns to ``m`` by the user's hand): no
   delay, nothing propagates.
4. **The model switched and the user went along**: users tolerate a wrong
   state shorter than their delay, so the true switch may be a little earlier
   or later: ``passive_window_s`` on each side is ``uncertain``.
5. **Flicker**: an override shorter than ``min_override_s`` (toggled and let
   go at once) says nothing reliable: ``-1`` (ignore), flagged for review, and
   the reaction window before it is ``uncertain`` rather than confident.

Human labels (``data/labels/<episode>.csv``) override all of this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from autosink.fileio import atomic_write

import numpy as np

IGNORE = -1


@dataclass(frozen=True)
class LabelRules:
    min_reaction_s: float = 0.5
    max_reaction_s: float = 2.5
    min_override_s: float = 1.0
    passive_window_s: float = 0.5
    conf_override: float = 0.95
    conf_accepted: float = 0.85
    conf_review: float = 0.5

    @classmethod
    def from_params(cls, params: dict) -> "LabelRules":
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in params.items() if k in names})

    def __post_init__(self) -> None:
        if not 0 <= self.min_reaction_s <= self.max_reaction_s:
            raise ValueError(
                f"label rules: need 0 <= min_reaction_s <= max_reaction_s, got {self.min_reaction_s}, {self.max_reaction_s}")


@dataclass
class DenseLabels:
    label: np.ndarray  # int8: 0, 1 or -1
    confidence: np.ndarray  # float32 in [0, 1]
    review: np.ndarray  # bool: a human should look at this frame
    rule: list[str]  # which rule decided each frame (for the manifest and the labeling app)


def user_events(m: np.ndarray, s: np.ndarray) -> list[int]:
    """Frames where the user changed the faucet state (not the model carrying it along)."""
    return [k for k in range(1, len(s))
            if s[k] != s[k - 1] and (m[k] == m[k - 1] or s[k] != m[k])]


def propagate(model_output, magnetic_status, fps: float, rules: LabelRules = LabelRules()) -> DenseLabels:
    """Dense labels for one episode (frames in time order)."""
    m = np.asarray(model_output, dtype=np.int8)
    s = np.asarray(magnetic_status, dtype=np.int8)
    if m.shape != s.shape or m.ndim != 1:
        raise ValueError(f"model_output and magnetic_status must be equal-length 1-D, got {m.shape} and {s.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    n = len(m)
    label = s.copy()
    override = s != m
    conf = np.where(override, rules.conf_override, rules.conf_accepted).astype(np.float32)
    review = np.zeros(n, dtype=bool)
    rule = ["override" if o else "accepted" for o in override]

    sure = math.ceil(rules.min_reaction_s * fps)
    reach = math.ceil(rules.max_reaction_s * fps)
    mid = math.ceil((rules.min_reaction_s + rules.max_reaction_s) / 2 * fps)
    passive = math.ceil(rules.passive_window_s * fps)

    def uncertain(j: int, value: int | None = None) -> None:
        if value is not None:
            label[j] = value
        conf[j] = min(conf[j], rules.conf_review)
        review[j] = True
        rule[j] = "uncertain"

    # The model switched and the user went along: they tolerate a wrong state shorter than their
    # reaction delay, so the true switch may lie up to passive_window_s on either side.
    for j in range(1, n):
        if m[j] != m[j - 1] and s[j] == m[j] and s[j - 1] == m[j - 1]:
            for t in range(max(0, j - passive), min(n, j + passive)):
                if not override[t]:
                    uncertain(t)

    # Flicker: an override too short to mean anything (cut at the episode edge: unknown length, kept).
    min_len = max(1, math.ceil(rules.min_override_s * fps))
    flicker = np.zeros(n, dtype=bool)
    i = 0
    while i < n:
        j = i + 1
        if override[i]:
            while j < n and override[j] and s[j] == s[i]:
                j += 1
            if j - i < min_len and 0 < i and j < n:
                flicker[i:j] = True
        i = j

    events = user_events(m, s)
    for idx, k in enumerate(events):
        v = s[k]
        if v == m[k]:
            continue  # the user ends an override (lets go, or reopens): their own decision, no delay
        floor = events[idx - 1] if idx else 0  # never reach back past the previous user event
        if flicker[k]:  # a toggle let go at once: weak evidence; a human decides the frames before it
            for j in range(max(floor, k - reach), k):
                uncertain(j, v if j >= k - sure else None)
            continue
        # The user starts an override once the wrong state has lasted their reaction delay:
        # surely wrong for the last min_reaction_s, maybe wrong from max_reaction_s before.
        sure_from = max(floor, k - sure)
        label[sure_from:k] = v
        conf[sure_from:k] = rules.conf_override
        review[sure_from:k] = False
        for j in range(sure_from, k):
            rule[j] = "reaction"
        start = max(floor, k - reach)
        # Best guess inside the uncertain stretch: from the model's switch into the corrected
        # state if there is one (the user reacting to it), else from the mean reaction delay.
        switch = next((j for j in range(sure_from - 1, start, -1) if m[j] != m[j - 1] and m[j] != v), None)
        split = switch if switch is not None else k - mid
        for j in range(start, sure_from):
            uncertain(j, v if j >= split else None)

    label[flicker] = IGNORE
    review[flicker] = True
    conf[flicker] = rules.conf_review
    for t in np.flatnonzero(flicker):
        rule[t] = "flicker"
    return DenseLabels(label=label.astype(np.int8), confidence=conf, review=review, rule=rule)


def frames_per_second(timestamps: list, default: float) -> float:
    """Frame rate of an episode from its second-precision timestamps (``default`` if they span < 2 s)."""
    if len(timestamps) < 2:
        return default
    span = (timestamps[-1] - timestamps[0]).total_seconds()
    if span < 2:
        return default
    # Second precision: n frames over [t0, t_last + 1) seconds.
    return len(timestamps) / (span + 1)


# Human labels: data/labels/<episode>.csv, small text files reviewed by `git diff`.
# One row per labelled frame: frame_index,label (0, 1 or -1 for "ignore").
HUMAN_HEADER = "frame_index,label"


def read_human_labels(path) -> dict[int, int]:
    """Read one episode's human labels; a malformed file is an error naming the file and the line."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != HUMAN_HEADER:
        raise ValueError(f"{path}: line 1: expected header {HUMAN_HEADER!r}, got {lines[0] if lines else ''!r}")
    labels: dict[int, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            idx, value = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: line {number}: expected 'frame_index,label', got {line!r}") from None
        if value not in (0, 1, IGNORE) or idx < 0:
            raise ValueError(f"{path}: line {number}: label must be 0, 1 or -1 and frame_index >= 0, got {line!r}")
        if idx in labels:
            raise ValueError(f"{path}: line {number}: frame {idx} labelled twice")
        labels[idx] = value
    return labels


def write_human_labels(path, labels: dict[int, int]) -> None:
    """Write one episode's human labels atomically (sorted, so diffs stay small)."""
    path = Path(path)
    for idx, value in labels.items():
        if value not in (0, 1, IGNORE):
            raise ValueError(f"{path}: frame {idx}: label must be 0, 1 or -1, got {value!r}")
    text = HUMAN_HEADER + "\n" + "".join(f"{int(i)},{int(v)}\n" for i, v in sorted(labels.items()))
    atomic_write(path, text)
