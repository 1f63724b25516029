"""`train` stage: feature store + splits -> models/model.ckpt, metrics/train.json, training curves;
then the decision threshold, chosen in the edge controller's closed loop (autosink.learn.decision)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import torch

from autosink.learn.model import NO_CHECKPOINT, build_preprocess
from autosink.learn.renders import RenderCache
from autosink.learn.training import HISTORY_COLUMNS, fit, load_trained
from autosink.stages import write_metrics, write_run_record

STORE = Path("data/feature-store")
GATE = Path("reports/data_validation/verdict.json")
CKPT = Path("models/model.ckpt")
METRICS = Path("metrics/train.json")
HISTORY = Path("metrics/train/history.csv")
DECISION = Path("metrics/train/decision.csv")


def check_data_gate(path: Path = GATE) -> None:
    """Refuse to train on data that failed validate_data (when its gate is enforced)."""
    if not path.exists():
        return
    verdict = json.loads(path.read_text())
    if verdict.get("enforced") and not verdict.get("passed", True):
        raise ValueError(f"{path}: the data validation gate failed; fix the data or set validate.enforce=false")


def warm_recipe(params: dict) -> dict:
    """``params`` with ``train.warm`` laid over ``train`` when training starts from the production
    model (``model.weights=production``): fine-tuning a model that already knows the lake takes
    less than the first fine-tuning of the base model. Nested keys merge (``replay.share``)."""
    warm = params["train"].get("warm") or {}
    if str(params["model"].get("weights")) != "production" or not warm:
        return params

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out

    return {**params, "train": merge(params["train"], warm)}


def replay_pairs(params: dict, progress: bool = True):
    """The base model's rendered kitchens to mix into fine-tuning (``train.replay``), or None."""
    r = params["train"].get("replay") or {}
    if not float(r.get("share") or 0) > 0 or str(params["model"].get("weights")) in NO_CHECKPOINT:
        return None, 0.0
    from autosink.learn.base import PairDataset, base_sessions, render_pairs

    sessions = base_sessions(params["sim"], {**params["base"], "users": int(r["users"])}, "train")
    preprocess = build_preprocess(params["model"], params["data"])
    cache = RenderCache.from_params(params, preprocess)
    pairs = render_pairs(sessions, preprocess, int(r.get("every", 1)), progress, desc="replay", cache=cache)
    return PairDataset(pairs, "random", stratify=float(r.get("stratify") or 0.0)), float(r["share"])


def choose_in_loop(params: dict, ckpt: Path = CKPT, progress: bool = True) -> dict:
    """Choose the threshold on the tuning sessions through the edge's controller; store it in
    the checkpoint (which evaluate, the case gate and the export read) and return the choice."""
    from autosink.learn.decision import choose, pair_probabilities, sweep, tune_scripts
    from autosink.learn.water import controller_config
    from autosink.sim.session import wants_water

    d = params["train"].get("decision") or {}
    water = params["water"]
    net, _ = load_trained(ckpt)
    scripts = tune_scripts(
        {**params["sim"], "fps": float(water["fps"]), "dishes_per_session": water["dishes_per_session"]},
        int(d.get("sessions", 8)),
    )
    cache = RenderCache.from_params(params, net.preprocess)
    probs = pair_probabilities(net, scripts, progress=progress, cache=cache)
    needs = [[wants_water(st) for st in s.states] for s in scripts]
    rows = sweep(probs, needs, controller_config(water), float(water["fps"]), float(water["flow_l_min"]))
    best, why = choose(rows, float(d.get("max_withheld_pct", 3.0)), float(d.get("max_false_offs_per_10min", 1.0)))
    DECISION.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(DECISION, index=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["autosink"]["threshold_accuracy"] = state["autosink"]["threshold"]
    state["autosink"]["threshold"] = float(best["threshold"])
    state["autosink"]["threshold_rule"] = f"closed loop on {len(scripts)} tuning sessions: {why}"
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, ckpt)
    return {
        "threshold": float(best["threshold"]),
        "rule": state["autosink"]["threshold_rule"],
        "tuning": {k: best[k] for k in ("withheld_pct", "litres", "false_offs_per_10min", "savings_pct")},
        "render_cache": cache.summary() if cache is not None else None,
    }


def run(params: dict, progress: bool = True) -> dict:
    check_data_gate()
    params = warm_recipe(params)
    version_file = STORE / "version.json"
    data_version = json.loads(version_file.read_text())["version"] if version_file.exists() else ""
    started = time.perf_counter()
    replay, share = replay_pairs(params, progress)
    replayed = time.perf_counter()
    result = fit(
        params,
        store_dir=STORE,
        out_ckpt=CKPT,
        progress=progress,
        data_version=data_version,
        replay=replay,
        replay_share=share,
    )
    if not result:  # a DDP worker other than rank 0: rank 0 writes the results
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        print(f"train: rank {rank}/{world} done; rank 0 writes the results", flush=True)
        return result
    history = result.pop("history")
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_csv(HISTORY, index=False)
    result["data_version"] = data_version
    result["threshold_accuracy"] = result["threshold"]
    # where a run's time went (the fit's own loop time is result["seconds"]); not a DVC output
    result["stage_seconds"] = {"replay": round(replayed - started, 2), "fit": round(time.perf_counter() - replayed, 2)}
    if params["train"].get("threshold") == "closed-loop":
        chosen = time.perf_counter()
        decision = choose_in_loop(params, CKPT, progress)
        result["stage_seconds"]["threshold"] = round(time.perf_counter() - chosen, 2)
        result["render_cache"] = decision["render_cache"]
        result["threshold"] = decision["threshold"]
        result["threshold_rule"] = decision["rule"]
        result["tuning"] = decision["tuning"]
    val, tuning = result["val"], result.get("tuning") or {}
    # what a person compares across experiments, and the wandb run that logged it (the threshold
    # rule and the data version are in the model card; everything else in runs/stages/train.json)
    write_metrics(
        METRICS,
        {
            "val_accuracy": val["accuracy"],
            "threshold": result["threshold"],
            "tune_withheld_pct": tuning.get("withheld_pct"),
            "tune_false_offs": tuning.get("false_offs_per_10min"),
            "wandb_run_id": result.get("wandb_run_id"),
        },
    )
    write_run_record("train", result)
    print(
        f"train: {result['backbone']} {result['epochs']} epochs (best {result['best_epoch']}), "
        f"{result['images_per_s']:.0f} images/s; val accuracy {val['accuracy']:.3f} f1 {val['f1']:.3f} "
        f"at threshold {result['threshold_accuracy']:.2f} -> models/model.ckpt"
    )
    if "threshold_rule" in result:
        print(f"train: threshold {result['threshold']:.2f}, {result['threshold_rule']}")
    return result
