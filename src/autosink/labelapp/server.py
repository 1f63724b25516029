"""The labeling app's HTTP server: standard library only (``http.server``), one small surface.

Routes (everything else is 404)::

    GET  /                                  the page (static/index.html, with this server's CSRF token)
    GET  /?token=T                          sets the access cookie, then redirects to /
    GET  /static/<name>                     app.js, app.css (files of this package only)
    GET  /api/episodes                      episodes with their review state
    GET  /api/episodes/<episode>            frames, automatic labels, human labels, version
    POST /api/episodes/<episode>/labels     {"version": v, "labels": {"12": 1, ...}} -> 200 | 409
    GET  /img/<episode>/thumb/<N.png>       JPEG thumbnail (160x120)
    GET  /img/<episode>/frame/<N.png>       the frame's PNG bytes from the lake

Security (see docs/labeling.md, "Labeling app"):

- binds 127.0.0.1 by default; any other address needs an access token and refuses to start
  without one. With a token set, every request must carry it (``Authorization: Bearer`` or the
  cookie (a per-server session secret, not the token) set by ``/?token=``), compared in constant
  time, else 401.
- on a loopback bind, the ``Host`` header must name the loopback address (DNS rebinding).
- POST needs the per-server CSRF header, ``Content-Type: application/json``, a same-origin
  ``Origin`` (when sent) and no cross-site ``Sec-Fetch-Site``, else 403.
- names in URLs are matched by strict patterns and against the data (episodes of frames.csv,
  frames of that episode) before any file is opened; static files come from the package only.
- responses carry a strict Content-Security-Policy, nosniff, no framing; API responses are
  never cached.

Malformed requests get a 4xx and a short message, never a traceback: a body over
:data:`MAX_BODY` 413 (refused from its ``Content-Length`` alone, or on ``Expect: 100-continue``),
a body that is not UTF-8, not JSON (nested too deeply included) or not the expected object 400.
An unexpected error answers 500 with a generic message; its traceback goes to the server's log
(the ``autosink.labelapp`` logger) only.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sys
import time
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote

from autosink.labelapp.data import (
    EPISODE_RE,
    IMAGE_RE,
    NO_VERSION,
    Conflict,
    Invalid,
    LabelData,
    NoData,
    NotFound,
    Unreadable,
)

log = logging.getLogger("autosink.labelapp")

TOKEN_ENV = "AUTOSINK_LABEL_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MIN_TOKEN_LENGTH = 16
#: the largest request body (a save of ~70 000 frames' labels); larger ones get 413
MAX_BODY = 1 << 20
#: after refusing a body, read and drop at most this much of it (and for at most DRAIN_S seconds)
#: so the client gets the answer rather than a connection reset
DRAIN_BYTES, DRAIN_S = 8 << 20, 2.0
_VERSION_RE = re.compile(r"none|[0-9a-f]{64}")
GENERIC_500 = "internal server error (details are in the labeler's log)"
CSRF_HEADER = "X-Autosink-CSRF"
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_TOKEN_RE = re.compile(rf"[A-Za-z0-9._~-]{{{MIN_TOKEN_LENGTH},256}}")  # safe in a URL and a cookie as is
_STATIC_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,40}\.(js|css|svg|png)")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _static_files() -> dict[str, bytes]:
    """The package's static files, read once (nothing outside the package is ever served)."""
    folder = resources.files("autosink.labelapp") / "static"
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}


