"""Delivering the production model to the Pi (autosink.edge.fetch, .sources, .install; `edge/run.py fetch`).

Fast tests use the folder source and a fake W&B API (no network); the slow one promotes a
fabricated model in a scratch git+DVC copy of the project, pushes it to a private local remote,
and fetches it with `dvc get` from a bare clone, as a Pi would from the real repository.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from autosink.core.modelcard import card_path_for, make_card, read_card, sha256_file, write_card
from autosink.edge.camera import IteratorCamera
from autosink.edge.clock import SimClock
from autosink.edge.controller import UserInput
from autosink.edge.devices import FakeValve
from autosink.edge.feedback import FeedbackContext
from autosink.edge.fetch import PeriodicFetcher, fetch_model
from autosink.edge.inference import ModelReloader, load_model
from autosink.edge.install import installed_model, record_path_for, recover_install
from autosink.edge.settings import DEFAULT_CONFIG, ConfigError, merge_config
from autosink.edge.sources import (
    DvcSource,
    FetchError,
    FolderSource,
    WandbSource,
    make_source,
    precision_of,
    promoted_files,
)
from autosink.edge.wiring import build_runtime
from tests.edge_fixtures import FOOTPRINT_SCRIPT, bright_roi_frame, check_footprint, write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "edge" / "run.py"
BRIGHT = bright_roi_frame()  # the tiny model: p ~ 1 (unless its bias says otherwise)


def publish(folder: Path, version: str, **kw) -> Path:
    """A promoted-looking folder: model.onnx + model.json (+ promotion.json)."""
    if folder.exists():
        shutil.rmtree(folder)
    path = write_tiny_model(folder / "model.onnx", version=version, **kw)
    (folder / "promotion.json").write_text(json.dumps({"promoted_at": "2024-07-06T08:00:00Z", "experiment": "e1"}))
    return path


def flip_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def snapshot(target: Path) -> dict[str, str]:
    """Every file in the model folder (temp folders and lock included) with its sha256."""
    return {p.name: sha256_file(p) for p in sorted(target.parent.iterdir()) if p.is_file()} | {
        p.name: "dir" for p in target.parent.iterdir() if p.is_dir()
    }


@pytest.fixture
def pi(tmp_path: Path) -> Path:
    """The Pi's model path, with model v1 installed."""
    target = tmp_path / "pi" / "production" / "model.onnx"
    write_tiny_model(target, version="v1")
    return target


# --------------------------------------------------------------------------- verify and swap


def test_folder_source_installs_records_and_skips_what_is_installed(tmp_path, pi):
    src = tmp_path / "share"
    publish(src, "v2", bias=-3.0)
    res = fetch_model(FolderSource(src), pi)
    assert res.status == "installed" and res.ok, res.message
    assert (res.old_version, res.new_version) == ("v1", "v2")
    assert "replacing v1" in res.message and "installed v2" in res.message
    assert read_card(card_path_for(pi))["version"] == "v2"
    assert sha256_file(pi) == sha256_file(src / "model.onnx")
    rec = json.loads(record_path_for(pi).read_text())
    assert rec["version"] == "v2" and rec["model_sha256"] == sha256_file(pi) and rec["source"] == f"folder {src}"
    assert rec["promotion"] == {"promoted_at": "2024-07-06T08:00:00Z", "experiment": "e1"}
    assert not list(pi.parent.glob(".*.tmp"))  # no temp folder left
    assert load_model(pi).predict(BRIGHT) > 0.9

    again = fetch_model(FolderSource(src), pi)
    assert again.status == "unchanged" and again.ok and "v2" in again.message
    forced = fetch_model(FolderSource(src), pi, force=True)
    assert forced.status == "installed"

    first = fetch_model(FolderSource(src), tmp_path / "fresh" / "models" / "model.onnx")  # nothing there yet
    assert first.status == "installed" and first.old_version is None and "replacing none" in first.message


def _corrupt(src: Path) -> str:
    flip_byte(src / "model.onnx")
    return "model.onnx: sha256"


def _card_of_another_model(src: Path) -> str:
    other = write_tiny_model(src.parent / "other" / "model.onnx", version="other", scale=7.0)
    shutil.copyfile(card_path_for(other), src / "model.json")
    return "does not match model.json model_sha256"


