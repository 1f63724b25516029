"""Tests for autosink.core.episode: the data-lake episode format, its validation and safe reading."""

from __future__ import annotations

import copy
import json
import os
import pickle
import stat
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from autosink.core import episode as ep_mod
from autosink.core.episode import (
    FRAME_HEIGHT,
    FRAME_WIDTH,
    Episode,
    EpisodeError,
    EpisodeMeta,
    Interaction,
    check_episode,
    encode_meta,
    episode_stem,
    extract_episode,
    find_episodes,
    format_verdict,
    meta_to_dict,
    parse_meta,
    read_episode,
    write_episode,
)

STEM = "20240706_172540"
JST = timezone(timedelta(hours=9))
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


# --------------------------------------------------------------------------- helpers


def pi_dict(version: int = 2, n: int = 3, labels: bool = False, pushed: bool = False) -> dict[str, Any]:
    """An episode JSON object built the way the Pi (and later the labeling tool) builds it."""
    obj: dict[str, Any] = {
        "version": version,
        "user_id": "user_1234",
        "dishwashing_id": "3f2a9c1b7e",
        "dishwashing_start": "2024-07-06T17:25:40+09:00",
        "interactions": [],
    }
    for i in range(n):
        it: dict[str, Any] = {"timestamp": f"2024-07-06T17:25:{52 + i:02d}", "model_output": i % 2}
        if version == 2:
            it["arduino_output"] = 0
        it["magnetic_status"] = 1 - i % 2
        it["image"] = f"{i + 1}.png"
        obj["interactions"].append(it)
    if labels:
        for i, it in enumerate(obj["interactions"]):
            it["user_label"] = [1, 0, -1][i % 3]
            it["validation"] = True
    if pushed:
        obj["pushed_to_feature_store"] = True
        obj["last_pushed_to_feature_store"] = "2024-07-10T09:00:00+09:00"
    return obj


def pi_bytes(**kw: Any) -> bytes:
    """What the Pi's ``json.dump`` writes: default separators, no indent."""
    return json.dumps(pi_dict(**kw)).encode()


def make_meta(version: int = 2, n: int = 3, **kw: Any) -> EpisodeMeta:
    return parse_meta(pi_dict(version=version, n=n, **kw))


def solid(color: tuple[int, int, int], w: int = FRAME_WIDTH, h: int = FRAME_HEIGHT) -> np.ndarray:
    frame = np.empty((h, w, 3), np.uint8)
    frame[...] = color
    return frame


