#!/usr/bin/env python3
"""autosink edge runtime: camera -> ONNX model -> valve, on the Raspberry Pi.

    python edge/run.py                      # everything from edge/config.toml
    python edge/run.py --camera folder:frames/ --valve fake --max-frames 100

Run it from the checkout's root (relative paths in the config are relative to the current
directory). Needs only edge/requirements.txt; see edge/README.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EDGE_DIR = Path(__file__).resolve().parent
_SRC = EDGE_DIR.parent / "src"
if (_SRC / "autosink" / "episode.py").is_file() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # run from a checkout: no install needed

DEFAULT_CONFIG = EDGE_DIR / "config.toml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge/run.py",
        description="autosink on the Raspberry Pi: camera -> ONNX model -> valve; saves a feedback episode "
                    "whenever the user overrides the model and uploads it to the data lake. Defaults come "
                    "from edge/config.toml; options given here win.",
        epilog="SIGTERM/SIGINT close the valve and stop. Exit status: 0 stopped normally, 2 bad configuration "
               "(model, camera, devices), 1 anything else (the valve is closed in every case).")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="TOML config (default: %(default)s)")
    p.add_argument("--model", help="ONNX model; its card model.json sits beside it "
                                   "(config default: models/production/model.onnx)")
    p.add_argument("--camera", help="picamera2 | opencv:<index> | video:<path> | folder:<path> | episode:<zip>")
    p.add_argument("--valve", help="gpio | gpio:<bcm pin> | serial:<port> | fake")
    p.add_argument("--spool", help="folder where episodes wait for upload")
    p.add_argument("--upload-to", help="data lake: a folder, or gdrive://<folder-id>; '' for no upload")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--fps", type=float, help="frames per second processed (0: as fast as the source gives them)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument("--user-id", help="user_id written into episodes (default: the host name)")
    p.add_argument("--no-inputs", action="store_true", help="ignore the GPIO reed switch and button")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument("--close-valve", action="store_true",
                   help="only drive the configured valve closed and exit (systemd ExecStopPost)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.max_frames < 0:
        print("edge/run.py: --max-frames must be >= 0", file=sys.stderr)
        return 2

    from autosink.edge.runtime import ConfigError, close_valve_from_config, load_config, merge_config

    try:
        cfg = merge_config(load_config(args.config), _overrides(args), "command line")
    except ConfigError as e:
        print(f"edge/run.py: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, str(cfg["log"]["level"]).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log = logging.getLogger("autosink.edge")
    if args.print_config:
        import json

        print(json.dumps(cfg, indent=2))
        return 0
    if args.close_valve:
        close_valve_from_config(cfg)
        return 0

    from autosink.edge.camera import CameraError
    from autosink.edge.inference import ModelError
    from autosink.edge.runtime import build_runtime

    try:
        runtime = build_runtime(cfg, max_frames=args.max_frames)
    except (ConfigError, ModelError, CameraError, ValueError, OSError, ImportError) as e:
        log.error("cannot start: %s", e)
        return 2
    try:
        runtime.run()
    except KeyboardInterrupt:  # a second SIGINT/SIGTERM: the valve was closed on the way out
        return 0
    except Exception:
        log.exception("edge runtime failed (valve closed)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
