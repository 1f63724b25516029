"""Frames for training and evaluation: the feature store + the splits as a LightningDataModule.

A split table (``data/splits/{train,val,test}.csv``, written by ``prepare``) names frames by
their path in the feature store. Each frame is read as the camera delivered it (RGB uint8 at
the camera resolution) and shrunk once with the model's own :meth:`Preprocess.resize`; the
result is cached in memory (a few hundred KB per frame at the default size) so an epoch costs
only the augmentation and the network.

Augmentation runs on the training split only, after the resize and before the normalisation
(flips, colour jitter, small affine, blur, as ``train.augment`` says); validation and test
frames go through exactly the serving path. The split is checked for leakage: no episode or
dish-washing session may appear in two splits.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler

from autosink.learn.model import Preprocess

__all__ = [
    "read_frame",
    "read_split",
    "check_no_leakage",
    "FrameDataset",
    "build_augment",
    "WaterDataModule",
    "visible_water",
    "water_balanced_weights",
    "BatchAugment",
    "AugmentCollate",
    "make_loader",
    "FrameCache",
]

SPLIT_COLUMNS = ("path", "label", "episode", "dishwashing_id")
LEAK_KEYS = ("episode", "dishwashing_id")


def read_frame(path: str | Path, size: tuple[int, int] | None = None, data: bytes | None = None) -> np.ndarray:
    """One frame as RGB uint8 ``[H, W, 3]``. ``size`` = (width, height) it must have; ``data``:
    the file's bytes when the caller has read them already."""
    if data is None:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
        raise ValueError(f"{path}: frame is {img.shape[1]}x{img.shape[0]}, expected {size[0]}x{size[1]}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR; the model sees RGB


def read_split(path: str | Path, allow_empty: bool = False) -> pd.DataFrame:
    """A split table, checked: the columns we need, labels 0/1, at least one row (unless allowed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run the prepare stage first (dvc repro prepare)")
    table = pd.read_csv(path, dtype={"episode": str, "dishwashing_id": str, "user_id": str})
    missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty and not allow_empty:
        raise ValueError(f"{path}: no frames (too few sessions for this split? see prepare.fractions)")
    bad = ~table["label"].isin([0, 1])
    if bad.any():
        raise ValueError(
            f"{path}: label must be 0 or 1, got {table.loc[bad, 'label'].iloc[0]} (row {int(bad.idxmax()) + 2})"
        )
    return table


def check_no_leakage(splits: dict[str, pd.DataFrame]) -> None:
    """Raise if an episode or a dish-washing session appears in two splits."""
    names = list(splits)
    for key in LEAK_KEYS:
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                shared = set(splits[a][key]) & set(splits[b][key])
                if shared:
                    raise ValueError(
                        f"split leakage: {key} {sorted(shared)[0]!r} (and {len(shared) - 1} more) "
                        f"in both {a} and {b}; rerun prepare"
                    )


def build_augment(cfg: dict | None) -> BatchAugment | None:
    """The training augmentation from ``train.augment`` (None when it is empty or all off)."""
    if not cfg:
        return None
    aug = BatchAugment(cfg)
    return aug if aug.active else None


class BatchAugment:
    """Flips, colour jitter, small affine and blur on a whole batch at once.

    Works on float images in [0, 1], ``[N, 3, H, W]`` (or one ``[3, H, W]``), every sample with
    its own random parameters from torch's global generator (seeded by ``train.seed``). Batched
    tensor ops cost a fraction of per-image transforms, which took a quarter of each training
    step on a 2-core CPU. Only a horizontal flip is offered: the scene is left-right symmetric
    about the faucet, but not top-bottom (the user stands at the bottom edge).
    """

    def __init__(self, cfg: dict) -> None:
        self.hflip = float(cfg.get("hflip", 0))
        jitter = cfg.get("color_jitter") or {}
        self.brightness, self.contrast, self.saturation, self.hue = (
            float(jitter.get(k, 0)) for k in ("brightness", "contrast", "saturation", "hue")
        )
        affine = cfg.get("affine") or {}
        self.degrees, self.translate = float(affine.get("degrees", 0)), float(affine.get("translate", 0))
        self.scale = tuple(float(v) for v in affine.get("scale", [1, 1]))
        blur = cfg.get("blur") or {}
        self.blur_p, self.kernel = float(blur.get("p", 0)), int(blur.get("kernel", 3))
        if self.blur_p > 0 and (self.kernel < 1 or self.kernel % 2 == 0):
            raise ValueError(f"train.augment.blur.kernel must be an odd number >= 1, got {self.kernel}")
        self.sigma = tuple(float(v) for v in blur.get("sigma", [0.1, 1.0]))
        self.jitter = any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))
        self.affine = self.degrees > 0 or self.translate > 0 or self.scale != (1.0, 1.0)
        self.active = self.hflip > 0 or self.jitter or self.affine or self.blur_p > 0

    @staticmethod
    def _u(n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.empty(n).uniform_(lo, hi)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 3
        x = x.unsqueeze(0) if single else x
        n = x.shape[0]
        if self.hflip > 0:
            x = torch.where((torch.rand(n) < self.hflip).view(n, 1, 1, 1), x.flip(-1), x)
        if self.jitter:
            x = self._color(x, n)
        if self.affine:
            x = self._affine(x, n)
        if self.blur_p > 0:
            x = self._blur(x, n)
        x = x.clamp(0.0, 1.0)
        return x[0] if single else x

    def _color(self, x: torch.Tensor, n: int) -> torch.Tensor:
        v = lambda t: t.view(n, 1, 1, 1)  # noqa: E731
        if self.brightness > 0:
            x = x * v(self._u(n, max(0.0, 1 - self.brightness), 1 + self.brightness))
        if self.contrast > 0:
            mean = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean((1, 2)).view(n, 1, 1, 1)
            x = (x - mean) * v(self._u(n, max(0.0, 1 - self.contrast), 1 + self.contrast)) + mean
        if self.saturation > 0:
            gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            x = (x - gray) * v(self._u(n, max(0.0, 1 - self.saturation), 1 + self.saturation)) + gray
        if self.hue > 0:  # rotate the chroma plane (YIQ) by up to hue * 360 degrees
            yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
            a = self._u(n, -self.hue, self.hue) * 2 * torch.pi
            rot = torch.zeros(n, 3, 3)
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = a.cos(), -a.sin(), a.sin(), a.cos()
            m = torch.linalg.inv(yiq) @ rot @ yiq  # [n, 3, 3]
            x = torch.einsum("nij,njhw->nihw", m, x)
        return x

    def _affine(self, x: torch.Tensor, n: int) -> torch.Tensor:
        import torch.nn.functional as F

        a = self._u(n, -self.degrees, self.degrees) * torch.pi / 180
        s = self._u(n, *self.scale)
        t = torch.stack([self._u(n, -self.translate, self.translate), self._u(n, -self.translate, self.translate)], 1)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = a.cos() / s, -a.sin() / s
        theta[:, 1, 0], theta[:, 1, 1] = a.sin() / s, a.cos() / s
        theta[:, :, 2] = 2 * t  # translate is a fraction of the size; the grid spans [-1, 1]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _blur(self, x: torch.Tensor, n: int) -> torch.Tensor:
        import torch.nn.functional as F

        k = self.kernel
        sigma = self._u(n, *self.sigma).view(n, 1)
        r = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
        g = torch.exp(-(r.view(1, k) ** 2) / (2 * sigma**2))
        g = g / g.sum(1, keepdim=True)
        kern = (g.view(n, k, 1) * g.view(n, 1, k)).repeat_interleave(3, 0).unsqueeze(1)  # [n*3, 1, k, k]
        c, h, w = x.shape[1:]
        blurred = F.conv2d(F.pad(x.reshape(1, n * c, h, w), [k // 2] * 4, mode="replicate"), kern, groups=n * c).view(
            n, c, h, w
        )
        return torch.where((torch.rand(n) < self.blur_p).view(n, 1, 1, 1), blurred, x)


class AugmentCollate:
    """Collate a batch, then augment its images in one go (:class:`BatchAugment`)."""

    def __init__(self, augment: BatchAugment) -> None:
        self.augment = augment

    def __call__(self, batch):
        from torch.utils.data import default_collate

        x, y, i = default_collate(batch)
        return self.augment(x), y, i


class FrameCache:
    """Frames as the network's own preprocessing resized them, on disk: one file per frame,
    named by the sha256 of the frame's PNG bytes, in a folder per preprocessing (frame size,
    crop, input size, and the code that resizes). Content-addressed, so every stage and every
    feature-store version shares it: a grown store decodes only its new frames, and a changed
    crop or input size starts a folder of its own. The resized floats are stored exactly
    (float32), so a cached frame is the very tensor a fresh decode gives.
    """

    def __init__(self, root: str | Path, preprocess: Preprocess, frame_size: tuple[int, int]) -> None:
        import inspect

        spec = {
            "frame_size": list(frame_size),
            "input": [preprocess.height, preprocess.width],
            "crop": list(preprocess.crop),
            "pool": preprocess.pool,
            "code": hashlib.sha256(inspect.getsource(type(preprocess).resize).encode()).hexdigest()[:12],
        }
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / f"{preprocess.width}x{preprocess.height}-{key}"
        self.spec = spec
        self.hits = self.misses = 0

    def path_for(self, data: bytes) -> Path:
        sha = hashlib.sha256(data).hexdigest()
        return self.dir / sha[:2] / f"{sha[2:]}.npy"

    def get(self, data: bytes) -> torch.Tensor | None:
        path = self.path_for(data)
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # absent, or cut short by a crash: decoded again
            return None
        self.hits += 1
        return torch.from_numpy(x)

    def put(self, data: bytes, x: torch.Tensor) -> None:
        path = self.path_for(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, x.numpy().astype(np.float32, copy=False), allow_pickle=False)
        os.replace(tmp, path)  # atomic: another rank or stage never reads half a file
        self.misses += 1


class FrameDataset(Dataset):
    """``(resized image [3, h, w] float, label float, row index)`` per frame of one split.

    ``cache``: keep every resized frame in memory (fast epochs); ``frame_cache``: take them from
    (and add them to) the on-disk :class:`FrameCache` instead of decoding every PNG again.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        root: str | Path,
        preprocess: Preprocess,
        frame_size: tuple[int, int],
        augment=None,
        cache: bool = True,
        progress: bool = False,
        name: str = "",
        frame_cache: FrameCache | None = None,
    ) -> None:
        self.table = table.reset_index(drop=True)
        self.root = Path(root)
        self.preprocess = preprocess
        self.frame_size = frame_size
        self.augment = augment
        self.labels = torch.tensor(self.table["label"].to_numpy(), dtype=torch.float32)
        self.frame_cache = frame_cache
        self.cache: torch.Tensor | None = None
        if cache:
            self.cache = self._resize_all(progress, name)

    def _load(self, i: int) -> torch.Tensor:
        path = self.root / self.table.at[i, "path"]
        if self.frame_cache is None:
            return self._resize(read_frame(path, self.frame_size))
        data = path.read_bytes()
        x = self.frame_cache.get(data)
        if x is None:
            x = self._resize(read_frame(path, self.frame_size, data))
            self.frame_cache.put(data, x)
        return x

    def _resize(self, frame: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.preprocess.resize(torch.from_numpy(frame).unsqueeze(0))[0]

    def _resize_all(self, progress: bool, name: str) -> torch.Tensor:
        from tqdm import tqdm

        out = torch.empty(len(self.table), 3, self.preprocess.height, self.preprocess.width)
        for i in tqdm(
            range(len(self.table)), desc=f"loading {name or 'frames'}", unit="frame", disable=not progress, leave=False
        ):
            out[i] = self._load(i)
        return out

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        x = self.cache[i] if self.cache is not None else self._load(i)
        return x, self.labels[i], i  # the loader's collate augments whole batches


def visible_water(table: pd.DataFrame, store_dir: str | Path) -> np.ndarray:
    """The water each frame of a split table shows: 1 running, 0 off, -1 unknown.

    A Pi's valve acts after the frame that caused it, so frame ``i`` shows the faucet state the
    episode records for frame ``i - 1`` (``magnetic_status``, from the feature store's
    manifest); an episode's first frame is unknown.
    """
    manifest = Path(store_dir) / "manifest.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: not found; run the label stage first (dvc repro label)")
    m = pd.read_csv(manifest, usecols=["path", "episode", "frame_index", "magnetic_status"], dtype={"episode": str})
    m = m.sort_values(["episode", "frame_index"])
    prev = m.groupby("episode")["magnetic_status"].shift(1)
    # only a true neighbour counts: frames dropped by the Pi's recorder leave gaps
    adjacent = m.groupby("episode")["frame_index"].diff() == 1
    m["water"] = prev.where(adjacent).fillna(-1).astype(int)
    water = table[["path"]].merge(m[["path", "water"]], on="path", how="left")["water"]
    return water.fillna(-1).astype(int).to_numpy()