def noisy(seed: int, w: int = FRAME_WIDTH, h: int = FRAME_HEIGHT) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_bgr(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    return buf.tobytes()


def png_rgb(color: tuple[int, int, int], w: int = FRAME_WIDTH, h: int = FRAME_HEIGHT) -> bytes:
    return png_bgr(cv2.cvtColor(solid(color, w, h), cv2.COLOR_RGB2BGR))


Members = list[tuple[str | zipfile.ZipInfo, bytes]]


def raw_zip(path: Path, members: Members, compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip built by hand, member by member (for malformed and malicious episodes)."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def good_members(n: int = 3, obj: dict | None = None, stem: str = STEM) -> Members:
    """The members of a valid episode (solid green frames), to be altered by a test."""
    obj = pi_dict(n=n) if obj is None else obj
    frame = png_rgb(GREEN)
    members: Members = [(f"{stem}.json", json.dumps(obj).encode())]
    return members + [(f"{i + 1}.png", frame) for i in range(n)]


@pytest.fixture
def good_zip(tmp_path: Path) -> Path:
    return write_episode(tmp_path / f"{STEM}.zip", make_meta(), [solid(RED), solid(GREEN), solid(BLUE)])


def only_error(path: Path, **kw: Any) -> EpisodeError:
    with pytest.raises(EpisodeError) as info:
        read_episode(path, **kw)
    assert str(path) in str(info.value)
    return info.value


# --------------------------------------------------------------------------- write / read round trip


@pytest.mark.parametrize("version", [1, 2])
def test_write_read_round_trip_pixel_exact(tmp_path: Path, version: int) -> None:
    meta = make_meta(version=version, n=2)
    frames = [noisy(1), noisy(2)]
    out = write_episode(tmp_path / f"{STEM}.zip", meta, frames)
    assert out == tmp_path / f"{STEM}.zip"

    ep = read_episode(out)
    assert ep.path == out and ep.stem == STEM
    assert ep.meta == meta
    assert ep.frame_names == ["1.png", "2.png"]
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(ep.load_frame(i), frame)
        np.testing.assert_array_equal(ep.load_frame(f"{i + 1}.png"), frame)
    pairs = list(ep.iter_frames())
    assert [it for it, _ in pairs] == meta.interactions
    np.testing.assert_array_equal(pairs[1][1], frames[1])
    if version == 1:
        assert all(it.arduino_output is None for it in ep.meta.interactions)
    else:
        assert all(it.arduino_output == 0 for it in ep.meta.interactions)


def test_red_stays_red_and_png_holds_true_colours(good_zip: Path) -> None:
    ep = read_episode(good_zip)
    assert tuple(ep.load_frame(0)[0, 0]) == RED
    assert tuple(ep.load_frame(2)[0, 0]) == BLUE
    # The stored PNG is what the Pi's OpenCV writes: decoded by OpenCV it is BGR, red = (0, 0, 255).
    bgr = cv2.imdecode(np.frombuffer(ep.read_frame_bytes("1.png"), np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    assert tuple(bgr[0, 0]) == (0, 0, 255)


def test_png_bytes_frames_are_stored_unchanged(tmp_path: Path) -> None:
    frames = [png_rgb(RED), png_rgb(BLUE)]
    out = write_episode(tmp_path / f"{STEM}.zip", make_meta(n=2), frames)
    ep = read_episode(out)
    assert [ep.read_frame_bytes(n) for n in ep.frame_names] == frames
    assert tuple(ep.load_frame(0)[5, 5]) == RED


def test_other_sizes_with_expected_size(tmp_path: Path) -> None:
    out = write_episode(tmp_path / f"{STEM}.zip", make_meta(n=1), [solid(RED, 64, 48)], expected_size=(64, 48))
    assert read_episode(out, expected_size=(64, 48)).load_frame(0).shape == (48, 64, 3)
    assert read_episode(out, expected_size=None).frame_names == ["1.png"]
    assert read_episode(out, check_frames=False).frame_names == ["1.png"]  # size not checked
    err = only_error(out)
    assert err.field == "1.png" and "64x48" in err.problem


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("labels", [False, True])
@pytest.mark.parametrize("pushed", [False, True])
def test_json_byte_exact_round_trip(tmp_path: Path, version: int, labels: bool, pushed: bool) -> None:
    b = pi_bytes(version=version, labels=labels, pushed=pushed)
    meta = parse_meta(json.loads(b))
    assert encode_meta(meta) == b
    if pushed:
        assert list(meta.extra) == ["pushed_to_feature_store", "last_pushed_to_feature_store"]
    # and the json written into the zip is those same bytes
    out = write_episode(tmp_path / f"{STEM}.zip", meta, [solid(RED)] * 3)
    with zipfile.ZipFile(out) as zf:
        assert zf.read(f"{STEM}.json") == b


def test_design_doc_example_round_trips() -> None:
    b = (
        b'{"version": 2, "user_id": "user_1234", "dishwashing_id": "3f2a9c1b7e", '
        b'"dishwashing_start": "2024-07-06T17:25:40+09:00", "interactions": [{"timestamp": '
        b'"2024-07-06T17:25:52", "model_output": 0, "arduino_output": 0, "magnetic_status": 1, "image": "1.png"}]}'
    )
    meta = parse_meta(json.loads(b))
    assert meta.dishwashing_start == datetime(2024, 7, 6, 17, 25, 40, tzinfo=JST)
    assert meta.interactions[0].timestamp == datetime(2024, 7, 6, 17, 25, 52)
    assert meta.interactions[0].timestamp.tzinfo is None
    assert encode_meta(meta) == b
    assert list(meta_to_dict(meta)) == ["version", "user_id", "dishwashing_id", "dishwashing_start", "interactions"]


def test_validation_without_user_label_keeps_key_order() -> None:
    obj = pi_dict(n=1)
    obj["interactions"][0]["validation"] = False
    b = json.dumps(obj).encode()
    assert encode_meta(parse_meta(json.loads(b))) == b


def test_episode_stem() -> None:
    assert episode_stem(datetime(2024, 7, 6, 17, 25, 40, tzinfo=JST)) == STEM
    assert episode_stem(datetime(2024, 1, 2, 3, 4, 5)) == "20240102_030405"


# --------------------------------------------------------------------------- zip bytes and layout


def test_zip_bytes_are_deterministic(tmp_path: Path) -> None:
    meta = make_meta()
    frames: list[np.ndarray | bytes] = [noisy(3), solid(RED), png_rgb(BLUE)]
    a = write_episode(tmp_path / "a" / f"{STEM}.zip", meta, frames)
    b = write_episode(tmp_path / "b" / f"{STEM}.zip", copy.deepcopy(meta), list(frames))
    assert a.read_bytes() == b.read_bytes()


def test_zip_layout(good_zip: Path) -> None:
    with zipfile.ZipFile(good_zip) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == [f"{STEM}.json", "1.png", "2.png", "3.png"]
    assert infos[0].compress_type == zipfile.ZIP_DEFLATED
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos[1:])
    assert {i.date_time for i in infos} == {(2024, 7, 6, 17, 25, 52)}  # first interaction's time
    assert {i.external_attr >> 16 for i in infos} == {stat.S_IFREG | 0o644}
    assert stat.S_IMODE(good_zip.stat().st_mode) == 0o644


def test_zip_time_without_interactions_and_before_1980(tmp_path: Path) -> None:
    meta = make_meta(n=0)
    with zipfile.ZipFile(write_episode(tmp_path / f"{STEM}.zip", meta, [])) as zf:
        assert zf.infolist()[0].date_time == (2024, 7, 6, 17, 25, 40)  # dishwashing_start's wall time
    meta = make_meta(n=1)
    meta.interactions[0].timestamp = datetime(1970, 1, 1, 0, 0, 5)  # a Pi without RTC
    with zipfile.ZipFile(write_episode(tmp_path / f"{STEM}.zip", meta, [solid(RED)])) as zf:
        assert zf.infolist()[0].date_time == (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------- atomic write


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_failed_encode_leaves_no_temp_file_and_keeps_old_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_episode(tmp_path / f"{STEM}.zip", make_meta(), [solid(RED)] * 3)
    before = target.read_bytes()
    real = cv2.imencode
    calls = []

    def flaky(ext: str, img: np.ndarray, *a: Any) -> Any:
        calls.append(ext)
        return (False, None) if len(calls) == 2 else real(ext, img, *a)

    monkeypatch.setattr(ep_mod.cv2, "imencode", flaky)
    with pytest.raises(EpisodeError) as info:
        write_episode(target, make_meta(), [solid(GREEN)] * 3)
    assert info.value.field == "frames[1]" and "imencode" in info.value.problem
    assert _leftovers(tmp_path) == [target.name]
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    "bad_frame, problem",
    [
        (np.zeros((FRAME_HEIGHT, FRAME_WIDTH, 3), np.float32), "uint8"),
        (np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 3), np.uint8), "10x10"),
        (b"not a png", "not a PNG"),
        (png_bgr(np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.uint8)), "8-bit RGB"),
        ("1.png", "got str"),
    ],
)
def test_bad_frame_rejected_without_leftovers(tmp_path: Path, bad_frame: Any, problem: str) -> None:
    with pytest.raises(EpisodeError) as info:
        write_episode(tmp_path / f"{STEM}.zip", make_meta(n=2), [solid(RED), bad_frame])
    assert info.value.field == "frames[1]" and problem in info.value.problem
    assert _leftovers(tmp_path) == []


