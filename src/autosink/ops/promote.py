"""Promote the pipeline's candidate model to ``models/production`` (what the Pis fetch), or roll back.

The candidate is what ``dvc repro`` leaves in ``models/``: ``model.onnx`` with its card
``model.json``, the checkpoint ``model.ckpt`` it was exported from, and the case gate's verdict
``metrics/cases.json``. :func:`promote` refuses (:class:`PromotionError`) a candidate that is
incomplete, whose card does not describe its ``model.onnx``, whose gate verdict is about another
checkpoint, or that failed the gate. Otherwise it copies the three files and a ``promotion.json``
(who, when, which data, the gate's summary) into a temp folder beside production and swaps it in
(with them the int8 model ``model.int8.onnx`` and its card, when the ``quantize`` stage made them
from this very ``model.onnx`` and the int8 model passed its own case gate; see :func:`_check_int8`):
the old production becomes ``models/previous`` (replacing an older one), and a reader sees the
old production folder or the new one, never a half-written one (on Linux the swap is a single
``renameat2(RENAME_EXCHANGE)``, so the folder is never even missing). :func:`rollback` swaps
production and previous back (a second rollback re-promotes).

Then, in a DVC repository: ``dvc add models/production models/previous`` (tracked by the .dvc
files that git tracks), ``git add`` of those .dvc files and ``models/.gitignore`` (nothing is
committed: the result carries the ``git commit`` hint), a W&B artifact ``autosink-model`` (type
``model``, aliases ``production`` and the card's version; offline unless ``WANDB_API_KEY`` is set,
under ``<root>/wandb/``; a W&B failure is reported, never undoes anything) and ``dvc push`` to
the default remote. A failing DVC or git command raises :class:`PromotionError` naming the
command and saying that the files are promoted locally.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ctypes.util
import datetime as dt
import json
import os
import re
import shlex
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from autosink.core.fileio import atomic_write, fsync_dir, sha256_file
from autosink.core.modelcard import CardError, read_card
from autosink.core.proc import CommandError, output
from autosink.ops.workspace import git, is_dvc, is_git

__all__ = ["PromotionError", "promote", "rollback", "production_status", "CANDIDATE", "PRODUCTION", "PREVIOUS"]

MODELS = Path("models")
#: The image features of the data the candidate was trained on (validate_data's cache); copied to
#: production as data_features.csv, the reference that validate_data measures new data's drift against.
DATA_FEATURES = Path("data/validation/image_features.csv")
TRAIN_SPLIT = Path("data/splits/train.csv")


def _write_training_features(root: Path, dest: Path) -> None:
    """The image features of the candidate's training frames (rows of validate_data's cache whose
    path is in the training split): the reference validate_data compares the next data with."""
    if not (root / DATA_FEATURES).is_file() or not (root / TRAIN_SPLIT).is_file():
        return
    with open(root / TRAIN_SPLIT, newline="") as f:
        train = {row["path"] for row in csv.DictReader(f)}
    with open(root / DATA_FEATURES, newline="") as f, open(dest, "w", newline="") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        writer.writerows(row for row in reader if row.get("path") in train)
        out.flush()
        os.fsync(out.fileno())


CANDIDATE = {
    "model.onnx": MODELS / "model.onnx",
    "model.json": MODELS / "model.json",
    "model.ckpt": MODELS / "model.ckpt",
}
#: the int8 edge model the ``quantize`` stage makes from the candidate (optional, see :func:`_check_int8`)
INT8 = {
    "model.int8.onnx": MODELS / "model.int8.onnx",
    "model.int8.json": MODELS / "model.int8.json",
}
CASES = Path("reports/cases.json")  # the gate's verdict (metrics/cases.json: its headline numbers)
#: what a user can do when the gate refused the candidate
NEXT_STEPS = """next steps:
  - see why: the per-case lines `dvc repro validate_model` printed (frames, accuracy, Wilson interval),
    metrics/cases.json; the held-out water numbers in metrics/water.json
  - more or better data: new episodes in the lake, or review the unsure labels (`autosink labeler`),
    then `dvc repro`
  - another recipe: `dvc exp run -S train.max_epochs=4` (or -S base.users=240, -S model=resnet18, ...),
    compare with `dvc exp show`, keep the winner with `dvc exp apply <name>`, then `autosink promote`
  - try the candidate at a sink anyway, without promoting it:
    python edge/run.py --model models/model.onnx --camera episode:<a lake episode .zip> --valve fake --fps 0"""
PRODUCTION = MODELS / "production"
PREVIOUS = MODELS / "previous"
RECORD = "promotion.json"
ARTIFACT = "autosink-model"


class PromotionError(ValueError):
    """A promotion or rollback refused or (partly) failed; the message says why and what is done.

    ``result`` holds what had been done when a later step failed (files promoted, ...), else None.
    """

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- commands


def _run(cmd: list[str], root: Path) -> str:
    """Run ``cmd`` in ``root`` (tools from PATH, this process's environment); its output, or
    PromotionError naming the command and showing its output."""
    try:
        return output(cmd, cwd=root)
    except CommandError as e:
        shown = " ".join(cmd)
        if e.returncode is None:  # not found
            raise PromotionError(f"`{shown}` failed: {e}") from None
        raise PromotionError(f"`{shown}` failed (exit {e.returncode}):\n{e.output}") from None


# --------------------------------------------------------------------------- folder moves

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two existing paths (Linux renameat2); else three renames (a is briefly away)."""
    libc_name = ctypes.util.find_library("c")
    fn = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: the filesystem can't, fall back
            raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")
    tmp = a.with_name(f".{a.name}.swap-{uuid.uuid4().hex[:8]}.tmp")
    os.rename(a, tmp)
    try:
        os.rename(b, a)
    except BaseException:
        os.rename(tmp, a)
        raise
    os.rename(tmp, b)


def _install(new: Path, production: Path, previous: Path) -> None:
    """Make the complete folder ``new`` production; the old production becomes previous."""
    if not production.exists():
        os.rename(new, production)
    else:
        trash = None
        if previous.exists():
            trash = previous.with_name(f".{previous.name}.old-{uuid.uuid4().hex[:8]}.tmp")
            os.rename(previous, trash)
        try:
            _exchange(new, production)  # production = new; `new` now holds the old production
        except BaseException:
            if trash is not None:
                os.rename(trash, previous)
            raise
        os.rename(new, previous)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(production.parent)


def _copy_durable(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- records


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PromotionError(f"{path}: cannot read ({e})") from None


def _gate_summary(cases: dict[str, Any]) -> dict[str, Any]:
    """passed, failures and each case's accuracy from the case gate's verdict."""
    per_case: dict[str, Any] = {}
    raw = cases.get("cases") or {}
    items = (
        raw.items()
        if isinstance(raw, dict)
        else ((c.get("name") or c.get("case") or str(i), c) for i, c in enumerate(raw) if isinstance(c, dict))
    )
    for name, value in items:
        if isinstance(value, dict):
            value = value.get("accuracy")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            per_case[str(name)] = value
    return {
        "passed": cases.get("passed") is True,
        "failures": list(cases.get("failures") or []),
        "case_accuracy": per_case,
    }


def _experiment(root: Path, given: str | None) -> str | None:
    if given:
        return given
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    branch = git(root, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        return branch
    return git(root, "rev-parse", "--short", "HEAD")


def _folder_info(folder: Path) -> dict[str, Any] | None:
    """What a production/previous folder holds (None when there is no such folder)."""
    if not folder.is_dir():
        return None
    info: dict[str, Any] = {"path": str(folder)}
    record = folder / RECORD
    if record.is_file():
        with contextlib.suppress(OSError, ValueError):
            rec = json.loads(record.read_text())
            for key in ("version", "model_sha256", "promoted_at", "experiment", "git_revision", "data_version"):
                info[key] = rec.get(key)
    onnx = folder / "model.onnx"
    if onnx.is_file():
        info["model_sha256"] = sha256_file(onnx)
        info.setdefault("version", None)
        with contextlib.suppress(CardError):
            info["version"] = read_card(folder / "model.json")["version"]
    else:
        info["problem"] = "model.onnx missing"
    int8 = folder / "model.int8.onnx"
    info["int8"] = None
    if int8.is_file():
        info["int8"] = {"model_sha256": sha256_file(int8), "version": None}
        with contextlib.suppress(CardError):
            info["int8"]["version"] = read_card(folder / "model.int8.json")["version"]
    return info


def production_status(root: Path) -> dict[str, Any]:
    """What is in ``models/production`` and ``models/previous``: version, sha256, promoted_at and
    experiment of each (None for a missing folder)."""
    root = Path(root)
    return {"production": _folder_info(root / PRODUCTION), "previous": _folder_info(root / PREVIOUS)}


# --------------------------------------------------------------------------- checks


def _check_candidate(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The candidate's card and gate verdict, or PromotionError saying why it can't be promoted."""
    missing = [str(p) for p in (*CANDIDATE.values(), CASES) if not (root / p).is_file()]
    if missing:
        raise PromotionError(
            f"nothing to promote: missing {', '.join(missing)} (run `dvc repro` to train, export and gate a candidate)"
        )
    try:
        card = read_card(root / CANDIDATE["model.json"])
    except CardError as e:
        raise PromotionError(f"the candidate's model card is invalid:\n{e}") from None
    onnx_sha = sha256_file(root / CANDIDATE["model.onnx"])
    if card["model_sha256"] != onnx_sha:
        raise PromotionError(
            f"{CANDIDATE['model.json']} describes another model: its model_sha256 is "
            f"{card['model_sha256']}, {CANDIDATE['model.onnx']} has {onnx_sha} "
            "(run `dvc repro` to re-export)"
        )
    cases = _read_json(root / CASES)
    if not isinstance(cases, dict):
        raise PromotionError(f"{CASES}: expected an object")
    ckpt_sha = sha256_file(root / CANDIDATE["model.ckpt"])
    judged, exported = cases.get("checkpoint_sha256"), card.get("checkpoint_sha256")
    if exported != ckpt_sha:
        raise PromotionError(
            f"{CANDIDATE['model.json']} was exported from checkpoint {exported}, but "
            f"{CANDIDATE['model.ckpt']} is {ckpt_sha} (run `dvc repro`)"
        )
    if judged != ckpt_sha:
        raise PromotionError(
            f"the case gate judged another model: {CASES} is about checkpoint {judged}, "
            f"the candidate is {ckpt_sha} (run `dvc repro` to gate this candidate)"
        )
    champion = (cases.get("champion") or {}).get("model_sha256")
    current = sha256_file(root / PRODUCTION / "model.onnx") if (root / PRODUCTION / "model.onnx").is_file() else None
    if champion != current and current != onnx_sha:  # (promoting the production model again is a no-op)
        raise PromotionError(
            f"the case gate compared the candidate with production model {champion or 'none'}, "
            f"but production is now {current or 'empty'} (run `dvc repro -s -f validate_model && dvc repro`)"
        )
    if cases.get("passed") is not True:
        failures = cases.get("failures") or ["(no failures listed)"]
        raise PromotionError(
            f"the candidate failed the case gate ({CASES}):\n"
            + "\n".join(f"  - {f}" for f in failures)
            + "\n"
            + NEXT_STEPS
        )
    return card, cases


def _check_int8(root: Path, onnx_sha: str) -> tuple[dict[str, Any] | None, str | None]:
    """The candidate's int8 model: ``(card, None)`` to promote it with the fp32 model, ``(None,
    reason)`` to promote without it (none made, or its own case gate failed: the fp32 model is
    what the gate judged, so a weaker int8 does not stop it), PromotionError when it is there but
    broken or stale (its card invalid or of another file, or quantised from another model.onnx:
    `dvc repro` was not finished)."""
    model, card_path = root / INT8["model.int8.onnx"], root / INT8["model.int8.json"]
    if not model.is_file():
        return None, f"no {INT8['model.int8.onnx']} (the quantize stage makes it)"
    try:
        card = read_card(card_path)
    except CardError as e:
        raise PromotionError(f"the candidate's int8 model card is invalid (run `dvc repro`):\n{e}") from None
    sha = sha256_file(model)
    if card["model_sha256"] != sha:
        raise PromotionError(
            f"{INT8['model.int8.json']} describes another model: its model_sha256 is {card['model_sha256']}, "
            f"{INT8['model.int8.onnx']} has {sha} (run `dvc repro`)"
        )
    if card.get("precision") != "int8" or card.get("quantized_from") != onnx_sha:
        raise PromotionError(
            f"{INT8['model.int8.onnx']} was quantised from {card.get('quantized_from')}, not from the candidate "
            f"{CANDIDATE['model.onnx']} ({onnx_sha}) (run `dvc repro`)"
        )
    if (card.get("metrics") or {}).get("gate_passed") is not True:
        return None, (
            f"{INT8['model.int8.onnx']} failed its case gate against the fp32 model (reports/quantize.json); "
            "promoting the fp32 model alone"
        )
    return card, None


# --------------------------------------------------------------------------- DVC, git, W&B


def _check_checked_out(root: Path) -> None:
    """Refuse to touch production/previous when DVC tracks them but they are not in the workspace
    (a fresh clone): promoting there would silently drop the tracked models from the history."""
    if not is_dvc(root):
        return
    absent = [p for p in (PRODUCTION, PREVIOUS) if (root / f"{p}.dvc").is_file() and not (root / p).exists()]
    if absent:
        raise PromotionError(
            f"{', '.join(map(str, absent))} tracked by DVC but not in the workspace: run "
            f"`dvc pull {' '.join(f'{p}.dvc' for p in absent)}` first"
        )


def _track(root: Path, push: bool, wandb_mode: str | None, what: str, result: dict[str, Any]) -> None:
    """dvc add the production/previous folders, git add their .dvc files, log to W&B, dvc push.
    Updates ``result``; PromotionError (with ``result``) when a DVC or git command fails."""
    done = f"{what}; the files in {PRODUCTION} are in place locally"
    if not is_dvc(root):
        _log_wandb(root, wandb_mode, result)
        return
    folders = [str(p) for p in (PRODUCTION, PREVIOUS) if (root / p).is_dir()]
    dvc_files = [f"{f}.dvc" for f in folders]
    result["dvc"] = {"added": folders, "dvc_files": dvc_files, "pushed": False}
    try:
        _run(["dvc", "add", *folders], root)
    except PromotionError as e:
        raise PromotionError(f"{done}, but DVC does not track them: {e}", result) from None
    if is_git(root):
        staged = dvc_files + [str(MODELS / ".gitignore")] * (root / MODELS / ".gitignore").is_file()
        try:
            _run(["git", "add", *staged], root)
        except PromotionError as e:
            raise PromotionError(f"{done} and tracked by DVC, but: {e}", result) from None
        result["git_added"] = staged
        result["git_hint"] = f"git commit -m {shlex.quote(result['message'])} {' '.join(staged)}"
    _log_wandb(root, wandb_mode, result)
    if push:
        try:
            _run(["dvc", "push", *dvc_files], root)
        except PromotionError as e:
            raise PromotionError(
                f"{done} and tracked by DVC, but the push failed (fix the remote, then run "
                f"`dvc push {' '.join(dvc_files)}`): {e}",
                result,
            ) from None
        result["dvc"]["pushed"] = True


def _log_wandb(root: Path, wandb_mode: str | None, result: dict[str, Any]) -> None:
    """Log production's model.onnx + model.json as artifact ``autosink-model`` (aliases production
    and the card's version). Failures go to ``result["wandb_error"]`` and are printed."""
    from autosink.core.tracking import resolve_mode

    mode, note = resolve_mode(wandb_mode or "auto")
    if note:
        print(f"promote: {note}")
    result["wandb"] = {"mode": mode}
    if mode == "disabled":
        return
    folder = root / PRODUCTION
    try:
        import wandb

        card = read_card(folder / "model.json")
        record = _read_json(folder / RECORD) if (folder / RECORD).is_file() else {}
        aliases = ["production", re.sub(r"[/:]", "-", str(card["version"]))]
        run = wandb.init(
            project="autosink",
            mode=mode,
            dir=str(root),
            job_type="promote",
            config={"action": result["action"], "experiment": record.get("experiment")},
            settings=wandb.Settings(silent=True, console="off"),
        )
        try:
            art = wandb.Artifact(
                ARTIFACT,
                type="model",
                metadata={
                    **card,
                    "promoted_at": record.get("promoted_at"),
                    "experiment": record.get("experiment"),
                    "gate": record.get("gate"),
                },
            )
            art.add_file(str(folder / "model.onnx"), name="model.onnx")
            art.add_file(str(folder / "model.json"), name="model.json")
            for name in INT8:
                if (folder / name).is_file():
                    art.add_file(str(folder / name), name=name)
            run.log_artifact(art, aliases=aliases)
            result["wandb"].update(
                {
                    "artifact": ARTIFACT,
                    "type": "model",
                    "aliases": aliases,
                    "digest": art.digest,
                    "run_id": run.id,
                    "run_dir": str(Path(run.dir).parent),
                }
            )
        finally:
            run.finish()
    except Exception as e:  # noqa: BLE001 - tracking never undoes a promotion
        result["wandb_error"] = f"{type(e).__name__}: {e}"
        print(f"promote: W&B logging failed ({result['wandb_error']}); the promotion stands")


# --------------------------------------------------------------------------- promote / rollback


def promote(
    root: Path, *, experiment: str | None = None, push: bool = True, wandb_mode: str | None = None
) -> dict[str, Any]:
    """Promote the candidate in ``root/models`` to ``root/models/production`` (see the module doc).

    Returns ``{"action": "promote", "status": "promoted" | "unchanged", "message", "version",
    "model_sha256", "production", "previous", "dvc", "git_hint", "wandb", ["wandb_error"]}``.
    """
    root = Path(root).resolve()
    card, cases = _check_candidate(root)
    sha, version = card["model_sha256"], card["version"]
    int8_card, int8_skipped = _check_int8(root, sha)
    _check_checked_out(root)
    production, previous = root / PRODUCTION, root / PREVIOUS
    int8_sha = int8_card["model_sha256"] if int8_card else None
    prod_int8 = production / "model.int8.onnx"
    if (
        (production / "model.onnx").is_file()
        and sha256_file(production / "model.onnx") == sha
        and (sha256_file(prod_int8) if prod_int8.is_file() else None) == int8_sha
    ):
        msg = f"model {version} ({sha[:12]}) is already in production: nothing to do"
        print(f"promote: {msg}")
        return {
            "action": "promote",
            "status": "unchanged",
            "message": msg,
            "version": version,
            "model_sha256": sha,
            **production_status(root),
            "dvc": None,
            "git_hint": None,
            "wandb": None,
        }

    record = {
        "promoted_at": _now(),
        "experiment": _experiment(root, experiment),
        "git_revision": git(root, "rev-parse", "HEAD"),
        "training_fingerprint": card.get("training_fingerprint"),
        "data_version": card.get("data_version"),
        "version": version,
        "model_sha256": sha,
        "checkpoint_sha256": card.get("checkpoint_sha256"),
        "backbone": card.get("backbone"),
        "threshold": card.get("threshold"),
        "gate": _gate_summary(cases),
        # the int8 model promoted with it (None: promoted without one, int8_skipped says why)
        "int8": None
        if int8_card is None
        else {
            "version": int8_card["version"],
            "model_sha256": int8_sha,
            "calibration": int8_card.get("calibration"),
        },
        "int8_skipped": int8_skipped,
    }
    (root / MODELS).mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=".production.new-", suffix=".tmp", dir=root / MODELS))
    try:
        os.chmod(new, 0o755)
        for name, src in {**CANDIDATE, **(INT8 if int8_card else {})}.items():
            _copy_durable(root / src, new / name)
        _write_training_features(root, new / "data_features.csv")
        if (
            sha256_file(new / "model.onnx") != sha
            or sha256_file(new / "model.ckpt") != cases["checkpoint_sha256"]
            or (int8_card is not None and sha256_file(new / "model.int8.onnx") != int8_sha)
        ):
            raise PromotionError("the candidate changed while it was being promoted; try again")
        atomic_write(new / RECORD, json.dumps(record, indent=2) + "\n", durable=True)
        fsync_dir(new)
        _install(new, production, previous)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    msg = f"Promote model {version} to production"
    print(f"promote: {PRODUCTION} is now model {version} ({sha[:12]}), experiment {record['experiment']}")
    if int8_card is not None:
        print(f"promote: with its int8 model {int8_card['version']} ({int8_sha[:12]}): model.int8.onnx")
    else:
        print(f"promote: without an int8 model: {int8_skipped}")
    return _record_change(
        root, "promote", "promoted", msg, version, sha, push, wandb_mode, f"model {version} is promoted"
    )


def rollback(root: Path, *, push: bool = True, wandb_mode: str | None = None) -> dict[str, Any]:
    """Swap ``models/previous`` and ``models/production`` (a second rollback re-promotes); then
    DVC, git and W&B as :func:`promote` does. Same result keys, ``action`` "rollback"."""
    root = Path(root).resolve()
    production, previous = root / PRODUCTION, root / PREVIOUS
    _check_checked_out(root)
    if not (previous / "model.onnx").is_file():
        raise PromotionError(
            "no previous production model to roll back to"
            + (f" ({PREVIOUS} has no model.onnx)" if previous.exists() else "")
        )
    try:
        card = read_card(previous / "model.json")
    except CardError as e:
        raise PromotionError(f"cannot roll back: the previous model's card is invalid:\n{e}") from None
    if card["model_sha256"] != sha256_file(previous / "model.onnx"):
        raise PromotionError(f"cannot roll back: {PREVIOUS}/model.json does not describe {PREVIOUS}/model.onnx")
    if production.exists():
        _exchange(production, previous)
    else:
        os.rename(previous, production)
    fsync_dir(production.parent)
    info = _folder_info(production) or {}
    version, sha = info.get("version"), info.get("model_sha256")
    msg = f"Roll production back to model {version}"
    print(f"promote: rolled back: {PRODUCTION} is model {version} ({(sha or '')[:12]}) again")
    return _record_change(
        root,
        "rollback",
        "rolled back",
        msg,
        version,
        sha,
        push,
        wandb_mode,
        f"production is rolled back to model {version}",
    )


def _record_change(
    root: Path,
    action: str,
    status: str,
    msg: str,
    version: Any,
    sha: Any,
    push: bool,
    wandb_mode: str | None,
    what: str,
) -> dict[str, Any]:
    """After production changed on disk: the result, then DVC, git and W&B (:func:`_track`)."""
    result: dict[str, Any] = {
        "action": action,
        "status": status,
        "message": msg,
        "version": version,
        "model_sha256": sha,
        **production_status(root),
        "dvc": None,
        "git_hint": None,
        "wandb": None,
    }
    _track(root, push, wandb_mode, what, result)
    _finish(result)
    return result


def _finish(result: dict[str, Any]) -> None:
    if result.get("git_hint"):
        print(f"promote: staged {' '.join(result['git_added'])}; to record it: {result['git_hint']}")
    if result.get("dvc") and not result["dvc"]["pushed"]:
        print(f"promote: not pushed; run `dvc push {' '.join(result['dvc']['dvc_files'])}` to publish it")
