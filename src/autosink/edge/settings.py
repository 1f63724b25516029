"""The edge's configuration: the schema and its defaults (:data:`DEFAULT_CONFIG`, which
``edge/config.toml`` documents key by key), and reading and merging TOML overrides on top of
them, strictly (unknown sections or keys and wrong types are errors, not silently ignored).

Kept apart from the loop (:mod:`.runtime`) and its wiring (:mod:`.wiring`): the settings are
plain data that ``edge/run.py`` (the model fetch included), the simulations and the water
benchmark read without needing either.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_CONFIG", "ConfigError", "merge_config", "load_config"]

# The defaults; edge/config.toml documents every key (and must list the same keys).
DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    "camera": {"source": "picamera2", "fps": 5.0, "read_timeout_s": 0.5, "reopen_after_s": 10.0},
    "model": {
        "path": "models/production/model.onnx",
        "threads": 2,
        "reload_check_s": 5.0,
        "selftest_png": "",
        "selftest_max_s": 1.0,
    },
    "controller": {
        "on_threshold": 0.55,
        "off_threshold": 0.2,
        "smoothing": 0.75,
        "min_on_s": 1.0,
        "min_off_s": 1.0,
        "max_open_s": 60.0,
        "stale_frame_s": 1.0,
        "forced_on_hold_s": 10.0,
    },
    "valve": {"kind": "gpio:17", "active_high": True, "flow_l_min": 6.0},
    "inputs": {
        "faucet": "gpio:27",
        "button": "gpio:22",
        "pull_up": True,
        "debounce_s": 0.05,
        "handle_open_forces_on": True,
    },
    "recorder": {
        "spool": "spool",
        "user_id": "",
        "pre_s": 3.0,
        "post_s": 3.0,
        "record_fps": 2.0,
        "max_episode_s": 120.0,
        "session_gap_s": 600.0,
    },
    "upload": {
        "to": "",
        "gdrive_credentials": "",
        "min_backoff_s": 5.0,
        "max_backoff_s": 600.0,
        "poll_s": 30.0,
        "spool_max_mb": 2048.0,
        "drain_s": 5.0,
    },
    "log": {"level": "INFO", "stats_every_s": 3600.0},
    "fetch": {
        "source": "",
        "interval_s": 900.0,
        "timeout_s": 600.0,
        "repo": "",
        "rev": "",
        "path": "models/production",
        "remote": "",
        "remote_config": [],
        "dvc_config": "",
        "artifact": "",
    },
}


class ConfigError(ValueError):
    pass


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """``override`` on top of ``base``; unknown sections/keys and wrong types are errors (typos)."""
    out = copy.deepcopy(dict(base))
    for section, values in override.items():
        if section not in out:
            raise ConfigError(f"{where}: unknown section [{section}] (known: {', '.join(out)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key, value in values.items():
            if key not in out[section]:
                raise ConfigError(f"{where}: [{section}] unknown key {key!r} (known: {', '.join(out[section])})")
            default = out[section][key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif isinstance(default, list):
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            else:
                ok = isinstance(value, type(default))
            if not ok:
                raise ConfigError(f"{where}: [{section}] {key} = {value!r}: expected {type(default).__name__}")
            out[section][key] = float(value) if isinstance(default, float) else value
    return out


def load_config(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Defaults, overridden by the TOML file at ``path`` (None: defaults only)."""
    import tomllib

    from autosink.core.fileio import NotRegularFileError, open_regular

    if path is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    try:
        with open_regular(path) as f:  # not a FIFO (blocks) or a device (endless)
            data = tomllib.load(f)
    except NotRegularFileError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    return merge_config(DEFAULT_CONFIG, data, str(path))