def test_unexpected_exception_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ep_mod.cv2, "imencode", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_episode(tmp_path / f"{STEM}.zip", make_meta(n=1), [solid(RED)])
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "name, frames, field, problem",
    [
        ("episode.zip", 3, "name", "YYYYmmdd_HHMMSS"),
        ("20241399_999999.zip", 3, "name", "not a valid date"),
        (f"{STEM}.tar", 3, "name", ".zip"),
        (f"{STEM}.zip", 2, "frames", "2 frames for 3 interactions"),
        (f"{STEM}.zip", 4, "frames", "more frames"),
    ],
)
def test_write_rejects_bad_arguments(tmp_path: Path, name: str, frames: int, field: str, problem: str) -> None:
    with pytest.raises(EpisodeError) as info:
        write_episode(tmp_path / name, make_meta(n=3), [solid(RED)] * frames)
    assert info.value.field == field and problem in info.value.problem
    assert str(tmp_path / name) in str(info.value)
    assert _leftovers(tmp_path) == []


def test_write_validates_meta_and_image_order(tmp_path: Path) -> None:
    meta = make_meta(n=2)
    meta.interactions[0].model_output = 2
    with pytest.raises(EpisodeError) as info:
        write_episode(tmp_path / f"{STEM}.zip", meta, [solid(RED)] * 2)
    assert info.value.field == "interactions[0].model_output"

    meta = make_meta(n=2)
    meta.interactions[0].image, meta.interactions[1].image = "2.png", "1.png"
    with pytest.raises(EpisodeError) as info:
        write_episode(tmp_path / f"{STEM}.zip", meta, [solid(RED)] * 2)
    assert info.value.field == "interactions[0].image" and "'1.png'" in info.value.problem

    meta = make_meta(n=1)
    meta.interactions[0].timestamp = datetime(2024, 7, 6, 17, 25, 52, 500000)  # not second precision
    with pytest.raises(EpisodeError) as info:
        write_episode(tmp_path / f"{STEM}.zip", meta, [solid(RED)])
    assert info.value.field == "interactions[0].timestamp"
    assert _leftovers(tmp_path) == []


def test_interaction_dataclass_builds_a_valid_episode(tmp_path: Path) -> None:
    meta = EpisodeMeta(
        version=2,
        user_id="user_9",
        dishwashing_id="0123456789",
        dishwashing_start=datetime(2024, 7, 6, 8, 0, 0, tzinfo=UTC),
        interactions=[Interaction(datetime(2024, 7, 6, 17, 0, 0), 1, 0, "1.png", arduino_output=0)],
    )
    out = write_episode(tmp_path / "20240706_080000.zip", meta, [solid(RED)])
    assert read_episode(out).meta == meta
    assert b'"dishwashing_start": "2024-07-06T08:00:00+00:00"' in encode_meta(meta)


# --------------------------------------------------------------------------- JSON validation

Mutator = Callable[[dict], Any]


def _walk(obj: dict, path: str) -> tuple[Any, Any]:
    """The container and key (list index for digits) that a dotted path names."""
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    target: Any = obj
    for key in keys[:-1]:
        target = target[key]
    return target, keys[-1]


def _set(path: str, value: Any) -> Mutator:
    def mutate(obj: dict) -> None:
        target, key = _walk(obj, path)
        target[key] = value

    return mutate


def _delete(path: str) -> Mutator:
    def mutate(obj: dict) -> None:
        target, key = _walk(obj, path)
        del target[key]

    return mutate


