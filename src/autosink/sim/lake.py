"""The sample data lake, written as deployed Pis write it, with hidden ground truth.

For every session the closed loop (:mod:`autosink.sim.user`) runs with the configured current
model; the Pi's ring buffer then saves, around every run of overridden frames (rows where
``model_output != magnetic_status``), the frames from ``pre_s`` seconds before the run starts
to ``post_s`` seconds after it ends as one episode ``{stem}.zip`` (version 2,
``arduino_output`` 0). Windows that overlap, touch, or whose first frame would fall in the
second of the previous window's last frame merge into one episode, so no two episodes of a
session share a stem; sessions never overlap in time, so stems are unique across the lake.
The ground truth of every saved frame goes to ``{truth_dir}/{stem}.csv`` (never into the
episode): image, t_s, label, wants_water, step, dish_in_roi, dish_held, hand_in_roi,
scrubber_visible, water_on, model_output, magnetic_status, user_mode.

Only frames inside episode windows are rendered (the default model needs no pixels), which
keeps :func:`simulate_lake` fast; :func:`render_session` renders a whole session for
held-out benchmarks.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autosink.sim.baseline import evaluate_trivial, trivial_features
from autosink.sim.scene import render
from autosink.sim.session import SessionScript, make_sessions
from autosink.sim.user import CLOSED, FORCED_ON, ClosedLoop, FrameRecord, SimUser, make_model

#: Defaults of the ``sim:`` config group: exactly conf/sim/default.yaml, key by key
#: (tests/test_defaults.py), so a config that leaves a key out gets what the pipeline runs with.
#: Kept in code rather than read from conf/ at run time: the water benchmark's held-out sessions
#: (src/autosink/learn/water.py) take every key they do not set from here, so a change here must be
#: a code change that DVC sees, not an untracked file the stage reads.
DEFAULTS: dict[str, Any] = {
    "seed": 20240706,
    "users": 16,
    "sessions_per_user": 2,
    "dishes_per_session": [3, 5],
    "fps": 2.0,
    "pre_s": 3.0,
    "post_s": 3.0,
    "reaction_delay_s": [0.5, 2.5],
    "user_model": "roi_presence",
    "case_frames": 60,
    "start_date": "2024-07-01",
    "deviant_users": 0.0,
}

#: PNG encoding of lake frames: zlib level 4 (OpenCV's default writes ~50% larger files of
#: these synthetic frames); the bytes are a normal 8-bit BGR-encoded PNG as the Pi writes.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 4]

TRUTH_COLUMNS = (
    "image",
    "t_s",
    "label",
    "wants_water",
    "step",
    "dish_in_roi",
    "dish_held",
    "hand_in_roi",
    "scrubber_visible",
    "water_on",
    "model_output",
    "magnetic_status",
    "user_mode",
)


def with_defaults(cfg: dict | None) -> dict:
    out = dict(DEFAULTS)
    out.update({k: v for k, v in (cfg or {}).items() if v is not None})
    return out


# --------------------------------------------------------------------------- episode windows


def override_runs(model_output: list[int], magnetic_status: list[int]) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of frames where the user overrode the model."""
    runs, start = [], None
    for i, (m, g) in enumerate(zip(model_output, magnetic_status)):
        if m != g and start is None:
            start = i
        elif m == g and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(model_output)))
    return runs