def check_bind(host: str, token: str | None) -> None:
    """Refuse (ValueError) to serve off loopback without a token, or with a guessable one."""
    if token is not None and not _TOKEN_RE.fullmatch(token):
        raise ValueError(
            f"the access token must be at least {MIN_TOKEN_LENGTH} characters, letters, digits and "
            "-._~ only (make one: python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    if not is_loopback(host) and not token:
        raise ValueError(
            f"refusing to serve on {host}: any address other than 127.0.0.1 needs an access token "
            f"(--token or ${TOKEN_ENV}); anyone who can reach the port could otherwise read frames "
            "and overwrite labels"
        )


class LabelServer(ThreadingHTTPServer):
    """``LabelServer(data, host, port, token)``; ``serve_forever()`` runs it. Port 0 picks a free port."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        data: LabelData,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        quiet: bool = False,
    ) -> None:
        check_bind(host, token)
        self.data = data
        self.token = token
        self.quiet = quiet
        self.csrf = secrets.token_urlsafe(32)
        # The cookie carries a per-server session secret, never the token itself (cookies ignore
        # ports, so any other service on the host would receive it).
        self.session = secrets.token_urlsafe(32)
        self.static = _static_files()
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host.strip("[]"), port), Handler)
        self.host = host
        self.port = self.server_address[1]
        self.cookie_name = f"autosink_label_{self.port}"  # cookies ignore ports: one per server
        self.allowed_hosts = self._allowed_hosts() if is_loopback(host) else None

    def _allowed_hosts(self) -> set[str]:
        names = {"127.0.0.1", "localhost", "[::1]", self.host if ":" not in self.host else f"[{self.host.strip('[]')}]"}
        hosts = {f"{n}:{self.port}" for n in names}
        if self.port == 80:
            hosts |= names
        return hosts

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = socket.gethostname()
        return f"http://{host}:{self.port}/"

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 (socketserver API)
        if not self.quiet:
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections give their thread back
    server_version = "autosink-labeler"
    sys_version = ""

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def log_request(self, code="-", size="-") -> None:  # noqa: ANN001 (stdlib signature)
        # Only refusals and errors (a page view is dozens of thumbnails); never the query string,
        # which may hold the access token.
        code = getattr(code, "value", code)
        if isinstance(code, int) and code >= 400:
            self.log_message('"%s %s" %s', self.command, self._route_path, code)

    @property
    def _route_path(self) -> str:
        # Split by hand: urlsplit("//etc/passwd") would read "etc" as a host name.
        return self.path.split("?", 1)[0].split("#", 1)[0]

    @property
    def _query(self) -> dict[str, list[str]]:
        return parse_qs(self.path.split("?", 1)[1]) if "?" in self.path else {}

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        cache: str = "no-store",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        if self.close_connection:  # an error that ends the connection says so
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: object) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        if self._route_path.startswith("/api/"):
            self._json(status, {"error": message, "status": status})
        else:
            page = (
                f"<!doctype html><meta charset=utf-8><title>{status}</title>"
                f"<h1>{status} {HTTPStatus(status).phrase}</h1><p>{escape(message)}</p>"
            )
            self._send(status, page.encode(), "text/html; charset=utf-8")

    def _discard_body(self) -> None:
        """Read (and drop) a small request body so keep-alive stays in sync; close on anything odd."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if 0 <= length <= MAX_BODY:
            try:
                self.rfile.read(length)
            except OSError:  # timed out (a body shorter than announced), reset
                self.close_connection = True
        else:
            self._refuse_body(length)

    def _refuse_body(self, length: int) -> None:
        """A body too large to read: answer, then drop what the client sends and close."""
        self.close_connection = True
        self._drain_after = length

    def handle_one_request(self) -> None:
        self._drain_after = None
        super().handle_one_request()
        if self._drain_after is not None:  # the answer is out: now let the client finish sending
            self._drain(self._drain_after)

    def _drain(self, length: int) -> None:
        """Drop what a refused body sends (bounded in bytes and time) before the connection closes:
        closing with unread data resets it, and the client might lose the answer."""
        budget = min(length, DRAIN_BYTES) if length > 0 else DRAIN_BYTES
        deadline = time.monotonic() + DRAIN_S
        try:
            self.connection.settimeout(0.5)  # a client that stops sending is not waited for
            while budget > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(budget, 1 << 16))
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:  # timed out, reset: the connection closes anyway
            pass

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: refuse an oversized body before the client sends it."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = 0
        if length > MAX_BODY:
            self.close_connection = True
            self._error(413, f"body over {MAX_BODY} bytes")
            return False
        return super().handle_expect_100()

    # ------------------------------------------------------------------ checks on every request

    def _host_ok(self) -> bool:
        allowed = self.server.allowed_hosts
        return allowed is None or (self.headers.get("Host") or "").lower() in allowed

    def _token_ok(self) -> bool:
        token = self.server.token
        if not token:
            return True
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return True
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.server.cookie_name and hmac.compare_digest(value.encode(), self.server.session.encode()):
                return True
        return False

    def _cross_site(self) -> str | None:
        """Why a state-changing request is refused as cross-site, or None."""
        sent = self.headers.get(CSRF_HEADER) or ""
        if not hmac.compare_digest(sent.encode(), self.server.csrf.encode()):
            return f"missing or wrong {CSRF_HEADER} header (reload the page)"
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            return f"cross-origin request from {origin!r} refused"
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return f"cross-site request ({site}) refused"
        return None

    def _gate(self) -> bool:
        """Host and token checks shared by every method; True when the request may go on."""
        if not self._host_ok():
            self._error(400, "unexpected Host header: open the labeler at http://127.0.0.1:<port>/")
            return False
        if self.server.token and self._route_path == "/" and "token" in self._query and self.command == "GET":
            given = self._query["token"][0]
            if hmac.compare_digest(given.encode(), self.server.token.encode()):
                cookie = f"{self.server.cookie_name}={self.server.session}; Path=/; HttpOnly; SameSite=Strict"
                self._send(303, b"", "text/plain", headers={"Location": "/", "Set-Cookie": cookie})
            else:
                self._error(401, "wrong access token")
            return False
        if not self._token_ok():
            self._error(
                401,
                "this labeler needs its access token: open the URL that `autosink label serve` "
                "printed (http://HOST:PORT/?token=...) or send 'Authorization: Bearer <token>'",
            )
            return False
        return True

    # ------------------------------------------------------------------ methods

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        try:
            if self._gate():
                self._get(self._route_path)
        except Exception as e:  # answer, log, keep serving
            self._fail(e)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        try:
            if not self._gate():
                self._discard_body()
                return
            self._post(self._route_path)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def _refuse(self) -> None:
        self._discard_body()
        if self._gate():
            self._error(405, f"{self.command} is not allowed")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _fail(self, e: Exception) -> None:
        """An unexpected error: the traceback to the server's log, a generic 500 to the client."""
        log.error("%s %s failed", self.command, self._route_path, exc_info=e)
        self.close_connection = True
        try:
            self._error(500, GENERIC_500)
        except OSError:
            pass

    # ------------------------------------------------------------------ routes

    @staticmethod
    def _parts(path: str) -> list[str] | None:
        """Path segments, each percent-decoded once and checked; None for anything suspicious."""
        if not path.startswith("/") or "//" in path or "\\" in path:
            return None
        parts = [unquote(p) for p in path.split("/")[1:]]
        for p in parts:
            if p in (".", "..") or "/" in p or "\\" in p or "\0" in p or "%" in p:
                return None
        return parts

    def _get(self, path: str) -> None:
        data = self.server.data
        if path == "/":
            html = self.server.static["index.html"].decode().replace("{{CSRF}}", escape(self.server.csrf))
            return self._send(200, html.encode(), "text/html; charset=utf-8")
        parts = self._parts(path)
        if parts is None:
            return self._error(400, "bad path")
        match parts:
            case ["static", name] if _STATIC_RE.fullmatch(name) and name in self.server.static:
                return self._send(200, self.server.static[name], STATIC_TYPES[Path(name).suffix], cache="no-cache")
            case ["favicon.ico"]:
                return self._send(204, b"", "image/x-icon", cache="max-age=86400")
            case ["api", "episodes"]:
                try:
                    return self._json(200, {"episodes": data.episodes()})
                except NoData as e:
                    return self._error(503, str(e))
            case ["api", "episodes", episode] if EPISODE_RE.fullmatch(episode):
                try:
                    body = data.episode(episode)
                except NotFound as e:
                    return self._error(404, str(e))
                except NoData as e:
                    return self._error(503, str(e))
                except Unreadable as e:  # a malformed labels file: say which one, and the line
                    return self._error(500, str(e))
                data.warm_thumbnails(episode)
                return self._json(200, body)
            case ["img", episode, ("thumb" | "frame") as kind, image] if EPISODE_RE.fullmatch(
                episode
            ) and IMAGE_RE.fullmatch(image):
                try:
                    if kind == "thumb":
                        body, ctype = data.thumbnail(episode, image), "image/jpeg"
                    else:
                        body, ctype = data.frame_png(episode, image), "image/png"
                except NotFound as e:
                    return self._error(404, str(e))
                return self._send(200, body, ctype, cache="private, max-age=600")
        return self._error(404, "not found")

    def _post(self, path: str) -> None:
        parts = self._parts(path)
        match parts:
            case ["api", "episodes", episode, "labels"] if EPISODE_RE.fullmatch(episode):
                pass
            case _:
                self._discard_body()
                return self._error(404, "not found")
        why = self._cross_site()
        if why:
            self._discard_body()
            return self._error(403, why)
        if not (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() == "application/json":
            self._discard_body()
            return self._error(415, "Content-Type must be application/json")
        body, why = self._json_body()
        if why is not None:
            return self._error(*why)
        data = self.server.data
        try:
            labels = data.validate(episode, body["labels"])
            saved = data.save(episode, labels, body["version"])
        except NotFound as e:
            return self._error(404, str(e))
        except Invalid as e:
            return self._error(400, str(e))
        except NoData as e:
            return self._error(503, str(e))
        except TimeoutError:
            return self._error(503, "another save of this episode holds its labels file; try again")
        except OSError as e:  # an unwritable labels folder, a full disk: say so (not where)
            log.error("saving the labels of %s failed", episode, exc_info=e)
            return self._error(503, f"could not write the labels file: {e.strerror or 'write failed'}")
        except Conflict as e:
            return self._json(
                409,
                {
                    "error": "the labels of this episode were saved elsewhere (another tab or "
                    "person) after you opened it",
                    "status": 409,
                    "version": e.current,
                },
            )
        self._json(
            200,
            {
                "version": saved.version,
                "saved_at": saved.saved_at,
                "labels": len(saved.labels),
                "store": data.store_state(episode, saved.version),
                "labels_check": saved.check,
            },
        )

    def _json_body(self) -> tuple[dict, None] | tuple[None, tuple[int, str]]:
        """The save body ``{"version": v, "labels": {...}}``, or (status, short message) why not."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return None, (411, "Content-Length required")
        if not 0 <= length <= MAX_BODY:
            self._refuse_body(length)
            return None, (413, f"body over {MAX_BODY} bytes")
        try:
            raw = self.rfile.read(length)
        except OSError as e:  # timed out (a body shorter than announced), reset
            self.close_connection = True
            return None, (408, "body not received in time") if isinstance(e, TimeoutError) else (400, "body lost")
        if len(raw) != length:
            self.close_connection = True
            return None, (400, "body shorter than its Content-Length")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, (400, "body is not UTF-8 text")
        try:
            body = json.loads(text, parse_constant=_no_constant)
        except RecursionError:
            return None, (400, "body is not JSON: nested too deeply")
        except ValueError:  # JSONDecodeError, NaN/Infinity, an integer of too many digits
            return None, (400, "body is not JSON")
        shape = 'body must be a JSON object {"version": "...", "labels": {"<frame index>": 0|1|-1, ...}}'
        if not isinstance(body, dict) or set(body) != {"version", "labels"}:
            return None, (400, shape)
        if not isinstance(body["version"], str) or not _VERSION_RE.fullmatch(body["version"]):
            return None, (400, f'"version" must be "{NO_VERSION}" or a sha256 as the labeler sent it')
        return body, None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def resolve_token(token: str | None) -> str | None:
    """The --token value, else $AUTOSINK_LABEL_TOKEN, else None."""
    if token:
        return token
    return os.environ.get(TOKEN_ENV) or None


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    root: Path | None = None,
    quiet: bool = False,
) -> int:
    """Run the labeler on the project's data folders until Ctrl+C (what `autosink label serve` calls)."""
    from autosink.data.labels import LabelRules
    from autosink.ops.config import load_params, project_root

    token = resolve_token(token)
    check_bind(host, token)  # before touching any data: the refusal must be the first thing said
    root = Path(root) if root is not None else project_root()
    rules, fps = LabelRules(), 2.0
    params_file = root / "params.yaml"
    if params_file.exists():  # fallback rules for episodes the feature store has not labelled yet
        cfg = load_params(params_file).get("label") or {}
        rules, fps = LabelRules.from_params(cfg), float(cfg.get("default_fps", fps))
    data = LabelData(root=root, rules=rules, default_fps=fps)
    data.episode_names()  # fail now (clear message) if data/extracted/frames.csv is missing
    try:
        server = LabelServer(data, host, port, token, quiet=quiet)
    except OSError as e:  # port taken, address not on this machine, ...
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    url = server.url
    if server.token:
        print(f"autosink labeler: {url}?token=<your token>  (or send 'Authorization: Bearer <token>')", flush=True)
    else:
        print(f"autosink labeler: {url}", flush=True)
    print(
        f"labels are written to {data.labels_dir}; run `dvc repro` to rebuild the feature store. Ctrl+C stops.",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.server_close()
    return 0