META_CASES: list[tuple[str, int, Mutator, str, str]] = [
    # (id, version, mutation, field, words in the problem)
    ("missing-version", 2, _delete("version"), "version", "missing"),
    ("version-string", 2, _set("version", "2"), "version", "expected integer, got string"),
    ("version-bool", 2, _set("version", True), "version", "expected integer, got boolean"),
    ("version-unknown", 2, _set("version", 3), "version", "unsupported version 3"),
    ("missing-user", 2, _delete("user_id"), "user_id", "missing"),
    ("user-int", 2, _set("user_id", 1234), "user_id", "expected string, got integer"),
    ("user-empty", 2, _set("user_id", ""), "user_id", "empty"),
    ("user-slash", 2, _set("user_id", "../etc"), "user_id", "path separator"),
    ("missing-id", 2, _delete("dishwashing_id"), "dishwashing_id", "missing"),
    ("id-upper", 2, _set("dishwashing_id", "3F2A9C1B7E"), "dishwashing_id", "10 lowercase hex"),
    ("id-short", 2, _set("dishwashing_id", "3f2a9c"), "dishwashing_id", "10 lowercase hex"),
    ("id-int", 2, _set("dishwashing_id", 1234567890), "dishwashing_id", "expected string"),
    ("start-missing", 2, _delete("dishwashing_start"), "dishwashing_start", "missing"),
    ("start-naive", 2, _set("dishwashing_start", "2024-07-06T17:25:40"), "dishwashing_start", "UTC offset"),
    (
        "start-bad-date",
        2,
        _set("dishwashing_start", "2024-13-06T17:25:40+09:00"),
        "dishwashing_start",
        "not a valid date",
    ),
    ("start-number", 2, _set("dishwashing_start", 1720254340), "dishwashing_start", "expected string"),
    ("interactions-missing", 2, _delete("interactions"), "interactions", "missing"),
    ("interactions-object", 2, _set("interactions", {}), "interactions", "expected array, got object"),
    ("interaction-not-object", 2, _set("interactions.1", "1.png"), "interactions[1]", "expected object"),
    ("unknown-interaction-key", 2, _set("interactions.1.confidence", 0.9), "interactions[1].confidence", "unknown key"),
    ("timestamp-missing", 2, _delete("interactions.0.timestamp"), "interactions[0].timestamp", "missing"),
    (
        "timestamp-offset",
        2,
        _set("interactions.1.timestamp", "2024-07-06T17:25:53+09:00"),
        "interactions[1].timestamp",
        "naive ISO time",
    ),
    (
        "timestamp-fraction",
        2,
        _set("interactions.1.timestamp", "2024-07-06T17:25:53.250000"),
        "interactions[1].timestamp",
        "second precision",
    ),
    (
        "timestamp-bad-date",
        2,
        _set("interactions.1.timestamp", "2024-07-06T25:25:53"),
        "interactions[1].timestamp",
        "not a valid date",
    ),
    (
        "timestamp-decreasing",
        2,
        _set("interactions.2.timestamp", "2024-07-06T17:25:50"),
        "interactions[2].timestamp",
        "earlier than interactions[1]",
    ),
    ("model-output-missing", 2, _delete("interactions.1.model_output"), "interactions[1].model_output", "missing"),
    (
        "model-output-bool",
        2,
        _set("interactions.1.model_output", True),
        "interactions[1].model_output",
        "expected integer, got boolean",
    ),
    (
        "model-output-float",
        2,
        _set("interactions.1.model_output", 1.0),
        "interactions[1].model_output",
        "expected integer, got number",
    ),
    (
        "model-output-2",
        2,
        _set("interactions.1.model_output", 2),
        "interactions[1].model_output",
        "must be one of 0, 1",
    ),
    ("magnetic-missing", 2, _delete("interactions.0.magnetic_status"), "interactions[0].magnetic_status", "missing"),
    (
        "magnetic-bool",
        2,
        _set("interactions.0.magnetic_status", False),
        "interactions[0].magnetic_status",
        "got boolean",
    ),
    (
        "magnetic-minus-1",
        2,
        _set("interactions.0.magnetic_status", -1),
        "interactions[0].magnetic_status",
        "must be one of 0, 1",
    ),
    ("arduino-missing-v2", 2, _delete("interactions.2.arduino_output"), "interactions[2].arduino_output", "missing"),
    (
        "arduino-in-v1",
        1,
        _set("interactions.0.arduino_output", 0),
        "interactions[0].arduino_output",
        "not allowed in version 1",
    ),
    ("arduino-2", 2, _set("interactions.0.arduino_output", 2), "interactions[0].arduino_output", "must be one of"),
    ("arduino-null", 2, _set("interactions.0.arduino_output", None), "interactions[0].arduino_output", "got null"),
    ("image-missing", 2, _delete("interactions.0.image"), "interactions[0].image", "missing"),
    ("image-jpg", 2, _set("interactions.0.image", "1.jpg"), "interactions[0].image", "not a frame name"),
    ("image-path", 2, _set("interactions.0.image", "../1.png"), "interactions[0].image", "not a frame name"),
    ("image-zero", 2, _set("interactions.0.image", "0.png"), "interactions[0].image", "not a frame name"),
    ("image-int", 2, _set("interactions.0.image", 1), "interactions[0].image", "expected string"),
    ("user-label-2", 2, _set("interactions.0.user_label", 2), "interactions[0].user_label", "-1, 0, 1"),
    ("user-label-null", 2, _set("interactions.0.user_label", None), "interactions[0].user_label", "got null"),
    ("user-label-bool", 2, _set("interactions.0.user_label", True), "interactions[0].user_label", "got boolean"),
    (
        "validation-int",
        2,
        _set("interactions.0.validation", 1),
        "interactions[0].validation",
        "expected boolean, got integer",
    ),
]


