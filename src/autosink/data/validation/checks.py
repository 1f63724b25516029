"""The data-validation checks. Each returns a ``Check``; the gate passes when every check does.

Thresholds come from ``validate.checks.*`` (conf/validate/default.yaml). Every check reports
its measured value and threshold, and a message that names the numbers, so a failed gate says
exactly what to look at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd


@dataclass
class Check:
    name: str
    passed: bool
    value: Any
    threshold: Any
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


def _few(items, n: int = 5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def check_readable(frames: pd.DataFrame, max_unreadable: int) -> Check:
    bad = frames[~frames["readable"]]
    msg = f"{len(bad)} of {len(frames)} frames unreadable (max {max_unreadable})" + (
        f": {_few(f'{p} ({e})' for p, e in zip(bad['path'], bad['error']))}" if len(bad) else ""
    )
    return Check("readable", len(bad) <= max_unreadable, int(len(bad)), int(max_unreadable), msg)


def check_frame_size(frames: pd.DataFrame, width: int, height: int, max_wrong: int) -> Check:
    ok = frames[frames["readable"]]
    wrong = ok[(ok["width"] != width) | (ok["height"] != height)]
    sizes = wrong.groupby(["width", "height"]).size().sort_values(ascending=False)
    msg = f"{len(wrong)} of {len(ok)} readable frames are not {width}x{height} (max {max_wrong})" + (
        ": " + _few(f"{n} at {w}x{h}" for (w, h), n in sizes.items()) + f"; e.g. {_few(wrong['path'], 3)}"
        if len(wrong)
        else ""
    )
    return Check("frame_size", len(wrong) <= max_wrong, int(len(wrong)), int(max_wrong), msg)


def check_near_duplicates(frames: pd.DataFrame, max_share: float) -> Check:
    """The largest group of frames that share one average hash across episodes, as a share of frames.

    Consecutive frames of one episode are near-duplicates by nature, so only hashes seen in two
    or more episodes count. A large group means one picture dominates the data: a frozen or
    covered camera, an empty sink recorded over and over, or re-uploaded episodes.
    """
    ok = frames[frames["readable"] & (frames["ahash"] != "")]
    if ok.empty:
        return Check("near_duplicates", True, 0.0, max_share, "no readable frames to compare")
    groups = ok.groupby("ahash").agg(frames=("path", "size"), episodes=("episode", "nunique"))
    cross = groups[groups["episodes"] > 1].sort_values("frames", ascending=False)
    if cross.empty:
        return Check("near_duplicates", True, 0.0, max_share, "no picture (average hash) occurs in two episodes")
    top = cross.iloc[0]
    share = int(top["frames"]) / len(ok)
    return Check(
        "near_duplicates",
        share <= max_share,
        round(share, 4),
        max_share,
        f"largest group of near-identical frames across episodes: {int(top['frames'])} frames in "
        f"{int(top['episodes'])} episodes = {share:.1%} of {len(ok)} (max {max_share:.1%}); "
        f"{int(cross['frames'].sum())} frames ({cross['frames'].sum() / len(ok):.1%}) in "
        f"{len(cross)} cross-episode groups; e.g. {_few(ok.loc[ok['ahash'] == cross.index[0], 'path'], 3)}",
    )


def check_class_balance(per_class: dict[str, int], min_share: float, max_share: float) -> Check:
    n0, n1 = per_class.get("0", 0), per_class.get("1", 0)
    if n0 + n1 == 0:
        return Check("class_balance", False, None, [min_share, max_share], "no labelled frames (label 0 or 1)")
    share = n1 / (n0 + n1)
    return Check(
        "class_balance",
        min_share <= share <= max_share,
        round(share, 4),
        [min_share, max_share],
        f"share of label 1 among labelled frames is {share:.1%} ({n1}/{n0 + n1}); "
        f"allowed [{min_share:.0%}, {max_share:.0%}]",
    )


def check_min_per_class(per_class: dict[str, int], minimum: int) -> Check:
    counts = {c: per_class.get(c, 0) for c in ("0", "1")}
    low = min(counts.values())
    return Check(
        "min_frames_per_class",
        low >= minimum,
        int(low),
        int(minimum),
        f"frames per class: label 0 {counts['0']}, label 1 {counts['1']} (each needs >= {minimum})",
    )


def check_min_per_split(per_split: dict[str, dict[str, int]] | None, splits: list[str], minimum: int) -> Check:
    if per_split is None:
        return Check(
            "min_frames_per_split",
            False,
            None,
            int(minimum),
            "no split tables (data/splits/*.csv): run the prepare stage first",
        )
    cells = {f"{s}/{c}": per_split.get(s, {}).get(c, 0) for s in splits for c in ("0", "1")}
    low = min(cells.values())
    short = [f"{k} has {v}" for k, v in cells.items() if v < minimum]
    return Check(
        "min_frames_per_split",
        low >= minimum,
        int(low),
        int(minimum),
        (f"split/class below {minimum} frames: " + ", ".join(short))
        if short
        else f"every split has >= {minimum} frames of each class (lowest {low}: {min(cells, key=cells.get)})",
    )


def check_drift(drift: dict, max_share: float, max_feature_score: float | None = None) -> Check:
    """Fails when more than ``max_share`` of the features drifted, or when one feature's drift
    score reaches ``max_feature_score`` (a distance: a colour cast moves only the two colour
    features, but by several standard deviations). ``max_feature_score`` None: share only."""
    threshold = {"max_drift_share": max_share, "max_feature_score": max_feature_score}
    if drift.get("drift_share") is None:
        return Check("drift", True, None, threshold, f"drift not measured: {drift.get('skipped', 'no reference')}")
    share, scores = drift["drift_share"], drift.get("scores", {})
    names = drift.get("drifted_features", [])
    severe = (
        []
        if max_feature_score is None or not drift.get("distance", True)
        else [f for f, v in scores.items() if v >= max_feature_score]
    )
    msg = (
        f"{share:.0%} of features drifted ({len(names)}/{drift['n_features']}; max {max_share:.0%}) "
        f"vs. {drift['reference']['kind']} reference"
        + (": " + ", ".join(f"{n} (score {scores[n]:.3g})" for n in names) if names else "")
    )
    if severe:
        msg += f"; severe drift (score >= {max_feature_score:g}): " + ", ".join(
            f"{n} ({scores[n]:.3g})" for n in severe
        )
    return Check("drift", share <= max_share and not severe, round(share, 4), threshold, msg)


def check_max_share(frames: pd.DataFrame, column: str, name: str, max_share: float) -> Check:
    if frames.empty:
        return Check(name, True, 0.0, max_share, "no frames")
    counts = frames[column].value_counts()
    top, n = counts.index[0], int(counts.iloc[0])
    share = n / len(frames)
    return Check(
        name,
        share <= max_share,
        round(share, 4),
        max_share,
        f"largest {column} {top} holds {share:.1%} of frames ({n}/{len(frames)}; max {max_share:.0%})",
    )


def run_checks(
    frames: pd.DataFrame,
    per_class: dict[str, int],
    per_split: dict | None,
    drift: dict,
    cfg: dict,
    frame_size: tuple[int, int],
    splits: list[str],
) -> list[Check]:
    """Every check, in a fixed order. ``frames``: one row per frame with an image (label 0/1)."""
    c = cfg["checks"]
    return [
        check_readable(frames, int(c["max_unreadable"])),
        check_frame_size(frames, *frame_size, int(c["max_wrong_size"])),
        check_near_duplicates(frames, float(c["max_duplicate_share"])),
        check_class_balance(per_class, float(c["min_positive_share"]), float(c["max_positive_share"])),
        check_min_per_class(per_class, int(c["min_frames_per_class"])),
        check_min_per_split(per_split, splits, int(c["min_frames_per_split_class"])),
        check_drift(
            drift,
            float(c["max_drift_share"]),
            None if c.get("max_feature_drift") is None else float(c["max_feature_drift"]),
        ),
        check_max_share(frames, "user_id", "max_user_share", float(c["max_user_share"])),
        check_max_share(frames, "episode", "max_episode_share", float(c["max_episode_share"])),
    ]