def _unsupported_card(src: Path) -> str:
    card = read_card(src / "model.json")
    card["input"]["layout"] = "NCHW"
    write_card(src / "model.json", card)
    return "model.json: input.layout: the edge feeds NHWC frames"


def _wrong_classes(src: Path) -> str:
    card = json.loads((src / "model.json").read_text())
    card["classes"] = ["water_on", "water_off"]
    (src / "model.json").write_text(json.dumps(card))
    return "model.json: classes: must be"


def _no_card(src: Path) -> str:
    (src / "model.json").unlink()
    return "model.json: missing from the download"


def _garbage_with_matching_card(src: Path) -> str:
    (src / "model.onnx").write_bytes(b"not an onnx model")
    card = read_card(src / "model.json")
    card["model_sha256"] = sha256_file(src / "model.onnx")
    write_card(src / "model.json", card)
    return "model.onnx: onnxruntime cannot load it"


def _nan_model(src: Path) -> str:
    publish(src, "v2", bias=float("nan"))  # sigmoid(nan): loads, but answers nan
    return "is not a probability"


@pytest.mark.parametrize(
    "spoil",
    [
        _corrupt,
        _card_of_another_model,
        _unsupported_card,
        _wrong_classes,
        _no_card,
        _garbage_with_matching_card,
        _nan_model,
    ],
)
def test_a_bad_download_is_refused_and_the_installed_model_stays(tmp_path, pi, spoil, caplog):
    caplog.set_level(logging.INFO)
    reloader = ModelReloader(pi, background=False)  # the running edge
    before = snapshot(pi)
    src = tmp_path / "share"
    publish(src, "v2", bias=-3.0)
    expected = spoil(src)
    res = fetch_model(FolderSource(src), pi)
    assert res.status == "refused" and not res.ok
    assert expected in res.message and res.message.startswith(f"folder {src}")
    assert res.file in ("model.onnx", "model.json")
    assert str(pi.parent) not in res.message  # names the file in the download, not a temp path
    assert snapshot(pi) == before | {".model.onnx.fetch.lock": snapshot(pi)[".model.onnx.fetch.lock"]}
    assert not reloader.check() and reloader.model.version == "v1"
    assert reloader.model.predict(BRIGHT) > 0.9  # and it keeps running


_FETCH_SPECIALS = r"""
import json, sys
from autosink.edge.fetch import fetch_model
from autosink.edge.install import installed_model
from autosink.edge.sources import FolderSource
pi, fifo_target, shares = sys.argv[1], sys.argv[2], sys.argv[3:]
out = {"results": [fetch_model(FolderSource(s), pi).to_dict() for s in shares],
       "installed": installed_model(pi), "fifo_target": installed_model(fifo_target)}
out["fresh"] = fetch_model(FolderSource(sys.argv[3] + "-good"), fifo_target).to_dict()
print(json.dumps(out))
"""


def test_a_device_fifo_or_socket_in_the_download_is_refused_at_once(tmp_path, pi):
    """Copying /dev/zero would fill the SD card, reading a FIFO would hang the fetch: refused,
    naming the file and what it is; the installed model stays."""
    from tests.special_files import KINDS, WORDS, make_special, run_isolated

    shares = []
    for kind in KINDS:
        src = tmp_path / f"share-{kind}"
        publish(src, "v2", bias=-3.0)
        (src / "model.onnx").unlink()
        shares.append((kind, make_special(src / "model.onnx", kind)))
    src = tmp_path / "share-card"
    publish(src, "v2", bias=-3.0)
    (src / "model.json").unlink()
    shares.append(("fifo", make_special(src / "model.json", "fifo")))
    publish(tmp_path / f"share-{KINDS[0]}-good", "v3", bias=-3.0)
    (tmp_path / "fifo-pi").mkdir()
    fifo_target = make_special(tmp_path / "fifo-pi" / "model.onnx", "fifo")  # where a model should be installed
    before = sha256_file(pi)
    res = run_isolated(_FETCH_SPECIALS, str(pi), str(fifo_target), *(str(p.parent) for _, p in shares))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for (kind, path), r in zip(shares, out["results"]):
        assert r["status"] == "refused" and r["file"] == path.name, r
        assert r["message"] == f"{path}: is {WORDS[kind]}, not a regular file", r
    assert out["installed"]["version"] == "v1" and sha256_file(pi) == before  # untouched
    assert out["fifo_target"]["problem"] == f"{fifo_target}: is a FIFO (named pipe), not a regular file"
    assert out["fresh"]["status"] == "installed" and out["fresh"]["new_version"] == "v3", out["fresh"]
    assert fifo_target.is_file() and not fifo_target.is_fifo()  # the FIFO was replaced by the model


