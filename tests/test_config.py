"""params.yaml must be exactly what conf/ composes (what `dvc exp run` would write)."""

from __future__ import annotations

import shutil

import yaml

from autosink.ops.config import check_params, compose, diff_params, write_params


def test_committed_params_yaml_matches_conf(repo_root):
    diffs = check_params(repo_root)
    assert not diffs, (
        "params.yaml is stale: it differs from what conf/ composes:\n  "
        + "\n  ".join(diffs)
        + "\nRun `make params` and commit params.yaml."
    )


def test_stale_params_are_reported_by_key(repo_root, tmp_path):
    for name in ("conf", "dvc.yaml", "params.yaml"):
        src = repo_root / name
        shutil.copytree(src, tmp_path / name) if src.is_dir() else shutil.copy(src, tmp_path / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["sim"]["seed"] = params["sim"]["seed"] + 1
    params["data"]["unexpected"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    diffs = check_params(tmp_path)
    assert any(d.startswith("sim.seed: conf/ composes") for d in diffs)
    assert "data.unexpected: in params.yaml but not in conf/" in diffs
    write_params(tmp_path)  # `make params` repairs it
    assert check_params(tmp_path) == []


def test_overrides_and_real_data_switch(repo_root):
    cfg = compose(repo_root, ["data=real", "sim.seed=123"])
    assert cfg["data"]["source"] == "real"
    assert cfg["data"]["lake"] == "data/data-lake"
    assert cfg["data"]["sim_lake"] != cfg["data"]["lake"]  # simulator moves aside for the real lake
    assert cfg["sim"]["seed"] == 123
    sample = compose(repo_root)
    assert sample["data"]["sim_lake"] == sample["data"]["lake"]


def test_diff_params_nested():
    assert diff_params({"a": {"b": 1}}, {"a": {"b": 1}}) == []
    assert diff_params({"a": {"b": 1}}, {"a": {}}) == ["a.b: in conf/ but missing from params.yaml"]


def test_model_configs_extend_one_base(repo_root):
    """conf/model/<backbone>.yaml holds only what differs; the rest comes from conf/model/_base.yaml."""
    from autosink.learn.model import BACKBONES

    folder = repo_root / "conf" / "model"
    base = yaml.safe_load((folder / "_base.yaml").read_text())
    assert base["backbone"] == "???"  # every option must set it (`model=_base` fails to compose)
    options = sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))
    assert options == sorted(BACKBONES)
    for name in options:
        own = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert own.pop("defaults") == ["_base", "_self_"], name
        repeated = sorted(k for k, v in own.items() if k in base and base[k] == v)
        assert not repeated, f"conf/model/{name}.yaml repeats {repeated} from _base.yaml: drop them"
        assert own["backbone"] == name
        expected = {**base, **own}
        expected["weights_file"] = base["weights_files"][base["weights"]]  # the interpolation, resolved
        assert compose(repo_root, [f"model={name}"])["model"] == expected