@pytest.mark.parametrize("version, mutate, field, problem", [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES])
def test_parse_meta_rejects(version: int, mutate: Mutator, field: str, problem: str) -> None:
    obj = pi_dict(version=version)
    mutate(obj)
    with pytest.raises(EpisodeError) as info:
        parse_meta(obj, path="lake/x.zip")
    err = info.value
    assert err.field == field
    assert problem in err.problem
    assert err.path == "lake/x.zip"
    assert str(err) == f"lake/x.zip: {field}: {err.problem}"
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("version, mutate, field, problem", [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES])
def test_episode_json_errors_name_path_and_field(
    tmp_path: Path, version: int, mutate: Mutator, field: str, problem: str
) -> None:
    obj = pi_dict(version=version)
    mutate(obj)
    members = good_members(obj=obj)
    if field == "interactions[0].image":  # keep every frame referenced so the image error comes first
        members = [m for m in members if m[0] != "1.png"]
    path = raw_zip(tmp_path / f"{STEM}.zip", members)
    err = only_error(path)
    assert (err.field, err.path) == (field, str(path))
    assert problem in err.problem


def test_top_level_must_be_object() -> None:
    with pytest.raises(EpisodeError) as info:
        parse_meta([1, 2], path="p")  # type: ignore[arg-type]
    assert (info.value.field, info.value.problem) == ("json", "top level must be an object, got array")


def test_unknown_top_level_keys_preserved_in_order() -> None:
    obj = pi_dict()
    obj["z_note"] = {"a": [1, 2]}
    obj["a_flag"] = None
    meta = parse_meta(obj)
    assert list(meta.extra.items()) == [("z_note", {"a": [1, 2]}), ("a_flag", None)]
    assert list(meta_to_dict(meta))[-2:] == ["z_note", "a_flag"]


def test_extra_colliding_with_core_key() -> None:
    meta = make_meta()
    meta.extra["version"] = 9
    with pytest.raises(EpisodeError, match="collides"):
        meta_to_dict(meta)


def test_error_is_picklable() -> None:
    err = EpisodeError("a.zip", "interactions[3].model_output", "must be one of 0, 1, got 2")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.field, back.problem, str(back)) == (err.path, err.field, err.problem, str(err))


# --------------------------------------------------------------------------- episode-level validation