def water_balanced_weights(labels: np.ndarray, water: np.ndarray) -> np.ndarray:
    """Sampling weights that give every (label, visible water) cell the same total weight, so
    "water runs" says nothing about the label in what the model sees (in feedback data the two
    agree on most frames: the water ran because the user wanted it). Frames of unknown water are
    balanced by label alone."""
    labels, water = np.asarray(labels).astype(int), np.asarray(water).astype(int)
    weights = np.zeros(len(labels), float)
    known = water >= 0
    cells = [(lab, w) for lab in (0, 1) for w in (0, 1) if ((labels == lab) & (water == w)).any()]
    for lab, w in cells:
        hit = (labels == lab) & (water == w)
        weights[hit] = known.sum() / len(cells) / hit.sum()
    present = [lab for lab in (0, 1) if ((labels == lab) & ~known).any()]
    for lab in present:
        hit = (labels == lab) & ~known
        weights[hit] = (~known).sum() / len(present) / hit.sum()
    return weights


def make_loader(ds: Dataset, cfg: dict, *, train: bool, augment=None, weights=None) -> DataLoader:
    """A loader as training uses it (``cfg``: ``batch_size``, ``seed``, ``num_workers``): for
    training, seeded shuffling, or with ``weights`` seeded sampling with replacement, and the
    augmentation applied per batch in the collate; otherwise the dataset's order, unaugmented."""
    generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    sampler = None
    if train and weights is not None:
        sampler = WeightedRandomSampler(
            np.asarray(weights, dtype=float).tolist(), num_samples=len(ds), replacement=True, generator=generator
        )
    workers = int(cfg.get("num_workers", 0))
    return DataLoader(
        ds,
        batch_size=int(cfg["batch_size"]),
        shuffle=train and sampler is None,
        sampler=sampler,
        generator=generator if train else None,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=AugmentCollate(augment) if train and augment is not None else None,
    )


