"""Drift: the current snapshot's image features vs. a reference, with an evidently 0.7 report.

The reference, in order of preference:

1. ``production``: the features of the snapshot the production model was trained on, a table
   saved beside that model (``validate.reference``, default
   ``models/production/data_features.csv``; same columns as ``data/validation/image_features.csv``).
   Current = every readable frame of this snapshot. This answers "does the model in the field
   still see the data it learned from?".
2. ``time_split`` (no production model yet): each user's (each kitchen's) episodes ordered by
   their first timestamp; the earliest half of every user's episodes is the reference, the
   latest half the current data. This answers "did the pictures change over time?" (camera
   moved, light changed, white balance drifted) with the same kitchens on both sides: kitchens
   differ far more from each other than a kitchen from itself, so a plain earliest-half vs.
   latest-half split would mostly measure which users happened to wash dishes early. Users
   with a single episode are left out of the comparison (a new kitchen is not drift; the
   user-share check watches how much one user holds). Comparing the train split with all
   frames would not be meaningful either: the train split is most of the frames. With fewer
   than ``drift.min_episodes`` comparable episodes drift is not measured (the check says so).

Per-feature drift uses evidently's stattests (``drift.method``, ``drift.threshold``). The
default is the normed Wasserstein distance (the shift in reference standard deviations): an
effect size, not a p-value. Frames of one episode are strongly correlated, so p-value tests
(evidently's default, K-S below 1000 rows) flag even harmless session-to-session differences.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pandas as pd

from autosink.data.validation.features import FEATURES

# evidently stattests whose score is a p-value (drifted when it is small): a "severe" score
# threshold (checks.max_feature_drift) means nothing for them.
P_VALUE_TESTS = {
    "ks",
    "chisquare",
    "z",
    "t_test",
    "anderson",
    "fisher_exact",
    "cramer_von_mises",
    "g_test",
    "mannw",
    "es",
    "TVD",
    "empirical_mmd",
}


def choose_reference(frames: pd.DataFrame, reference_path: Path, min_episodes: int) -> dict:
    """Pick reference and current tables (readable frames only). Returns a dict with ``kind``,
    ``reference``, ``current`` (DataFrames, or None when drift cannot be measured) and a description."""
    ok = frames[frames["readable"]]
    if reference_path.exists():
        ref = pd.read_csv(reference_path)
        missing = [f for f in FEATURES if f not in ref.columns]
        if missing:
            raise ValueError(f"{reference_path}: reference features table lacks columns {missing}")
        if "readable" in ref.columns:
            ref = ref[ref["readable"].astype(str).str.lower() == "true"]
        return {
            "kind": "production",
            "path": str(reference_path),
            "reference": ref,
            "current": ok,
            "description": f"production model's training snapshot ({reference_path}) vs. this snapshot",
        }
    eps = ok.groupby("episode").agg(start=("timestamp", "min"), user=("user_id", "first"))
    eps = eps.sort_values(["user", "start"], kind="stable")
    eps["rank"] = eps.groupby("user").cumcount()
    eps["n"] = eps.groupby("user")["start"].transform("size")
    single = int((eps.groupby("user").size() == 1).sum())
    eps = eps[eps["n"] > 1]
    if len(eps) < max(2, min_episodes):
        return {
            "kind": "none",
            "path": None,
            "reference": None,
            "current": ok,
            "description": f"{len(eps)} episodes of users with more than one episode: fewer than "
            f"{max(2, min_episodes)} needed for the time-split reference, and no {reference_path}",
        }
    early = set(eps.index[eps["rank"] < eps["n"] // 2])
    ref = ok[ok["episode"].isin(early)]
    cur = ok[ok["episode"].isin(set(eps.index) - early)]
    users = eps["user"].nunique()
    return {
        "kind": "time_split",
        "path": None,
        "reference": ref,
        "current": cur,
        "description": f"earliest half of each user's episodes ({len(early)} episodes) vs. the latest half "
        f"({len(eps) - len(early)}), {users} users" + (f"; {single} users with one episode left out" if single else ""),
    }


def _stattest_decisions(ref: pd.DataFrame, cur: pd.DataFrame, method: str | None, threshold: float | None) -> dict:
    """Per-feature (score, drifted, threshold, method) with evidently's own stattest functions."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    out = {}
    for f in FEATURES:
        r, c = ref[f].dropna(), cur[f].dropna()
        test = get_stattest(r, c, ColumnType.Numerical, method)
        res = test(r, c, ColumnType.Numerical, threshold)
        out[f] = {
            "score": float(res.drift_score),
            "drifted": bool(res.drifted),
            "threshold": float(res.actual_threshold),
            "method": test.name,
        }
    return out


