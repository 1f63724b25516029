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
6. **The controller's hold**: where the valve was open (``arduino_output`` 1) while the user's
   state says no water (``s=0``), the water ran only because the controller kept it on (after a
   button release, the Pi holds it ``forced_on_hold_s``). Nobody asked for it and nobody was
   asked: ``-1`` (ignore), rule ``hold``. The Pis of the earlier system always wrote
   ``arduino_output`` 0, so their episodes never hit this rule.

Human labels (``data/labels/<episode>.csv``) override all of this, when they were given for
the very episode file being labelled (the file records its sha256; see :class:`HumanLabelFile`).
"""

from __future__ import annotations

import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from autosink.core.fileio import atomic_write

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
    def from_params(cls, params: dict) -> LabelRules:
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in params.items() if k in names})

    def __post_init__(self) -> None:
        if not 0 <= self.min_reaction_s <= self.max_reaction_s:
            raise ValueError(
                "label rules: need 0 <= min_reaction_s <= max_reaction_s, "
                f"got {self.min_reaction_s}, {self.max_reaction_s}"
            )


@dataclass
class DenseLabels:
    label: np.ndarray  # int8: 0, 1 or -1
    confidence: np.ndarray  # float32 in [0, 1]
    review: np.ndarray  # bool: a human should look at this frame
    rule: list[str]  # which rule decided each frame (for the manifest and the labeling app)


def user_events(m: np.ndarray, s: np.ndarray) -> list[int]:
    """Frames where the user changed the faucet state (not the model carrying it along)."""
    return [k for k in range(1, len(s)) if s[k] != s[k - 1] and (m[k] == m[k - 1] or s[k] != m[k])]


def propagate(
    model_output, magnetic_status, fps: float, rules: LabelRules = LabelRules(), arduino_output=None
) -> DenseLabels:
    """Dense labels for one episode (frames in time order); ``arduino_output`` (the valve the Pi
    commanded, None: not recorded) finds the frames of rule 6."""
    m = np.asarray(model_output, dtype=np.int8)
    s = np.asarray(magnetic_status, dtype=np.int8)
    if m.shape != s.shape or m.ndim != 1:
        raise ValueError(f"model_output and magnetic_status must be equal-length 1-D, got {m.shape} and {s.shape}")
    valve = np.zeros_like(s) if arduino_output is None else np.asarray(arduino_output, dtype=np.int8)
    if valve.shape != s.shape:
        raise ValueError(f"arduino_output must have one value per frame, got {valve.shape} for {s.shape[0]} frames")
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
    hold = (valve == 1) & (s == 0)
    label[hold] = IGNORE
    review[hold] = False
    conf[hold] = rules.conf_accepted
    for t in np.flatnonzero(hold):
        rule[t] = "hold"
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


# ---------------------------------------------------------------------------- human label files
#
# data/labels/<episode>.csv: small text files reviewed by `git diff`. A comment line naming the
# episode's lake file by its sha256 (what data/extracted/episodes/<episode>.json records), the
# header, then one row per labelled frame: frame_index,label (0, 1 or -1 for "ignore"):
#
#     # episode sha256: 3f2a...c9 (64 hex digits)
#     frame_index,label
#     12,1
#
# The sha ties the labels to the frames they were given for: an episode re-uploaded under the same
# name with other frames does not inherit them (see HumanLabelFile.check).
HUMAN_HEADER = "frame_index,label"
SHA_PREFIX = "# episode sha256: "
_SHA_LINE = re.compile(r"# episode sha256: ([0-9a-f]{64})")
_SHA_RE = re.compile(r"[0-9a-f]{64}")

#: HumanLabelFile.check: the file was written for this very episode file
LABELS_MATCH = "ok"
#: an older file, written before label files recorded the sha: applied as it is, with a warning
LABELS_UNVERIFIED = "unverified"
#: written for another file of the same name (a re-upload with other frames): never applied
LABELS_MISMATCH = "mismatch"


@dataclass(frozen=True)
class HumanLabelFile:
    """One episode's human labels and the sha256 of the episode file they were given for."""

    labels: dict[int, int]
    #: sha256 of the episode's lake file (zip, or folder as :func:`autosink.data.extract.sha256_source`
    #: hashes it); None for a file written before label files recorded it
    episode_sha256: str | None

    def check(self, episode_sha256: str) -> str:
        """:data:`LABELS_MATCH`, :data:`LABELS_UNVERIFIED` (no sha recorded: an older file) or
        :data:`LABELS_MISMATCH` (labels for another file of that name: do not apply them)."""
        if self.episode_sha256 is None:
            return LABELS_UNVERIFIED
        return LABELS_MATCH if self.episode_sha256 == episode_sha256 else LABELS_MISMATCH


