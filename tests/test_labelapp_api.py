"""The labeling app's HTTP API, against the real server (thread, 127.0.0.1, port 0) on a tiny project.

Covers every endpoint and every refusal: 401 without the token when one is set, 403 on POST
without the CSRF header or from a foreign origin, 400/404 on path tricks, 409 on a conflicting
save, 4xx with a short message on any malformed body, a generic 500 (traceback in the server's
log only), labels given for another file of the episode, two servers saving at once, and refusing
to start off loopback without a token.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from autosink.core.episode import read_episode
from autosink.data.extract import extract_lake
from autosink.data.featurestore import build_feature_store
from autosink.data.labels import (
    HUMAN_HEADER,
    LabelRules,
    format_human_labels,
    human_labels_lock_path,
    parse_human_labels,
    read_human_label_file,
    read_human_labels,
    write_human_labels,
)
from autosink.labelapp import LabelData, LabelServer
from autosink.labelapp.data import Conflict
from autosink.labelapp.server import CSRF_HEADER, GENERIC_500, MAX_BODY, TOKEN_ENV, resolve_token
from tests.lakes import make_episode

TOKEN = "test-token-0123456789abcdef"

# Three small episodes (2 fps): a forced-on override (uncertain frames before it), a model switch
# the user went along with (passive window), and a one-frame flicker (ignored, review).
EPISODES = {
    "20240701_090000": ([0] * 20, [0] * 10 + [1] * 10),
    "20240701_100000": ([0] * 8 + [1] * 8, [0] * 8 + [1] * 8),
    "20240701_110000": ([0] * 14, [0] * 6 + [1] + [0] * 7),
}
EP = "20240701_090000"


def build_project(root: Path) -> dict[str, Path]:
    lake, extracted = root / "data-lake", root / "extracted"
    labels, store = root / "labels", root / "feature-store"
    lake.mkdir(parents=True)
    for stem, (model, faucet) in EPISODES.items():
        make_episode(lake, datetime.strptime(stem, "%Y%m%d_%H%M%S"), model, faucet, size=(64, 48))
    extract_lake(lake, extracted, expected_size=None, progress=False)
    build_feature_store(extracted, labels, store, LabelRules(), 2.0, progress=False)
    return {"lake": lake, "extracted": extracted, "labels": labels, "store": store}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict[str, Path]:
    return build_project(tmp_path_factory.mktemp("labelapp"))


@contextmanager
def running(data: LabelData, host: str = "127.0.0.1", token: str | None = None):
    server = LabelServer(data, host, 0, token=token, quiet=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def labels_dir(tmp_path) -> Path:
    return tmp_path / "labels"  # fresh per test: saves never leak between tests


@pytest.fixture
def data(project, labels_dir) -> LabelData:
    return LabelData(project["extracted"], labels_dir, project["store"], root=project["lake"].parent)


@pytest.fixture
def server(data):
    with running(data) as s:
        yield s


class Client:
    """Raw requests (http.client sends the path exactly as given: no normalisation)."""

    def __init__(self, server: LabelServer, headers: dict[str, str] | None = None) -> None:
        self.server = server
        self.headers = {"Host": f"127.0.0.1:{server.port}", **(headers or {})}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in {**self.headers, **(headers or {})}.items():
                if v is not None:
                    conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def get(self, path: str, **headers):
        return self.request("GET", path, headers=headers)

    def json(self, path: str) -> dict:
        status, _, body = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def post(self, path: str, obj: object, headers: dict[str, str | None] | None = None):
        base = {
            "Content-Type": "application/json",
            CSRF_HEADER: self.server.csrf,
            "Origin": f"http://127.0.0.1:{self.server.port}",
        }
        return self.request("POST", path, json.dumps(obj).encode(), {**base, **(headers or {})})

    def save(self, episode: str, labels: dict, version: str, **headers):
        return self.post(f"/api/episodes/{episode}/labels", {"version": version, "labels": labels}, headers)


@pytest.fixture
def client(server) -> Client:
    return Client(server)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def episode_sha(project, episode: str = EP) -> str:
    """The sha256 of the episode's lake zip (what extract recorded and label files must name)."""
    sha = _sha(project["lake"] / f"{episode}.zip")
    assert json.loads((project["extracted"] / "episodes" / f"{episode}.json").read_text())["sha256"] == sha
    return sha


# ---------------------------------------------------------------------------- pages and static files


def test_index_embeds_csrf_token_and_sends_security_headers(client, server):
    status, headers, body = client.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert f'<meta name="csrf-token" content="{server.csrf}">' in body.decode()
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Server"].startswith("autosink-labeler")


