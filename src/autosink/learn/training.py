"""Training: the LightningModule, the Trainer built from ``train.*`` parameters, and resume.

:func:`fit` trains :class:`LitWaterNet` on the :class:`~autosink.learn.frames.WaterDataModule`,
keeps the best checkpoint by ``train.monitor`` (early stopping on the same metric), picks the
decision threshold (``train.threshold``: on rendered tuning sessions through the edge's
controller by default, :mod:`autosink.learn.decision`), and writes one self-contained checkpoint
(``models/model.ckpt``: weights, hyperparameters, threshold, data version) for evaluate and
export.

Resume: Lightning's ``last.ckpt`` is kept in ``models/checkpoints/`` with a fingerprint of
everything that defines the run (model and train parameters, the training code, the split
tables). A rerun of an unfinished run with the same fingerprint (e.g. after Ctrl-C or a crash)
continues from it; a finished run or a different fingerprint starts afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from autosink.core.fileio import atomic_write, code_version
from autosink.learn.model import (
    WaterNet,
    build_model,
    build_preprocess,
    count_parameters,
    load_base_weights,
    net_state_dict,
    weights_checkpoint,
)

__all__ = ["LitWaterNet", "fit", "run_fingerprint", "choose_threshold", "load_trained"]

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "val_f1", "val_auroc", "lr")


class LitWaterNet(pl.LightningModule):
    """The water classifier for Lightning: BCE on one logit, class-weighted when asked."""

    def __init__(self, model: dict, data: dict, train: dict, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: WaterNet = build_model(model, data)
        start = weights_checkpoint(model)
        if start is not None:
            load_base_weights(self.net, start)
        # channels-last convolutions train about 1.7x faster on a CPU (oneDNN); the exported
        # graph is unaffected (load_trained rebuilds the network in the default layout)
        self.net.backbone.to(memory_format=torch.channels_last)
        use_weight = train.get("balance", "loss") == "loss"
        self.register_buffer("pos_weight", torch.tensor(pos_weight if use_weight else 1.0), persistent=False)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logits_from_resized(x.contiguous(memory_format=torch.channels_last))

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        loss = self._loss(self._logits(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, _ = batch
        logits = self._logits(x)
        self.log("val/loss", self._loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self._val.append((torch.sigmoid(logits).detach(), y.detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        p = torch.cat([a for a, _ in self._val])
        y = torch.cat([b for _, b in self._val])
        self._val.clear()
        p, y = self.all_gather(p).reshape(-1), self.all_gather(y).reshape(-1)  # whole val set under DDP
        m = binary_metrics(p.cpu().numpy(), y.cpu().numpy().astype(int), 0.5)
        self.log_dict(
            {"val/acc": m["accuracy"], "val/f1": m["f1"], "val/auroc": m["auroc"]}, prog_bar=True, rank_zero_only=True
        )

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self._logits(batch[0]))

    def configure_optimizers(self):
        cfg = self.hparams.train
        opt = torch.optim.AdamW(self.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
        schedule = cfg.get("schedule", "none")
        if schedule == "none":
            return opt
        if schedule == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = min(
                total - 1, int(round(float(cfg.get("warmup_epochs", 0)) * total / max(1, self.trainer.max_epochs)))
            )

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / (warmup + 1)
                return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        raise ValueError(f"train.schedule must be none or cosine, got {schedule!r}")


def binary_metrics(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, AUROC and the confusion counts at ``threshold``."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    pred = (np.asarray(p) >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auroc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return {
        "n": int(len(y)),
        "accuracy": (tp + tn) / max(1, len(y)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def choose_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold with the best validation accuracy; among equals the one nearest 0.5 (the
    untuned default), so a tiny validation set cannot push it to an extreme by chance."""
    candidates = np.unique(np.concatenate([[0.5], np.clip(p, 0.01, 0.99)]))
    acc = np.array([((p >= t).astype(int) == y).mean() for t in candidates])
    best = candidates[acc >= acc.max() - 1e-12]
    return float(best[np.argmin(np.abs(best - 0.5))])