#: the random and time-based ids evidently gives every widget and script variable
_IDS = re.compile(
    r"(?<![0-9a-fA-F])(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})"
    r"(?![0-9a-fA-F])"
)


def stable_ids(html: str) -> str:
    """The same page with every id replaced, consistently, by one derived from its order of first
    appearance: the report is a DVC output, so the same data must give the same bytes."""
    ids: dict[str, str] = {}

    def new_id(m: re.Match) -> str:
        old = m.group(0)
        if old not in ids:
            h = hashlib.sha256(f"autosink-report-id-{len(ids)}".encode()).hexdigest()[:32]
            ids[old] = h if len(old) == 32 else f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        return ids[old]

    return _IDS.sub(new_id, html)


def _save_html(snapshot, path: Path) -> None:
    """evidently's save_html ignores pathlib.Path (it writes nothing): pass str, via a temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    snapshot.save_html(str(tmp))
    if not tmp.exists():
        raise RuntimeError(f"evidently wrote no HTML to {tmp}")
    tmp.write_text(stable_ids(tmp.read_text(encoding="utf-8")), encoding="utf-8")
    os.replace(tmp, path)


def drift_report(frames: pd.DataFrame, reference_path: Path, html_path: Path, cfg: dict) -> dict:
    """Run the evidently report, write its HTML, and return the drift summary (``drift_share`` None
    when there is no reference)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    d = cfg.get("drift", {})
    method, threshold = d.get("method") or None, d.get("threshold")
    choice = choose_reference(frames, reference_path, int(d.get("min_episodes", 4)))
    definition = DataDefinition(numerical_columns=list(FEATURES))
    cur = Dataset.from_pandas(choice["current"][FEATURES].reset_index(drop=True), data_definition=definition)
    info = {
        "kind": choice["kind"],
        "path": choice["path"],
        "description": choice["description"],
        "n_reference": 0 if choice["reference"] is None else int(len(choice["reference"])),
        "n_current": int(len(choice["current"])),
    }
    if choice["reference"] is None or choice["reference"].empty or choice["current"].empty:
        snapshot = Report([DataSummaryPreset()]).run(cur, None)
        _save_html(snapshot, html_path)
        return {
            "drift_share": None,
            "reference": info,
            "skipped": choice["description"],
            "n_features": len(FEATURES),
            "drifted_features": [],
            "scores": {},
            "features": {},
        }
    ref = Dataset.from_pandas(choice["reference"][FEATURES].reset_index(drop=True), data_definition=definition)
    preset = DataDriftPreset(
        columns=list(FEATURES),
        num_method=method,
        num_threshold=threshold,
        drift_share=float(cfg["checks"]["max_drift_share"]),
    )
    snapshot = Report([preset, DataSummaryPreset()]).run(cur, ref)  # current first
    _save_html(snapshot, html_path)
    share = next(
        (m["value"]["share"] for m in snapshot.dict()["metrics"] if m["metric_name"].startswith("DriftedColumnsCount")),
        None,
    )
    per = _stattest_decisions(choice["reference"], choice["current"], method, threshold)
    drifted = [f for f in FEATURES if per[f]["drifted"]]
    if share is None:
        share = len(drifted) / len(FEATURES)
    return {
        "drift_share": float(share),
        "reference": info,
        "n_features": len(FEATURES),
        "distance": not any(per[f]["method"] in P_VALUE_TESTS for f in FEATURES),
        "drifted_features": drifted,
        "scores": {f: round(per[f]["score"], 4) for f in FEATURES},
        "features": per,
    }
