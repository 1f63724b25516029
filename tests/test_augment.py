"""Batch augmentation (BatchAugment, AugmentCollate) and water-balanced sampling (visible_water,
water_balanced_weights, WaterDataModule ``balance: water``). Small tensors, no training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from autosink.learn.frames import (
    AugmentCollate,
    BatchAugment,
    WaterDataModule,
    build_augment,
    visible_water,
    water_balanced_weights,
)
from autosink.learn.model import Preprocess
from tests.train_fixtures import H, W, tiny_params, write_store

#: conf/train/default.yaml's augmentation
FULL = {
    "hflip": 0.5,
    "color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.02},
    "affine": {"degrees": 4, "translate": 0.03, "scale": [0.95, 1.05]},
    "blur": {"p": 0.2, "kernel": 3, "sigma": [0.1, 1.0]},
}
OFF = {
    "hflip": 0,
    "color_jitter": {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0},
    "affine": {"degrees": 0, "translate": 0, "scale": [1, 1]},
    "blur": {"p": 0, "kernel": 3},
}


def images(n: int = 6, h: int = 20, w: int = 28, lo: float = 0.0, hi: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 3, h, w, generator=g)


def luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


# --------------------------------------------------------------------------- build_augment


def test_build_augment_is_none_when_everything_is_off():
    assert build_augment(None) is None and build_augment({}) is None
    assert build_augment(OFF) is None
    assert build_augment({"hflip": 0}) is None
    assert build_augment({"color_jitter": {}, "affine": {}, "blur": {}}) is None
    for on in (
        {"hflip": 0.5},
        {"color_jitter": {"hue": 0.01}},
        {"affine": {"scale": [0.9, 1.1]}},
        {"affine": {"translate": 0.05}},
        {"blur": {"p": 0.1}},
        FULL,
    ):
        aug = build_augment(on)
        assert isinstance(aug, BatchAugment) and aug.active, on


# --------------------------------------------------------------------------- BatchAugment


def test_output_shape_and_range_for_a_batch_and_a_single_image():
    aug = BatchAugment(FULL)
    x = images()
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(y, x)
    one = aug(x[0])
    assert one.shape == x[0].shape and float(one.min()) >= 0.0 and float(one.max()) <= 1.0
    # out-of-range inputs come back clamped to [0, 1]
    wild = aug(x * 3 - 1)
    assert float(wild.min()) >= 0.0 and float(wild.max()) <= 1.0


def test_hflip_one_flips_exactly_and_zero_never():
    x = images()
    torch.testing.assert_close(BatchAugment({"hflip": 1.0})(x), x.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(BatchAugment({"hflip": 1.0})(x[2]), x[2].flip(-1), rtol=0, atol=0)
    assert not BatchAugment({"hflip": 0.0}).active


def test_hflip_half_flips_each_sample_on_its_own():
    x = images(64)
    torch.manual_seed(3)
    y = BatchAugment({"hflip": 0.5})(x)
    flipped = [torch.equal(a, b.flip(-1)) for a, b in zip(y, x)]
    kept = [torch.equal(a, b) for a, b in zip(y, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # every sample is exactly one of the two
    assert 10 < sum(flipped) < 54


def test_same_seed_same_output():
    aug, x = BatchAugment(FULL), images()
    torch.manual_seed(123)
    a = aug(x)
    torch.manual_seed(123)
    b = aug(x)
    torch.manual_seed(124)
    c = aug(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_brightness_only_scales_each_image_by_one_factor():
    x = images(16, lo=0.1, hi=0.5)  # x * [0.5, 1.5] stays inside [0, 1]: nothing is clamped
    torch.manual_seed(0)
    y = BatchAugment({"color_jitter": {"brightness": 0.5}})(x)
    ratio = y / x
    factor = ratio.flatten(1).mean(1)
    torch.testing.assert_close(ratio, factor.view(-1, 1, 1, 1).expand_as(ratio), rtol=1e-5, atol=1e-5)
    assert bool(((factor >= 0.5 - 1e-6) & (factor <= 1.5 + 1e-6)).all())
    assert float(factor.std()) > 0.05  # every image draws its own factor
    # the mean moves, the structure does not: the normalised image is unchanged
    assert not torch.allclose(y.mean((1, 2, 3)), x.mean((1, 2, 3)))
    norm = lambda t: (t - t.mean((1, 2, 3), keepdim=True)) / t.std((1, 2, 3), keepdim=True)  # noqa: E731
    torch.testing.assert_close(norm(y), norm(x), rtol=1e-4, atol=1e-4)


def test_contrast_keeps_the_mean_luma_and_saturation_keeps_the_grey():
    x = images(8, lo=0.35, hi=0.65)  # factors up to 1.3 around the mean: nothing is clamped
    torch.manual_seed(0)
    y = BatchAugment({"color_jitter": {"contrast": 0.3}})(x)
    torch.testing.assert_close(luma(y).mean((1, 2)), luma(x).mean((1, 2)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y, x)
    torch.manual_seed(0)
    y = BatchAugment({"color_jitter": {"saturation": 0.3}})(x)
    torch.testing.assert_close(luma(y), luma(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y, x)


def test_hue_rotates_colour_but_keeps_the_luma():
    x = images(8, lo=0.3, hi=0.7)
    torch.manual_seed(0)
    y = BatchAugment({"color_jitter": {"hue": 0.05}})(x)
    torch.testing.assert_close(luma(y), luma(x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(y, x, atol=1e-3)
    grey = x.mean(1, keepdim=True).expand_as(x).contiguous()  # no chroma: nothing to rotate
    torch.testing.assert_close(BatchAugment({"color_jitter": {"hue": 0.05}})(grey), grey, rtol=1e-4, atol=1e-4)


def test_affine_and_blur_keep_a_flat_image_flat():
    flat = torch.full((4, 3, 16, 20), 0.4)
    torch.manual_seed(0)
    for cfg in (
        {"affine": {"degrees": 10, "translate": 0.1, "scale": [0.8, 1.2]}},
        {"blur": {"p": 1.0, "kernel": 5, "sigma": [0.5, 2.0]}},
    ):
        torch.testing.assert_close(BatchAugment(cfg)(flat), flat, rtol=0, atol=1e-5)


def test_affine_moves_a_pattern():
    x = torch.zeros(8, 3, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    torch.manual_seed(0)
    y = BatchAugment({"affine": {"degrees": 0, "translate": 0.2, "scale": [1, 1]}})(x)
    assert y.shape == x.shape
    moved = [not torch.allclose(a, b, atol=1e-3) for a, b in zip(y, x)]
    assert sum(moved) >= 6
    # a shift keeps the square's mass (it stays inside the frame at 20% translate)
    torch.testing.assert_close(y.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=0.02, atol=0.5)


def test_blur_smooths_and_keeps_the_mass_and_p_zero_keeps_the_image():
    x = torch.zeros(4, 3, 15, 15)
    x[:, :, 7, 7] = 1.0  # an impulse in the middle
    torch.manual_seed(0)
    y = BatchAugment({"blur": {"p": 1.0, "kernel": 5, "sigma": [1.0, 1.5]}})(x)
    torch.testing.assert_close(y.sum((2, 3)), torch.ones(4, 3), rtol=1e-5, atol=1e-5)
    assert float(y[:, :, 7, 7].max()) < 1.0 and float(y[:, :, 7, 8].min()) > 0.0
    torch.testing.assert_close(y, y.flip(-1), rtol=1e-5, atol=1e-6)  # a Gaussian is symmetric
    torch.testing.assert_close(y, y.flip(-2), rtol=1e-5, atol=1e-6)
    assert torch.equal(y[:, 0], y[:, 2])  # every channel of a sample gets the same kernel
    blur = BatchAugment({"blur": {"p": 1e-9, "kernel": 5}})
    torch.testing.assert_close(blur(x), x, rtol=0, atol=0)


def test_augment_collate_stacks_then_augments():
    x = images(5)
    batch = [(x[k], torch.tensor(float(k % 2)), k) for k in range(5)]
    xs, ys, idx = AugmentCollate(BatchAugment({"hflip": 1.0}))(batch)
    torch.testing.assert_close(xs, x.flip(-1), rtol=0, atol=0)
    assert ys.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0] and idx.tolist() == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- water-balanced weights


def cell_totals(w: np.ndarray, labels, water) -> dict[tuple[int, int], float]:
    labels, water = np.asarray(labels), np.asarray(water)
    return {
        (lab, wat): float(w[(labels == lab) & (water == wat)].sum())
        for lab in (0, 1)
        for wat in (-1, 0, 1)
        if ((labels == lab) & (water == wat)).any()
    }


def test_water_balanced_weights_give_every_cell_the_same_total():
    # feedback data: water mostly runs when it is wanted
    labels = np.array([1] * 40 + [1] * 3 + [0] * 50 + [0] * 7)
    water = np.array([1] * 40 + [0] * 3 + [0] * 50 + [1] * 7)
    w = water_balanced_weights(labels, water)
    assert w.shape == labels.shape and bool((w > 0).all())
    totals = cell_totals(w, labels, water)
    assert set(totals) == {(1, 1), (1, 0), (0, 0), (0, 1)}
    assert np.allclose(list(totals.values()), 25.0)  # 100 known frames over 4 cells
    # within a cell every frame weighs the same
    for lab, wat in totals:
        hit = (labels == lab) & (water == wat)
        assert np.allclose(w[hit], w[hit][0])
    # so the water says nothing about the label any more
    p_label_given_water = [w[(water == v) & (labels == 1)].sum() / w[water == v].sum() for v in (0, 1)]
    assert np.allclose(p_label_given_water, 0.5)


def test_water_balanced_weights_with_unknown_water():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    water = np.array([1, 1, 0, 0, 0, 1, 1, 1, -1, -1, -1, -1])
    w = water_balanced_weights(labels, water)
    assert bool((w > 0).all())
    totals = cell_totals(w, labels, water)
    known = [totals[c] for c in ((1, 1), (1, 0), (0, 0), (0, 1))]
    assert np.allclose(known, 8 / 4)  # 8 known frames over 4 cells
    assert totals[(1, -1)] == pytest.approx(2.0) and totals[(0, -1)] == pytest.approx(2.0)  # by label alone
    assert w.sum() == pytest.approx(len(labels))
    # water given as floats / lists works too
    np.testing.assert_allclose(water_balanced_weights(labels.tolist(), water.astype(float)), w)


def test_water_balanced_weights_missing_cells_and_all_unknown():
    labels = np.array([1, 1, 0, 0, 0, 0])
    water = np.array([1, 1, 0, 0, 0, 0])  # no (1, 0) and no (0, 1) frame
    w = water_balanced_weights(labels, water)
    totals = cell_totals(w, labels, water)
    assert totals == pytest.approx({(1, 1): 3.0, (0, 0): 3.0})
    w = water_balanced_weights(np.array([1, 0, 0, 0]), np.array([-1, -1, -1, -1]))
    assert w.tolist() == pytest.approx([2.0, 2 / 3, 2 / 3, 2 / 3])


# --------------------------------------------------------------------------- visible water


def write_manifest(store, rows: list[tuple[str, str, int, int]]) -> None:
    store.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["path", "episode", "frame_index", "magnetic_status"]).assign(
        label=0, user_id="u"
    ).to_csv(store / "manifest.csv", index=False)


def test_visible_water_is_the_previous_frames_valve(tmp_path):
    rows = [  # (path, episode, frame_index, magnetic_status); written out of order on purpose
        ("0/a_0002.png", "007", 2, 0),
        ("1/a_0000.png", "007", 0, 1),
        ("1/a_0001.png", "007", 1, 1),
        ("", "007", 3, 1),  # an ignored frame: no image, but the valve it left still shows
        ("1/a_0004.png", "007", 4, 0),
        ("0/a_0006.png", "007", 6, 0),  # frame 5 was dropped by the recorder: a gap
        ("0/a_0007.png", "007", 7, 1),
        ("0/b_0000.png", "7", 0, 0),  # another episode (the ids stay strings)
        ("1/b_0001.png", "7", 1, 1),
        ("1/b_0002.png", "7", 2, 1),
    ]
    write_manifest(tmp_path, rows)
    table = pd.DataFrame(
        {
            "path": [
                "1/a_0000.png",
                "1/a_0001.png",
                "0/a_0002.png",
                "1/a_0004.png",
                "0/a_0006.png",
                "0/a_0007.png",
                "0/b_0000.png",
                "1/b_0001.png",
                "1/b_0002.png",
            ]
        }
    )
    water = visible_water(table, tmp_path)
    assert water.dtype.kind == "i"
    assert water.tolist() == [-1, 1, 1, 1, -1, 0, -1, 0, 1]
    # the result follows the table's order, and a frame the manifest lacks is unknown
    shuffled = table.iloc[[8, 0, 5, 2]].reset_index(drop=True)
    assert visible_water(shuffled, tmp_path).tolist() == [1, -1, 0, 1]
    extra = pd.concat([table, pd.DataFrame({"path": ["0/zzz.png"]})], ignore_index=True)
    assert visible_water(extra, tmp_path).tolist()[-1] == -1


def test_visible_water_needs_the_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        visible_water(pd.DataFrame({"path": ["x.png"]}), tmp_path)


# --------------------------------------------------------------------------- the data module


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store_dir, splits = write_store(tmp_path_factory.mktemp("store"))
    # a manifest as the label stage writes it: the water ran on every label-1 frame but the first
    # of each episode, and on no label-0 frame but every fourth
    tables = [pd.read_csv(splits / f"{s}.csv", dtype={"episode": str}) for s in ("train", "val", "test")]
    m = pd.concat(tables, ignore_index=True)
    m["magnetic_status"] = [int(lab == 1 and i > 1) or int(i % 4 == 0) for lab, i in zip(m["label"], m["frame_index"])]
    m.to_csv(store_dir / "manifest.csv", index=False)
    return store_dir, splits


def data_module(repo_root, store, **train):
    params = tiny_params(repo_root)
    params["train"].update(train)
    dm = WaterDataModule(Preprocess(32, 32, H, W), params["train"], params["data"], store[1], store[0], progress=False)
    dm.setup("fit")
    return dm


def test_balance_water_samples_by_label_and_visible_water(repo_root, store):
    dm = data_module(repo_root, store, balance="water")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler)
    table = dm.tables["train"]
    water = visible_water(table, store[0])
    assert set(water.tolist()) == {-1, 0, 1}
    expected = water_balanced_weights(table["label"].to_numpy(), water)
    np.testing.assert_allclose(np.asarray(loader.sampler.weights, float), expected)
    # the plain sampler balances labels only; none and loss shuffle
    assert isinstance(
        data_module(repo_root, store, balance="sampler").train_dataloader().sampler, WeightedRandomSampler
    )
    assert not isinstance(
        data_module(repo_root, store, balance="loss").train_dataloader().sampler, WeightedRandomSampler
    )


def test_the_train_loader_augments_batches_and_the_dataset_does_not(repo_root, store):
    dm = data_module(repo_root, store, augment={"hflip": 1.0}, balance="none", batch_size=4)
    ds = dm.datasets["train"]
    torch.testing.assert_close(ds[0][0], ds.cache[0], rtol=0, atol=0)  # items are the cached frames
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)
    for k, i in enumerate(idx.tolist()):
        torch.testing.assert_close(x[k], ds.cache[i].flip(-1), rtol=0, atol=0)
        assert float(y[k]) == float(ds.labels[i])
    xv, _, iv = next(iter(dm.val_dataloader()))  # evaluation: exactly the cached frames
    for k, i in enumerate(iv.tolist()):
        torch.testing.assert_close(xv[k], dm.datasets["val"].cache[i], rtol=0, atol=0)
    off = data_module(repo_root, store, augment=OFF, balance="none")
    assert off.datasets["train"].augment is None and not isinstance(off.train_dataloader().collate_fn, AugmentCollate)
