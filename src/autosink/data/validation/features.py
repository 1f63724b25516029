"""Per-image features for data validation, cached by path + content hash.

Every feature is computed on a copy downscaled to ``work_width`` pixels wide (INTER_AREA), so a
frame costs little more than its PNG decode and the numbers do not depend on the camera
resolution. Frames are decoded as RGB (OpenCV reads BGR: converted once, here).

Features (one row per frame; ``FEATURES`` are the ones the drift report compares):

- ``brightness``: mean luma (0-255); ``contrast``: std of luma;
- ``sharpness``: variance of the Laplacian of luma (at the working resolution);
- ``cast_rg`` / ``cast_bg``: mean R-G and B-G (0 for a neutral grey picture; a tinted
  white balance moves them);
- ``roi_brightness``: mean luma in the region under the faucet;
- ``roi_objectness``: share of edge pixels (Canny) in that region, the earlier system's
  "how much the ROI deviates from an empty basin" score (an empty basin has few edges,
  a dish or a hand many);
- ``saturated``: share of pixels with a channel >= ``saturation_level`` (blown highlights);
- ``width``, ``height``, ``readable``; ``ahash``: average hash of ``hash_size`` x ``hash_size``
  bits (hex), for near-duplicate detection. The default is 16x16, not the classic 8x8: with a
  fixed camera over one sink an 8x8 hash is the basin's outline (on the sample lake a third of
  the frames, dishes under running water included, share one of a few 8x8 hashes across
  episodes), while 16x16 tells the scenes apart and still matches re-encoded or identical frames.

The cache (``data/validation/image_features.csv``) is reused row by row when a frame's path
and sha256 match (content, not mtime: the cache is a DVC output and must come out the same on
every machine; hashing the sample store takes under a second), and as a whole only when the
feature settings are unchanged (they are stored beside it in ``image_features.key.json``).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from autosink.core.fileio import atomic_write, sha256_file

FEATURES = [
    "brightness",
    "contrast",
    "sharpness",
    "cast_rg",
    "cast_bg",
    "roi_brightness",
    "roi_objectness",
    "saturated",
]
KEY_COLUMNS = ["path", "sha256"]
CACHE_COLUMNS = KEY_COLUMNS + ["readable", "width", "height", *FEATURES, "ahash", "error"]
FEATURES_VERSION = 1  # bump when a feature's definition changes: every cached row is recomputed


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed (from ``validate.*`` in params.yaml)."""

    roi: tuple[int, int, int, int] = (220, 150, 420, 350)  # x0, y0, x1, y1 (x1/y1 exclusive)
    roi_frame: tuple[int, int] = (640, 480)  # the frame size the ROI is expressed in
    work_width: int = 160
    saturation_level: int = 250
    canny_low: int = 50
    canny_high: int = 150
    hash_size: int = 16

    @classmethod
    def from_params(cls, cfg: dict) -> FeatureConfig:
        f = cfg.get("features", {})
        return cls(
            roi=tuple(int(v) for v in cfg["roi"]),
            roi_frame=tuple(int(v) for v in cfg["roi_frame"]),
            work_width=int(f.get("work_width", cls.work_width)),
            saturation_level=int(f.get("saturation_level", cls.saturation_level)),
            canny_low=int(f.get("canny_low", cls.canny_low)),
            canny_high=int(f.get("canny_high", cls.canny_high)),
            hash_size=int(f.get("hash_size", cls.hash_size)),
        )

    def roi_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The ROI scaled to an image of ``width`` x ``height`` (at least one pixel each way)."""
        x0, y0, x1, y1 = self.roi
        fw, fh = self.roi_frame
        sx, sy = width / fw, height / fh
        a, b = min(int(x0 * sx), width - 1), min(int(y0 * sy), height - 1)
        return a, b, max(a + 1, min(round(x1 * sx), width)), max(b + 1, min(round(y1 * sy), height))


def average_hash(luma: np.ndarray, size: int = 8) -> str:
    """``size`` x ``size`` average hash of a luma image, as hex (size*size/4 digits)."""
    small = cv2.resize(luma, (size, size), interpolation=cv2.INTER_AREA)
    return np.packbits(small > small.mean()).tobytes().hex()


def image_features(rgb: np.ndarray, cfg: FeatureConfig) -> dict:
    """The feature row of one decoded RGB frame (uint8, HxWx3)."""
    height, width = rgb.shape[:2]
    scale = cfg.work_width / width
    small = (
        cv2.resize(rgb, (cfg.work_width, max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        if scale < 1
        else rgb
    )
    luma = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    lf = luma.astype(np.float32)
    chans = small.reshape(-1, 3).astype(np.float32).mean(axis=0)
    x0, y0, x1, y1 = cfg.roi_pixels(small.shape[1], small.shape[0])
    roi = luma[y0:y1, x0:x1]
    edges = cv2.Canny(roi, cfg.canny_low, cfg.canny_high)
    return {
        "readable": True,
        "width": int(width),
        "height": int(height),
        "brightness": float(lf.mean()),
        "contrast": float(lf.std()),
        "sharpness": float(cv2.Laplacian(lf, cv2.CV_32F).var()),
        "cast_rg": float(chans[0] - chans[1]),
        "cast_bg": float(chans[2] - chans[1]),
        "roi_brightness": float(roi.mean()),
        "roi_objectness": float((edges > 0).mean()),
        "saturated": float((small.max(axis=2) >= cfg.saturation_level).mean()),
        "ahash": average_hash(luma, cfg.hash_size),
        "error": "",
    }


def _unreadable(error: str, width: int = 0, height: int = 0) -> dict:
    return {
        "readable": False,
        "width": width,
        "height": height,
        **{f: np.nan for f in FEATURES},
        "ahash": "",
        "error": error,
    }


def file_features(path: Path, cfg: FeatureConfig) -> dict:
    """Decode one frame file and compute its features; never raises (unreadable -> readable=False)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        return _unreadable(f"cannot read: {e.strerror or e}")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        return _unreadable("not a decodable image" if data.size else "empty file")
    return image_features(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), cfg)


