"""Weights & Biases runs: which mode to log in and what names a run, shared by data validation,
training and promotion (each imports ``wandb`` itself, only when it logs; this module does not).

Mode: the configured one (offline | online | auto | disabled; auto = online when
``WANDB_API_KEY`` is set), overridden by the ``WANDB_MODE`` environment variable; ``online`` only
when ``WANDB_API_KEY`` is set, else offline (with the reason, for a log line).
"""

from __future__ import annotations

import os

from autosink.core.proc import git_revision

MODES = ("online", "offline", "disabled")


def resolve_mode(configured: str | None, env: dict | None = None) -> tuple[str, str | None]:
    """The wandb mode to use and, when it differs from what was asked, why."""
    env = os.environ if env is None else env
    mode = (env.get("WANDB_MODE") or configured or "offline").strip().lower()
    if mode == "dryrun":
        mode = "offline"
    if mode == "auto":  # online exactly when a key is there to use
        mode = "online" if env.get("WANDB_API_KEY") else "offline"
    if mode not in MODES:
        return "offline", f"unknown wandb mode {mode!r}: using offline"
    if mode == "online" and not env.get("WANDB_API_KEY"):
        return "offline", "wandb mode online but WANDB_API_KEY is not set: logging offline instead"
    return mode, None


def run_identity(job_type: str, key: str, env: dict | None = None) -> dict:
    """``wandb.init`` arguments that trace a run back to its DVC experiment and git revision.

    name ``<experiment>-<job_type>`` (the experiment: ``DVC_EXP_NAME``, which `dvc exp run` sets,
    else ``workspace``), group = the experiment, tags ``[experiment, git-<revision>]``, and an id
    derived from ``key`` (what defines the run, e.g. the training fingerprint): the id is recorded
    in the model card, a DVC output that must come out the same on every machine, so the same
    inputs give the same id and a rerun resumes that run (``resume="allow"``).
    """
    env = os.environ if env is None else env
    experiment = env.get("DVC_EXP_NAME") or "workspace"
    revision = git_revision()
    return {
        "name": f"{experiment}-{job_type}",
        "group": experiment,
        "job_type": job_type,
        "tags": [experiment, f"git-{revision[:12]}" + ("-dirty" if revision.endswith("-dirty") else "")],
        "id": f"{job_type}-{key[:16]}",
        "resume": "allow",
    }