def test_a_model_for_another_camera_resolution_is_refused_while_running(tmp_path, pi):
    src = tmp_path / "share"
    publish(src, "v2", height=240, width=320)
    res = fetch_model(FolderSource(src), pi, expect_size=(480, 640))
    assert res.status == "refused" and "differs from the running camera resolution 640x480" in res.message
    assert read_card(card_path_for(pi))["version"] == "v1"


def fetch_cut_before_the_card(src: Path, target: Path, monkeypatch):
    """fetch_model from the folder ``src`` with a power cut: the model lands, then the card's
    rename never happens."""
    real_replace = os.replace

    def power_cut(a, b):
        if Path(b) == card_path_for(target):
            raise OSError(5, "Input/output error")
        real_replace(a, b)

    monkeypatch.setattr("autosink.edge.install.os.replace", power_cut)
    try:
        return fetch_model(FolderSource(src), target)
    finally:
        monkeypatch.setattr("autosink.edge.install.os.replace", real_replace)


def test_a_crash_between_the_two_renames_is_finished_at_the_next_start(tmp_path, pi, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    reloader = ModelReloader(pi, background=False)
    src = tmp_path / "share"
    publish(src, "v2", bias=-3.0)
    res = fetch_cut_before_the_card(src, pi, monkeypatch)
    assert res.status == "failed" and "the next fetch or start finishes it" in res.message
    assert installed_model(pi)["problem"]  # new model, old card on disk
    assert reloader.check() and reloader.model.version == "v1"  # the mismatched pair is refused
    assert "does not match" in reloader.last_error

    done = recover_install(pi)
    assert any(line.startswith("finished an interrupted install") for line in done)
    assert installed_model(pi)["version"] == "v2" and not list(pi.parent.glob(".*.tmp"))
    assert reloader.check() and reloader.model.version == "v2"
    assert recover_install(pi) == []


# --------------------------------------------------------------------------- the int8 model


def publish_int8(folder: Path, version: str, *, precision: str | None = "int8", **kw) -> Path:
    """model.int8.onnx + model.int8.json beside a published fp32 pair, as promote puts them (a tiny
    model standing in for the quantised one; its card says precision int8 and quantized_from)."""
    path = write_tiny_model(folder / "model.int8.onnx", card=False, **kw)
    extra = {"precision": precision} if precision else {}
    if (folder / "model.onnx").is_file():
        extra["quantized_from"] = sha256_file(folder / "model.onnx")
    card = make_card(model_sha256=sha256_file(path), backbone="tiny-roi-brightness", version=version, **extra)
    write_card(folder / "model.int8.json", card)
    return path


@pytest.fixture
def pi8(tmp_path: Path) -> Path:
    """A Pi configured for the int8 model (model.path = .../model.int8.onnx), v1-int8 installed."""
    folder = tmp_path / "pi8" / "production"
    publish(folder, "v1")
    return publish_int8(folder, "v1-int8")


def fake_dvc(tmp_path: Path) -> str:
    """A `dvc` that does what `dvc get <repo> <path> -o <dest> --rev <rev>` does with a local
    "repo": copies the whole folder <repo>/<path> to <dest>."""
    script = tmp_path / "bin" / "dvc"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text('#!/bin/sh\n[ "$1" = get ] && [ "$4" = -o ] && exec cp -R "$2/$3" "$5"\nexit 2\n')
    script.chmod(0o755)
    return str(script)


def test_promoted_file_names_follow_model_path():
    assert promoted_files("/var/lib/autosink/models/production/model.onnx") == ("model.onnx", "model.json")
    assert promoted_files("models/production/model.int8.onnx") == ("model.int8.onnx", "model.int8.json")
    for other in ("/srv/sink.onnx", "models/model.candidate.onnx"):  # any other name: fp32, as before
        assert promoted_files(other) == ("model.onnx", "model.json")
    assert [precision_of(n) for n in ("model.onnx", "model.int8.onnx")] == ["fp32", "int8"]


@pytest.mark.parametrize("route", ["folder", "dvc"])
def test_an_int8_pi_fetches_the_int8_pair(tmp_path, pi8, route):
    """A promoted folder holding both pairs: a Pi whose model.path is model.int8.onnx gets the int8
    pair with its card and provenance; the fp32 pair beside it is not touched."""
    repo = tmp_path / "repo"
    src = repo / "models" / "production"
    publish(src, "v2", bias=-3.0)
    publish_int8(src, "v2-int8", bias=-4.0)
    fp32_before = {n: sha256_file(pi8.parent / n) for n in ("model.onnx", "model.json")}
    if route == "folder":
        source = FolderSource(src)
    else:  # a commit given in full: no `git ls-remote`; the fake dvc copies the whole folder as `dvc get` does
        source = DvcSource(str(repo), rev="a" * 40, dvc=fake_dvc(tmp_path))
    res = fetch_model(source, pi8)
    assert res.status == "installed", res.message
    assert (res.old_version, res.new_version) == ("v1-int8", "v2-int8")
    assert sha256_file(pi8) == sha256_file(src / "model.int8.onnx")
    card = read_card(pi8.parent / "model.int8.json")
    assert card["precision"] == "int8" and card["quantized_from"] == sha256_file(src / "model.onnx")
    rec = json.loads((pi8.parent / "model.int8.fetch.json").read_text())
    assert record_path_for(pi8).name == "model.int8.fetch.json"
    assert rec["version"] == "v2-int8" and rec["model_sha256"] == sha256_file(pi8)
    assert rec["promotion"]["experiment"] == "e1"
    assert {n: sha256_file(pi8.parent / n) for n in ("model.onnx", "model.json")} == fp32_before
    assert not (pi8.parent / "model.fetch.json").exists() and not list(pi8.parent.glob(".*.tmp"))
    model = load_model(pi8)
    assert model.version == "v2-int8" and model.card["precision"] == "int8"
    assert fetch_model(source, pi8).status == "unchanged"

    fp32 = tmp_path / "pi" / "model.onnx"  # the fp32 Pi, same promotion: the fp32 pair, as before
    res = fetch_model(source, fp32)
    assert (
        res.status == "installed" and res.new_version == "v2" and sha256_file(fp32) == sha256_file(src / "model.onnx")
    )
    assert sorted(p.name for p in fp32.parent.iterdir()) == [
        ".model.onnx.fetch.lock",
        "model.fetch.json",
        "model.json",
        "model.onnx",
    ]


@pytest.mark.parametrize("route", ["folder", "dvc"])
def test_a_promotion_without_the_int8_pair_is_refused_naming_it(tmp_path, pi8, route):
    repo = tmp_path / "repo"
    src = repo / "models" / "production"
    publish(src, "v2", bias=-3.0)  # promoted without an int8 model
    before = snapshot(pi8)
    source = FolderSource(src) if route == "folder" else DvcSource(str(repo), rev="b" * 40, dvc=fake_dvc(tmp_path))
    res = fetch_model(source, pi8)
    assert res.status == "refused" and res.file == "model.int8.onnx", res.message
    assert "model.int8.onnx: missing from the download" in res.message
    assert snapshot(pi8) == before | {".model.int8.onnx.fetch.lock": snapshot(pi8)[".model.int8.onnx.fetch.lock"]}
    assert installed_model(pi8)["version"] == "v1-int8"


def test_an_int8_name_with_an_fp32_card_is_refused(tmp_path, pi8):
    src = tmp_path / "share"
    publish(src, "v2")
    publish_int8(src, "v2-int8", precision=None, bias=-3.0)  # no precision: an fp32 model under the int8 name
    res = fetch_model(FolderSource(src), pi8)
    assert res.status == "refused" and res.file == "model.int8.json"
    assert "model.int8.json: precision 'fp32', expected 'int8' for model.int8.onnx" in res.message
    assert installed_model(pi8)["version"] == "v1-int8"


def test_an_int8_install_cut_between_the_two_renames_is_finished(tmp_path, pi8, monkeypatch):
    src = tmp_path / "share"
    publish(src, "v2")
    publish_int8(src, "v2-int8", bias=-3.0)
    res = fetch_cut_before_the_card(src, pi8, monkeypatch)
    assert res.status == "failed" and "the next fetch or start finishes it" in res.message
    assert any(line.startswith("finished an interrupted install") for line in recover_install(pi8))
    assert installed_model(pi8)["version"] == "v2-int8" and not list(pi8.parent.glob(".*.tmp"))


# --------------------------------------------------------------------------- periodic, inside run.py


def test_periodic_fetch_in_the_loop_hot_reloads_and_logs_old_and_new(tmp_path, pi, caplog):
    caplog.set_level(logging.INFO)
    src = tmp_path / "share"
    publish(src, "v1")  # what the Pi runs
    shutil.copyfile(pi, src / "model.onnx")
    shutil.copyfile(card_path_for(pi), src / "model.json")
    cfg = merge_config(
        DEFAULT_CONFIG,
        {
            "model": {"path": str(pi), "reload_check_s": 1.0},
            "fetch": {"source": f"folder:{src}", "interval_s": 2.0},
            "recorder": {"spool": str(tmp_path / "spool")},
            "inputs": {"faucet": "", "button": ""},
            "camera": {"fps": 5.0},
        },
    )
    downloads = []

    class Counting(FolderSource):
        def download(self, dest, latest):
            downloads.append(latest.ref)
            return super().download(dest, latest)

    def feedback(ctx: FeedbackContext) -> UserInput:
        if ctx.index == 10:
            publish(src, "v2", bias=-50.0)  # promoted: a model that never wants water
        if ctx.index == 40:
            publish(src, "v3")
            flip_byte(src / "model.onnx")  # a corrupted upload: refused, v2 keeps running
        return UserInput()

    valve = FakeValve()
    clock = SimClock()
    rt = build_runtime(
        cfg,
        clock=clock,
        feedback=feedback,
        valve=valve,
        background=False,
        install_signals=False,
        camera=IteratorCamera(iter([BRIGHT] * 80), clock.monotonic, name="test"),
        fetch_source=Counting(src),
    )
    stats = rt.run()
    reloader, fetcher = rt.models, rt.fetcher
    assert stats.frames == 80 and stats.model_errors == 0
    assert reloader.model.version == "v2" and reloader.reloads == 1 and fetcher.installed == 1
    assert [o for _, o in valve.history] == [True, False]  # opened on v1, v2 closed it, v3 changed nothing
    assert len(downloads) == 2  # v2 and the corrupted v3 once (refused, not downloaded again)
    assert fetcher.last.status == "refused" and fetcher.last.repeated
    text = "\n".join(caplog.messages)
    assert "model fetch: installed v2" in text and "replacing v1" in text
    assert "model reloaded: OnnxModel(model.onnx, version='v1'" in text and "version='v2'" in text
    assert "model fetch refused, keeping v2" in text and "model.onnx: sha256" in text
    assert "model reload rejected" not in text  # the loop never saw a half-swapped pair


def test_a_fresh_pi_fetches_its_first_model_at_start(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    src = tmp_path / "share"
    publish(src, "v2")
    target = tmp_path / "state" / "models" / "production" / "model.onnx"
    cfg = merge_config(
        DEFAULT_CONFIG,
        {
            "model": {"path": str(target)},
            "fetch": {"source": f"folder:{src}", "interval_s": 0.0},
            "recorder": {"spool": str(tmp_path / "spool")},
            "inputs": {"faucet": "", "button": ""},
        },
    )
    clock = SimClock()
    rt = build_runtime(
        cfg,
        clock=clock,
        valve=FakeValve(),
        background=False,
        install_signals=False,
        camera=IteratorCamera(iter([BRIGHT] * 3), clock.monotonic, name="test"),
    )
    assert rt.models.model.version == "v2" and rt.fetcher is None  # interval 0: no periodic check
    assert "no model at" in caplog.text and "model fetch installed: installed v2" in caplog.text
    assert rt.run().frames == 3


def test_background_fetch_and_reload_threads(tmp_path, pi):
    src = tmp_path / "share"
    publish(src, "v2", bias=-3.0)
    reloader = ModelReloader(pi)
    fetcher = PeriodicFetcher(FolderSource(src), pi, interval_s=60.0, reloader=reloader)
    reloader.offer_frame(BRIGHT)
    assert fetcher.poll(0.0) and not fetcher.poll(1.0)
    fetcher.wait(60)
    assert fetcher.last.status == "installed", fetcher.last.message
    with fetcher.swap_lock:
        assert reloader.check()
    reloader.wait(60)
    assert reloader.model.version == "v2"
    assert not fetcher.poll(59.0) and fetcher.poll(60.0)
    fetcher.wait(60)
    assert fetcher.last.status == "unchanged"
    fetcher.stop()
    assert not fetcher.poll(1000.0)


def test_fetch_config(tmp_path):
    cfg = merge_config(DEFAULT_CONFIG, {"fetch": {"source": "dvc", "remote_config": ["url=/mnt/x"], "rev": "main"}})
    src = make_source(cfg["fetch"])
    assert isinstance(src, DvcSource) and src.remote_config == ["url=/mnt/x"] and src.rev == "main"
    with pytest.raises(ConfigError, match="remote_config"):
        merge_config(DEFAULT_CONFIG, {"fetch": {"remote_config": "url=/mnt/x"}})
    with pytest.raises(FetchError, match="not <option>=<value>"):
        make_source({**cfg["fetch"], "remote_config": ["url"]})
    with pytest.raises(FetchError, match="expected dvc, wandb or folder"):
        make_source({**cfg["fetch"], "source": "s3"})
    with pytest.raises(FetchError, match="fetch.artifact is empty"):
        make_source({**cfg["fetch"], "source": "wandb"})
    w = make_source({**cfg["fetch"], "source": "wandb", "artifact": "team/autosink/autosink-model"})
    assert isinstance(w, WandbSource) and w.artifact == "team/autosink/autosink-model:production"
    bad = merge_config(DEFAULT_CONFIG, {"fetch": {"source": "ftp"}})
    with pytest.raises(ConfigError, match="fetch.source 'ftp'"):
        build_runtime(bad, valve=FakeValve(), model=object())


# --------------------------------------------------------------------------- W&B, up to the network boundary


class FakeArtifact:
    def __init__(self, folder: Path, version: str, calls: list) -> None:
        self.folder, self.version, self.calls = folder, version, calls
        self.digest = sha256_file(folder / "model.onnx")[:32]
        self.metadata = json.loads((folder / "model.json").read_text())  # promote logs the card as metadata
        self.name = f"autosink-model:{version}"

    def download(self, root=None, allow_missing_references=False, skip_cache=None, path_prefix=None, multipart=None):
        self.calls.append(("download", root, skip_cache))
        for name in ("model.onnx", "model.json", "model.int8.onnx", "model.int8.json"):  # what promote logs
            if "int8" not in name or (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, Path(root) / name)
        return root


def fake_wandb(folder: Path, calls: list, *, fail: Exception | None = None) -> types.ModuleType:
    mod = types.ModuleType("wandb")

    class Api:
        def __init__(self, overrides=None, timeout=None, api_key=None):
            calls.append(("Api", os.environ.get("WANDB_API_KEY"), timeout))

        def artifact(self, name, type=None):
            calls.append(("artifact", name, type))
            if fail is not None:
                raise fail
            return FakeArtifact(folder, "v7", calls)

    mod.Api = Api
    return mod


def test_wandb_route_with_a_fake_api(tmp_path, pi, monkeypatch):
    src = tmp_path / "artifact"
    publish(src, "v2", bias=-3.0)
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(src, calls))
    source = make_source({"source": "wandb", "artifact": "team/autosink/autosink-model:production", "timeout_s": 60.0})

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    res = fetch_model(source, pi)
    assert res.status == "failed" and "WANDB_API_KEY is not set" in res.message and calls == []

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    res = fetch_model(source, pi)
    assert res.status == "installed", res.message
    assert calls[:2] == [("Api", "k" * 40, 60), ("artifact", "team/autosink/autosink-model:production", "model")]
    assert calls[2][0] == "download" and calls[2][2] is True  # skip_cache: no second copy on the SD card
    assert Path(calls[2][1]).parent.parent == pi.parent  # downloaded beside the target, then renamed
    assert res.ref == f"v7@{sha256_file(src / 'model.onnx')[:32]}" and read_card(card_path_for(pi))["version"] == "v2"
    rec = json.loads(record_path_for(pi).read_text())
    assert rec["artifact_version"] == "v7" and rec["artifact"] == "team/autosink/autosink-model:production"

    calls.clear()
    assert fetch_model(source, pi).status == "unchanged"  # the metadata's sha256: no download
    assert [c[0] for c in calls] == ["Api", "artifact"]

    publish(src, "v3")
    flip_byte(src / "model.onnx")  # the artifact's file does not match its card
    res = fetch_model(source, pi)
    assert res.status == "refused" and "model.onnx: sha256" in res.message
    assert read_card(card_path_for(pi))["version"] == "v2"

    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(src, calls, fail=ValueError("Could not find artifact")))
    res = fetch_model(source, pi)
    assert res.status == "failed" and "cannot look up team/autosink/autosink-model:production" in res.message

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    res = fetch_model(source, pi)
    assert res.status == "failed" and "requirements-fetch-wandb.txt" in res.message


