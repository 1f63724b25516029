"""Extraction: data-lake episodes -> validated frames and a per-frame table.

Incremental by construction (the ``extract`` stage's output is ``persist: true``):
each episode's folder records the sha256 of the file it came from, so an
unchanged episode is never re-extracted, a changed one is redone, and one that
left the lake is dropped. A bad episode is quarantined with its reasons (a
record under ``quarantine/``; the raw file stays untouched in the lake) while
the others go through.

Layout of ``out_dir``::

    episodes/<stem>/<i>.png      frame bytes exactly as in the zip (no re-encode)
    episodes/<stem>/<stem>.json  the episode's JSON as the Pi wrote it
    episodes/<stem>/source.json  sha256 + lake path of the source episode
    quarantine/<name>.json       sha256 + every problem found
    frames.csv                   one row per extracted frame, all episodes (paths relative to out_dir)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from autosink.episode import EpisodeError, check_episode, extract_episode, find_episodes, read_episode

FRAME_COLUMNS = [
    "episode", "frame_index", "image", "path", "timestamp", "user_id", "dishwashing_id",
    "dishwashing_start", "version", "model_output", "magnetic_status",
]


@dataclass
class ExtractResult:
    episodes_ok: int
    episodes_quarantined: int
    episodes_extracted: int  # (re)extracted in this run
    episodes_reused: int  # unchanged since the last run, skipped
    episodes_removed: int  # no longer in the lake
    frames: int
    quarantined: dict[str, list[str]]  # name -> reasons

    def metrics(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "quarantined"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():  # an unzipped episode folder: hash names and contents
        for p in sorted(path.iterdir()):
            h.update(p.name.encode() + b"\0")
            h.update(sha256_file(p).encode() if p.is_dir() else p.read_bytes())
        return h.hexdigest()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _episode_key(path: Path) -> str:
    return path.name[:-4] if path.suffix == ".zip" else path.name


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _frame_rows(key: str, ep_dir: Path, out_dir: Path) -> list[dict]:
    ep = read_episode(ep_dir, check_frames=False)
    meta = ep.meta
    return [
        {
            "episode": key,
            "frame_index": i,
            "image": it.image,
            "path": (ep_dir / it.image).relative_to(out_dir).as_posix(),
            "timestamp": it.timestamp.isoformat(timespec="seconds"),
            "user_id": meta.user_id,
            "dishwashing_id": meta.dishwashing_id,
            "dishwashing_start": meta.dishwashing_start.isoformat(),
            "version": meta.version,
            "model_output": it.model_output,
            "magnetic_status": it.magnetic_status,
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
    for leftover in [*episodes_dir.glob(".*.tmp"), *quarantine_dir.glob(".*.tmp")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()  # a crash mid-run

    sources = {_episode_key(p): p for p in find_episodes([lake_dir])}
    removed = 0
    for stale in [*episodes_dir.iterdir(), *quarantine_dir.glob("*.json")]:
        key = stale.stem if stale.suffix == ".json" else stale.name
        if key not in sources:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            removed += stale.parent == episodes_dir

    extracted = reused = 0
    quarantined: dict[str, list[str]] = {}
    for key, src in tqdm(sorted(sources.items()), desc="extract", unit="episode", disable=not progress):
        digest = sha256_file(src)
        ep_dir, q_file = episodes_dir / key, quarantine_dir / f"{key}.json"
        done = _read_json(ep_dir / "source.json") or {}
        if done.get("sha256") == digest:
            reused += 1
            continue
        q = _read_json(q_file) or {}
        if q.get("sha256") == digest:  # same bad file as last time: same verdict, no rework
            quarantined[key] = q["reasons"]
            reused += 1
            continue
        if ep_dir.exists():
            shutil.rmtree(ep_dir)
        problems = check_episode(src, expected_size=expected_size)
        if not problems:
            tmp = episodes_dir / f".{key}.tmp"
            try:
                extract_episode(src, tmp, check_frames=False, expected_size=expected_size)
            except EpisodeError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                problems = [e]
        if problems:
            reasons = [str(p) for p in problems]
            quarantined[key] = reasons
            _write_json(q_file, {"source": src.as_posix(), "sha256": digest, "reasons": reasons})
            tqdm.write(f"quarantined {src}: {reasons[0]}" + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""))
            continue
        q_file.unlink(missing_ok=True)
        _write_json(tmp / "source.json", {"source": src.as_posix(), "sha256": digest})
        os.replace(tmp, ep_dir)
        extracted += 1

    rows = [row for key in sorted(sources) if (episodes_dir / key).is_dir()
            for row in _frame_rows(key, episodes_dir / key, out_dir)]
    pd.DataFrame(rows, columns=FRAME_COLUMNS).to_csv(out_dir / "frames.csv", index=False)
    ok = sum((episodes_dir / key).is_dir() for key in sources)
    return ExtractResult(
        episodes_ok=ok, episodes_quarantined=len(quarantined), episodes_extracted=extracted,
        episodes_reused=reused, episodes_removed=removed, frames=len(rows), quarantined=quarantined,
    )