def episode_windows(
    model_output: list[int],
    magnetic_status: list[int],
    fps: float,
    pre_s: float,
    post_s: float,
    seconds: list[int] | None = None,
) -> list[tuple[int, int]]:
    """Ring-buffer windows ``[a, b)`` saved around override runs, merged so that windows never
    overlap and no two start within the same second (``seconds[i]``: frame i's timestamp in
    whole seconds; default ``floor(i / fps)``)."""
    n = len(model_output)
    if seconds is None:
        seconds = [int(i // fps) for i in range(n)]
    pre, post = int(round(pre_s * fps)), int(round(post_s * fps))
    out: list[list[int]] = []
    for s, e in override_runs(model_output, magnetic_status):
        a, b = max(0, s - pre), min(n, e + post)
        if out and (a <= out[-1][1] or seconds[a] <= seconds[out[-1][1] - 1]):
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


# --------------------------------------------------------------------------- sessions


def run_session(
    script: SessionScript,
    model: Any = "roi_presence",
    *,
    keep_frames: bool = False,
    render_frames: bool | None = None,
    threshold: float = 0.5,
) -> list[FrameRecord]:
    """Run the closed loop over a whole session (model by name or any callable)."""
    if isinstance(model, str):
        model = make_model(model)
    user = SimUser(script.user.reaction_delay_s, seed=script.seed + 1)
    return ClosedLoop(
        script, model, user, threshold=threshold, render_frames=render_frames, keep_frames=keep_frames
    ).run()


def truth_row(rec: FrameRecord, image: str) -> dict:
    t = rec.truth
    return {
        "image": image,
        "t_s": f"{rec.t:.3f}",
        "label": t.label,
        "wants_water": int(t.wants_water),
        "step": t.step,
        "dish_in_roi": int(t.dish_in_roi),
        "dish_held": int(t.dish_held),
        "hand_in_roi": int(t.hand_in_roi),
        "scrubber_visible": int(t.scrubber_visible),
        "water_on": int(rec.state.water_on),
        "model_output": rec.model_output,
        "magnetic_status": rec.magnetic_status,
        "user_mode": rec.user_mode,
    }


def render_session(
    script: SessionScript, model: Any = "roi_presence", threshold: float = 0.5
) -> tuple[list[np.ndarray], list[dict]]:
    """Every frame of a session (RGB uint8) with its truth row (same columns as the truth
    files, ``image`` = ``{i+1}.png``), e.g. for held-out benchmarks on
    ``make_sessions(cfg, "heldout")``. The water shown follows the given model + user."""
    recs = run_session(script, model, keep_frames=True, render_frames=True, threshold=threshold)
    return [r.frame for r in recs], [truth_row(r, f"{r.index + 1}.png") for r in recs]  # type: ignore[misc]


def encode_png(frame: np.ndarray) -> bytes:
    """PNG bytes of an RGB frame, stored as OpenCV writes camera frames (BGR in, true colours)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), PNG_PARAMS)
    if not ok:
        raise OSError("cv2.imencode failed")
    return buf.tobytes()


def write_truth(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _fresh(d: Path) -> Path:
    d = Path(d)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def _num(x: float) -> float | None:
    """Rounded for the metrics JSON; None (not NaN, which is not JSON) when undefined."""
    return None if x != x else round(float(x), 4)


def _dir_mb(d: Path) -> float:
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file()) / 1e6


def simulate_lake(cfg: dict, lake_dir: Path, truth_dir: Path, cases_dir: Path, progress: bool = True) -> dict:
    """Wipe and write the sample data lake (episode zips), its truth files and the case
    folders; return metrics (see module docstring and :data:`DEFAULTS`)."""
    from tqdm import tqdm

    from autosink.core.episode import EpisodeMeta, Interaction, episode_stem, write_episode
    from autosink.sim.cases import write_cases

    cfg = with_defaults(cfg)
    lake_dir, truth_dir, cases_dir = _fresh(lake_dir), _fresh(truth_dir), _fresh(cases_dir)
    fps, pre_s, post_s = float(cfg["fps"]), float(cfg["pre_s"]), float(cfg["post_s"])
    scripts = make_sessions(cfg, "lake")
    stems: set[str] = set()
    counts = {"-1": 0, "0": 0, "1": 0}
    n_frames = n_eps = 0
    forced = closed = 0
    feats, labels, groups = [], [], []
    for script in tqdm(scripts, desc="simulate sessions", disable=not progress, unit="session"):
        recs = run_session(script, cfg["user_model"])
        for prev, rec in zip([None] + recs[:-1], recs):
            if rec.user_mode != (prev.user_mode if prev else "none"):
                forced += rec.user_mode == FORCED_ON
                closed += rec.user_mode == CLOSED
        seconds = [int((script.timestamp(i) - script.timestamp(0)).total_seconds()) for i in range(len(recs))]
        mo = [r.model_output for r in recs]
        ms = [r.magnetic_status for r in recs]
        for a, b in episode_windows(mo, ms, fps, pre_s, post_s, seconds):
            stem = episode_stem(script.timestamp(a))
            if stem in stems:
                raise RuntimeError(f"episode stem {stem} already used (sessions overlap in time?)")
            stems.add(stem)
            frames, inter, rows = [], [], []
            for k, rec in enumerate(recs[a:b]):
                img = f"{k + 1}.png"
                frame = render(rec.state)
                frames.append(encode_png(frame))
                inter.append(
                    Interaction(
                        timestamp=script.timestamp(rec.index),
                        model_output=rec.model_output,
                        magnetic_status=rec.magnetic_status,
                        image=img,
                        arduino_output=0,
                    )
                )
                rows.append(truth_row(rec, img))
                lab = rec.truth.label
                counts[str(lab)] += 1
                if lab in (0, 1):
                    feats.append(trivial_features(frame))
                    labels.append(lab)
                    groups.append(script.dishwashing_id)
            meta = EpisodeMeta(
                version=2,
                user_id=script.user.user_id,
                dishwashing_id=script.dishwashing_id,
                dishwashing_start=script.start,
                interactions=inter,
            )
            write_episode(lake_dir / f"{stem}.zip", meta, frames)
            write_truth(truth_dir / f"{stem}.csv", rows)
            n_frames += len(frames)
            n_eps += 1
    case_counts = write_cases(cases_dir, int(cfg["case_frames"]), int(cfg["seed"]), progress=progress)
    base = evaluate_trivial(
        np.array(feats).reshape(-1, len(feats[0]) if feats else 0),
        np.array(labels),
        np.array(groups),
        seed=int(cfg["seed"]),
    )
    return {
        "episodes": n_eps,
        "frames": n_frames,
        "frames_per_class": counts,
        "overrides": forced + closed,
        "overrides_forced_on": forced,
        "overrides_closed": closed,
        "users": int(cfg["users"]),
        "sessions": len(scripts),
        "case_frames": int(sum(case_counts.values())),
        "cases": len(case_counts),
        "trivial_baseline_accuracy": _num(base["trivial_baseline_accuracy"]),
        "majority_baseline_accuracy": _num(base["majority_baseline_accuracy"]),
        "baseline_test_frames": base["n_test"],
        "lake_mb": round(_dir_mb(lake_dir), 2),
    }
