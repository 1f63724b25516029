"""The base model's data: counterfactual render pairs (render_pairs), PairDataset, BaseDataModule,
base_sessions. One tiny session, a few frames rendered; no training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from autosink.learn.base import BaseDataModule, PairDataset, base_sessions, render_pairs
from autosink.learn.frames import AugmentCollate
from autosink.learn.model import Preprocess
from autosink.sim.lake import with_defaults
from autosink.sim.scene import render
from autosink.sim.session import label_of, make_sessions, wants_water

EVERY = 7


@pytest.fixture(scope="module")
def session():
    cfg = with_defaults({"users": 1, "sessions_per_user": 1, "dishes_per_session": [1, 1]})
    (s,) = make_sessions(cfg, "base")
    return s


@pytest.fixture(scope="module")
def preprocess():
    return Preprocess(32, 32, 480, 640, crop=(140, 60, 500, 420))


@pytest.fixture(scope="module")
def pairs(session, preprocess):
    return render_pairs([session], preprocess, every=EVERY)


def fake_pairs(n: int = 5) -> dict:
    """Off renders all 0, on renders all 255: which one a draw showed is obvious."""
    return {
        "off": torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
        "on": torch.full((n, 3, 4, 4), 255, dtype=torch.uint8),
        "label": np.array([1, 0, 1, 1, 0][:n], np.float32),
    }


# --------------------------------------------------------------------------- render_pairs


def test_render_pairs_are_uint8_at_the_model_size(session, pairs):
    n = len(session.states[::EVERY])
    assert 2 <= n <= 30  # a few frames only
    for key in ("off", "on"):
        assert pairs[key].dtype == torch.uint8 and tuple(pairs[key].shape) == (n, 3, 32, 32)
    assert pairs["label"].dtype == np.float32 and pairs["label"].shape == (n,)
    assert pairs["truth"].shape == pairs["session"].shape == (n,)
    assert pairs["session"].tolist() == [0] * n


def test_render_pairs_differ_only_by_the_water(pairs):
    off, on = pairs["off"].int(), pairs["on"].int()
    diff = (off - on).abs().flatten(1).sum(1)
    assert bool((diff > 0).all())  # the stream under the faucet shows in every frame's crop


def test_render_pairs_labels_are_the_need(session, pairs):
    states = session.states[::EVERY]
    assert pairs["label"].tolist() == [float(wants_water(st)) for st in states]
    assert pairs["truth"].tolist() == [label_of(st) for st in states]
    # the need is never "ignore": every label is 0 or 1 (this session has both)
    assert set(pairs["label"].tolist()) == {0.0, 1.0}


def test_render_pairs_are_the_rounded_resized_renders(session, preprocess, pairs):
    k = 1
    st = session.states[::EVERY][k]
    for water, key in ((False, "off"), (True, "on")):
        x = preprocess.resize(torch.from_numpy(render(replace(st, water_on=water))[None]))[0]
        expected = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
        assert torch.equal(pairs[key][k], expected), key


def test_render_pairs_index_sessions_and_take_every_nth_frame(session, preprocess):
    short = replace(session, states=session.states[:6])
    out = render_pairs([short, short], preprocess, every=4)  # frames 0 and 4 of each
    assert out["session"].tolist() == [0, 0, 1, 1]
    assert torch.equal(out["off"][:2], out["off"][2:]) and torch.equal(out["on"][:2], out["on"][2:])
    assert out["label"].tolist() == [float(wants_water(short.states[i])) for i in (0, 4)] * 2


# --------------------------------------------------------------------------- PairDataset


def test_pair_dataset_random_shows_either_render_with_the_same_label():
    pairs = fake_pairs()
    ds = PairDataset(pairs, "random")
    assert len(ds) == 5
    torch.manual_seed(0)
    seen: dict[int, set] = {i: set() for i in range(5)}
    for _ in range(20):
        for i in range(5):
            x, y, idx = ds[i]
            assert x.dtype == torch.float32 and x.shape == (3, 4, 4) and idx == i
            assert float(y) == float(pairs["label"][i])  # the label never depends on the render
            assert float(x.min()) == float(x.max()) and float(x[0, 0, 0]) in (0.0, 1.0)
            seen[i].add(float(x[0, 0, 0]))
    assert all(s == {0.0, 1.0} for s in seen.values())


def test_pair_dataset_both_holds_every_render_off_then_on():
    pairs = fake_pairs()
    ds = PairDataset(pairs, "both")
    assert len(ds) == 10
    xs = [ds[i][0] for i in range(10)]
    assert [float(x.max()) for x in xs] == [0.0] * 5 + [1.0] * 5
    assert [float(ds[i][1]) for i in range(10)] == pairs["label"].tolist() * 2
    assert [ds[i][2] for i in range(10)] == list(range(10))
    torch.testing.assert_close(ds[3][0], ds[3][0], rtol=0, atol=0)  # deterministic


def test_pair_dataset_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be random or both"):
        PairDataset(fake_pairs(), "off")


def test_pair_dataset_on_rendered_pairs(pairs):
    ds = PairDataset(pairs, "both")
    n = len(pairs["label"])
    torch.testing.assert_close(ds[0][0], pairs["off"][0].float() / 255.0)
    torch.testing.assert_close(ds[n][0], pairs["on"][0].float() / 255.0)


# --------------------------------------------------------------------------- BaseDataModule and sessions


def test_base_data_module_loaders():
    train, val = fake_pairs(), fake_pairs(4)
    dm = BaseDataModule(train, val, {"batch_size": 3, "seed": 1, "augment": {"hflip": 1.0}})
    assert dm.pos_weight == pytest.approx(2 / 3)  # 2 negatives, 3 positives
    assert len(dm.datasets["train"]) == 5 and len(dm.datasets["val"]) == 8
    loader = dm.train_dataloader()
    assert isinstance(loader.collate_fn, AugmentCollate)
    x, y, idx = next(iter(loader))
    assert x.shape == (3, 3, 4, 4) and y.tolist() == [float(train["label"][i]) for i in idx.tolist()]
    xv, yv, iv = next(iter(dm.val_dataloader()))
    assert iv.tolist() == [0, 1, 2] and float(xv.max()) == 0.0  # in order, off renders first
    plain = BaseDataModule(train, val, {"batch_size": 3})
    assert not isinstance(plain.train_dataloader().collate_fn, AugmentCollate)
    none_positive = dict(train, label=np.zeros(5, np.float32))
    assert BaseDataModule(none_positive, val, {"batch_size": 3}).pos_weight == 1.0


def test_base_sessions_split_kitchens_and_never_deviate():
    sim = {"seed": 3, "dishes_per_session": [1, 1], "deviant_users": 1.0}
    cfg = {"users": 3, "val_users": 2, "sessions_per_user": 2}
    train, val = base_sessions(sim, cfg, "train"), base_sessions(sim, cfg, "val")
    assert len(train) == 6 and len(val) == 4
    assert {s.user.index for s in train} == {0, 1, 2} and {s.user.index for s in val} == {3, 4}
    assert not {s.user.user_id for s in train} & {s.user.user_id for s in val}
    assert {s.user.wish for s in train + val} == {"spout"}
    lake = make_sessions(with_defaults({**sim, "users": 5, "sessions_per_user": 2}), "lake")
    assert not {s.dishwashing_id for s in train + val} & {s.dishwashing_id for s in lake}


def test_render_pairs_is_the_same_with_one_or_two_workers(session, preprocess):
    one = render_pairs([session], preprocess, every=EVERY, workers=1)
    two = render_pairs([session], preprocess, every=EVERY, workers=2)
    assert torch.equal(one["off"], two["off"]) and torch.equal(one["on"], two["on"])
    assert (one["stratum"] == two["stratum"]).all() and (one["label"] == two["label"]).all()


def test_stratified_sampling_draws_rare_scenes_more_often():
    n = 400
    pairs = {
        **fake_pairs(1),
        "off": torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
        "on": torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
        "label": np.zeros(n, np.float32),
        "stratum": np.array([0] * 390 + [1] * 10),
    }
    pairs["label"][390:] = 1
    cfg = {"batch_size": 50, "seed": 0}
    plain = BaseDataModule(pairs, pairs, cfg, stratify=0.0)
    full = BaseDataModule(pairs, pairs, cfg, stratify=1.0)
    assert plain.weights is None
    torch.manual_seed(0)
    drawn = torch.cat([i for _, _, i in full.train_dataloader()])
    rare = (drawn >= 390).float().mean().item()
    assert 0.35 < rare < 0.65  # stratify 1: both kinds of scene about equally often (2.5% as rendered)
    # the loss weight follows the labels as drawn, not as rendered
    assert full.pos_weight == pytest.approx(1.0) and plain.pos_weight == pytest.approx(39.0)