def parse_human_labels(text: str, path="<labels>") -> HumanLabelFile:
    """Parse a human labels file's text (``path`` only names it in errors).

    Accepts both formats: with the ``# episode sha256: ...`` line first (written since label files
    record the episode's sha) and without it (older files, whose ``episode_sha256`` is None: they
    still load, and their users decide what to do with unverified labels, see
    :meth:`HumanLabelFile.check`). Anything else malformed is an error naming the file and the line.
    """
    lines = text.splitlines()
    sha = None
    first = 1  # line number of the header
    if lines and lines[0].startswith("#"):
        m = _SHA_LINE.fullmatch(lines[0].strip())
        if not m:
            raise ValueError(f"{path}: line 1: expected '{SHA_PREFIX}<64 hex digits>', got {lines[0][:100]!r}")
        sha, lines, first = m.group(1), lines[1:], 2
    if not lines or lines[0].strip() != HUMAN_HEADER:
        got = lines[0][:100] if lines else ""
        raise ValueError(f"{path}: line {first}: expected header {HUMAN_HEADER!r}, got {got!r}")
    labels: dict[int, int] = {}
    for number, line in enumerate(lines[1:], start=first + 1):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            idx, value = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: line {number}: expected 'frame_index,label', got {line[:100]!r}") from None
        if value not in (0, 1, IGNORE) or idx < 0:
            raise ValueError(f"{path}: line {number}: label must be 0, 1 or -1 and frame_index >= 0, got {line!r}")
        if idx in labels:
            raise ValueError(f"{path}: line {number}: frame {idx} labelled twice")
        labels[idx] = value
    return HumanLabelFile(labels, sha)


def read_human_label_file(path) -> HumanLabelFile:
    """Read one episode's human labels with the episode sha they record (None in older files)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    return parse_human_labels(text, path)


def read_human_labels(path) -> dict[int, int]:
    """Read one episode's human labels (the labels only: no check of the episode they were given
    for; :func:`read_human_label_file` has it). A malformed file is an error naming the file and
    the line. Files without the sha line (written before label files recorded it) load too."""
    return read_human_label_file(path).labels


def format_human_labels(labels: dict[int, int], episode_sha256: str | None = None) -> str:
    """The text of a human labels file (rows sorted, so diffs stay small)."""
    for idx, value in labels.items():
        if value not in (0, 1, IGNORE):
            raise ValueError(f"frame {idx}: label must be 0, 1 or -1, got {value!r}")
        if int(idx) < 0:
            raise ValueError(f"frame index must be >= 0, got {idx!r}")
    head = ""
    if episode_sha256 is not None:
        if not _SHA_RE.fullmatch(episode_sha256):
            raise ValueError(f"episode sha256 must be 64 lowercase hex digits, got {episode_sha256[:80]!r}")
        head = SHA_PREFIX + episode_sha256 + "\n"
    return head + HUMAN_HEADER + "\n" + "".join(f"{int(i)},{int(v)}\n" for i, v in sorted(labels.items()))


def human_labels_lock_path(path) -> Path:
    """The lock file of a human labels file: ``.<episode>.csv.lock`` beside it (hidden, and not
    ``*.csv``, so neither the label stage nor git see it; it exists only while a save runs)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def human_labels_lock(path, timeout: float = 10.0):
    """Hold the exclusive lock of a human labels file (``fcntl.flock`` on its lock file) while the
    block runs: two savers (labeler servers, threads, processes) never interleave a check-then-write.

    The lock file is removed on release so ``data/labels/`` keeps only labels; a saver that locked a
    file removed meanwhile locks again (the inode check). One left by a killed save is harmless.
    :class:`TimeoutError` after ``timeout`` seconds of waiting.
    """
    import fcntl  # POSIX only: imported here so the labelling rules load anywhere

    lock_path = human_labels_lock_path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{path}: another save holds its lock (waited {timeout:g} s)") from None
                    time.sleep(0.005)
            try:
                st, mine = os.stat(lock_path), os.fstat(fd)
                held = (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                held = False
        except BaseException:
            os.close(fd)
            raise
        if held:
            break
        os.close(fd)  # the previous holder removed the file we locked: lock the current one
    try:
        yield
    finally:
        try:
            os.unlink(lock_path)  # while still holding it: waiters on this inode then lock again
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def write_human_labels(path, labels: dict[int, int], episode_sha256: str | None = None, *, lock: bool = True) -> None:
    """Write one episode's human labels atomically (temp file + rename, fsynced; sorted rows).

    ``episode_sha256`` is the sha256 of the episode's lake file the labels were given for (as
    ``data/extracted/episodes/<episode>.json`` records it); without it the file is written in the
    older format and readers treat it as unverified. ``lock`` takes :func:`human_labels_lock`
    around the write; pass False when the caller already holds it (the lock is not re-entrant).
    """
    path = Path(path)
    try:
        text = format_human_labels(labels, episode_sha256)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if lock:
        with human_labels_lock(path):
            atomic_write(path, text, durable=True)
    else:
        atomic_write(path, text, durable=True)
