"""Parameters: ``conf/`` (Hydra) is the source, ``params.yaml`` the composed copy.

Stage scripts read ``params.yaml`` only (never ``@hydra.main``), because
``dvc exp run -S key=value`` writes its overrides into ``params.yaml`` and a
Hydra entry point would silently ignore them. We compose with DVC's own
function so ``make params`` writes byte-for-byte what ``dvc exp run`` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONF_DIR = "conf"
CONF_NAME = "config"
PARAMS_FILE = "params.yaml"


def project_root(start: Path | None = None) -> Path:
    """The nearest folder above ``start`` (default: cwd) holding dvc.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    raise FileNotFoundError(f"no dvc.yaml in {here} or any parent: run this inside the autosink repository")


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml (what every stage uses)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run `make params` to compose it from conf/")
    with path.open() as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    return params


def compose(root: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Compose conf/ exactly as ``dvc exp run`` does and return it as a dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str((root / CONF_DIR).resolve()), version_base=None):
        cfg = hydra_compose(config_name=CONF_NAME, overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def write_params(root: Path, overrides: list[str] | None = None) -> Path:
    """Recompose params.yaml from conf/ with DVC's own writer (same bytes as `dvc exp run`)."""
    from dvc.utils.hydra import compose_and_dump

    out = root / PARAMS_FILE
    compose_and_dump(out, str((root / CONF_DIR).resolve()), None, CONF_NAME, str(root), overrides or [])
    return out


def diff_params(expected: Any, actual: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested parameter trees."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        lines = []
        for key in sorted(set(expected) | set(actual), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in actual:
                lines.append(f"{name}: in conf/ but missing from params.yaml")
            elif key not in expected:
                lines.append(f"{name}: in params.yaml but not in conf/")
            else:
                lines.extend(diff_params(expected[key], actual[key], name))
        return lines
    if expected != actual:
        return [f"{prefix}: conf/ composes {expected!r}, params.yaml has {actual!r}"]
    return []


def check_params(root: Path) -> list[str]:
    """Differences between the committed params.yaml and what conf/ composes (empty = in sync)."""
    return diff_params(compose(root), load_params(root / PARAMS_FILE))