def _digest(path: Path) -> str:
    """sha256 of the file ("" when it cannot be read: its features then say why)."""
    try:
        return sha256_file(path)
    except OSError:
        return ""


def _cache_key(cfg: FeatureConfig) -> dict:
    return {
        "features_version": FEATURES_VERSION,
        "columns": CACHE_COLUMNS,
        "config": json.loads(json.dumps(asdict(cfg))),
    }


def key_file(cache_file: Path) -> Path:
    return cache_file.with_name(cache_file.stem + ".key.json")


def read_cache(path: Path, cfg: FeatureConfig) -> pd.DataFrame:
    """The cached rows, or none when the cache is missing or was computed with other settings."""
    key = key_file(path)
    if not path.exists() or not key.exists() or json.loads(key.read_text()) != _cache_key(cfg):
        return pd.DataFrame(columns=CACHE_COLUMNS)
    # round_trip: pandas' default float parser can be one ulp off, and a reused row must be
    # written back with exactly the digits a fresh computation writes (the cache is a DVC output)
    table = pd.read_csv(
        path,
        dtype={"path": str, "sha256": str, "ahash": str, "error": str},
        keep_default_na=False,
        float_precision="round_trip",
        na_values={f: ["", "nan"] for f in FEATURES},
    )
    if list(table.columns) != CACHE_COLUMNS:  # another feature set: recompute everything
        return pd.DataFrame(columns=CACHE_COLUMNS)
    table["readable"] = table["readable"].astype(str).str.lower() == "true"
    return table


def write_csv_atomic(table: pd.DataFrame, path: Path) -> None:
    """Write a CSV via a temp file + os.replace (an output file is never rewritten in place)."""
    atomic_write(path, table.to_csv(index=False))


def compute_features(
    paths: list[str],
    store_dir: Path,
    cache_file: Path,
    cfg: FeatureConfig,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Features of every frame in ``paths`` (relative to ``store_dir``), reusing ``cache_file``.

    A cached row is reused when its path and content hash match; the cache is
    rewritten (atomically) with exactly the rows of ``paths``, so frames that left the store
    leave the cache too. Returns the table (in ``paths`` order) and counts.
    """
    cache = read_cache(cache_file, cfg)
    cached = {(r.path, r.sha256): i for i, r in enumerate(cache[KEY_COLUMNS].itertuples())}
    keys = [(p, _digest(store_dir / p)) for p in paths]
    reuse = [cached.get(k) for k in keys]
    todo = [i for i, r in enumerate(reuse) if r is None]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # cv2 releases the GIL while decoding
        computed = list(
            tqdm(
                pool.map(lambda i: file_features(store_dir / paths[i], cfg), todo),
                total=len(todo),
                desc="validate: image features",
                unit="frame",
                disable=not progress or not todo,
            )
        )
    rows: list[dict] = [{}] * len(paths)
    records = cache.to_dict("records")
    for i, r in enumerate(reuse):
        if r is not None:
            rows[i] = records[r]
    for i, feats in zip(todo, computed):
        rows[i] = {"path": keys[i][0], "sha256": keys[i][1], **feats}
    table = pd.DataFrame(rows, columns=CACHE_COLUMNS)
    table["readable"] = table["readable"].astype(bool)
    key_file(cache_file).unlink(missing_ok=True)  # no key while the table and key disagree
    write_csv_atomic(table, cache_file)
    atomic_write(key_file(cache_file), json.dumps(_cache_key(cfg), indent=2) + "\n")
    return table, {"computed": len(todo), "reused": len(paths) - len(todo)}
