"""`label` stage: extracted episodes (+ human labels) -> dense labels -> the feature store.

Human label files given for another file of their episode (the sha256 they record is not the
lake file's: a re-upload with other frames) are not applied: the stage prints them, lists them in
``reports/labels.json`` (``human_label_files_mismatched``) and in its run record. Older files
without the sha are applied and named in the output and the run record
(``human_label_files_unverified``).

Where the simulator's hidden ground truth exists (the embedded sample lake),
the stage measures its own automatic labels against it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from autosink.data.featurestore import build_feature_store
from autosink.data.labels import IGNORE, LabelRules
from autosink.stages import write_results, write_run_record

EXTRACTED = Path("data/extracted")
HUMAN_LABELS = Path("data/labels")
STORE = Path("data/feature-store")
#: the headline (reports/labels.json: also the per-class counts, the feature store version, ...)
KEYS = ("episodes", "frames", "frames_labeled", "frames_review", "frames_human", "auto_label_agreement")


def agreement_with_truth(manifest: pd.DataFrame, truth_dir: Path) -> dict:
    """Agreement of automatic labels with ground truth on non-review, non-ignored frames."""
    rows = []
    for episode, group in manifest.groupby("episode"):
        truth_file = truth_dir / f"{episode}.csv"
        if not truth_file.exists():
            continue
        truth = pd.read_csv(truth_file, usecols=["image", "label"]).rename(columns={"label": "truth"})
        merged = group.merge(truth, on="image", how="left")
        if merged["truth"].isna().any():
            raise ValueError(f"{truth_file}: no ground truth for some frames of episode {episode}")
        rows.append(merged)
    if not rows:
        return {"truth_episodes": 0}
    df = pd.concat(rows)
    auto = df[(df["source"] == "auto") & ~df["review"].astype(bool) & (df["label"] != IGNORE) & (df["truth"] != IGNORE)]
    reviewed = df[df["review"].astype(bool) & (df["label"] != IGNORE) & (df["truth"] != IGNORE)]
    return {
        "truth_episodes": int(df["episode"].nunique()),
        "auto_label_agreement": round(float((auto["label"] == auto["truth"]).mean()), 4) if len(auto) else None,
        "auto_frames_scored": int(len(auto)),
        "review_label_agreement": round(float((reviewed["label"] == reviewed["truth"]).mean()), 4)
        if len(reviewed)
        else None,
    }


def run(params: dict, progress: bool = True) -> dict:
    cfg = params["label"]
    work = build_feature_store(
        EXTRACTED, HUMAN_LABELS, STORE, LabelRules.from_params(cfg), float(cfg["default_fps"]), progress=progress
    )
    manifest = pd.read_csv(STORE / "manifest.csv", dtype={"episode": str})
    per_class = work["per_class"]
    metrics = {
        "version": work["version"],
        "episodes": work["episodes"],
        "frames": work["frames"],
        "frames_labeled": int(per_class["0"] + per_class["1"]),
        "frames_review": int(manifest["review"].astype(bool).sum()),
        "frames_ignored": int(per_class["-1"]),
        "frames_human": int((manifest["source"] == "human").sum()),
        "per_class": per_class,
        "human_label_files_orphaned": work["human_label_files_orphaned"],
        # Human label files given for another file of their episode (re-uploaded with other frames):
        # skipped, so their episodes carry automatic labels only. Listed only when there are some.
        **(
            {"human_label_files_mismatched": [m["file"] for m in work["human_label_files_mismatched"]]}
            if work["human_label_files_mismatched"]
            else {}
        ),
        # The simulator's hidden truth scores only the sample lake's episodes.
        **(
            agreement_with_truth(manifest, Path(cfg["truth_dir"]))
            if params["data"]["source"] == "sample"
            else {"truth_episodes": 0}
        ),
    }
    write_results("labels", metrics, KEYS)
    # the work this run did depends on what an earlier run left, not on the data: not a metric
    write_run_record(
        "label",
        {
            k: work[k]
            for k in (
                "episodes_relabelled",
                "episodes_reused",
                "human_label_files_mismatched",
                "human_label_files_unverified",
            )
        },
    )
    print(
        f"label: {metrics['frames']} frames in {metrics['episodes']} episodes "
        f"({work['episodes_relabelled']} relabelled, {work['episodes_reused']} reused), "
        f"{metrics['frames_review']} to review, feature store {work['version']}"
        + (f", auto-label agreement {metrics['auto_label_agreement']}" if metrics.get("auto_label_agreement") else "")
    )
    skipped = work["human_label_files_mismatched"]
    if skipped:
        print(
            f"label: {len(skipped)} human label file(s) NOT applied: given for another file of the episode "
            "(re-uploaded with other frames?); relabel in `autosink label serve` or delete them:"
        )
        for m in skipped:
            print(
                f"  {m['file']}: {m['labels']} labels for sha256 {m['labels_for_sha256'][:12]}..., "
                f"the lake's {m['episode']} is {m['episode_sha256'][:12]}..."
            )
    if work["human_label_files_unverified"]:
        print(
            f"label: {len(work['human_label_files_unverified'])} older human label file(s) without the episode "
            "sha256 applied unchecked: " + ", ".join(work["human_label_files_unverified"])
        )
    return metrics