def run_fingerprint(params: dict, splits_dir: Path) -> str:
    """What defines a training run: model/train/data parameters, the training code and the split
    tables' bytes."""
    from autosink.learn import frames, model

    h = hashlib.sha256(
        json.dumps({k: params.get(k) for k in ("model", "train", "data")}, sort_keys=True, default=str).encode()
    )
    h.update(code_version(model, frames, sys.modules[__name__]).encode())
    for name in ("train", "val"):
        p = splits_dir / f"{name}.csv"
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:16]


class HistoryCallback(pl.Callback):
    """Per-epoch metrics for ``dvc plots`` (saved in checkpoints, so a resumed run keeps them)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # runs after the epoch's validation, so its val/* metrics are the current ones
        m = trainer.callback_metrics
        get = lambda k: float(m[k]) if k in m else float("nan")  # noqa: E731
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        row = {
            "epoch": trainer.current_epoch,
            "train_loss": get("train/loss"),
            "val_loss": get("val/loss"),
            "val_acc": get("val/acc"),
            "val_f1": get("val/f1"),
            "val_auroc": get("val/auroc"),
            "lr": lr,
        }
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:  # one line per epoch, also in logs without a progress bar
            print(
                f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                f"val acc {row['val_acc']:.3f}, val auroc {row['val_auroc']:.3f}",
                flush=True,
            )

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state.get("rows", []))


class ThroughputCallback(pl.Callback):
    """Training images per second and seconds per epoch (the training loop only), and when the
    first training step began (``first_step_at``, ``time.perf_counter()``)."""

    def __init__(self) -> None:
        self.first_step_at: float | None = None
        self.images = 0
        self.seconds = 0.0
        self.epoch_seconds: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._t0)
        self.seconds += self.epoch_seconds[-1]


def make_logger(cfg: dict, save_dir: Path, job_type: str = "train", key: str = ""):
    """WandbLogger per ``train.wandb`` (mode auto: online with WANDB_API_KEY, else offline), or None.
    Named, grouped and tagged by :func:`autosink.core.tracking.run_identity` (``key``: the
    run's fingerprint)."""
    from autosink.core.tracking import resolve_mode, run_identity

    w = cfg.get("wandb") or {}
    mode, why = resolve_mode(w.get("mode", "auto"))
    if why:
        print(f"train: {why}")
    if mode == "disabled":
        return None
    from pytorch_lightning.loggers import WandbLogger

    save_dir.mkdir(parents=True, exist_ok=True)
    # Lightning refuses log_model with offline=True, yet an offline wandb run records artifacts
    # locally (`wandb sync` uploads them later): so the mode goes to wandb.init directly.
    logger = WandbLogger(
        project=w.get("project", "autosink"),
        save_dir=str(save_dir),
        offline=False,
        mode=mode,
        log_model=bool(w.get("log_model", True)),
        **run_identity(job_type, key),
    )
    # Lightning always passes anonymous=None, which wandb >= 0.19 warns about on every run
    logger._wandb_init.pop("anonymous", None)
    return logger


class _NoAdverts(logging.Filter):
    """Drops Lightning's "Tip: try installing <product>" lines (printed on every fit)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\U0001f4a1 Tip:")


@contextlib.contextmanager
def _quiet_lightning():
    """Silence the notices that are noise on every run, and only those: the product adverts, a
    resumable checkpoint folder "exists and is not empty" (it is kept on purpose), and a
    deprecation inside Lightning itself."""
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    adverts = _NoAdverts()
    rank_zero.addFilter(adverts)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        rank_zero.removeFilter(adverts)


def _launched_as_rank_zero(env: dict | None = None) -> bool:
    """Whether this process is the global rank 0, before any Trainer exists: torchrun sets
    ``RANK``, srun ``SLURM_PROCID``, Lightning's own launcher ``LOCAL_RANK`` in the ranks it
    starts, and a launch per node ``NODE_RANK``."""
    env = os.environ if env is None else env
    return all(int(env.get(key) or 0) == 0 for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def fit(
    params: dict,
    splits_dir: str | Path = "data/splits",
    store_dir: str | Path = "data/feature-store",
    ckpt_dir: str | Path = "models/checkpoints",
    out_ckpt: str | Path = "models/model.ckpt",
    logger: Any = "config",
    progress: bool = True,
    extra_callbacks: list | None = None,
    data_version: str = "",
    datamodule: Any = None,
    replay: Any = None,
    replay_share: float = 0.0,
    job_type: str = "train",
) -> dict:
    """Train per ``params`` (model, data, train groups); write ``out_ckpt``; return the summary.

    ``logger="config"`` builds the wandb logger from ``train.wandb``; pass None for none.
    ``datamodule``: train on it instead of the splits + feature store (the base model's
    rendered pairs, :class:`autosink.learn.base.BaseDataModule`). ``replay``/``replay_share``: old data
    mixed into the training draws (:class:`~autosink.learn.frames.WaterDataModule`).
    """
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from autosink.learn.frames import WaterDataModule

    fit_started = time.perf_counter()
    model_cfg, data_cfg, cfg = params["model"], params["data"], params["train"]
    splits_dir, ckpt_dir, out_ckpt = Path(splits_dir), Path(ckpt_dir), Path(out_ckpt)
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    torch.set_num_threads(max(1, int(cfg.get("threads") or os.cpu_count() or 1)))

    fingerprint = run_fingerprint(params, splits_dir)
    stamp, last = ckpt_dir / "run.json", ckpt_dir / "last.ckpt"
    resume = None
    state = json.loads(stamp.read_text()) if stamp.exists() else {}
    if last.exists() and state.get("fingerprint") == fingerprint and not state.get("complete"):
        resume = str(last)
        print(f"train: resuming from {last} (same parameters, code and data)")
    elif ckpt_dir.exists() and _launched_as_rank_zero():
        shutil.rmtree(ckpt_dir)  # one rank clears a finished run: under torchrun/srun all start at once
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(stamp, json.dumps({"fingerprint": fingerprint}) + "\n")

    dm = datamodule or WaterDataModule(
        build_preprocess(model_cfg, data_cfg),
        cfg,
        data_cfg,
        splits_dir,
        store_dir,
        progress=progress,
        replay=replay,
        replay_share=replay_share,
    )
    dm.setup("fit")
    module = LitWaterNet(model_cfg, data_cfg, cfg, pos_weight=dm.pos_weight)

    monitor, mode = str(cfg.get("monitor", "val/loss")), str(cfg.get("monitor_mode", "min"))
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    history, speed = HistoryCallback(), ThroughputCallback()
    callbacks: list = [best_cb, history, speed, *(extra_callbacks or [])]
    patience = int(cfg.get("early_stopping_patience", 0))
    if patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience))
    if logger == "config":
        logger = make_logger(cfg, Path(cfg.get("wandb", {}).get("dir", ".")), job_type, fingerprint)
    # a limit of 1.0 is the default; passing it makes Lightning print that it was configured
    limits = {k: cfg.get(k) if cfg.get(k, 1.0) != 1.0 else None for k in ("limit_train_batches", "limit_val_batches")}
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=int(cfg["max_epochs"]),
            accelerator=str(cfg.get("accelerator", "auto")),
            devices=cfg.get("devices", "auto"),
            strategy=str(cfg.get("strategy", "auto")),
            num_nodes=int(cfg.get("num_nodes", 1)),
            precision=cfg.get("precision", "32-true"),
            **limits,
            deterministic=bool(cfg.get("deterministic", False)),
            callbacks=callbacks,
            logger=logger or False,
            enable_progress_bar=progress,
            enable_model_summary=progress,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            default_root_dir=str(ckpt_dir),
        )
        started = time.perf_counter()
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
        seconds = time.perf_counter() - started
    if trainer.is_global_zero:  # a finished run is not resumed: a forced rerun trains afresh
        atomic_write(stamp, json.dumps({"fingerprint": fingerprint, "complete": True}) + "\n")

    if not trainer.is_global_zero:  # under DDP only rank 0 writes the results
        return dict()
    best_path = best_cb.best_model_path or str(last)
    ckpt = torch.load(best_path, map_location="cpu", weights_only=False)
    best = module.cpu()
    best.load_state_dict(ckpt["state_dict"])
    best.eval()
    val = dm.datasets["val"]
    with torch.no_grad():
        p = torch.cat([best.predict_step((x,), 0) for x, _, _ in dm.val_dataloader()]).numpy()
    y = val.labels.numpy().astype(int)
    thr_cfg = cfg.get("threshold", "auto")
    # closed-loop: this is the starting point; the train stage then chooses in the loop (autosink.learn.decision)
    threshold = choose_threshold(p, y) if thr_cfg in ("auto", "accuracy", "closed-loop") else float(thr_cfg)
    val_metrics = binary_metrics(p, y, threshold)

    # the result keeps what inference, fine-tuning and the card need; the trainer's state stays in
    # ckpt_dir for resuming (its callbacks hold absolute paths: this file is a DVC output and must
    # come out byte-identical on every machine)
    ckpt = {k: ckpt[k] for k in RESULT_KEYS if k in ckpt}
    run_id = getattr(getattr(logger, "experiment", None), "id", None) if logger is not None else None
    ckpt["autosink"] = {
        "threshold": threshold,
        "data_version": data_version,
        "fingerprint": fingerprint,
        "best_epoch": int(ckpt.get("epoch", -1)),
        "val": val_metrics,
        "wandb_run_id": run_id,
    }
    out_ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_ckpt.with_name(out_ckpt.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, out_ckpt)

    result = dict(
        backbone=model_cfg["backbone"],
        input=[int(model_cfg["input_height"]), int(model_cfg["input_width"])],
        epochs=int(trainer.current_epoch),
        best_epoch=int(ckpt.get("epoch", -1)),
        threshold=threshold,
        val={k: v for k, v in val_metrics.items() if k != "confusion"},
        train_frames=len(dm.datasets["train"]),
        images_per_s=speed.images / speed.seconds if speed.seconds else float("nan"),
        epoch_s=float(np.mean(speed.epoch_seconds)) if speed.epoch_seconds else float("nan"),
        seconds=seconds,
        # from fit() being called (decoding the frames included) to the first training step
        first_step_s=speed.first_step_at - fit_started if speed.first_step_at else None,
        frame_cache=(
            {"dir": str(fc.dir), "hits": fc.hits, "misses": fc.misses}
            if (fc := getattr(dm, "frame_cache", None)) is not None
            else None
        ),
        resumed=resume is not None,
        parameters=count_parameters(module),
        wandb_run_id=run_id,
    )
    result["history"] = history.rows
    if logger is not None and hasattr(logger, "experiment"):
        logger.experiment.summary.update(
            {"threshold": threshold, **{f"val_best/{k}": v for k, v in result["val"].items()}}
        )
    return result


#: what :func:`fit` keeps of Lightning's checkpoint in ``out_ckpt``
RESULT_KEYS = ("epoch", "global_step", "pytorch-lightning_version", "state_dict", "hparams_name", "hyper_parameters")


def load_trained(path: str | Path) -> tuple[WaterNet, dict]:
    """The network of a trained checkpoint (eval mode) and its ``autosink`` metadata."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run the train stage first (dvc repro train)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters") or {}
    if "model" not in hp or "data" not in hp:
        raise ValueError(f"{path}: not an autosink training checkpoint")
    net = build_model({**hp["model"], "weights": "none"}, hp["data"])
    try:
        net.load_state_dict(net_state_dict(ckpt))
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit backbone {hp['model']['backbone']!r}: {e}") from None
    net.eval()
    meta = dict(ckpt.get("autosink") or {})
    meta.setdefault("threshold", 0.5)
    meta["hyper_parameters"] = hp
    return net, meta