def test_static_files_come_from_the_package_only(client):
    status, headers, body = client.get("/static/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"X-Autosink-CSRF" in body
    status, headers, _ = client.get("/static/app.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    assert client.get("/static/index.html")[0] == 404  # only .js/.css/.svg/.png, and only via /
    assert client.get("/static/nope.js")[0] == 404
    assert client.get("/static/__init__.py")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/..%2fserver.py",
        "/static/%2e%2e/server.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/img/../../etc/passwd",
        f"/img/{EP}/frame/..%2f..%2f..%2fetc%2fpasswd",
        f"/img/{EP}/frame/%2e%2e",
        "/img/%2e%2e/frame/1.png",
        "/img/..%2f..%2fetc/frame/1.png",
        f"/img/{EP}/frame/1.json",
        f"/img/{EP}/frame/{EP}.json",
        f"/img/{EP}/frame/999.png",
        f"/img/{EP}/frame/0.png",
        f"/img/{EP}/thumb/1.png%00.jpg",
        "/img/20990101_000000/frame/1.png",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/api/episodes/..",
        "/api/episodes/%2e%2e%2f%2e%2e%2fextracted%2fframes.csv",
        f"/api/episodes/{EP}%2f..",
        "/api/episodes/20990101_000000",
        "/api/episodes/.hidden",
        "/api/episodes/C:%5cwindows",
        "http://127.0.0.1/etc/passwd",
        "/etc/passwd",
    ],
)
def test_path_tricks_get_400_or_404(client, path):
    status, headers, body = client.get(path)
    assert status in (400, 404), (path, status)
    assert b"root:" not in body and b"[project]" not in body and b"import" not in body
    assert headers["X-Content-Type-Options"] == "nosniff"


# ---------------------------------------------------------------------------- reading


def test_episode_list_shows_review_state(client, project):
    episodes = client.json("/api/episodes")["episodes"]
    assert [e["episode"] for e in episodes] == sorted(EPISODES)
    manifest = pd.read_csv(project["store"] / "manifest.csv", dtype={"episode": str})
    for e in episodes:
        rows = manifest[manifest["episode"] == e["episode"]]
        assert e["frames"] == len(rows)
        assert e["review"] == int(rows["review"].sum()) > 0
        assert e["reviewed"] == 0 and e["human"] == 0 and e["saved_at"] is None
        assert e["store"] == "current" and e["error"] is None and e["user_id"] == "user_0001"


def test_episode_timeline_matches_the_feature_store(client, project):
    status, headers, body = client.get(f"/api/episodes/{EP}")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("application/json")
    ep = json.loads(body)
    assert ep["episode"] == EP and ep["version"] == "none" and ep["labels"] == {} and ep["saved_at"] is None
    rows = pd.read_csv(project["store"] / "manifest.csv", dtype={"episode": str})
    rows = rows[rows["episode"] == EP].sort_values("frame_index")
    frames = ep["frames"]
    assert [f["index"] for f in frames] == list(range(20))
    assert [f["image"] for f in frames] == [f"{i + 1}.png" for i in range(20)]
    assert [f["model_output"] for f in frames] == EPISODES[EP][0]
    assert [f["magnetic_status"] for f in frames] == EPISODES[EP][1]
    assert [f["auto_label"] for f in frames] == rows["label"].tolist()
    assert [f["review"] for f in frames] == rows["review"].tolist()
    assert [f["rule"] for f in frames] == rows["rule"].tolist()
    assert [f["confidence"] for f in frames] == pytest.approx(rows["confidence"].tolist())
    assert any(f["review"] for f in frames)


def test_automatic_labels_and_review_flags_survive_human_labels(client, data, project, labels_dir):
    """Once the store holds a human label, its manifest row says source=human, review=False; the app
    still shows the automatic label and counts the frame as a reviewed review frame."""
    before = client.json(f"/api/episodes/{EP}")["frames"]
    review = [f["index"] for f in before if f["review"]]
    assert client.save(EP, {str(review[0]): 1 - before[review[0]]["auto_label"]}, "none")[0] == 200
    build_feature_store(project["extracted"], labels_dir, project["store"], LabelRules(), 2.0, progress=False)
    try:
        after = client.json(f"/api/episodes/{EP}")
        assert after["frames"] == before
        summary = {e["episode"]: e for e in client.json("/api/episodes")["episodes"]}[EP]
        assert summary["reviewed"] == 1 and summary["human"] == 1 and summary["store"] == "current"
    finally:  # give the module's store back its label-free state
        build_feature_store(
            project["extracted"], project["labels"], project["store"], LabelRules(), 2.0, progress=False
        )


