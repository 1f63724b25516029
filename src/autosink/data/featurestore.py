"""The feature store: every labelled frame, image-folder layout, one manifest, one version id.

Layout of ``data/feature-store/``::

    0/<episode>_<frame>.png   frames labelled "water off" (the PNG bytes from the lake, unchanged)
    1/<episode>_<frame>.png   frames labelled "water on"
    labels/<episode>.csv      the dense label table of one episode (the unit of incremental work)
    labels/<episode>.key      what that table was computed from (source sha, human labels, rules)
    manifest.csv              one row per frame of every episode (ignored frames included, path empty)
    version.json              version id (content hash of the manifest) and counts

The store is cumulative (every labelled episode, not only the newest) and
incremental (the stage's output is ``persist: true``): an episode is relabelled,
and its frames rewritten, only when its lake file, its human labels or the rules
changed. The store is the one place frames are written out of the lake
(``data/extracted`` only references them). DVC versions each snapshot (and
``dvc push`` sends it to the remote); DVC's cache is content-addressed, so a
frame is stored once however many snapshots hold it.

Human labels (``<labels>/<episode>.csv``) apply only when the file records the sha256 of the
episode's current lake file; one given for another file of that name is skipped and reported
(``human_label_files_mismatched``); an older file without the sha is applied and reported
(``human_label_files_unverified``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from tqdm import tqdm

import autosink.data.labels as labels_module
from autosink.core.episode import read_episode
from autosink.core.fileio import atomic_write, code_version, sha256_file
from autosink.data.extract import episode_record, recorded_sha256
from autosink.data.labels import (
    IGNORE,
    LABELS_MISMATCH,
    LABELS_UNVERIFIED,
    LabelRules,
    frames_per_second,
    propagate,
    read_human_label_file,
)

MANIFEST_COLUMNS = [
    "episode",
    "frame_index",
    "image",
    "path",
    "timestamp",
    "user_id",
    "dishwashing_id",
    "label",
    "source",
    "confidence",
    "review",
    "rule",
    "model_output",
    "magnetic_status",
]


def label_episode(frames: pd.DataFrame, human: dict[int, int], rules: LabelRules, default_fps: float) -> pd.DataFrame:
    """Dense labels for one episode's rows of data/extracted/frames.csv (human labels win)."""
    frames = frames.sort_values("frame_index")
    stamps = pd.to_datetime(frames["timestamp"]).tolist()
    valve = frames["arduino_output"].fillna(0).to_numpy() if "arduino_output" in frames else None
    dense = propagate(
        frames["model_output"].to_numpy(),
        frames["magnetic_status"].to_numpy(),
        frames_per_second(stamps, default_fps),
        rules,
        valve,
    )
    out = frames[
        ["episode", "frame_index", "image", "timestamp", "user_id", "dishwashing_id", "model_output", "magnetic_status"]
    ].copy()
    out["label"] = dense.label
    out["source"] = "auto"
    out["confidence"] = dense.confidence.round(3)
    out["review"] = dense.review
    out["rule"] = dense.rule
    for idx, value in human.items():
        hit = out["frame_index"] == idx
        if not hit.any():
            raise ValueError(f"human label for frame {idx} of episode {out['episode'].iloc[0]}: no such frame")
        out.loc[hit, ["label", "source", "confidence", "review", "rule"]] = [value, "human", 1.0, False, "human"]
    return out


def _frame_name(episode: str, frame_index: int) -> str:
    return f"{episode}_{frame_index:04d}.png"


def _write_frames(source: Path, wanted: list[tuple[str, str]], store_dir: Path) -> None:
    """Write one episode's frames (image name -> store path) from its lake file, bytes unchanged."""
    episode = read_episode(source, check_frames=False)
    for image, rel in wanted:
        atomic_write(store_dir / rel, episode.read_frame_bytes(image))