def test_wandb_route_for_an_int8_pi(tmp_path, pi8, monkeypatch):
    """The artifact's metadata is the fp32 card: an int8 Pi downloads once per artifact version,
    then the fetch record's ref says it has it (no download)."""
    src = tmp_path / "artifact"
    publish(src, "v2")
    publish_int8(src, "v2-int8", bias=-3.0)
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(src, calls))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    source = make_source({"source": "wandb", "artifact": "team/autosink/autosink-model", "timeout_s": 60.0})
    res = fetch_model(source, pi8)
    assert res.status == "installed" and res.new_version == "v2-int8", res.message
    assert sha256_file(pi8) == sha256_file(src / "model.int8.onnx")
    assert read_card(card_path_for(pi8))["precision"] == "int8"
    assert json.loads(record_path_for(pi8).read_text())["artifact_version"] == "v7"

    calls.clear()
    assert fetch_model(source, pi8).status == "unchanged"
    assert [c[0] for c in calls] == ["Api", "artifact"]  # same version@digest as recorded: no download

    publish(src, "v3", bias=-5.0)  # a new promotion without an int8 model
    res = fetch_model(source, pi8)
    assert res.status == "refused" and res.file == "model.int8.onnx" and "missing from the download" in res.message
    assert installed_model(pi8)["version"] == "v2-int8"