def test_thumbnails_are_small_jpegs_with_the_right_colours(client, project):
    status, headers, body = client.get(f"/img/{EP}/thumb/4.png")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert headers["Cache-Control"].startswith("private")
    bgr = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert bgr.shape[1] <= 160 and bgr.shape[0] <= 120
    # tests/lakes.py paints frame i in RGB (i*7, 100, 200): frame 4.png is index 3.
    b, g, r = (int(x) for x in bgr[bgr.shape[0] // 2, bgr.shape[1] // 2])
    assert abs(r - 21) <= 4 and abs(g - 100) <= 4 and abs(b - 200) <= 4


def test_thumbnails_of_large_frames_fit_160x120():
    from autosink.labelapp.data import make_thumbnail

    ok, png = cv2.imencode(".png", np.zeros((480, 640, 3), np.uint8))
    thumb = cv2.imdecode(np.frombuffer(make_thumbnail(png.tobytes()), np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape == (120, 160, 3)


def test_full_frame_is_the_lake_png_unchanged(client, project):
    status, headers, body = client.get(f"/img/{EP}/frame/7.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    ep = read_episode(project["lake"] / f"{EP}.zip", check_frames=False)
    assert body == ep.read_frame_bytes("7.png")


def test_head_sends_headers_only(client):
    status, headers, body = client.request("HEAD", "/api/episodes")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_unreadable_labels_file_is_reported_not_hidden(client, labels_dir):
    labels_dir.mkdir(parents=True)
    (labels_dir / f"{EP}.csv").write_text("frame_index,label\n3,7\n")
    status, _, body = client.get(f"/api/episodes/{EP}")
    error = json.loads(body)["error"]
    assert status == 500 and "line 2" in error and f"{EP}.csv" in error
    assert str(labels_dir) not in error  # named relative to the project, not by the server's path
    summary = {e["episode"]: e for e in client.json("/api/episodes")["episodes"]}[EP]
    assert "line 2" in summary["error"]


# ---------------------------------------------------------------------------- saving


def test_save_writes_the_labels_file_and_returns_its_version(client, labels_dir, project):
    status, headers, body = client.save(EP, {"5": 1, "6": 1, "7": 0, "15": -1}, "none")
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    path = labels_dir / f"{EP}.csv"
    assert read_human_labels(path) == {5: 1, 6: 1, 7: 0, 15: -1}
    # The file names the episode file the labels were given for by its sha256.
    assert path.read_text() == f"# episode sha256: {episode_sha(project)}\nframe_index,label\n5,1\n6,1\n7,0\n15,-1\n"
    saved = json.loads(body)
    assert saved["version"] == _sha(path) and saved["labels"] == 4 and saved["store"] == "stale"
    assert saved["labels_check"] == "ok"
    assert not human_labels_lock_path(path).exists()  # the lock file lives only while a save runs
    ep = client.json(f"/api/episodes/{EP}")
    assert ep["version"] == saved["version"] and ep["labels"] == {"5": 1, "6": 1, "7": 0, "15": -1}
    assert ep["saved_at"] is not None and ep["labels_check"] == "ok" and ep["warning"] is None
    summary = {e["episode"]: e for e in client.json("/api/episodes")["episodes"]}[EP]
    review = {f["index"] for f in ep["frames"] if f["review"]}
    assert summary["reviewed"] == len(review & {5, 6, 7, 15}) and summary["human"] == 4
    assert summary["saved_at"] == ep["saved_at"] and summary["store"] == "stale"
    # A second save replaces the set (a frame left out loses its human label).
    status, _, body = client.save(EP, {"5": 0}, saved["version"])
    assert status == 200 and read_human_labels(path) == {5: 0}
    # Removing every label keeps an empty, valid file (the diff shows what went).
    status, _, body = client.save(EP, {}, json.loads(body)["version"])
    assert status == 200 and read_human_labels(path) == {}


def test_saving_nothing_creates_no_file(client, labels_dir):
    assert client.save(EP, {}, "none")[0] == 200
    assert not (labels_dir / f"{EP}.csv").exists()


def test_conflicting_save_gets_409_and_overwrites_nothing(client, labels_dir):
    tab1 = client.json(f"/api/episodes/{EP}")["version"]
    tab2 = client.json(f"/api/episodes/{EP}")["version"]
    assert client.save(EP, {"5": 1}, tab1)[0] == 200
    path = labels_dir / f"{EP}.csv"
    content = path.read_bytes()
    status, headers, body = client.save(EP, {"6": 0}, tab2)
    assert status == 409
    answer = json.loads(body)
    assert "saved elsewhere" in answer["error"] and answer["version"] == _sha(path)
    assert path.read_bytes() == content
    # After reloading (new version) the save goes through.
    assert client.save(EP, {"5": 1, "6": 0}, answer["version"])[0] == 200
    assert read_human_labels(path) == {5: 1, 6: 0}


def test_file_edited_by_hand_meanwhile_is_a_conflict(client, labels_dir):
    version = client.json(f"/api/episodes/{EP}")["version"]
    labels_dir.mkdir(parents=True)
    (labels_dir / f"{EP}.csv").write_text("frame_index,label\n1,1\n")
    assert client.save(EP, {"2": 0}, version)[0] == 409
    assert read_human_labels(labels_dir / f"{EP}.csv") == {1: 1}


@pytest.mark.parametrize(
    "headers, why",
    [
        ({CSRF_HEADER: None}, "X-Autosink-CSRF"),
        ({CSRF_HEADER: "guessed"}, "X-Autosink-CSRF"),
        ({"Origin": "http://evil.example"}, "cross-origin"),
        ({"Origin": "null"}, "cross-origin"),
        ({"Origin": "http://localhost:1"}, "cross-origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "cross-site"),
        ({"Sec-Fetch-Site": "same-site"}, "cross-site"),
    ],
)
def test_cross_site_posts_get_403(client, labels_dir, headers, why):
    status, _, body = client.save(EP, {"5": 1}, "none", **headers)
    assert status == 403 and why in json.loads(body)["error"]
    assert not labels_dir.exists()


def test_post_without_origin_but_with_csrf_header_is_fine(client, labels_dir):
    """Non-browser clients send no Origin; the custom header alone cannot be sent cross-site."""
    assert client.save(EP, {"5": 1}, "none", Origin=None)[0] == 200


@pytest.mark.parametrize(
    "body, status",
    [
        ({"version": "none", "labels": {"5": 2}}, 400),
        ({"version": "none", "labels": {"5": True}}, 400),
        ({"version": "none", "labels": {"5": "1"}}, 400),
        ({"version": "none", "labels": {"999": 1}}, 400),
        ({"version": "none", "labels": {"-1": 1}}, 400),
        ({"version": "none", "labels": {"x": 1}}, 400),
        ({"version": "none", "labels": [[5, 1]]}, 400),
        ({"labels": {"5": 1}}, 400),
        ([1, 2], 400),
    ],
)
def test_invalid_labels_get_400(client, labels_dir, body, status):
    assert client.post(f"/api/episodes/{EP}/labels", body)[0] == status
    assert not labels_dir.exists()


def test_post_refusals_on_body_type_size_and_route(client, labels_dir):
    url = f"/api/episodes/{EP}/labels"
    assert client.post(url, {"version": "none", "labels": {}}, {"Content-Type": "text/plain"})[0] == 415
    good = {"Content-Type": "application/json", CSRF_HEADER: client.server.csrf}
    assert client.request("POST", url, b"{not json", good)[0] == 400
    # Refused from the header alone, before reading a byte of the body.
    assert client.request("POST", url, None, {**good, "Content-Length": str((1 << 20) + 1)})[0] == 413
    assert client.request("POST", url, None, {**good, "Content-Length": "-5"})[0] == 413
    assert client.request("POST", url, None, good)[0] == 411
    assert client.save("20990101_000000", {"1": 1}, "none")[0] == 404
    assert client.save("..%2f..%2fetc", {"1": 1}, "none")[0] in (400, 404)
    assert client.post("/api/episodes", {})[0] == 404
    assert not labels_dir.exists()


# ---------------------------------------------------------------------------- malformed bodies

NESTED = 100_000
SAVE_URL = f"/api/episodes/{EP}/labels"
MALFORMED = {
    "nested arrays": b"[" * NESTED,
    "nested arrays, closed": b"[" * NESTED + b"]" * NESTED,
    "nested objects": b'{"a":' * NESTED + b"1" + b"}" * NESTED,
    "nested in labels": b'{"version": "none", "labels": ' + b"[" * NESTED + b"]" * NESTED + b"}",
    "nested in a label": b'{"version": "none", "labels": {"5": ' + b"[" * NESTED + b"]" * NESTED + b"}}",
    "latin-1": '{"version": "none", "labels": {"5": 1}, "clé": 1}'.encode("latin-1"),
    "utf-16": json.dumps({"version": "none", "labels": {"5": 1}}).encode("utf-16"),
    "utf-8 bom": b"\xef\xbb\xbf" + json.dumps({"version": "none", "labels": {"5": 1}}).encode(),
    "binary": bytes(range(256)) * 16,
    "empty": b"",
    "whitespace": b" \r\n\t ",
    "truncated": b'{"version": "none", "labels": {"5": ',
    "array": b"[]",
    "array of pairs": b'[["version", "none"], ["labels", {"5": 1}]]',
    "number": b"1",
    "float": b"-1.5e308",
    "huge float": b"1e999999",
    "string": b'"{\\"version\\": \\"none\\", \\"labels\\": {}}"',
    "null": b"null",
    "true": b"true",
    "NaN label": b'{"version": "none", "labels": {"5": NaN}}',
    "huge integer label": b'{"version": "none", "labels": {"5": ' + b"9" * 100_000 + b"}}",
    "huge frame index": b'{"version": "none", "labels": {"' + b"9" * 100_000 + b'": 1}}',
    "lone surrogate": b'{"version": "none", "labels": {"\\ud800": 1}}',
    "labels null": b'{"version": "none", "labels": null}',
    "labels a string": b'{"version": "none", "labels": "5=1"}',
    "no version": b'{"labels": {"5": 1}}',
    "version a number": b'{"version": 1, "labels": {"5": 1}}',
    "version not a sha": b'{"version": "' + b"x" * 5000 + b'", "labels": {"5": 1}}',
    "an extra key": b'{"version": "none", "labels": {"5": 1}, "path": "../../etc/passwd"}',
}
# every route a body can be sent to: the save (the one that reads a body) and the refusals
BODY_ROUTES = [
    ("POST", SAVE_URL),
    ("POST", "/api/episodes/20990101_000000/labels"),
    ("POST", "/api/episodes"),
    ("POST", f"/api/episodes/{EP}"),
    ("POST", "/"),
    ("PUT", SAVE_URL),
    ("PATCH", SAVE_URL),
    ("DELETE", SAVE_URL),
]
LEAKS = (b"Traceback", b'File "', b"Error:", b"Recursion", b"Exception", b"JSONDecode", b"Unicode", b"line ")


def assert_short_refusal(status: int, headers: dict, body: bytes, route) -> None:
    assert 400 <= status < 500, (route, status, body[:200])
    assert len(body) < 400, (route, body[:400])
    assert not any(leak in body for leak in LEAKS), (route, body)
    if headers.get("Content-Type", "").startswith("application/json"):
        answer = json.loads(body)
        assert answer["status"] == status and 0 < len(answer["error"]) < 200


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_bodies_get_4xx_and_a_short_message(client, labels_dir, raw):
    assert len(raw) <= MAX_BODY
    json_headers = {
        "Content-Type": "application/json",
        CSRF_HEADER: client.server.csrf,
        "Origin": f"http://127.0.0.1:{client.server.port}",
    }
    for method, path in BODY_ROUTES:
        status, headers, body = client.request(method, path, raw, json_headers)
        assert_short_refusal(status, headers, body, (method, path))
        if (method, path) == ("POST", SAVE_URL):
            assert status == 400, body
    assert not labels_dir.exists()
    assert client.get("/api/episodes")[0] == 200  # and the server serves on


@pytest.mark.parametrize("size", [MAX_BODY + 1, 5 * MAX_BODY])
def test_huge_body_gets_413_and_is_not_parsed(client, labels_dir, size):
    raw = b'{"version": "none", "labels": {' + b" " * size + b"}}"
    for method, path in BODY_ROUTES:
        status, headers, body = client.request(
            method, path, raw, {"Content-Type": "application/json", CSRF_HEADER: client.server.csrf}
        )
        assert_short_refusal(status, headers, body, (method, path))
        if (method, path) == ("POST", SAVE_URL):
            assert status == 413 and f"over {MAX_BODY} bytes" in json.loads(body)["error"]
    assert not labels_dir.exists()
    assert client.get("/api/episodes")[0] == 200


def raw_exchange(server: LabelServer, head: bytes, body: bytes = b"", close_write: bool = False) -> bytes:
    """Send bytes on a raw socket, return all the server answers until it closes (or 5 s)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head + body)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):  # the refusals close the connection
                answer += chunk
        except TimeoutError:
            pass
        return answer


def test_oversized_body_announced_with_expect_100_is_refused_before_it_is_sent(server):
    head = (
        f"POST {SAVE_URL} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
        f"{CSRF_HEADER}: {server.csrf}\r\nContent-Length: {50 * MAX_BODY}\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = raw_exchange(server, head.encode())
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer


def test_body_shorter_than_its_length_gets_400_or_408(server, labels_dir, monkeypatch, caplog):
    from autosink.labelapp.server import Handler

    def head(path: str) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
            f"{CSRF_HEADER}: {server.csrf}\r\nContent-Length: 100\r\n\r\n"
        ).encode()

    part = b'{"version": "none", "labels": {"5": 1}}'
    answer = raw_exchange(server, head(SAVE_URL), part, close_write=True)  # the client stopped sending
    assert answer.startswith(b"HTTP/1.1 400 ") and b"shorter than its Content-Length" in answer
    monkeypatch.setattr(Handler, "timeout", 0.3)  # the client keeps the connection open, silent
    with caplog.at_level(logging.ERROR, logger="autosink.labelapp"):
        answer = raw_exchange(server, head(SAVE_URL), part)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"not received in time" in answer
        answer = raw_exchange(server, head("/api/episodes"), part)  # a route that reads no body
        assert answer.startswith(b"HTTP/1.1 404 ")
    assert caplog.records == []  # a slow client is not a server error
    assert not labels_dir.exists()


def test_unexpected_errors_answer_a_generic_500_and_log_the_traceback(client, data, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("secret detail at /srv/private/labels")

    monkeypatch.setattr(data, "episodes", boom)
    monkeypatch.setattr(data, "save", boom)
    with caplog.at_level(logging.ERROR, logger="autosink.labelapp"):
        for status, headers, body in (client.get("/api/episodes"), client.save(EP, {"5": 1}, "none")):
            assert status == 500 and headers["Connection"] == "close"
            assert json.loads(body) == {"error": GENERIC_500, "status": 500}
            assert b"secret" not in body and b"RuntimeError" not in body
    logged = [r for r in caplog.records if r.name == "autosink.labelapp"]
    assert len(logged) == 2 and all(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in logged)
    assert "Traceback" in caplog.text
    assert client.get(f"/api/episodes/{EP}")[0] == 200  # the server serves on


def test_a_save_held_up_by_another_gets_503(client, data, monkeypatch, labels_dir):
    def held(*args, **kwargs):
        raise TimeoutError("lock held")

    monkeypatch.setattr(data, "save", held)
    status, _, body = client.save(EP, {"5": 1}, "none")
    assert status == 503 and "another save" in json.loads(body)["error"] and b"lock held" not in body


def test_a_labels_file_that_cannot_be_written_gets_503_without_paths(client, labels_dir, monkeypatch, caplog):
    import errno

    import autosink.labelapp.data as data_module

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(data_module, "write_human_labels", full)
    with caplog.at_level(logging.ERROR, logger="autosink.labelapp"):
        status, _, body = client.save(EP, {"5": 1}, "none")
    assert status == 503 and json.loads(body)["error"] == "could not write the labels file: No space left on device"
    assert str(labels_dir).encode() not in body and "Traceback" in caplog.text
    assert not human_labels_lock_path(labels_dir / f"{EP}.csv").exists()


def test_missing_extracted_data_gets_503_with_the_way_out(tmp_path):
    empty = LabelData(tmp_path / "extracted", tmp_path / "labels", tmp_path / "store", root=tmp_path)
    with running(empty) as s:
        status, _, body = Client(s).get("/api/episodes")
    error = json.loads(body)["error"]
    assert status == 503 and "extracted/frames.csv" in error and "dvc repro" in error and str(tmp_path) not in error


# ---------------------------------------------------------------------------- the episode the labels were given for


def test_labels_given_for_another_file_of_the_episode_are_reported_not_loaded(client, labels_dir, project):
    """A re-upload of the episode with other frames: the file's labels are not loaded as the
    episode's (the page shows why); saving replaces them and records the episode's sha."""
    path = labels_dir / f"{EP}.csv"
    write_human_labels(path, {5: 1, 6: 0}, "0" * 64)
    ep = client.json(f"/api/episodes/{EP}")
    assert ep["labels"] == {} and ep["labels_check"] == "mismatch" and ep["stale_labels"] == 2
    assert ep["labels_for_sha256"] == "0" * 64 and ep["episode_sha256"] == episode_sha(project)
    assert "another file of this episode" in ep["warning"] and ep["version"] == _sha(path)
    summary = {e["episode"]: e for e in client.json("/api/episodes")["episodes"]}[EP]
    assert summary["human"] == 0 and summary["reviewed"] == 0 and summary["error"] is None
    assert summary["labels_check"] == "mismatch" and "another file" in summary["warning"]
    status, _, body = client.save(EP, {"7": 1}, ep["version"])
    assert status == 200 and json.loads(body)["labels_check"] == "ok"
    assert read_human_label_file(path).labels == {7: 1}
    assert read_human_label_file(path).episode_sha256 == episode_sha(project)
    assert client.json(f"/api/episodes/{EP}")["warning"] is None


def test_older_labels_file_without_the_sha_loads_flagged_unverified(client, labels_dir, project):
    labels_dir.mkdir(parents=True)
    path = labels_dir / f"{EP}.csv"
    path.write_text("frame_index,label\n5,1\n")
    ep = client.json(f"/api/episodes/{EP}")
    assert ep["labels"] == {"5": 1} and ep["labels_check"] == "unverified" and ep["stale_labels"] == 0
    assert "records no episode sha256" in ep["warning"]
    summary = {e["episode"]: e for e in client.json("/api/episodes")["episodes"]}[EP]
    assert summary["human"] == 1 and summary["labels_check"] == "unverified"
    assert client.save(EP, {"5": 1}, ep["version"])[0] == 200  # the same labels: the sha is recorded
    assert path.read_text() == f"# episode sha256: {episode_sha(project)}\n{HUMAN_HEADER}\n5,1\n"
    assert client.json(f"/api/episodes/{EP}")["labels_check"] == "ok"


# ---------------------------------------------------------------------------- two servers, one labels folder


def bits_to_labels(value: int) -> dict[int, int]:
    """A counter in an episode's labels: frame i labelled 1 when bit i is set (20 frames: 2**20)."""
    return {i: 1 for i in range(20) if value >> i & 1}


def labels_to_bits(labels: dict[int, int]) -> int:
    return sum(1 << i for i, v in labels.items() if v == 1)


def check_complete_saves(path: Path, sha: str, stop: threading.Event, seen: list[int], bad: list[str]) -> None:
    """Read the labels file over and over: every read must be exactly one save's text."""
    while not stop.is_set():
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        try:
            doc = parse_human_labels(text)
            assert doc.episode_sha256 == sha and format_human_labels(doc.labels, sha) == text
            seen.append(labels_to_bits(doc.labels))
        except (ValueError, AssertionError):
            bad.append(text)


def test_two_servers_saving_at_once_never_interleave(project, labels_dir):
    """Two LabelData (what two servers hold) on one labels folder, saving from threads: each save
    reads the counter the labels encode, adds one and saves with the version it read (409 and
    retry on a conflict). With the file lock no increment is lost and the file is only ever one
    complete save."""
    servers = [
        LabelData(project["extracted"], labels_dir, project["store"], root=project["lake"].parent) for _ in range(2)
    ]
    per_thread, threads = 15, 4
    stop, seen, bad, errors = threading.Event(), [], [], []

    def increment(data: LabelData) -> None:
        try:
            done = 0
            while done < per_thread:
                human = data.human(EP)
                try:
                    data.save(EP, bits_to_labels(labels_to_bits(human.labels) + 1), human.version)
                    done += 1
                except Conflict:
                    pass
        except Exception as e:  # reported below
            errors.append(repr(e))

    reader = threading.Thread(
        target=check_complete_saves, args=(labels_dir / f"{EP}.csv", episode_sha(project), stop, seen, bad)
    )
    reader.start()
    workers = [threading.Thread(target=increment, args=(servers[i % 2],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    stop.set()
    reader.join(10)
    assert errors == [] and bad == []
    assert labels_to_bits(read_human_labels(labels_dir / f"{EP}.csv")) == per_thread * threads
    assert seen and seen == sorted(seen)  # the counter never went back
    assert not human_labels_lock_path(labels_dir / f"{EP}.csv").exists()


INCREMENT = textwrap.dedent("""
    import sys
    from autosink.labelapp import LabelData
    from autosink.labelapp.data import Conflict
    extracted, labels, store, root, episode, n = sys.argv[1:]
    data = LabelData(extracted, labels, store, root=root)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    done = 0
    while done < int(n):
        human = data.human(episode)
        value = sum(1 << i for i, v in human.labels.items() if v == 1) + 1
        try:
            data.save(episode, {i: 1 for i in range(20) if value >> i & 1}, human.version)
            done += 1
        except Conflict:
            pass
""")


def test_two_server_processes_saving_at_once_lose_nothing(project, labels_dir, repo_root):
    """The same race between processes (two `autosink label serve` on one checkout): only the
    file lock (not a thread lock) can keep a check-then-write whole across them."""
    per_process = 25
    args = [
        str(project["extracted"]),
        str(labels_dir),
        str(project["store"]),
        str(project["lake"].parent),
        EP,
        str(per_process),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", INCREMENT, *args],
            cwd=repo_root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    stop, seen, bad = threading.Event(), [], []
    reader = threading.Thread(
        target=check_complete_saves, args=(labels_dir / f"{EP}.csv", episode_sha(project), stop, seen, bad)
    )
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        reader.start()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    reader.join(10)
    assert bad == []
    assert labels_to_bits(read_human_labels(labels_dir / f"{EP}.csv")) == 2 * per_process
    assert seen == sorted(seen)


def test_a_save_waits_for_the_lock_another_holds(data, labels_dir):
    from autosink.data.labels import human_labels_lock

    path = labels_dir / f"{EP}.csv"
    with human_labels_lock(path):
        assert human_labels_lock_path(path).exists()
        with pytest.raises(TimeoutError):
            data.save(EP, {5: 1}, "none", lock_timeout=0.2)
    assert not path.exists()
    assert data.save(EP, {5: 1}, "none").labels == {5: 1}


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405_and_no_cors(client, method):
    status, headers, _ = client.request(method, f"/api/episodes/{EP}/labels", b"{}")
    assert status == 405
    assert not any(k.lower().startswith("access-control-") for k in headers)


def test_foreign_host_header_is_refused_dns_rebinding(client):
    for host in ("evil.example", f"evil.example:{client.server.port}", "127.0.0.1:1"):
        assert client.get("/api/episodes", Host=host)[0] == 400
    for host in (f"localhost:{client.server.port}", f"[::1]:{client.server.port}"):
        assert client.get("/api/episodes", Host=host)[0] == 200


# ---------------------------------------------------------------------------- access token


@pytest.fixture
def token_client(data):
    with running(data, token=TOKEN) as s:
        yield Client(s)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/static/app.js",
        "/api/episodes",
        f"/api/episodes/{EP}",
        f"/img/{EP}/thumb/1.png",
        f"/img/{EP}/frame/1.png",
        "/nope",
    ],
)
def test_with_a_token_every_request_needs_it(token_client, path):
    assert token_client.get(path)[0] == 401
    assert token_client.get(path, Authorization="Bearer wrong-token-0123456789")[0] == 401
    assert token_client.get(path, Cookie=f"{token_client.server.cookie_name}=wrong")[0] == 401
    status = token_client.get(path, Authorization=f"Bearer {TOKEN}")[0]
    assert status == (404 if path == "/nope" else 200)


def test_token_url_sets_an_httponly_cookie_that_then_works(token_client, labels_dir):
    c = token_client
    status, headers, _ = c.get(f"/?token={TOKEN}")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    pair = cookie.split(";")[0]
    assert pair == f"{c.server.cookie_name}={c.server.session}" and TOKEN not in cookie  # never the token itself
    assert c.get("/api/episodes", Cookie=pair)[0] == 200
    assert c.get("/api/episodes", Cookie=f"{c.server.cookie_name}={TOKEN}")[0] == 401
    assert c.get("/?token=wrong")[0] == 401
    # POST: the token alone is not enough (CSRF), and the CSRF header alone is not either.
    assert c.save(EP, {"5": 1}, "none")[0] == 401
    assert c.save(EP, {"5": 1}, "none", Cookie=pair, **{CSRF_HEADER: None})[0] == 403
    assert not labels_dir.exists()
    assert c.save(EP, {"5": 1}, "none", Cookie=pair)[0] == 200


def test_refuses_to_bind_off_loopback_without_a_token(data):
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com"):
        with pytest.raises(ValueError, match="needs an access token"):
            LabelServer(data, host, 0)
    for bad in ("short", "x" * 15, "sixteen chars; with=cookie-breakers"):
        with pytest.raises(ValueError, match="at least 16"):
            LabelServer(data, "0.0.0.0", 0, token=bad)
    with running(data, host="0.0.0.0", token=TOKEN) as s:  # with a token: starts, and checks it
        c = Client(s, {"Host": f"labhost:{s.port}"})
        assert c.get("/api/episodes")[0] == 401
        assert c.get("/api/episodes", Authorization=f"Bearer {TOKEN}")[0] == 200


def test_token_comes_from_the_flag_else_the_environment(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token(None) == "from-env" and resolve_token("flag") == "flag"
    monkeypatch.delenv(TOKEN_ENV)
    assert resolve_token(None) is None


def test_command_refuses_0000_without_token_with_a_clear_error(repo_root):
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    r = subprocess.run(
        [sys.executable, "-m", "autosink.labelapp", "--host", "0.0.0.0", "--port", "0"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "refusing to serve on 0.0.0.0" in r.stderr and TOKEN_ENV in r.stderr
    assert "Traceback" not in r.stderr
