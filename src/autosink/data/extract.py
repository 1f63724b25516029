"""Extraction: data-lake episodes -> a validated per-frame table that references the lake.

Every episode is validated in full (its JSON, every field, every frame decoded at the
camera resolution) before any of it is used. Frames are *not* copied here: the table
references each frame by its episode file in the lake and its member name, and the
feature store (``autosink.data.featurestore``) is the one place frames are written out. That
keeps one copy of each frame beside the lake, and keeps DVC's persisted outputs free of
hard links (DVC copies every linked file of a persisted output before each run, which
would make every run cost the size of the lake).

Incremental by construction (the ``extract`` stage's output is ``persist: true``): each
episode's record keeps the sha256 of the file it came from, so an unchanged episode is never
re-validated, a changed one is redone, and one that left the lake is dropped. A bad episode is
quarantined with its reasons (a record under ``quarantine/``; the raw file stays untouched in
the lake) while the others go through; so is a ``*.zip`` that is a device, FIFO or socket (never
opened; its record's sha256 is null).

Layout of ``out_dir``::

    episodes/<stem>.json     source path, sha256, and the episode's frame rows
    quarantine/<name>.json   source path, sha256, and every problem found
    frames.csv               one row per frame of every good episode
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from autosink.core.episode import check_episode, find_episodes, read_episode
from autosink.core.fileio import atomic_write, code_version, not_regular, sha256_file

FRAME_COLUMNS = [
    "episode",
    "frame_index",
    "image",
    "source",
    "timestamp",
    "user_id",
    "dishwashing_id",
    "dishwashing_start",
    "version",
    "model_output",
    "magnetic_status",
    "arduino_output",
]


@dataclass
class ExtractResult:
    episodes_ok: int
    episodes_quarantined: int
    episodes_extracted: int  # (re)validated in this run
    episodes_reused: int  # unchanged since the last run, skipped
    episodes_removed: int  # no longer in the lake
    frames: int
    quarantined: dict[str, list[str]]  # name -> reasons

    def metrics(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "quarantined"}


def sha256_source(path: Path) -> str | None:
    """sha256 of an episode zip, or of an unzipped episode folder (names and contents); None for
    a device, FIFO or socket (never read: no bytes, or endless ones; its verdict says what it is)."""
    if not path.is_dir():
        return None if not_regular(path) else sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(path.iterdir()):
        h.update(p.name.encode() + b"\0")
        if p.is_dir():
            h.update(sha256_source(p).encode())
        elif kind := not_regular(p):  # a FIFO member: the episode is quarantined, never read
            h.update(f"<{kind}>".encode())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def episode_record(extracted_dir: Path, episode: str) -> Path:
    """The record extraction writes for an episode (source, sha256, frame rows)."""
    return Path(extracted_dir) / "episodes" / f"{episode}.json"


def recorded_sha256(extracted_dir: Path, episode: str) -> str | None:
    """sha256 of the episode's lake file as extraction recorded it: the one human labels are
    checked against. None when the record is missing, unreadable or holds no valid sha256."""
    record = _read_json(episode_record(extracted_dir, episode))
    sha = record.get("sha256") if isinstance(record, dict) else None
    return sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) else None


def _episode_key(path: Path) -> str:
    return path.name[:-4] if path.suffix == ".zip" else path.name


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _same(record: dict | None, sha256: str, checked: dict) -> bool:
    """Same file content, checked the same way (frame size, validator code) as recorded?"""
    return bool(record) and record.get("checked") == checked and record.get("sha256") == sha256


def _frame_rows(key: str, src: Path) -> list[dict]:
    meta = read_episode(src, check_frames=False).meta
    return [
        {
            "episode": key,
            "frame_index": i,
            "image": it.image,
            "source": src.as_posix(),
            "timestamp": it.timestamp.isoformat(timespec="seconds"),
            "user_id": meta.user_id,
            "dishwashing_id": meta.dishwashing_id,
            "dishwashing_start": meta.dishwashing_start.isoformat(),
            "version": meta.version,
            "model_output": it.model_output,
            "magnetic_status": it.magnetic_status,
            "arduino_output": it.arduino_output or 0,  # version 1 has none: the valve was not recorded
        }
        for i, it in enumerate(meta.interactions)
    ]


def extract_lake(
    lake_dir: Path,
    out_dir: Path,
    expected_size: tuple[int, int] | None = (640, 480),
    progress: bool = True,
) -> ExtractResult:
    """Bring ``out_dir`` up to date with ``lake_dir``; work proportional to what changed."""
    lake_dir, out_dir = Path(lake_dir), Path(out_dir)
    if not lake_dir.is_dir():
        raise FileNotFoundError(f"{lake_dir}: data lake folder not found (params: data.lake)")
    episodes_dir, quarantine_dir = out_dir / "episodes", out_dir / "quarantine"
    episodes_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    for leftover in [*episodes_dir.glob(".*.tmp"), *quarantine_dir.glob(".*.tmp"), *out_dir.glob(".*.tmp")]:
        leftover.unlink()  # a crash mid-run

    found = find_episodes([lake_dir])
    sources: dict[str, Path] = {}
    duplicates: dict[str, list[Path]] = {}
    for path in found:  # one name, two files (e.g. pi1/X.zip and pi2/X.zip): quarantine both
        key = _episode_key(path)
        if key in sources or key in duplicates:
            duplicates.setdefault(key, [sources.pop(key)] if key in sources else []).append(path)
        else:
            sources[key] = path
    removed = 0
    for stale in [*episodes_dir.glob("*.json"), *quarantine_dir.glob("*.json")]:
        if stale.stem not in sources and stale.stem not in duplicates:
            stale.unlink()
            removed += stale.parent == episodes_dir

    import autosink.core.episode as episode_module

    checked = {
        "frame_size": list(expected_size) if expected_size else None,
        "code": code_version(episode_module, sys.modules[__name__]),
    }
    extracted = reused = 0
    quarantined: dict[str, list[str]] = {}
    for key, paths in duplicates.items():
        quarantined[key] = [
            f"{key}: episode: {len(paths)} files in the lake have this name: " + ", ".join(p.as_posix() for p in paths)
        ]
        (episodes_dir / f"{key}.json").unlink(missing_ok=True)
        _write_json(
            quarantine_dir / f"{key}.json", {"sources": [p.as_posix() for p in paths], "reasons": quarantined[key]}
        )
        tqdm.write(f"quarantined {quarantined[key][0]}")
    rows: dict[str, list[dict]] = {}
    for key, src in tqdm(sorted(sources.items()), desc="extract", unit="episode", disable=not progress):
        # by content only (no sizes or mtimes: the records are a DVC output and must come out the
        # same on every machine); hashing the sample lake takes well under a second
        sha = sha256_source(src)
        record = {"source": src.as_posix(), "sha256": sha}
        ep_file, q_file = episodes_dir / f"{key}.json", quarantine_dir / f"{key}.json"
        done, q = _read_json(ep_file), _read_json(q_file)
        if _same(done, sha, checked):
            rows[key] = [{**row, "source": src.as_posix()} for row in done["frames"]]  # the lake may have moved
            reused += 1
            continue
        if _same(q, sha, checked):  # same bad file as last time: same verdict, no rework
            quarantined[key] = q["reasons"]
            reused += 1
            continue
        ep_file.unlink(missing_ok=True)
        problems = check_episode(src, expected_size=expected_size)
        if problems:
            reasons = [str(p) for p in problems]
            quarantined[key] = reasons
            _write_json(q_file, {**record, "checked": checked, "reasons": reasons})
            more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
            tqdm.write(f"quarantined {src}: {reasons[0]}{more}")
            continue
        q_file.unlink(missing_ok=True)
        rows[key] = _frame_rows(key, src)
        _write_json(ep_file, {**record, "checked": checked, "frames": rows[key]})
        extracted += 1

    table = [row for key in sorted(rows) for row in rows[key]]
    atomic_write(out_dir / "frames.csv", pd.DataFrame(table, columns=FRAME_COLUMNS).to_csv(index=False))
    return ExtractResult(
        episodes_ok=len(rows),
        episodes_quarantined=len(quarantined),
        episodes_extracted=extracted,
        episodes_reused=reused,
        episodes_removed=removed,
        frames=len(table),
        quarantined=quarantined,
    )
