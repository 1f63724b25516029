"""The render cache (autosink.learn.renders): what comes from disk is what drawing gives, a run
with everything cached draws nothing, a damaged file is drawn again, and a changed crop or
input size keeps its own folder. A handful of tiny renders; no training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autosink.learn import renders
from autosink.learn.base import render_pairs
from autosink.learn.evaluation import predict_water_on_off
from autosink.learn.model import Preprocess, WaterNet
from autosink.learn.renders import RenderCache, iter_renders
from autosink.sim.lake import with_defaults
from autosink.sim.session import make_sessions

CROP = (140, 60, 500, 420)


@pytest.fixture(scope="module")
def session():
    (s,) = make_sessions(with_defaults({"users": 1, "sessions_per_user": 1, "dishes_per_session": [1, 1]}), "tune")
    return s


@pytest.fixture(scope="module")
def states(session):
    return session.states[::4][:7]


@pytest.fixture(scope="module")
def preprocess():
    return Preprocess(32, 32, 480, 640, crop=CROP)


def drawn(states, preprocess, cache=None, chunk=3):
    parts = list(iter_renders(states, preprocess, chunk, workers=1, cache=cache))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def refuse_to_draw(monkeypatch):
    def fail(args):
        raise AssertionError("drew a scene the cache holds")

    monkeypatch.setattr(renders, "render_chunk", fail)


def test_renders_come_back_from_the_cache_exactly_and_nothing_is_drawn_twice(tmp_path, states, preprocess, monkeypatch):
    off, on = drawn(states, preprocess)
    assert off.dtype == torch.uint8 and off.shape == (7, 3, 32, 32)
    assert not torch.equal(off, on)  # the stream is drawn in the water-on render
    cache = RenderCache(tmp_path, preprocess)
    first = drawn(states, preprocess, cache)
    assert cache.misses == 7 and cache.hits == 0
    assert torch.equal(first[0], off) and torch.equal(first[1], on)  # uncached and cached runs agree

    refuse_to_draw(monkeypatch)
    again = RenderCache(tmp_path, preprocess)
    second = drawn(states, preprocess, again)
    assert again.hits == 7 and again.misses == 0
    assert torch.equal(second[0], off) and torch.equal(second[1], on)


def test_a_damaged_file_is_drawn_again(tmp_path, states, preprocess):
    cache = RenderCache(tmp_path, preprocess)
    off, on = drawn(states, preprocess, cache)
    cache.path_for(states[3:6]).write_bytes(b"cut short")  # the second chunk
    again = RenderCache(tmp_path, preprocess)
    off2, on2 = drawn(states, preprocess, again)
    assert (again.hits, again.misses) == (4, 3)
    assert torch.equal(off2, off) and torch.equal(on2, on)
    assert RenderCache(tmp_path, preprocess).get(states[3:6]) is not None  # and written back whole


def test_a_changed_crop_or_input_size_keeps_its_own_folder(tmp_path, states, preprocess):
    other_crop = RenderCache(tmp_path, Preprocess(32, 32, 480, 640, crop=(100, 60, 460, 420)))
    other_size = RenderCache(tmp_path, Preprocess(48, 48, 480, 640, crop=CROP))
    dirs = {RenderCache(tmp_path, preprocess).dir, other_crop.dir, other_size.dir}
    assert len(dirs) == 3
    assert RenderCache(tmp_path, preprocess).path_for(states[:3]) != RenderCache(tmp_path, preprocess).path_for(
        states[1:4]
    )


def test_the_threshold_choice_and_the_replay_read_the_same_from_the_cache(tmp_path, session, states, monkeypatch):
    net = WaterNet("mobilenet_v3_small", 32, 32, 480, 640, crop=CROP)
    plain = predict_water_on_off(net, states, batch_size=3, workers=1)
    pairs = render_pairs([session], net.preprocess, every=4, workers=1)
    cache = RenderCache(tmp_path, net.preprocess)
    assert np.array_equal(predict_water_on_off(net, states, batch_size=3, workers=2, cache=cache), plain)
    render_pairs([session], net.preprocess, every=4, workers=1, cache=cache)

    refuse_to_draw(monkeypatch)
    assert np.array_equal(predict_water_on_off(net, states, batch_size=3, cache=cache), plain)
    cached = render_pairs([session], net.preprocess, every=4, cache=cache)
    assert torch.equal(cached["off"], pairs["off"]) and torch.equal(cached["on"], pairs["on"])
    assert np.array_equal(cached["label"], pairs["label"]) and np.array_equal(cached["stratum"], pairs["stratum"])


def test_from_params_follows_train_frame_cache(tmp_path, preprocess):
    assert RenderCache.from_params({"train": {"frame_cache": None}}, preprocess) is None
    assert RenderCache.from_params({"train": {"frame_cache": str(tmp_path)}}, None) is None
    cache = RenderCache.from_params({"train": {"frame_cache": str(tmp_path)}}, preprocess)
    assert cache.dir.parent == tmp_path and cache.dir.name.startswith("renders-32x32-")
