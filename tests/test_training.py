"""Model, data module, training, resume and evaluation on a tiny store (the real config, shrunk)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from autosink.learn.evaluation import VISIBLE_STATE, curve_tables, evaluate_table, predict_paths, truth_report
from autosink.learn.frames import (
    AugmentCollate,
    WaterDataModule,
    build_augment,
    check_no_leakage,
    read_frame,
    read_split,
)
from autosink.learn.model import BACKBONES, Preprocess, WaterNet, load_base_weights
from autosink.learn.training import binary_metrics, choose_threshold, fit, load_trained
from tests.train_fixtures import H, W, tiny_params, write_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def trained(repo_root, store, tmp_path_factory):
    """One real (tiny) training run: the checkpoint and fit()'s summary."""
    out = tmp_path_factory.mktemp("run")
    params = tiny_params(repo_root)
    result = fit(
        params,
        splits_dir=store[1],
        store_dir=store[0],
        ckpt_dir=out / "ckpts",
        out_ckpt=out / "model.ckpt",
        logger=None,
        progress=False,
        data_version="fs-test",
    )
    return out / "model.ckpt", result, params


# --------------------------------------------------------------------------- model


def test_preprocess_crops_pools_and_resizes_to_the_model_size():
    pre = Preprocess(height=60, width=80, source_height=480, source_width=640, crop=(80, 0, 560, 480))
    assert pre.pool == 6  # 480/60 and 480/80 -> the whole factor that keeps >= the model size
    frames = torch.randint(0, 256, (2, 480, 640, 3), dtype=torch.uint8)
    x = pre.resize(frames)
    assert x.shape == (2, 3, 60, 80) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # the crop is honoured: changing pixels outside it changes nothing
    frames2 = frames.clone()
    frames2[:, :, :80] = 0
    torch.testing.assert_close(pre.resize(frames2), x)
    with pytest.raises(ValueError, match="inside the 640x480 frame"):
        Preprocess(60, 80, 480, 640, crop=(0, 0, 700, 480))


def test_preprocess_box_filter_avoids_aliasing_a_fine_pattern():
    """A 1-pixel checkerboard is mid-grey to the eye; plain strided sampling would see all black or white."""
    board = ((np.indices((480, 640)).sum(0) % 2) * 255).astype(np.uint8)
    frames = torch.from_numpy(np.repeat(board[None, :, :, None], 3, axis=3))
    x = Preprocess(120, 160, 480, 640).resize(frames)
    assert abs(float(x.mean()) - 0.5) < 0.01 and float(x.std()) < 0.01


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_with_one_logit(name):
    net = WaterNet(name, 32, 32, source_height=H, source_width=W)
    net.eval()
    p = net(torch.zeros(2, H, W, 3, dtype=torch.uint8))
    assert p.shape == (2,) and bool(((p >= 0) & (p <= 1)).all())


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        WaterNet("vgg", 32, 32)


# --------------------------------------------------------------------------- data


def test_split_leakage_is_refused(store):
    tables = {s: read_split(store[1] / f"{s}.csv") for s in ("train", "val", "test")}
    check_no_leakage(tables)  # the fixture's split is clean
    leaked = dict(tables, test=pd.concat([tables["test"], tables["train"].head(1)]))
    with pytest.raises(ValueError, match="split leakage: episode 'ep00'.*train and test"):
        check_no_leakage(leaked)


def test_the_prepare_stage_writes_splits_the_training_side_finds_leak_free(repo_root, tmp_path, monkeypatch):
    """The real prepare stage with the real config (conf/) on a small manifest: sessions of several
    episodes, ids with leading zeros (read back as text), frames left for review. Training reads
    its splits with read_split and refuses leakage of an episode or a session (check_no_leakage)."""
    from autosink.ops.config import compose
    from autosink.stages import prepare

    rng = np.random.default_rng(0)
    rows = [
        {
            "path": f"{k % 2}/s{s}e{e}_{k:04d}.png",
            "label": int(k % 2),
            "episode": f"ep{s:02d}{e}",
            "frame_index": k,
            "user_id": f"user_{s % 3}",
            "dishwashing_id": f"{s:010x}",
            "source": "auto",
            "confidence": 0.95,
            "review": bool(rng.random() < 0.1),
        }
        for s in range(12)
        for e in range(1 + s % 3)
        for k in range(6)
    ]
    store = tmp_path / "data/feature-store"
    store.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(store / "manifest.csv", index=False)
    monkeypatch.chdir(tmp_path)
    prepare.run(compose(repo_root), progress=False)
    splits = {s: read_split(tmp_path / "data/splits" / f"{s}.csv") for s in ("train", "val", "test")}
    check_no_leakage(splits)
    assert sum(len(t) for t in splits.values()) == sum(not r["review"] for r in rows)  # every usable frame, once
    assert all(t["dishwashing_id"].str.len().eq(10).all() for t in splits.values())