def build_feature_store(
    extracted_dir: Path,
    labels_dir: Path,
    store_dir: Path,
    rules: LabelRules,
    default_fps: float,
    progress: bool = True,
) -> dict:
    """Bring the store up to date with data/extracted and data/labels; return counts of the work done."""
    extracted_dir, labels_dir, store_dir = Path(extracted_dir), Path(labels_dir), Path(store_dir)
    table = extracted_dir / "frames.csv"
    if not table.exists():
        raise FileNotFoundError(f"{table}: not found; run the extract stage first (dvc repro extract)")
    frames = pd.read_csv(table, dtype={"episode": str})
    tables_dir = store_dir / "labels"
    tables_dir.mkdir(parents=True, exist_ok=True)
    for leftover in store_dir.rglob(".*.tmp"):
        leftover.unlink()
    rules_json = json.dumps({**asdict(rules), "default_fps": default_fps}, sort_keys=True)
    code = code_version(labels_module, sys.modules[__name__])  # changed rules code relabels everything

    episodes = sorted(frames["episode"].unique()) if len(frames) else []
    known = set(episodes)
    for stale in tables_dir.iterdir():  # episodes that left the lake (or were quarantined)
        if stale.name.split(".")[0] not in known:
            stale.unlink()
    orphans = sorted(p.name for p in labels_dir.glob("*.csv") if p.stem not in known) if labels_dir.is_dir() else []
    for name in orphans:
        tqdm.write(
            f"warning: {labels_dir / name}: human labels for an episode that is not in the lake "
            "(removed, or quarantined: see data/extracted/quarantine/); they are not used"
        )

    relabelled = reused = 0
    mismatched: list[dict] = []  # human label files given for another file of the episode: not applied
    unverified: list[str] = []  # older human label files (no episode sha256): applied, unchecked
    changed: set[str] = set()
    keys: dict[Path, str] = {}
    for episode, rows in tqdm(frames.groupby("episode", sort=True), desc="label", unit="episode", disable=not progress):
        source = recorded_sha256(extracted_dir, episode)
        if source is None:  # extraction always records one: the record was damaged since
            raise ValueError(
                f"{episode_record(extracted_dir, episode)}: no valid sha256 recorded (rerun `dvc repro extract`)"
            )
        human_file = labels_dir / f"{episode}.csv"
        human_sha = sha256_file(human_file) if human_file.exists() else None
        # Human labels apply only to the episode file they were given for (checked on every run,
        # reused or not, so a skipped file is reported every time until it is fixed).
        human: dict[int, int] = {}
        if human_file.exists():
            doc = read_human_label_file(human_file)
            state = doc.check(source)
            if state == LABELS_MISMATCH:
                mismatched.append(
                    {
                        "file": human_file.as_posix(),
                        "episode": episode,
                        "labels": len(doc.labels),
                        "labels_for_sha256": doc.episode_sha256,
                        "episode_sha256": source,
                    }
                )
                tqdm.write(
                    f"warning: {human_file}: its {len(doc.labels)} human labels were given for another file "
                    f"of episode {episode} (sha256 {doc.episode_sha256[:12]}..., the lake's is now "
                    f"{source[:12]}...: re-uploaded with other frames?); NOT applied. Relabel the episode "
                    "(`autosink label serve`; saving records the new sha256) or delete the file"
                )
            else:
                human = doc.labels
                if state == LABELS_UNVERIFIED:
                    unverified.append(human_file.as_posix())
                    tqdm.write(
                        f"warning: {human_file}: records no episode sha256 (an older labels file), so "
                        "nothing shows they were given for these frames; applied as they are. Saving the "
                        "episode once in `autosink label serve` records it"
                    )
        key = json.dumps({"source": source, "human": human_sha, "rules": rules_json, "code": code}, sort_keys=True)
        key_file, table_file = tables_dir / f"{episode}.key", tables_dir / f"{episode}.csv"
        if table_file.exists() and key_file.exists() and key_file.read_text() == key:
            reused += 1
            continue
        dense = label_episode(rows, human, rules, default_fps)
        atomic_write(table_file, dense.to_csv(index=False))
        key_file.unlink(missing_ok=True)  # written back once the episode's frames are in place
        keys[key_file] = key
        changed.add(episode)
        relabelled += 1

    manifest = (
        pd.concat(
            [pd.read_csv(tables_dir / f"{e}.csv", dtype={"episode": str}) for e in episodes],
            ignore_index=True,
        )
        if episodes
        else pd.DataFrame(columns=[c for c in MANIFEST_COLUMNS if c != "path"])
    )
    manifest["path"] = [
        f"{int(label)}/{_frame_name(e, int(i))}" if int(label) != IGNORE else ""
        for e, i, label in zip(manifest["episode"], manifest["frame_index"], manifest["label"])
    ]
    manifest = manifest[MANIFEST_COLUMNS]

    # Sync the image folders with the manifest, touching only what differs: frames of
    # relabelled episodes are rewritten, frames no longer wanted are removed.
    wanted = {p: (e, img) for p, e, img in zip(manifest["path"], manifest["episode"], manifest["image"]) if p}
    written = removed = 0
    for cls in ("0", "1"):
        (store_dir / cls).mkdir(exist_ok=True)
        for entry in os.scandir(store_dir / cls):
            rel = f"{cls}/{entry.name}"
            if rel not in wanted or entry.name.rsplit("_", 1)[0] in changed:
                os.unlink(entry.path)
                removed += 1
    missing: dict[str, list[tuple[str, str]]] = {}
    for rel, (episode, image) in wanted.items():
        if not (store_dir / rel).exists():
            missing.setdefault(episode, []).append((image, rel))
    sources = frames.drop_duplicates("episode").set_index("episode")["source"]
    for episode, todo in missing.items():
        _write_frames(Path(sources[episode]), todo, store_dir)
        written += len(todo)

    for key_file, key in keys.items():  # only now: a crash before this relabels these episodes again
        atomic_write(key_file, key)

    manifest_csv = manifest.to_csv(index=False)
    atomic_write(store_dir / "manifest.csv", manifest_csv)
    counts = manifest["label"].astype(int).value_counts().to_dict()
    version = {
        "version": "fs-" + hashlib.sha256(manifest_csv.encode()).hexdigest()[:12],
        "episodes": len(episodes),
        "frames": len(manifest),
        "per_class": {str(c): int(counts.get(c, 0)) for c in (0, 1, IGNORE)},
    }
    atomic_write(store_dir / "version.json", json.dumps(version, indent=2) + "\n")
    return {
        "episodes_relabelled": relabelled,
        "human_label_files_orphaned": len(orphans),
        "episodes_reused": reused,
        "frames_written": written,
        "frames_removed": removed,
        "human_label_files_mismatched": mismatched,
        "human_label_files_unverified": unverified,
        **version,
    }