# --------------------------------------------------------------------------- the command


def test_run_py_fetch_command_and_import_footprint(tmp_path, pi):
    src = tmp_path / "share"
    publish(src, "v2", bias=-3.0)
    args = ["fetch", "--source", f"folder:{src}", "--model", str(pi), "--json"]
    out = subprocess.run(
        [sys.executable, "-c", FOOTPRINT_SCRIPT, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("FOOTPRINT "))
    result = json.loads(line[len("FOOTPRINT ") :])
    assert result["code"] in (0, None), out.stderr
    check_footprint(result["modules"])  # no dvc, no wandb, no torch
    assert "autosink.edge.fetch" in result["modules"]
    assert json.loads(out.stdout[: out.stdout.index("FOOTPRINT ")])["new_version"] == "v2"

    publish(src, "v3", bias=-4.0)
    flip_byte(src / "model.onnx")
    bad = subprocess.run(
        [sys.executable, str(RUN_PY), "fetch", "--source", f"folder:{src}", "--model", str(pi)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert bad.returncode == 3 and "fetch refused" in bad.stderr and "model.onnx: sha256" in bad.stderr
    none = subprocess.run(
        [sys.executable, str(RUN_PY), "fetch", "--model", str(pi)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert none.returncode == 2 and "no source" in none.stderr
    assert read_card(card_path_for(pi))["version"] == "v2"


# --------------------------------------------------------------------------- DVC, from a clone (slow)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_dvc_get_from_a_clone_delivers_the_promoted_model(repo_root, tmp_path, monkeypatch, caplog):
    from autosink.ops.promote import promote
    from autosink.ops.workspace import copy_project
    from tests.test_promote import make_candidate

    caplog.set_level(logging.INFO)
    root, remote, origin = tmp_path / "project", tmp_path / "remote", tmp_path / "origin.git"
    root.mkdir()
    for key, value in copy_project(repo_root, root, remote=remote).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the committed default remote (~/.cache/...) is empty
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(tmp_path)

    a = make_candidate(root, "v-a", scale=100.0)
    assert promote(root)["dvc"]["pushed"]
    _git(root, "commit", "-q", "-m", "promote v-a")
    _git(tmp_path, "clone", "-q", "--bare", str(root), str(origin))
    url = f"file://{origin}"
    target = tmp_path / "pi" / "models" / "production" / "model.onnx"

    # a plain `dvc get` of the git URL uses the committed default remote: not there, nothing installed
    res = fetch_model(DvcSource(url), target)
    assert res.status == "failed" and "dvc get" in res.message and not target.exists()

    # pointed at the project's remote: the promoted model arrives, and the edge runs it
    res = fetch_model(DvcSource(url, remote="local", remote_config=[f"url={remote}"]), target)
    assert res.status == "installed", res.message
    assert res.ref == _git(root, "rev-parse", "HEAD").strip() and sha256_file(target) == a["onnx"]
    assert read_card(card_path_for(target))["version"] == "v-a"
    assert sorted(p.name for p in target.parent.iterdir()) == [
        ".model.onnx.fetch.lock",
        "model.fetch.json",
        "model.json",
        "model.onnx",
    ]
    assert json.loads(record_path_for(target).read_text())["promotion"]["experiment"] == "main"
    model = load_model(target)
    assert model.version == "v-a" and model.predict(BRIGHT) > 0.9
    reloader = ModelReloader(target, background=False)

    # a new promotion, pushed; the periodic check (remote from a DVC config file) hot-reloads it
    b = make_candidate(root, "v-b", scale=50.0)
    promote(root)
    _git(root, "commit", "-q", "-m", "promote v-b")
    _git(root, "push", "-q", str(origin), "main")
    source = DvcSource(url, rev="main", dvc_config=str(root / ".dvc" / "config.local"))
    fetcher = PeriodicFetcher(source, target, interval_s=60.0, reloader=reloader, background=False)
    assert fetcher.poll(0.0) and fetcher.last.status == "installed", fetcher.last.message
    assert reloader.check() and reloader.model.version == "v-b" and sha256_file(target) == b["onnx"]
    text = "\n".join(caplog.messages)
    assert "installed v-b" in text and "replacing v-a" in text and "version='v-b'" in text
    assert fetcher.poll(60.0) and fetcher.last.status == "unchanged"  # same commit: no download

    # a corrupted object in the remote (DVC does not check it on get): refused, v-b keeps running
    make_candidate(root, "v-c", scale=25.0)
    promote(root)
    _git(root, "commit", "-q", "-m", "promote v-c")
    _git(root, "push", "-q", str(origin), "main")
    md5 = hashlib.md5((root / "models" / "production" / "model.onnx").read_bytes()).hexdigest()
    obj = remote / "files" / "md5" / md5[:2] / md5[2:]
    obj.chmod(0o644)
    flip_byte(obj)
    assert fetcher.poll(120.0) and fetcher.last.status == "refused"
    assert "model.onnx: sha256" in fetcher.last.message and "corrupted" in fetcher.last.message
    assert not reloader.check() and reloader.model.version == "v-b" and sha256_file(target) == b["onnx"]
    assert fetcher.poll(180.0) and fetcher.last.repeated  # the same commit is not downloaded again
