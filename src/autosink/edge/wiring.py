"""Building the edge runtime from a merged config (:mod:`autosink.edge.settings`): the valve,
the model (fetched first on a fresh Pi, then hot-reloaded), the GPIO inputs, the recorder, the
uploader, the camera and the periodic model fetcher, each made from its section and handed to
:class:`~autosink.edge.runtime.EdgeRuntime`; and the two things ``edge/run.py`` does with a
config (run it, or just close the configured valve). Kept apart from the loop so the loop
stays testable with every part injected, and the hardware-facing imports stay in one place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Mapping
from typing import Any

from autosink.edge.camera import Camera
from autosink.edge.clock import SystemClock
from autosink.edge.controller import ControllerConfig
from autosink.edge.feedback import Feedback, GpioFeedback
from autosink.edge.inference import ModelReloader
from autosink.edge.runtime import EdgeRuntime
from autosink.edge.settings import ConfigError
from autosink.edge.stats import RunStats

__all__ = [
    "load_regular_model",
    "recorder_from_config",
    "build_runtime",
    "run_from_config",
    "close_valve_from_config",
]

log = logging.getLogger("autosink.edge")


def _default_user_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "") or "pi"
    return name


def load_regular_model(path: str | os.PathLike[str], *, threads: int = 2) -> Any:
    """:func:`~autosink.edge.inference.load_model`, for regular files only: a model or card that
    is a device, FIFO or socket is a :class:`ModelError` at once (reading ``/dev/zero`` never
    ends, a FIFO blocks). Logs what it loaded, with the card's ``precision`` (``fp32``/``int8``).
    Here rather than in ``inference`` so the training stage, which depends on that module, is not
    invalidated."""
    from autosink.core.fileio import not_regular
    from autosink.core.modelcard import card_path_for
    from autosink.edge.inference import ModelError, load_model

    for p, what in ((path, "the model's .onnx file"), (card_path_for(path), "the model's card")):
        if kind := not_regular(p):
            raise ModelError(f"{p}: is {kind}, not a regular file (expected {what})")
    model = load_model(path, threads=threads)
    # fp32 (the export) or int8 (the quantize stage's model.int8.onnx); a card without the field is fp32
    precision = model.card.get("precision", "fp32")
    log.info("model loaded: %s, version %s, %s, sha256 %s", path, model.version, precision, model.sha256[:12])
    return model


def recorder_from_config(c_rec: Mapping[str, Any], spool: Any, user_id: str, **kw: Any) -> Any:
    """A :class:`~autosink.edge.recorder.Recorder` with the ``[recorder]`` section's episode
    settings (``kw``: the recorder's other arguments, e.g. ``background``)."""
    from autosink.edge.recorder import Recorder

    return Recorder(
        spool,
        user_id=user_id,
        pre_s=c_rec["pre_s"],
        post_s=c_rec["post_s"],
        record_fps=c_rec["record_fps"],
        max_episode_s=c_rec["max_episode_s"],
        session_gap_s=c_rec["session_gap_s"],
        **kw,
    )


def build_runtime(
    cfg: Mapping[str, Any],
    *,
    clock: Any = None,
    feedback: Feedback | None = None,
    valve: Any = None,
    camera: Camera | None = None,
    model: Any = None,
    max_frames: int | None = None,
    background: bool = True,
    install_signals: bool = True,
    fetch_source: Any = None,
) -> EdgeRuntime:
    """Wire every part from a merged config (see :data:`~autosink.edge.settings.DEFAULT_CONFIG`).
    Parts passed in are used as they are (tests, simulations; ``fetch_source`` replaces the source
    ``[fetch]`` names). The valve is made first and closed again if anything after it fails, so a
    bad config never leaves it open."""
    from autosink.edge.camera import open_camera
    from autosink.edge.devices import make_input, make_valve
    from autosink.edge.fetch import PeriodicFetcher, fetch_model
    from autosink.edge.install import recover_install
    from autosink.edge.sources import FetchError, make_source
    from autosink.edge.uploader import Uploader, make_target

    clock = clock or SystemClock()
    c_cam, c_model, c_valve, c_in = cfg["camera"], cfg["model"], cfg["valve"], cfg["inputs"]
    c_rec, c_up, c_fetch = cfg["recorder"], cfg["upload"], cfg["fetch"]
    controller_cfg = ControllerConfig.from_dict(cfg["controller"])  # validate before touching hardware
    if fetch_source is None and c_fetch["source"]:
        try:
            fetch_source = make_source(c_fetch)
        except FetchError as e:
            raise ConfigError(str(e)) from None
    if valve is None:
        valve = make_valve(c_valve["kind"], active_high=c_valve["active_high"])
    made: list[Any] = []  # inputs and recorder, closed again if a later part fails
    try:
        if model is None:
            recover_install(c_model["path"], wait_s=10.0)  # a fetch cut off between its two renames
            selftest = c_model["selftest_png"] or None
            if fetch_source is not None and not os.path.exists(c_model["path"]):  # a fresh Pi: fetch it first
                log.warning(
                    "no model at %s: fetching the production model from %s", c_model["path"], fetch_source.describe()
                )
                res = fetch_model(
                    fetch_source,
                    c_model["path"],
                    threads=1,
                    selftest_png=selftest,
                    selftest_max_s=c_model["selftest_max_s"],
                )
                (log.info if res.ok else log.error)("model fetch %s: %s", res.status, res.message)
            threads = int(c_model["threads"])
            model = ModelReloader(
                c_model["path"],
                threads=threads,
                selftest_png=selftest,
                selftest_max_s=c_model["selftest_max_s"],
                background=background,
                loader=lambda p: load_regular_model(p, threads=threads),
            )
            log.info(
                "model %s loaded (card version %s, threshold %.3f)",
                c_model["path"],
                model.model.version,
                model.model.threshold,
            )
        current = model.model if hasattr(model, "model") else model
        width, height = int(getattr(current, "width", 640)), int(getattr(current, "height", 480))
        if feedback is None:
            kw = {"pull_up": c_in["pull_up"], "debounce_s": c_in["debounce_s"]}
            specs = {"faucet": c_in["faucet"] or None, "button": c_in["button"] or None}
            if str(c_valve["kind"]).strip() == "fake":  # a simulation: no GPIO at all
                for name, spec in specs.items():
                    if spec and spec.startswith("gpio"):
                        log.info("valve is fake: input %s (%s) not used", name, spec)
                        specs[name] = None
            faucet = make_input(specs["faucet"], **kw)
            made.append(faucet)
            button = make_input(specs["button"], **kw)
            made.append(button)
            feedback = GpioFeedback(faucet, button, handle_open_forces_on=c_in["handle_open_forces_on"])
        target = make_target(c_up["to"] or None, credentials_path=c_up["gdrive_credentials"] or None)
        uploader = Uploader(
            c_rec["spool"],
            target,
            min_backoff_s=c_up["min_backoff_s"],
            max_backoff_s=c_up["max_backoff_s"],
            poll_s=c_up["poll_s"],
            spool_max_mb=c_up["spool_max_mb"],
        )
        recorder = recorder_from_config(
            c_rec,
            c_rec["spool"],
            c_rec["user_id"] or _default_user_id(),
            background=background,
            used_stems=uploader.names,
            on_written=uploader.wake,
        )
        made.append(recorder)
        if camera is None:
            camera = open_camera(c_cam["source"], clock=clock.monotonic, width=width, height=height, fps=c_cam["fps"])
        fetcher = None
        if fetch_source is not None and c_fetch["interval_s"] > 0:
            fetcher = PeriodicFetcher(
                fetch_source,
                c_model["path"],
                interval_s=c_fetch["interval_s"],
                reloader=model,
                threads=1,
                selftest_png=c_model["selftest_png"] or None,
                selftest_max_s=c_model["selftest_max_s"],
                background=background,
            )
        if background:
            uploader.start()
        log.info(
            "edge runtime: camera %s, valve %r, spool %s, upload %s, user %s, model fetch %s",
            c_cam["source"],
            valve,
            c_rec["spool"],
            target.describe() if target else "off",
            recorder.user_id,
            f"every {c_fetch['interval_s']:g} s from {fetch_source.describe()}" if fetcher else "off",
        )
        return EdgeRuntime(
            camera=camera,
            model=model,
            valve=valve,
            controller=controller_cfg,
            feedback=feedback,
            recorder=recorder,
            uploader=uploader,
            clock=clock,
            fps=c_cam["fps"],
            max_frames=max_frames,
            read_timeout_s=c_cam["read_timeout_s"],
            reopen_after_s=c_cam["reopen_after_s"],
            reload_check_s=c_model["reload_check_s"],
            flow_l_min=c_valve["flow_l_min"],
            stats_every_s=cfg["log"]["stats_every_s"],
            drain_s=c_up["drain_s"],
            install_signals=install_signals,
            fetcher=fetcher,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            valve.set(False)
        with contextlib.suppress(Exception):
            valve.close()
        for part in made:
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()
        raise


def run_from_config(cfg: Mapping[str, Any], *, max_frames: int | None = None, **kw: Any) -> RunStats:
    """Build and run (what ``edge/run.py`` does)."""
    return build_runtime(cfg, max_frames=max_frames, **kw).run()


def close_valve_from_config(cfg: Mapping[str, Any]) -> None:
    """Drive the configured valve closed and release it (systemd ``ExecStopPost``: whatever
    happened to the main process, the relay ends up off)."""
    from autosink.edge.devices import make_valve

    valve = make_valve(cfg["valve"]["kind"], active_high=cfg["valve"]["active_high"])
    try:
        valve.set(False)
    finally:
        valve.close()
    log.info("valve %s closed", cfg["valve"]["kind"])
