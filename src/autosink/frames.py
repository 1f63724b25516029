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

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from autosink.model import Preprocess

__all__ = ["read_frame", "read_split", "check_no_leakage", "FrameDataset", "build_augment", "WaterDataModule"]

SPLIT_COLUMNS = ("path", "label", "episode", "dishwashing_id")
LEAK_KEYS = ("episode", "dishwashing_id")


def read_frame(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One frame as RGB uint8 ``[H, W, 3]``. ``size`` = (width, height) it must have."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
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
        raise ValueError(f"{path}: label must be 0 or 1, got {table.loc[bad, 'label'].iloc[0]} "
                         f"(row {int(bad.idxmax()) + 2})")
    return table


def check_no_leakage(splits: dict[str, pd.DataFrame]) -> None:
    """Raise if an episode or a dish-washing session appears in two splits."""
    names = list(splits)
    for key in LEAK_KEYS:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = set(splits[a][key]) & set(splits[b][key])
                if shared:
                    raise ValueError(f"split leakage: {key} {sorted(shared)[0]!r} (and {len(shared) - 1} more) "
                                     f"in both {a} and {b}; rerun prepare")


def build_augment(cfg: dict | None):
    """The training augmentation from ``train.augment`` (None when it is empty or all off).

    Works on float ``[3, H, W]`` images in [0, 1]. Only a horizontal flip is offered: the
    scene is left-right symmetric about the faucet, but not top-bottom (the user stands at the
    bottom edge).
    """
    if not cfg:
        return None
    from torchvision.transforms import v2

    steps: list[Any] = []
    if float(cfg.get("hflip", 0)) > 0:
        steps.append(v2.RandomHorizontalFlip(p=float(cfg["hflip"])))
    jitter = cfg.get("color_jitter") or {}
    if any(float(v) > 0 for v in jitter.values()):
        steps.append(v2.ColorJitter(**{k: float(v) for k, v in jitter.items()}))
    affine = cfg.get("affine") or {}
    if affine and (float(affine.get("degrees", 0)) > 0 or float(affine.get("translate", 0)) > 0
                   or list(affine.get("scale", [1, 1])) != [1, 1]):
        t = float(affine.get("translate", 0))
        steps.append(v2.RandomAffine(degrees=float(affine.get("degrees", 0)), translate=(t, t),
                                     scale=tuple(float(s) for s in affine.get("scale", [1, 1]))))
    blur = cfg.get("blur") or {}
    if float(blur.get("p", 0)) > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=int(blur.get("kernel", 3)),
                                                     sigma=tuple(float(s) for s in blur.get("sigma", [0.1, 1.0])))],
                                    p=float(blur["p"])))
    if not steps:
        return None
    return v2.Compose([*steps, v2.Lambda(lambda x: x.clamp(0.0, 1.0))])


class FrameDataset(Dataset):
    """``(resized image [3, h, w] float, label float, row index)`` per frame of one split."""

    def __init__(self, table: pd.DataFrame, root: str | Path, preprocess: Preprocess,
                 frame_size: tuple[int, int], augment=None, cache: bool = True, progress: bool = False,
                 name: str = "") -> None:
        self.table = table.reset_index(drop=True)
        self.root = Path(root)
        self.preprocess = preprocess
        self.frame_size = frame_size
        self.augment = augment
        self.labels = torch.tensor(self.table["label"].to_numpy(), dtype=torch.float32)
        self.cache: torch.Tensor | None = None
        if cache:
            self.cache = self._resize_all(progress, name)

    def _load(self, i: int) -> torch.Tensor:
        frame = read_frame(self.root / self.table.at[i, "path"], self.frame_size)
        with torch.no_grad():
            return self.preprocess.resize(torch.from_numpy(frame).unsqueeze(0))[0]

    def _resize_all(self, progress: bool, name: str) -> torch.Tensor:
        from tqdm import tqdm

        out = torch.empty(len(self.table), 3, self.preprocess.height, self.preprocess.width)
        for i in tqdm(range(len(self.table)), desc=f"loading {name or 'frames'}", unit="frame",
                      disable=not progress, leave=False):
            out[i] = self._load(i)
        return out

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        x = self.cache[i] if self.cache is not None else self._load(i)
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i], i


class WaterDataModule(pl.LightningDataModule):
    """Train/val/test loaders over ``data/splits`` and ``data/feature-store``.

    ``train_cfg`` keys used: batch_size, num_workers, seed, balance (``sampler`` draws the
    minority class as often as the majority; ``loss`` and ``none`` leave the order alone),
    cache_images, augment.
    """

    def __init__(self, preprocess: Preprocess, train_cfg: dict, data_cfg: dict,
                 splits_dir: str | Path = "data/splits", store_dir: str | Path = "data/feature-store",
                 progress: bool = True) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.cfg = train_cfg
        self.frame_size = (int(data_cfg["frame_width"]), int(data_cfg["frame_height"]))
        self.splits_dir, self.store_dir = Path(splits_dir), Path(store_dir)
        self.progress = progress
        self.tables: dict[str, pd.DataFrame] = {}
        self.datasets: dict[str, FrameDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.tables:
            # training needs train and val; test may be empty until evaluate needs it
            self.tables = {s: read_split(self.splits_dir / f"{s}.csv", allow_empty=s == "test")
                           for s in ("train", "val", "test")}
            check_no_leakage(self.tables)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", ("train", "val", "test"))
        for name in wanted:
            if name not in self.datasets:
                augment = build_augment(self.cfg.get("augment")) if name == "train" else None
                self.datasets[name] = FrameDataset(self.tables[name], self.store_dir, self.preprocess, self.frame_size,
                                                   augment=augment, cache=bool(self.cfg.get("cache_images", True)),
                                                   progress=self.progress, name=name)

    @property
    def pos_weight(self) -> float:
        """negatives / positives in the training split: the loss weight that balances the classes."""
        labels = self.tables["train"]["label"]
        pos = int((labels == 1).sum())
        return float((len(labels) - pos) / pos) if pos else 1.0

    def _loader(self, name: str, train: bool) -> DataLoader:
        ds = self.datasets[name]
        generator = torch.Generator().manual_seed(int(self.cfg.get("seed", 0)))
        sampler = None
        if train and self.cfg.get("balance") == "sampler":
            labels = ds.labels.numpy()
            freq = np.bincount(labels.astype(int), minlength=2).astype(float)
            weights = 1.0 / freq[labels.astype(int)]
            sampler = WeightedRandomSampler(weights.tolist(), num_samples=len(ds), replacement=True,
                                            generator=generator)
        workers = int(self.cfg.get("num_workers", 0))
        return DataLoader(ds, batch_size=int(self.cfg["batch_size"]), shuffle=train and sampler is None,
                          sampler=sampler, generator=generator if train else None, num_workers=workers,
                          persistent_workers=workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
