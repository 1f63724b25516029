#!/usr/bin/env python3
"""autosink edge runtime: camera -> ONNX model -> valve, on the Raspberry Pi.

    python edge/run.py                      # everything from edge/config.toml
    python edge/run.py --camera folder:frames/ --valve fake --max-frames 100
    python edge/run.py fetch                # fetch the production model once ([fetch] in the config)

Run it from the checkout's root (relative paths in the config are relative to the current
directory). Needs only edge/requirements.txt; see edge/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

EDGE_DIR = Path(__file__).resolve().parent
_SRC = EDGE_DIR.parent / "src"
if (_SRC / "autosink" / "core" / "episode.py").is_file() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # run from a checkout: no install needed

DEFAULT_CONFIG = EDGE_DIR / "config.toml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge/run.py",
        description="autosink on the Raspberry Pi: camera -> ONNX model -> valve; saves a feedback episode "
        "whenever the user overrides the model and uploads it to the data lake. Defaults come "
        "from edge/config.toml; options given here win.",
        epilog="SIGTERM/SIGINT close the valve and stop (any number of them: later ones close it again and skip "
        "the upload drain; the episode being recorded is still written). Exit status: 0 stopped normally "
        "(signals included), 2 bad configuration (model, camera, devices), 1 anything else (the valve is "
        "closed in every case). "
        "`python edge/run.py fetch --help`: fetch the production model (DVC or W&B).",
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config (default: %(default)s)")
    p.add_argument(
        "--model",
        help="ONNX model; its card (same name, .json) sits beside it (config default: models/production/model.onnx)",
    )
    p.add_argument("--camera", help="picamera2 | opencv:<index> | video:<path> | folder:<path> | episode:<zip>")
    p.add_argument("--valve", help="gpio | gpio:<bcm pin> | serial:<port> | fake")
    p.add_argument("--spool", help="folder where episodes wait for upload")
    p.add_argument("--upload-to", help="data lake: a folder, or gdrive://<folder-id>; '' for no upload")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--fps", type=float, help="frames per second processed (0: as fast as the source gives them)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument("--user-id", help="user_id written into episodes (default: the host name)")
    p.add_argument("--no-inputs", action="store_true", help="ignore the GPIO reed switch and button")
    p.add_argument(
        "--replay-user",
        action="store_true",
        help="with --camera episode:<zip>: the episode's recorded faucet states act as the user's hand "
        "(button where they forced water on, handle closed where they stopped it), so the run "
        "records feedback episodes as the Pi did",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument(
        "--close-valve",
        action="store_true",
        help="only drive the configured valve closed and exit (systemd ExecStopPost)",
    )
    return p


def _overrides(args: argparse.Namespace) -> dict:
    o: dict = {}

    def put(section: str, key: str, value: object) -> None:
        if value is not None:
            o.setdefault(section, {})[key] = value

    put("model", "path", args.model)
    put("camera", "source", args.camera)
    put("camera", "fps", args.fps)
    put("valve", "kind", args.valve)
    put("recorder", "spool", args.spool)
    put("recorder", "user_id", args.user_id)
    put("upload", "to", args.upload_to)
    put("model", "threads", args.threads)
    put("log", "level", args.log_level)
    if args.no_inputs:
        put("inputs", "faucet", "")
        put("inputs", "button", "")
    return o


def build_fetch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge/run.py fetch",
        description="Fetch the production model and its card into model.path (default "
        "models/production/model.onnx), verify them (sha256 against the card, the card's input and "
        "classes, a self-test in onnxruntime) and swap them in atomically; a running edge/run.py "
        "hot-reloads them. Anything wrong keeps the installed model. Defaults come from the [fetch] "
        "and [model] sections of the config; options given here win.",
        epilog="Exit status: 0 installed or already the latest, 1 download failed, 2 bad configuration, "
        "3 refused (the download is not a model this edge may run).",
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config (default: %(default)s)")
    p.add_argument("--source", help="dvc | wandb | folder:<path> (config fetch.source)")
    p.add_argument("--repo", help="dvc: the autosink git repository, URL or path ('' = origin of this checkout)")
    p.add_argument("--rev", help="dvc: branch, tag or commit (default: the repository's default branch)")
    p.add_argument("--path", help="dvc: the promoted folder in the repository (default models/production)")
    p.add_argument("--remote", help="dvc: remote to download from instead of the committed default (e.g. gdrive)")
    p.add_argument(
        "--remote-config",
        action="append",
        metavar="OPTION=VALUE",
        help="dvc: option merged into that remote's config (repeatable), e.g. url=/mnt/nas/dvc-remote",
    )
    p.add_argument("--dvc-config", help="dvc: a DVC config file merged into the repository's (credentials)")
    p.add_argument("--artifact", help="wandb: <entity>/<project>/autosink-model:production (needs WANDB_API_KEY)")
    p.add_argument(
        "--model",
        help="where the model goes, its card beside it (config model.path); a path ending in model.int8.onnx "
        "takes the promoted int8 model",
    )
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the self-test (default 1)")
    p.add_argument("--timeout", type=float, help="seconds a download may take (config fetch.timeout_s)")
    p.add_argument("--force", action="store_true", help="download and reinstall even when it looks unchanged")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    return p


def fetch_main(argv: list[str]) -> int:
    args = build_fetch_parser().parse_args(argv)
    from autosink.edge.fetch import fetch_model
    from autosink.edge.settings import ConfigError, load_config, merge_config
    from autosink.edge.sources import FetchError, make_source

    o: dict = {}
    for key, value in (
        ("source", args.source),
        ("repo", args.repo),
        ("rev", args.rev),
        ("path", args.path),
        ("remote", args.remote),
        ("remote_config", args.remote_config),
        ("dvc_config", args.dvc_config),
        ("artifact", args.artifact),
        ("timeout_s", args.timeout),
    ):
        if value is not None:
            o.setdefault("fetch", {})[key] = value
    if args.model is not None:
        o["model"] = {"path": args.model}
    if args.log_level is not None:
        o["log"] = {"level": args.log_level}
    try:
        cfg = merge_config(load_config(args.config), o, "command line")
        if not cfg["fetch"]["source"]:
            raise ConfigError("no source: give --source dvc|wandb|folder:<path> or set fetch.source in the config")
        source = make_source(cfg["fetch"])
    except (ConfigError, FetchError) as e:
        print(f"edge/run.py fetch: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(cfg["log"]["level"]).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    res = fetch_model(
        source,
        cfg["model"]["path"],
        threads=args.threads,
        selftest_png=cfg["model"]["selftest_png"] or None,
        selftest_max_s=cfg["model"]["selftest_max_s"],
        force=args.force,
    )
    if args.json:
        import json

        print(json.dumps(res.to_dict(), indent=2))
    else:
        print(f"fetch {res.status}: {res.message}", file=sys.stdout if res.ok else sys.stderr)
    return {"installed": 0, "unchanged": 0, "refused": 3}.get(res.status, 1)


_signals_outside_the_loop: list[str] = []


def _note_signal(signum: int, _frame: object) -> None:
    """SIGTERM/SIGINT while the loop is not running (start-up, after it stopped): noted, never
    raised. At start-up the runtime then stops at once; afterwards the valve is already closed.
    Raising here (Python's default for SIGINT) could abandon native threads mid-work, the abort
    the runtime's own handler avoids (see autosink.edge.runtime)."""
    _signals_outside_the_loop.append(signal.Signals(signum).name)


def _install_signal_notes() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT first: Python's own handler for it raises
            signal.signal(sig, _note_signal)


def exit_now(code: int) -> None:
    """Exit with ``code``, whatever signals still come.

    SIGTERM/SIGINT are ignored from here on: the valve is closed and released, so there is
    nothing left for them to stop, and Python's teardown would otherwise put back the default
    action (the process would die of a signal sent during it). If a worker thread outlived the
    shutdown (a writer past its timeout, a model still loading), the teardown is skipped:
    Python ends such threads with ``pthread_exit``, which aborts the process when the thread is
    inside OpenCV or onnxruntime (C++). Logs and streams are flushed first."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if not alive:
        sys.exit(code)
    logging.getLogger("autosink.edge").warning(
        "exiting with threads still running (%s): skipping teardown", ", ".join(alive)
    )
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fetch"]:
        return fetch_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.max_frames < 0:
        print("edge/run.py: --max-frames must be >= 0", file=sys.stderr)
        return 2
    _install_signal_notes()  # before the slow imports and the start-up: no signal may raise from here on

    from autosink.edge.settings import ConfigError, load_config, merge_config
    from autosink.edge.wiring import close_valve_from_config

    try:
        cfg = merge_config(load_config(args.config), _overrides(args), "command line")
    except ConfigError as e:
        print(f"edge/run.py: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(cfg["log"]["level"]).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("autosink.edge")
    if args.print_config:
        import json

        print(json.dumps(cfg, indent=2))
        return 0
    if args.close_valve:
        close_valve_from_config(cfg)
        return 0

    from autosink.edge.camera import CameraError
    from autosink.edge.feedback import replay_user
    from autosink.edge.inference import ModelError
    from autosink.edge.wiring import build_runtime

    try:
        feedback = None
        if args.replay_user:
            cfg, feedback = replay_user(cfg)
        runtime = build_runtime(cfg, max_frames=args.max_frames, feedback=feedback)
    except (ConfigError, ModelError, CameraError, ValueError, OSError, ImportError) as e:
        log.error("cannot start: %s", e)
        return 2
    if _signals_outside_the_loop:
        log.info("%s received during start-up: stopping", _signals_outside_the_loop[0])
        runtime.stop(_signals_outside_the_loop[0])
    try:
        runtime.run()
    except KeyboardInterrupt:  # not from our handlers (they never raise); the valve was closed on the way out
        return 0
    except Exception:
        log.exception("edge runtime failed (valve closed)")
        return 1
    return 0


if __name__ == "__main__":
    exit_now(main())
