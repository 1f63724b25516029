"""One source of truth for defaults: every code-side default that mirrors a conf/ group equals it.

conf/ is what the pipeline runs with. Code keeps its own copy only where it must not read conf/
at run time (the sim and water defaults are code that DVC tracks; the edge never sees conf/);
these tests fail, naming the key, the moment the two differ.
"""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest
import yaml

from autosink.data.labels import LabelRules
from autosink.data.validation.features import FeatureConfig
from autosink.edge.controller import ControllerConfig
from autosink.edge.settings import DEFAULT_CONFIG
from autosink.learn.cases import DEFAULT_MAX_REGRESSION, DEFAULT_MIN_ACCURACY
from autosink.learn.export import OPSET
from autosink.learn.quantize import DEFAULTS as INT8_DEFAULTS
from autosink.learn.water import DEFAULTS as WATER_DEFAULTS
from autosink.sim import DEFAULTS as SIM_DEFAULTS
from autosink.sim.scene import ROI


def conf(repo_root, group: str) -> dict:
    return yaml.safe_load((repo_root / "conf" / group / "default.yaml").read_text())


def _plain(v):
    """Tuples (dataclass fields) compare as the lists YAML gives."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def drift(code: dict, conf_values: dict, group: str, prefix: str = "") -> list[str]:
    """Key-by-key differences between code defaults and conf/<group>/default.yaml."""
    lines = []
    for key in sorted(set(code) | set(conf_values), key=str):
        name = f"{prefix or group}.{key}"
        if key not in code:
            lines.append(f"{name}: in conf/{group}/default.yaml but not in the code's defaults")
        elif key not in conf_values:
            lines.append(f"{name}: in the code's defaults but not in conf/{group}/default.yaml")
        elif isinstance(code[key], dict) and isinstance(conf_values[key], dict):
            lines += drift(code[key], conf_values[key], group, name)
        elif _plain(code[key]) != _plain(conf_values[key]):
            lines.append(f"{name}: code has {code[key]!r}, conf/ has {conf_values[key]!r}")
    return lines


def assert_same(code: dict, conf_values: dict, where: str) -> None:
    diffs = drift(code, conf_values, where)
    assert not diffs, "code defaults differ from conf/ (make the code match conf/):\n  " + "\n  ".join(diffs)


def test_drift_names_the_key():
    assert drift({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": (1, 2)}}, "g") == []
    assert drift({"users": 8, "x": 1}, {"users": 16, "y": 2}, "sim") == [
        "sim.users: code has 8, conf/ has 16",
        "sim.x: in the code's defaults but not in conf/sim/default.yaml",
        "sim.y: in conf/sim/default.yaml but not in the code's defaults",
    ]
    assert drift({"c": {"k": None}}, {"c": {"k": 1.0, "n": 2}}, "water") == [
        "water.c.k: code has None, conf/ has 1.0",
        "water.c.n: in conf/water/default.yaml but not in the code's defaults",
    ]
    with pytest.raises(AssertionError, match=r"sim\.users: code has 8, conf/ has 16"):
        assert_same({"users": 8}, {"users": 16}, "sim")


def test_sim_defaults_are_conf(repo_root):
    assert_same(SIM_DEFAULTS, conf(repo_root, "sim"), "sim")


def test_water_defaults_are_conf(repo_root):
    assert_same(WATER_DEFAULTS, conf(repo_root, "water"), "water")


def test_label_rules_defaults_are_conf(repo_root):
    label = conf(repo_root, "label")
    rules = asdict(LabelRules())
    assert_same(rules, {k: v for k, v in label.items() if k in rules}, "label")
    # the rest belongs to the label stage, not to the rules; a new rule in conf/ without a
    # LabelRules field would be dropped silently by LabelRules.from_params
    assert set(label) - set(rules) == {"default_fps", "truth_dir"}


def test_feature_config_defaults_are_conf(repo_root):
    validate = conf(repo_root, "validate")
    code = asdict(FeatureConfig())
    assert_same(code, {"roi": validate["roi"], "roi_frame": validate["roi_frame"], **validate["features"]}, "validate")
    assert list(ROI) == validate["roi"]  # the simulator's region under the faucet


def test_gate_and_export_constants_are_conf(repo_root):
    vm = conf(repo_root, "validate_model")
    assert_same(
        {"min_accuracy": DEFAULT_MIN_ACCURACY, "max_regression": DEFAULT_MAX_REGRESSION},
        {k: vm[k] for k in ("min_accuracy", "max_regression")},
        "validate_model",
    )
    assert_same({"opset": OPSET}, {"opset": conf(repo_root, "export")["opset"]}, "export")


def test_int8_defaults_are_conf(repo_root):
    assert_same(INT8_DEFAULTS, conf(repo_root, "export")["int8"], "export.int8")


def test_controller_defaults_are_the_edge_defaults():
    # the edge's own config (edge/config.toml) is tested against DEFAULT_CONFIG in
    # tests/test_edge_runtime.py; the water benchmark reads it, conf/water only overrides
    assert_same(asdict(ControllerConfig()), DEFAULT_CONFIG["controller"], "controller")
    assert set(WATER_DEFAULTS["controller"]) == {f.name for f in fields(ControllerConfig)}