def _corrupt_crc(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("2.png")
    data[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF  # a byte inside the stored PNG
    path.write_bytes(bytes(data))
    return path


ZipBuilder = Callable[[Path], Path]

EPISODE_CASES: list[tuple[str, ZipBuilder, str, str]] = [
    (
        "bad-json-syntax",
        lambda d: raw_zip(d / f"{STEM}.zip", [(f"{STEM}.json", b'{"version": 2,')] + good_members()[1:]),
        "json",
        "invalid JSON",
    ),
    (
        "json-not-utf8",
        lambda d: raw_zip(d / f"{STEM}.zip", [(f"{STEM}.json", b'{"user_id": "\xff"}')] + good_members()[1:]),
        "json",
        "UTF-8",
    ),
    (
        "json-duplicate-key",
        lambda d: raw_zip(
            d / f"{STEM}.zip", [(f"{STEM}.json", pi_bytes()[:-1] + b', "version": 1}')] + good_members()[1:]
        ),
        "json",
        "duplicate key 'version'",
    ),
    (
        "json-name-mismatch",
        lambda d: raw_zip(d / f"{STEM}.zip", good_members(stem="20240706_172541")[:1] + good_members()[1:]),
        "json",
        "does not match the zip stem",
    ),
    ("json-missing", lambda d: raw_zip(d / f"{STEM}.zip", good_members()[1:]), "json", f"missing {STEM}.json"),
    (
        "zip-stem-pattern",
        lambda d: raw_zip(d / "episode_1.zip", good_members(stem="episode_1")),
        "name",
        "does not match YYYYmmdd_HHMMSS",
    ),
    (
        "zip-stem-date",
        lambda d: raw_zip(d / "20241340_172540.zip", good_members(stem="20241340_172540")),
        "name",
        "not a valid date/time",
    ),
    (
        "zip-extension",
        lambda d: raw_zip(d / f"{STEM}.bin", good_members(stem=f"{STEM}.bin")),
        "name",
        "YYYYmmdd_HHMMSS.zip",
    ),
    (
        "frame-missing",
        lambda d: raw_zip(d / f"{STEM}.zip", good_members()[:-1]),
        "interactions[2].image",
        "3.png not found",
    ),
    (
        "frame-unreferenced",
        lambda d: raw_zip(d / f"{STEM}.zip", good_members() + [("4.png", png_rgb(RED))]),
        "4.png",
        "not referenced",
    ),
    (
        "frame-referenced-twice",
        lambda d: raw_zip(d / f"{STEM}.zip", good_members(obj=_with(pi_dict(), "interactions.2.image", "2.png"))[:-1]),
        "interactions[2].image",
        "already used by interactions[1]",
    ),
    (
        "unexpected-member",
        lambda d: raw_zip(d / f"{STEM}.zip", good_members() + [("notes.txt", b"hi")]),
        "notes.txt",
        "unexpected member",
    ),
    (
        "frame-wrong-size",
        lambda d: raw_zip(d / f"{STEM}.zip", good_members()[:-1] + [("3.png", png_rgb(RED, 320, 240))]),
        "3.png",
        "320x240, expected 640x480",
    ),
    (
        "frame-grey",
        lambda d: raw_zip(
            d / f"{STEM}.zip",
            good_members()[:-1] + [("3.png", png_bgr(np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.uint8)))],
        ),
        "3.png",
        "3-channel",
    ),
    (
        "frame-rgba",
        lambda d: raw_zip(
            d / f"{STEM}.zip",
            good_members()[:-1] + [("3.png", png_bgr(np.zeros((FRAME_HEIGHT, FRAME_WIDTH, 4), np.uint8)))],
        ),
        "3.png",
        "3-channel",
    ),
    (
        "frame-not-png",
        lambda d: raw_zip(d / f"{STEM}.zip", good_members()[:-1] + [("3.png", b"\xff\xd8jpeg")]),
        "3.png",
        "not a PNG",
    ),
    (
        "frame-truncated-png",
        lambda d: raw_zip(d / f"{STEM}.zip", good_members()[:-1] + [("3.png", png_rgb(RED)[:60])]),
        "3.png",
        "cannot be decoded",
    ),
    ("not-a-zip", lambda d: _write(d / f"{STEM}.zip", b"this is not a zip file at all"), "zip", "not a zip file"),
    ("empty-file", lambda d: _write(d / f"{STEM}.zip", b""), "zip", "not a zip file"),
    (
        "truncated-zip",
        lambda d: _write(d / f"{STEM}.zip", raw_zip(d / "t.zip", good_members()).read_bytes()[:-30]),
        "zip",
        "not a zip file",
    ),
    ("crc-error", lambda d: _corrupt_crc(raw_zip(d / f"{STEM}.zip", good_members())), "2.png", "corrupt member"),
    ("missing-path", lambda d: d / f"{STEM}.zip", "path", "does not exist"),
]


def _with(obj: dict, path: str, value: Any) -> dict:
    _set(path, value)(obj)
    return obj


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("build, field, problem", [c[1:] for c in EPISODE_CASES], ids=[c[0] for c in EPISODE_CASES])
def test_bad_episode_is_a_clear_error(tmp_path: Path, build: ZipBuilder, field: str, problem: str) -> None:
    path = build(tmp_path)
    err = only_error(path)
    assert err.path == str(path)
    assert err.field == field
    assert problem in err.problem
    problems = check_episode(path)
    assert problems and problems[0].field == field  # same first problem, never raises
    assert format_verdict(path, problems).startswith(f"BAD  {path.name}  {field}: ")


# --------------------------------------------------------------------------- safety


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("3.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _dir_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("frames/")
    info.external_attr = (stat.S_IFDIR | 0o755) << 16
    return info


SAFETY_CASES: list[tuple[str, list[tuple[str | zipfile.ZipInfo, bytes]], str, str]] = [
    ("absolute", [("/tmp/evil.png", b"x")], "/tmp/evil.png", "absolute path"),
    ("drive-letter", [("C:evil.png", b"x")], "C:evil.png", "absolute path"),
    ("dotdot", [("../evil.png", b"x")], "../evil.png", "'..'"),
    ("dotdot-deep", [("a/../../evil.png", b"x")], "a/../../evil.png", "'..'"),
    ("backslash", [("..\\evil.png", b"x")], "..\\evil.png", "backslash"),
    ("subdir", [("frames/1.png", png_rgb(RED))], "frames/1.png", "directory component"),
    ("dir-entry", [(_dir_member(), b"")], "frames/", "directory component"),
    ("symlink", [(_symlink_member(), b"/etc/passwd")], "3.png", "symlink"),
]


@pytest.mark.parametrize("extra, field, problem", [c[1:] for c in SAFETY_CASES], ids=[c[0] for c in SAFETY_CASES])
def test_unsafe_member_rejected_and_never_extracted(tmp_path: Path, extra: list, field: str, problem: str) -> None:
    members = good_members()
    if field == "3.png":  # the symlink replaces a real frame
        members = members[:-1]
    path = raw_zip(tmp_path / f"{STEM}.zip", members + extra)
    err = only_error(path)
    assert (err.field, err.path) == (field, str(path))
    assert problem in err.problem
    dest = tmp_path / "out" / "ep"
    with pytest.raises(EpisodeError):
        extract_episode(path, dest)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def test_duplicate_member_names(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = raw_zip(tmp_path / f"{STEM}.zip", good_members() + [("2.png", png_rgb(RED))])
    err = only_error(path)
    assert (err.field, err.problem) == ("2.png", "duplicate member name (2 times)")


def test_too_many_members(tmp_path: Path) -> None:
    path = raw_zip(tmp_path / f"{STEM}.zip", good_members() + [(f"x{i}", b"") for i in range(10_000)])
    err = only_error(path)
    assert (err.field, err.problem) == ("zip", "too many members (10004 > 10000)")
    assert len(check_episode(path)) == 1  # fatal: nothing else is even looked at


def test_member_over_20_mb(tmp_path: Path) -> None:
    big = os.urandom(ep_mod.MAX_MEMBER_BYTES + 1)  # incompressible, so only the size trips
    path = raw_zip(tmp_path / f"{STEM}.zip", good_members()[:-1] + [("3.png", big)])
    err = only_error(path)
    assert err.field == "3.png" and "uncompressed size 20971521 bytes" in err.problem


def test_total_over_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = raw_zip(tmp_path / f"{STEM}.zip", good_members())
    monkeypatch.setattr(ep_mod, "MAX_TOTAL_BYTES", 1_000)  # 2 GB for real would be slow to build
    err = only_error(path)
    assert err.field == "zip" and "total uncompressed size" in err.problem


def test_zip_bomb_ratio(tmp_path: Path) -> None:
    path = raw_zip(
        tmp_path / f"{STEM}.zip", good_members()[:-1] + [("3.png", bytes(2_000_000))], compression=zipfile.ZIP_DEFLATED
    )
    err = only_error(path)
    assert err.field == "3.png" and "compression ratio" in err.problem and "zip bomb" in err.problem


def test_lying_size_header_is_caught(tmp_path: Path) -> None:
    """A member whose recorded size is smaller than its real data fails the CRC/size check, no crash."""
    path = raw_zip(tmp_path / f"{STEM}.zip", good_members())
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("2.png")
    real = info.file_size
    small = (real // 2).to_bytes(4, "little")
    data[info.header_offset + 22 : info.header_offset + 26] = small  # local header uncompressed size
    # and the central directory record for 2.png
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) != -1:
        name_len = int.from_bytes(data[start + 28 : start + 30], "little")
        if data[start + 46 : start + 46 + name_len] == b"2.png":
            data[start + 24 : start + 28] = small
        start += 4
    path.write_bytes(bytes(data))
    problems = check_episode(path)
    assert problems and all(isinstance(p, EpisodeError) for p in problems)
    assert any(p.field == "2.png" for p in problems)


def test_check_episode_never_raises_on_garbage(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = raw_zip(tmp_path / "g.zip", good_members()).read_bytes()
    for _ in range(30):  # random byte flips anywhere in a valid zip
        data = bytearray(good)
        for pos in rng.integers(0, len(data), 5):
            data[pos] ^= int(rng.integers(1, 256))
        path = _write(tmp_path / f"{STEM}.zip", bytes(data))
        problems = check_episode(path)
        assert all(isinstance(p, EpisodeError) and p.path == str(path) for p in problems)


# --------------------------------------------------------------------------- check_episode / format_verdict


def test_check_episode_collects_several_problems(tmp_path: Path) -> None:
    obj = _with(pi_dict(), "interactions.0.model_output", 7)
    _set("interactions.1.magnetic_status", "open")(obj)
    members = good_members(obj=obj)[:-1] + [("3.png", png_rgb(RED, 32, 24)), ("4.png", png_rgb(RED)), ("../x", b"")]
    path = raw_zip(tmp_path / f"{STEM}.zip", members)
    problems = check_episode(path)
    fields = [p.field for p in problems]
    assert fields == ["../x", "interactions[0].model_output", "interactions[1].magnetic_status", "4.png", "3.png"]
    assert all(str(path) in str(p) for p in problems)
    assert format_verdict(path, problems) == f"BAD  {STEM}.zip  ../x: '..' in member path (+4 more)"
    assert check_episode(path, check_frames=False)[-1].field == "4.png"  # frame decoding skipped


def test_format_verdict(good_zip: Path) -> None:
    assert check_episode(good_zip) == []
    assert format_verdict(good_zip, []) == f"OK   {STEM}.zip  (3 frames, v2, user_1234)"
    ep = read_episode(good_zip)
    assert format_verdict(good_zip, [], episode=ep) == f"OK   {STEM}.zip  (3 frames, v2, user_1234)"
    one = [EpisodeError(str(good_zip), "json", "missing x.json")]
    assert format_verdict(good_zip, one) == f"BAD  {STEM}.zip  json: missing x.json"


def test_format_verdict_v1(tmp_path: Path) -> None:
    path = write_episode(tmp_path / f"{STEM}.zip", make_meta(version=1, n=1), [solid(RED)])
    assert format_verdict(path, check_episode(path)) == f"OK   {STEM}.zip  (1 frames, v1, user_1234)"


# --------------------------------------------------------------------------- folders and extraction


def test_extract_and_read_folder(good_zip: Path, tmp_path: Path) -> None:
    dest = tmp_path / "extracted" / "ep"
    ep = extract_episode(good_zip, dest)
    assert ep.path == dest and ep.stem == STEM
    assert set(os.listdir(dest)) == {"1.png", "2.png", "3.png", f"{STEM}.json"}
    assert [p.name for p in dest.parent.iterdir()] == ["ep"]  # no temp folder left
    with zipfile.ZipFile(good_zip) as zf:
        for name in zf.namelist():
            assert (dest / name).read_bytes() == zf.read(name)  # bytes unchanged
    folder = read_episode(dest)
    assert folder.meta == read_episode(good_zip).meta
    assert tuple(folder.load_frame(0)[0, 0]) == RED
    assert folder.read_frame_bytes("2.png") == read_episode(good_zip).read_frame_bytes("2.png")
    assert check_episode(dest) == []
    assert format_verdict(dest, []) == "OK   ep  (3 frames, v2, user_1234)"


def test_folder_named_by_stem_with_sidecar(good_zip: Path, tmp_path: Path) -> None:
    dest = tmp_path / STEM
    extract_episode(good_zip, dest)
    (dest / "source.json").write_text("{}")  # the pipeline's sidecar: not an episode member
    assert read_episode(dest).stem == STEM


def test_folder_problems(good_zip: Path, tmp_path: Path) -> None:
    dest = tmp_path / STEM
    extract_episode(good_zip, dest)
    (dest / "3.png").unlink()
    (dest / "3.png").symlink_to(dest / "1.png")
    err = only_error(dest)
    assert (err.field, err.problem) == ("3.png", "symlink")

    (dest / "3.png").unlink()
    (dest / "3.png").mkdir()
    assert only_error(dest).field == "3.png"

    (dest / "3.png").rmdir()
    (dest / f"{STEM}.json").rename(dest / "20240706_172541.json")
    err = only_error(dest)
    assert err.field == "json" and "does not match the folder stem" in err.problem


def test_extract_refuses_non_empty_dest_unless_overwrite(good_zip: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ep"
    dest.mkdir()
    extract_episode(good_zip, dest)  # empty folder is fine
    with pytest.raises(FileExistsError):
        extract_episode(good_zip, dest)
    (dest / "stale.png").write_bytes(b"old")
    ep = extract_episode(good_zip, dest, overwrite=True)
    assert not (dest / "stale.png").exists() and ep.frame_names == ["1.png", "2.png", "3.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{STEM}.zip", "ep"]


def test_extract_bad_episode_writes_nothing(tmp_path: Path) -> None:
    path = raw_zip(tmp_path / f"{STEM}.zip", good_members()[:-1] + [("3.png", png_rgb(RED, 32, 24))])
    with pytest.raises(EpisodeError):
        extract_episode(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{STEM}.zip"]


def test_extract_never_uses_extractall(good_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*a: Any, **k: Any) -> None:
        raise AssertionError("extractall must not be used")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", forbidden)
    monkeypatch.setattr(zipfile.ZipFile, "extract", forbidden)
    extract_episode(good_zip, tmp_path / "x")


def test_load_frame_keys(good_zip: Path) -> None:
    ep = read_episode(good_zip)
    with pytest.raises(KeyError):
        ep.read_frame_bytes("../../etc/passwd")
    with pytest.raises(IndexError):
        ep.load_frame(3)
    with pytest.raises(TypeError):
        ep.load_frame(True)
    assert isinstance(ep, Episode)


# --------------------------------------------------------------------------- find_episodes


def test_find_episodes(good_zip: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    (lake / "user_1").mkdir(parents=True)
    (lake / "user_2" / "deep").mkdir(parents=True)
    z1 = lake / "user_2" / "deep" / "20240101_000000.zip"
    z2 = lake / "user_1" / "20240706_172540.zip"
    z1.write_bytes(good_zip.read_bytes())
    z2.write_bytes(good_zip.read_bytes())
    (lake / "user_1" / ".20240801_000000.zip.abc.tmp").write_bytes(b"partial")  # a write in progress
    (lake / "user_1" / "README.txt").write_text("not an episode")
    (lake / ".dvc").mkdir()
    (lake / ".dvc" / "20240101_000000.zip").write_bytes(b"hidden")
    folder = extract_episode(good_zip, lake / "user_1" / "20240301_000000").path
    assert (folder / "1.png").exists()

    found = find_episodes([lake])
    assert found == [z1, folder, z2]  # sorted by name, i.e. by time
    assert find_episodes(str(lake)) == found
    assert find_episodes([folder]) == [folder]  # an episode folder is not searched inside
    assert find_episodes([z2, lake, z2]) == found  # de-duplicated
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    assert find_episodes([odd]) == [odd]  # given explicitly: it gets a verdict
    with pytest.raises(FileNotFoundError):
        find_episodes([tmp_path / "nope"])
    assert find_episodes([]) == []


def test_full_lake_check_flow(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_episode(lake / "20240706_172540.zip", make_meta(n=1), [solid(RED)])
    raw_zip(lake / "20240706_180000.zip", good_members(stem="20240706_180000")[:-1])
    lines = [format_verdict(p, check_episode(p)) for p in find_episodes([lake])]
    assert lines == [
        "OK   20240706_172540.zip  (1 frames, v2, user_1234)",
        "BAD  20240706_180000.zip  interactions[2].image: 3.png not found in the zip",
    ]


# --------------------------------------------------------------------------- only regular files

_CHECK_SPECIALS = r"""
import json, sys
from autosink.core.episode import EpisodeError, check_episode, find_episodes, read_episode
lake, paths = sys.argv[1], sys.argv[2:]
out = {"found": [str(p) for p in find_episodes([lake])], "checks": {}}
for p in paths:
    try:
        read_episode(p)
        raised = None
    except EpisodeError as e:
        raised = [e.field, str(e)]
    out["checks"][p] = {"problems": [[e.field, str(e)] for e in check_episode(p)], "raised": raised}
print(json.dumps(out))
"""


def test_devices_fifos_and_sockets_are_never_opened_as_episodes(good_zip: Path, tmp_path: Path) -> None:
    """Reading /dev/zero never ended (GBs of memory), a FIFO blocked: each is now a clear verdict,
    at once, naming the path and what it is; a lake walk finds them so they get one."""
    from tests.special_files import KINDS, WORDS, make_special, run_isolated

    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / good_zip.name).write_bytes(good_zip.read_bytes())
    specials = {kind: make_special(lake / f"2024010{i + 1}_000000.zip", kind) for i, kind in enumerate(KINDS)}
    folder = extract_episode(good_zip, lake / "20240301_000000").path
    (folder / "2.png").unlink()
    make_special(folder / "2.png", "fifo")  # an episode folder with a FIFO for a frame
    res = run_isolated(_CHECK_SPECIALS, str(lake), "/dev/zero", *map(str, specials.values()), str(folder))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out["found"]) == {str(lake / good_zip.name), str(folder), *map(str, specials.values())}
    for kind, path in [("chardev", "/dev/zero"), *((k, str(p)) for k, p in specials.items())]:
        got = out["checks"][path]
        assert got["problems"] == [got["raised"]], got
        field, message = got["raised"]
        assert field == "path" and message.startswith(f"{path}: path: is {WORDS[kind]}, not a regular file"), got
    folder_problems = out["checks"][str(folder)]["problems"]
    assert folder_problems[0] == ["2.png", f"{folder}: 2.png: not a regular file"], folder_problems
