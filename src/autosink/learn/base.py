"""The base model: starting weights trained on rendered sessions, for ``train`` to fine-tune.

The earlier system fine-tuned a pretrained network; ImageNet weights cannot be downloaded
everywhere, and a few hundred feedback frames cannot teach a network from scratch to see a dish
under a spout. So the sample's base is trained on the simulator's own sessions: kitchens drawn
from the ``base`` seed stream (disjoint from the lake, the held-out benchmark sessions, the case
sets and the decision-tuning sessions), labelled by the need itself
(:func:`autosink.sim.session.wants_water`: a held dish under the spout), not by feedback.

**Counterfactual water.** Every frame is rendered twice, with the water running and without
(same scene, same noise), and each training step shows one of the two at random, with the same
label. The stream under the faucet then carries no information about the label, so the model
cannot learn to keep its own decision (water runs -> "water needed"). Validation scores both
renders.

For a real deployment the base is whatever the team trained last (``model.weights`` names any
checkpoint); :func:`fit_base` is what the ``base`` stage runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from autosink.learn.model import Preprocess
from autosink.learn.renders import RenderCache, iter_renders

__all__ = ["base_sessions", "render_pairs", "PairDataset", "BaseDataModule"]


def base_sessions(sim_cfg: dict, base_cfg: dict, split: str) -> list:
    """The session scripts of the base model's ``train`` or ``val`` kitchens (``base`` stream;
    the val kitchens are users after the train ones, so the two never share a kitchen)."""
    from autosink.sim.lake import with_defaults
    from autosink.sim.session import make_sessions

    n_train, n_val = int(base_cfg["users"]), int(base_cfg["val_users"])
    cfg = with_defaults(
        {
            **sim_cfg,
            "users": n_train + n_val,
            "sessions_per_user": int(base_cfg["sessions_per_user"]),
            "deviant_users": 0.0,
        }
    )
    sessions = make_sessions(cfg, "base")
    keep = range(n_train) if split == "train" else range(n_train, n_train + n_val)
    return [s for s in sessions if s.user.index in keep]


def stratum(state) -> int:
    """The kind of scene a frame shows: washing step x held dish under the spout x hand under
    the spout x scrubber in view (32 strata). Rare kinds (bare hands rinsing under the spout, a
    dish scrubbed where it lies) are what a model gets wrong when it only sees common ones."""
    from autosink.sim.session import STEPS

    return (
        STEPS.index(state.step) * 8
        + 4 * int(state.dish_held and state.dish_in_roi)
        + 2 * int(state.hand_in_roi)
        + int(state.scrubber_visible)
    )


def stratum_weights(strata: np.ndarray, power: float) -> np.ndarray:
    """Draw weight per frame ~ (frames of its stratum) ** -power: 0 = as rendered, 1 = every kind
    of scene equally often, 0.5 = in between."""
    strata = np.asarray(strata, np.int64)
    return np.bincount(strata)[strata].astype(float) ** -float(power)


def render_pairs(
    sessions: list,
    preprocess: Preprocess,
    every: int = 1,
    progress: bool = False,
    desc: str = "rendering",
    workers: int | None = None,
    cache: RenderCache | None = None,
) -> dict[str, Any]:
    """Every ``every``-th frame of each session, rendered with the water off and on and shrunk by
    the network's own resize, stored as uint8 (a quarter of float32's memory; the rounding is
    below the colour jitter of augmentation): :func:`autosink.learn.renders.iter_renders`, in
    ``workers`` processes (default: every core) and from ``cache`` where it has them.

    Returns ``off`` and ``on`` (uint8 ``[N, 3, h, w]``), ``label`` (float ``[N]``, the need),
    ``truth`` (int ``[N]``, the v1 label, -1 = ignore), ``stratum`` (:func:`stratum`) and
    ``session`` (``[N]`` index).
    """
    from tqdm import tqdm

    from autosink.sim.session import label_of, wants_water

    indexed = [(k, st) for k, s in enumerate(sessions) for st in s.states[:: max(1, int(every))]]
    states = [st for _, st in indexed]
    parts = []
    with tqdm(total=len(states), desc=desc, unit="frame", disable=not progress, leave=False) as bar:
        for off, on in iter_renders(states, preprocess, 128, workers, cache):
            parts.append((off, on))
            bar.update(len(off))
    empty = torch.empty(0, 3, preprocess.height, preprocess.width, dtype=torch.uint8)
    return {
        "off": torch.cat([p[0] for p in parts]) if parts else empty,
        "on": torch.cat([p[1] for p in parts]) if parts else empty,
        "label": np.array([float(wants_water(st)) for st in states], np.float32),
        "truth": np.array([label_of(st) for st in states], np.int64),
        "stratum": np.array([stratum(st) for st in states], np.int64),
        "session": np.array([k for k, _ in indexed], np.int64),
    }


class PairDataset(Dataset):
    """``(image [3, h, w] float in [0, 1], label, index)``.

    ``mode="random"``: each draw shows the water-off or the water-on render at random (training);
    ``mode="both"``: the dataset holds every render once, off then on (validation).
    """

    def __init__(self, pairs: dict[str, Any], mode: str = "random", augment=None, stratify: float = 0.0) -> None:
        if mode not in ("random", "both"):
            raise ValueError(f"mode must be random or both, got {mode!r}")
        self.off, self.on, self.mode, self.augment = pairs["off"], pairs["on"], mode, augment
        #: draw weight per frame (:func:`stratum_weights`), None: every frame alike
        self.weights = stratum_weights(pairs["stratum"], stratify) if stratify > 0 else None
        y = torch.from_numpy(np.asarray(pairs["label"], np.float32))
        self.n = len(y)
        self.labels = y if mode == "random" else torch.cat([y, y])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.mode == "random":
            src = self.on if torch.rand(()) < 0.5 else self.off
            x = src[i]
        else:
            x = self.off[i] if i < self.n else self.on[i - self.n]
        return x.float() / 255.0, self.labels[i], i  # the loader's collate augments whole batches


class BaseDataModule(pl.LightningDataModule):
    """Train and val loaders over rendered pairs (the same interface :func:`autosink.learn.training.fit`
    uses of :class:`~autosink.learn.frames.WaterDataModule`: ``datasets``, ``pos_weight``, loaders)."""

    def __init__(self, train_pairs: dict, val_pairs: dict, train_cfg: dict, stratify: float = 0.0) -> None:
        super().__init__()
        from autosink.learn.frames import build_augment

        self.cfg = train_cfg
        self.datasets = {
            "train": PairDataset(train_pairs, "random", build_augment(train_cfg.get("augment")), stratify),
            "val": PairDataset(val_pairs, "both"),
        }
        self.weights = self.datasets["train"].weights

    def setup(self, stage: str | None = None) -> None:
        pass

    @property
    def pos_weight(self) -> float:
        y = self.datasets["train"].labels
        if self.weights is not None:  # the labels as the sampler draws them
            w = torch.from_numpy(self.weights)
            pos, neg = float((w * y.double()).sum()), float((w * (1 - y.double())).sum())
            return neg / pos if pos else 1.0
        pos = float(y.sum())
        return float((len(y) - pos) / pos) if pos else 1.0

    def _loader(self, name: str, train: bool) -> DataLoader:
        from autosink.learn.frames import make_loader

        ds = self.datasets[name]
        return make_loader(ds, self.cfg, train=train, augment=ds.augment, weights=self.weights)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)