class WaterDataModule(pl.LightningDataModule):
    """Train/val/test loaders over ``data/splits`` and ``data/feature-store``.

    ``train_cfg`` keys used: batch_size, num_workers, seed, balance (``sampler`` draws the
    minority class as often as the majority; ``water`` draws every (label, visible water) cell
    equally, :func:`water_balanced_weights`; ``loss`` and ``none`` leave the order alone),
    and ``replay``: another dataset of ``(image, label, index)`` (e.g. the base model's rendered
    kitchens) drawn for ``replay_share`` of the training samples, so fine-tuning does not forget,
    cache_images, frame_cache (a folder for :class:`FrameCache`; null: decode every run), augment.
    """

    def __init__(
        self,
        preprocess: Preprocess,
        train_cfg: dict,
        data_cfg: dict,
        splits_dir: str | Path = "data/splits",
        store_dir: str | Path = "data/feature-store",
        progress: bool = True,
        replay: Dataset | None = None,
        replay_share: float = 0.0,
    ) -> None:
        super().__init__()
        self.replay, self.replay_share = replay, float(replay_share) if replay is not None else 0.0
        if not 0.0 <= self.replay_share < 1.0:
            raise ValueError(f"replay share must be in [0, 1), got {replay_share}")
        self.preprocess = preprocess
        self.cfg = train_cfg
        self.frame_size = (int(data_cfg["frame_width"]), int(data_cfg["frame_height"]))
        self.splits_dir, self.store_dir = Path(splits_dir), Path(store_dir)
        self.progress = progress
        cache_dir = self.cfg.get("frame_cache")
        self.frame_cache = FrameCache(cache_dir, preprocess, self.frame_size) if cache_dir else None
        self.tables: dict[str, pd.DataFrame] = {}
        self.datasets: dict[str, FrameDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.tables:
            # training needs train and val; test may be empty until evaluate needs it
            self.tables = {
                s: read_split(self.splits_dir / f"{s}.csv", allow_empty=s == "test") for s in ("train", "val", "test")
            }
            check_no_leakage(self.tables)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", ("train", "val", "test")
        )
        for name in wanted:
            if name not in self.datasets:
                augment = build_augment(self.cfg.get("augment")) if name == "train" else None
                self.datasets[name] = FrameDataset(
                    self.tables[name],
                    self.store_dir,
                    self.preprocess,
                    self.frame_size,
                    augment=augment,
                    cache=bool(self.cfg.get("cache_images", True)),
                    frame_cache=self.frame_cache,
                    progress=self.progress,
                    name=name,
                )

    @property
    def pos_weight(self) -> float:
        """negatives / positives in the training split: the loss weight that balances the classes."""
        labels = self.tables["train"]["label"]
        pos = int((labels == 1).sum())
        return float((len(labels) - pos) / pos) if pos else 1.0

    def _loader(self, name: str, train: bool) -> DataLoader:
        ds = self.datasets[name]
        augment = ds.augment
        balance = self.cfg.get("balance")
        if train and (balance in ("sampler", "water") or self.replay is not None):
            labels = ds.labels.numpy()
            if balance == "water":
                weights = water_balanced_weights(labels, visible_water(self.tables[name], self.store_dir))
            elif balance == "sampler":
                freq = np.bincount(labels.astype(int), minlength=2).astype(float)
                weights = 1.0 / freq[labels.astype(int)]
            else:
                weights = np.ones(len(labels))
            if self.replay is not None:  # old data mixed in: replay_share of the draws
                weights = weights / weights.sum() * (1.0 - self.replay_share)
                rw = getattr(self.replay, "weights", None)  # e.g. scene-stratified (PairDataset)
                rw = np.ones(len(self.replay)) if rw is None else np.asarray(rw, float)
                weights = np.concatenate([weights, rw / rw.sum() * self.replay_share])
                ds = ConcatDataset([ds, self.replay])
            return make_loader(ds, self.cfg, train=True, augment=augment, weights=weights)
        return make_loader(ds, self.cfg, train=train, augment=augment)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