def test_bad_split_and_frame_errors_name_the_file(tmp_path):
    bad = tmp_path / "train.csv"
    pd.DataFrame({"path": ["a.png"], "label": [2], "episode": ["e"], "dishwashing_id": ["d"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"train.csv: label must be 0 or 1, got 2 \(row 2\)"):
        read_split(bad)
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="x.png: not a readable image"):
        read_frame(tmp_path / "x.png")


def test_augmentation_only_on_the_training_split(repo_root, store):
    params = tiny_params(repo_root)
    dm = WaterDataModule(Preprocess(32, 32, H, W), params["train"], params["data"], store[1], store[0], progress=False)
    dm.setup("fit")
    dm.setup("test")
    assert dm.datasets["train"].augment is not None
    assert dm.datasets["val"].augment is None and dm.datasets["test"].augment is None
    a, b = dm.datasets["val"][0][0], dm.datasets["val"][0][0]
    torch.testing.assert_close(a, b)  # evaluation is deterministic
    # augmentation runs on whole batches in the train loader's collate, not per item
    train = dm.datasets["train"]
    torch.testing.assert_close(train[0][0], train[0][0], rtol=0, atol=0)
    assert isinstance(dm.train_dataloader().collate_fn, AugmentCollate)
    assert not isinstance(dm.val_dataloader().collate_fn, AugmentCollate)
    assert not isinstance(dm.test_dataloader().collate_fn, AugmentCollate)
    batch = torch.stack([train[0][0]] * 4)
    collate = dm.train_dataloader().collate_fn
    torch.manual_seed(0)
    draws = [collate([(train[0][0], train.labels[0], 0)])[0][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # training frames vary
    assert not torch.equal(collate([(x, train.labels[0], 0) for x in batch])[0], batch)
    xv, _, iv = next(iter(dm.val_dataloader()))  # evaluation frames go through unchanged
    torch.testing.assert_close(xv, torch.stack([dm.datasets["val"][int(i)][0] for i in iv]), rtol=0, atol=0)
    assert build_augment({}) is None and build_augment({"hflip": 0}) is None


# --------------------------------------------------------------------------- training


def test_shrunk_real_config_trains_and_evaluates(trained, store):
    ckpt, result, params = trained
    assert result["epochs"] == 1 and result["backbone"] == params["model"]["backbone"]
    assert 0.0 < result["threshold"] < 1.0 and result["images_per_s"] > 0
    assert 0 < result["first_step_s"] < result["seconds"] + 60
    assert [r["epoch"] for r in result["history"]] == [0]
    net, meta = load_trained(ckpt)
    assert meta["data_version"] == "fs-test" and meta["threshold"] == result["threshold"]
    test = read_split(store[1] / "test.csv")
    p = predict_paths(net, [store[0] / q for q in test["path"]], (W, H))
    assert p.shape == (len(test),) and np.isfinite(p).all()
    metrics = evaluate_table(test, p, meta["threshold"])
    assert set(metrics["per_episode"]) == set(test["episode"])
    assert {"accuracy", "f1", "auroc", "precision", "recall", "confusion"} <= set(metrics)
    tables = curve_tables(p, test["label"].to_numpy(), meta["threshold"])
    assert len(tables["confusion"]) == len(test) and {"fpr", "tpr"} <= set(tables["roc"].columns)


def test_the_serving_path_equals_the_training_path(trained, store):
    """forward(raw uint8 frame) == logits_from_resized(Preprocess.resize(frame)): one preprocessing."""
    net, _ = load_trained(trained[0])
    frame = torch.from_numpy(read_frame(store[0] / read_split(store[1] / "val.csv")["path"][0]))[None]
    with torch.no_grad():
        torch.testing.assert_close(net(frame), torch.sigmoid(net.logits_from_resized(net.preprocess.resize(frame))))


class _Crash(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 1:  # mid-way through the second epoch
            raise RuntimeError("simulated power cut")


class _FirstEpoch(pl.Callback):
    def __init__(self):
        self.first = None

    def on_train_epoch_start(self, trainer, module):
        if self.first is None:
            self.first = trainer.current_epoch


def test_interrupted_training_resumes_from_last_checkpoint(repo_root, store, tmp_path):
    params = tiny_params(repo_root)
    params["train"]["max_epochs"] = 2
    kw = dict(
        splits_dir=store[1],
        store_dir=store[0],
        ckpt_dir=tmp_path / "ckpts",
        out_ckpt=tmp_path / "m.ckpt",
        logger=None,
        progress=False,
    )
    with pytest.raises(RuntimeError, match="simulated power cut"):
        fit(params, extra_callbacks=[_Crash()], **kw)
    assert (tmp_path / "ckpts" / "last.ckpt").exists() and not (tmp_path / "m.ckpt").exists()
    first = _FirstEpoch()
    result = fit(params, extra_callbacks=[first], **kw)
    assert result["resumed"] and first.first == 1  # epoch 0 was not trained again
    assert [r["epoch"] for r in result["history"]] == [0, 1]  # the curve survives the restart
    # a finished run is not resumed: the same run again (e.g. dvc repro -f) trains afresh
    first = _FirstEpoch()
    assert not fit(params, extra_callbacks=[first], **kw)["resumed"] and first.first == 0
    # different parameters: a fresh start, not a resume
    params["train"]["lr"] = params["train"]["lr"] / 2
    first = _FirstEpoch()
    result = fit(params, extra_callbacks=[first], **kw)
    assert not result["resumed"] and first.first == 0


def test_a_checkpoint_of_one_backbone_is_refused_by_another(trained):
    ckpt = trained[0]
    other = WaterNet("resnet18", 32, 32, source_height=H, source_width=W)
    with pytest.raises(ValueError, match=r"trained with backbone 'mobilenet_v3_small'.*asks for 'resnet18'"):
        load_base_weights(other, ckpt)
    same = WaterNet("mobilenet_v3_small", 32, 32, source_height=H, source_width=W)
    load_base_weights(same, ckpt)  # the matching backbone loads


def test_retraining_from_a_base_checkpoint(repo_root, store, trained, tmp_path):
    params = tiny_params(repo_root, ["model=resnet18"])
    params["model"]["weights"] = str(trained[0])
    with pytest.raises(ValueError, match="trained with backbone 'mobilenet_v3_small'"):
        fit(
            params,
            splits_dir=store[1],
            store_dir=store[0],
            ckpt_dir=tmp_path / "c",
            out_ckpt=tmp_path / "m.ckpt",
            logger=None,
            progress=False,
        )


# --------------------------------------------------------------------------- metrics


def test_binary_metrics_and_threshold_choice():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.7, 0.8, 0.4])
    m = binary_metrics(p, y, 0.5)
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    assert m["accuracy"] == pytest.approx(0.6) and m["precision"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(5 / 6)
    # 4/5 correct at t=0.4 and at t=0.7; the one nearer the untuned 0.5 wins
    assert choose_threshold(p, y) == pytest.approx(0.4)


def test_truth_report_separates_label_noise_from_model_errors(tmp_path):
    # episode ep1: the truth says frame 3 is "ignore" (-1) though the users' feedback labelled it
    # 1, and frames 4..6 share one visible state with different labels. Episode ep2: its label
    # disagrees with the truth on its first frame; its second frame has no truth row (dropped).
    state = {k: [1, 1, 1, 0, 0, 0] for k in VISIBLE_STATE}
    truth = pd.DataFrame({"image": [f"{i}.png" for i in range(1, 7)], "label": [1, 1, 0, -1, 0, 1], **state})
    truth.loc[2, "dish_held"] = 0  # frame 3 (label 0) is a state of its own
    truth.to_csv(tmp_path / "ep1.csv", index=False)
    pd.DataFrame({"image": ["1.png"], "label": [0], **{k: [1] for k in VISIBLE_STATE}}).to_csv(
        tmp_path / "ep2.csv", index=False
    )
    rows = [("ep1", i, y) for i, y in enumerate([1, 1, 0, 1, 0, 1])] + [("ep2", 0, 1), ("ep2", 1, 0)]
    table = pd.DataFrame(
        {
            "path": [f"{y}/{e}_{i:04d}.png" for e, i, y in rows],
            "label": [y for _, _, y in rows],
            "episode": [e for e, _, _ in rows],
        }
    )
    manifest = pd.DataFrame({"path": table["path"], "image": [f"{i + 1}.png" for _, i, _ in rows]})
    # the test table in another order than the episodes: predictions must follow their rows
    order = [6, 0, 3, 1, 7, 4, 2, 5]
    p = np.array([0.9, 0.2, 0.1, 0.9, 0.1, 0.1, 0.9, 0.5])  # per original row
    out = truth_report(table.iloc[order].reset_index(drop=True), p[order], 0.5, tmp_path, manifest)
    assert out["frames"] == 7  # ep2's second frame has no truth row
    assert out["truth_ignore_share"] == round(1 / 7, 4)
    assert out["label_agreement"] == round(5 / 6, 4)  # ep2 frame 1: label 1, truth 0
    # model: ep1 frames right on 1, 3, 5 (of 1, 2, 3, 5, 6 with a truth); ep2 frame 1 predicted 1, truth 0
    assert out["accuracy_vs_truth"] == round(3 / 6, 4)
    # states: ep1 (1,1,1,1,1) labels 1,1 + ep2 (1,...) label 1 -> 1; dish_held 0 -> 0;
    # (0,...) labels 1,0,1 -> 1 with one miss
    assert out["visible_state_ceiling"] == round(6 / 7, 4)
    assert truth_report(table.assign(episode="other"), p, 0.5, tmp_path, manifest) is None


# --------------------------------------------------------------------------- starting weights, frame cache


def test_named_starting_weights_resolve_to_their_files():
    from autosink.learn.model import weights_checkpoint

    assert weights_checkpoint({"weights": "none", "weights_file": "x"}) is None
    assert weights_checkpoint({"weights": "imagenet"}) is None
    assert str(weights_checkpoint({"weights": "production", "weights_file": "models/production/model.ckpt"})) == (
        "models/production/model.ckpt"
    )
    assert (
        str(weights_checkpoint({"weights": "runs/x.ckpt", "weights_file": "models/base/model.ckpt"})) == "runs/x.ckpt"
    )
    with pytest.raises(ValueError, match="needs model.weights_file"):
        weights_checkpoint({"weights": "base"})


def test_the_warm_recipe_applies_only_to_a_production_start(repo_root):
    from autosink.stages.train import warm_recipe

    params = tiny_params(repo_root)
    params["train"]["warm"] = {"max_epochs": 7, "replay": {"share": 0.25}}
    assert warm_recipe(params) is params  # weights none: the configured recipe
    params["model"]["weights"] = "production"
    warm = warm_recipe(params)["train"]
    assert warm["max_epochs"] == 7 and warm["replay"]["share"] == 0.25
    assert warm["replay"]["users"] == params["train"]["replay"]["users"]  # nested keys merge
    assert params["train"]["max_epochs"] == 1  # the caller's params are left alone


def test_the_frame_cache_returns_the_decoded_tensors_and_decodes_only_new_frames(repo_root, store, tmp_path):
    from autosink.learn.frames import FrameCache, FrameDataset, read_split
    from autosink.learn.model import build_preprocess

    params = tiny_params(repo_root)
    pre = build_preprocess(params["model"], params["data"])
    table = read_split(store[1] / "train.csv")
    fresh = FrameDataset(table, store[0], pre, (W, H))
    cold = FrameCache(tmp_path / "cache", pre, (W, H))
    first = FrameDataset(table.head(5), store[0], pre, (W, H), frame_cache=cold)
    assert (cold.hits, cold.misses) == (0, 5)
    warm = FrameCache(tmp_path / "cache", pre, (W, H))
    again = FrameDataset(table, store[0], pre, (W, H), frame_cache=warm)
    assert (warm.hits, warm.misses) == (5, len(table) - 5)  # a grown table decodes its new frames only
    assert torch.equal(again.cache, fresh.cache) and torch.equal(first.cache, fresh.cache[:5])
    # another input size is another folder; a changed frame file is another entry
    other = build_preprocess({**params["model"], "input_height": 16, "input_width": 16}, params["data"])
    assert FrameCache(tmp_path / "cache", other, (W, H)).dir != warm.dir
    shutil.copytree(store[0], tmp_path / "store", dirs_exist_ok=True)
    changed = tmp_path / "store" / table.at[0, "path"]
    img = read_frame(changed)
    img[0, 0] = 255 - img[0, 0]
    cv2.imwrite(str(changed), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    third = FrameCache(tmp_path / "cache", pre, (W, H))
    FrameDataset(table.head(2), tmp_path / "store", pre, (W, H), frame_cache=third)
    assert (third.hits, third.misses) == (1, 1)


def test_a_cut_short_cache_file_is_decoded_again(repo_root, store, tmp_path):
    from autosink.learn.frames import FrameCache, FrameDataset, read_split
    from autosink.learn.model import build_preprocess

    params = tiny_params(repo_root)
    pre = build_preprocess(params["model"], params["data"])
    table = read_split(store[1] / "train.csv").head(1)
    cache = FrameCache(tmp_path / "cache", pre, (W, H))
    good = FrameDataset(table, store[0], pre, (W, H), frame_cache=cache).cache
    (entry,) = cache.dir.rglob("*.npy")
    entry.write_bytes(entry.read_bytes()[:100])  # a crash mid-write (without the atomic rename)
    cache = FrameCache(tmp_path / "cache", pre, (W, H))
    assert torch.equal(FrameDataset(table, store[0], pre, (W, H), frame_cache=cache).cache, good)
    assert cache.misses == 1
