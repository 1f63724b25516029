"""The retraining loop, closed: edge -> lake -> `dvc repro` -> gate -> promotion, round after round.

``autosink loop --rounds N`` works in a copy of the project (``--workdir``, default
``runs/loop``), so the workspace you run it from, its lake and its production model are never
touched. The copy runs the real-data configuration (``data=real``), as a deployment does: its
lake ``data/data-lake`` is a `dvc add`-ed folder, seeded with the sample lake's episodes.

Setup (round 0): `dvc repro` trains the first model, which is promoted whatever its case
accuracies (the gate's floor is 0 for this one promotion only) and serves the fleet in round 1.
``--start base`` (default): the default recipe, the base model fine-tuned on the sample lake
(the copy reuses this workspace's base model when it is current, so it is not retrained).
``--start weak``: a deliberately weak model, trained from scratch for ``--weak-epochs``.

``--regime`` (:data:`autosink.sim.session.REGIMES`) moves the fleet's kitchens to another
lighting (say, new LED strips in every kitchen): the fleet's sessions and the held-out water
sessions (``water.regime``) are rendered under it, while the base model, the sample lake and the
case sets stay as they were. Feedback then has to teach the model kitchens the base never saw.

Each round:

1. **Edge.** The fleet, the households of the sample lake (``--households``: the first K
   users), washes dishes once more: ``--sessions`` new sessions each (default 1; the lake's seed
   stream, session index 2, 3, ...: same people and kitchens, new days, lit by ``--regime``).
   Every session runs through the edge's
   own runtime (:func:`autosink.learn.water.run_session`: EdgeRuntime, Controller, Recorder) with the
   production ONNX model and a simulated user who corrects it at the faucet
   (:class:`autosink.learn.water.SimUserFeedback`), who holds the button while they want water (so
   the controller's hold after a release is one frame here, not the deployed 10 s, which would
   run water they then close, recorded as their wish). The recorder writes the episodes a Pi
   writes; the edge's uploader moves them into the lake folder.
2. **Pipeline.** `dvc add data/data-lake`, then `dvc repro`: only the new episodes are extracted
   and labelled; a candidate is trained on the grown lake, evaluated, gated against the cases
   and the production model, exported and run on the held-out water sessions. ``--retrain``:
   ``warm`` (default) fine-tunes the production model from round 2 on (``model.weights=production``,
   its recipe ``train.warm``); ``scratch`` trains the configured recipe from the base model every
   round. ``round_minutes``: from the new episodes landing in the lake to the gate's verdict.
   The copy keeps its frame cache (``train.frame_cache``) from round to round, so a round
   decodes only the new frames and draws no tuning or replay scene again.
3. **Promotion.** `autosink promote` when the gate passed; otherwise production stays. The
   round is committed in the copy's git history (lake, dvc.lock, production model). The gate
   is the project's (every case >= ``validate_model.min_accuracy``, no case regressing against
   production), plus its climb rule (``--min-gain``, ``validate_model.min_gain``): while
   production fails the floors itself, a candidate that beats it on the mean case accuracy by
   ``min_gain`` with no worse worst case is promoted, so the fleet can climb from the weak start.

The rounds are compared on what stays fixed: the case sets and the held-out water sessions
(`reports/cases.json`, `reports/water.json` of the repro that produced each model). Test
accuracy is reported too, but each round draws its test split from a different lake.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from autosink.core.proc import run
from autosink.ops.workspace import copy_project
from autosink.stages import REPORTS, RUNS

__all__ = ["LoopSettings", "fleet_scripts", "collect_round", "run_loop", "format_round", "plot_rounds"]

PRODUCTION = Path("models/production")
#: how a round's candidate is trained: warm = from the production model (from round 2 on),
#: scratch = the configured recipe (from the base model) every round
RETRAIN = ("warm", "scratch")
#: the gate's stage: a round's time runs from the new episodes landing to its verdict
GATE_STAGE = "validate_model"
BASE = Path("models/base/model.ckpt")


@dataclass
class LoopSettings:
    """What ``autosink loop`` was asked for (see ``autosink loop --help``)."""

    rounds: int = 2
    households: int | None = None
    sessions: int = 1
    start: str = "base"
    retrain: str = "warm"
    regime: str = "none"
    weak_epochs: int = 1
    min_case_accuracy: float | None = None
    min_gain: float = 0.02
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if self.households is not None and self.households < 1:
            raise ValueError(f"--households must be >= 1, got {self.households}")
        if self.sessions < 1:
            raise ValueError(f"--sessions must be >= 1, got {self.sessions}")
        if self.start not in ("base", "weak"):
            raise ValueError(f"--start must be base or weak, got {self.start!r}")
        if self.retrain not in RETRAIN:
            raise ValueError(f"--retrain must be {' or '.join(RETRAIN)}, got {self.retrain!r}")
        from autosink.sim.session import REGIMES

        if self.regime not in REGIMES:
            raise ValueError(f"--regime must be one of {', '.join(REGIMES)}, got {self.regime!r}")
        if self.weak_epochs < 1:
            raise ValueError(f"--weak-epochs must be >= 1, got {self.weak_epochs}")
        if self.min_case_accuracy is not None and not 0.0 <= self.min_case_accuracy <= 1.0:
            raise ValueError(f"--min-case-accuracy must be in [0, 1], got {self.min_case_accuracy}")
        if self.min_gain < 0:
            raise ValueError(f"--min-gain must be >= 0, got {self.min_gain}")
        self.overrides = list(self.overrides or [])

    def compose_args(self, *extra: str) -> list[str]:
        """Hydra overrides for the copy's params.yaml: real data, the gate's climb rule (and floor),
        the user's, then ``extra``."""
        floor = [] if self.min_case_accuracy is None else [f"validate_model.min_accuracy={self.min_case_accuracy}"]
        # under a new light the fleet's frames drift from the production model's on purpose: the
        # data gate still measures and reports it, but does not stop the round
        drift = [] if self.regime == "none" else ["validate.enforce=false"]
        return [
            "data=real",
            f"validate_model.min_gain={self.min_gain}",
            f"water.regime={self.regime}",
            *drift,
            *floor,
            *self.overrides,
            *extra,
        ]

    def retrain_args(self, round_index: int) -> list[str]:
        """Overrides of a round's repro: from round 2 on, ``--retrain warm`` fine-tunes the
        production model (``model.weights=production``: its recipe is ``train.warm``)."""
        return ["model.weights=production"] if self.retrain == "warm" and round_index >= 2 else []

    def start_args(self) -> list[str]:
        """Overrides of the round-0 repro: the first model is promoted whatever its cases."""
        weak = (
            []
            if self.start == "base"
            else ["model.weights=none", f"train.max_epochs={self.weak_epochs}", "train.early_stopping_patience=0"]
        )
        return [*weak, "validate_model.min_accuracy=0.0", "validate_model.min_frames=1"]


# --------------------------------------------------------------------------- the fleet (edge side)


def fleet_scripts(sim_cfg: dict, round_index: int, households: int | None = None, sessions: int = 1) -> list:
    """Round ``round_index`` (1-based) of the fleet: ``sessions`` new sessions for each of the
    first ``households`` users of the sample lake (all when None), after the lake's own sessions
    and the earlier rounds'."""
    from autosink.sim.lake import with_defaults
    from autosink.sim.session import make_session, make_users, session_starts

    cfg = with_defaults(sim_cfg)
    first = int(cfg["sessions_per_user"]) + (round_index - 1) * int(sessions)
    new = range(first, first + int(sessions))
    users = make_users(cfg, "lake")
    n = len(users) if households is None else min(int(households), len(users))
    starts = session_starts({**cfg, "sessions_per_user": new.stop}, "lake")
    return [make_session(users[u], s, cfg, start, "lake") for u, s, start in starts if s in new and u < n]


def collect_round(
    project: Path,
    params: dict,
    round_index: int,
    spool: Path,
    households: int | None = None,
    progress: bool = True,
    sessions: int = 1,
) -> dict:
    """Run the fleet's sessions of one round through the edge with the production model and a
    simulated user; upload the recorded episodes into the copy's lake. Returns what happened."""
    from tqdm import tqdm

    from autosink.edge.inference import load_model
    from autosink.edge.uploader import FolderTarget, Uploader
    from autosink.edge.wiring import recorder_from_config
    from autosink.learn.water import (
        COUNT_KEYS,
        SimUserFeedback,
        controller_config,
        derive,
        edge_config,
        run_session,
        trace_counts,
        with_water_defaults,
    )

    wcfg = with_water_defaults(params.get("water"))
    model = load_model(project / PRODUCTION / "model.onnx", threads=int(wcfg["threads"]))
    # The edge's settings (the file the water benchmark uses). The simulated user holds the
    # button for exactly as long as they want water, so the controller's hold after a release
    # (10 s on a Pi, for people who tap the button) would only run water they then close (the
    # label stage would ignore those frames: labels rule 6): here the hold ends by the next frame.
    rec = edge_config(wcfg, project)["recorder"]
    ccfg = replace(controller_config(wcfg, project), forced_on_hold_s=1.0 / float(wcfg["fps"]))
    lake = project / params["data"]["lake"]
    uploader = Uploader(spool, FolderTarget(lake))
    scripts = fleet_scripts({**params["sim"], "regime": wcfg["regime"]}, round_index, households, sessions)
    totals = {k: 0 for k in COUNT_KEYS}
    interventions = 0
    for script in tqdm(scripts, desc=f"round {round_index}: fleet sessions", disable=not progress, unit="session"):
        feedback = SimUserFeedback(script)
        recorder = recorder_from_config(
            rec,
            spool,
            script.user.user_id,
            background=False,
            used_stems=uploader.names,
            new_id=lambda s=script: s.dishwashing_id,
        )
        trace = run_session(
            script, model, ccfg, flow_l_min=float(wcfg["flow_l_min"]), feedback=feedback, recorder=recorder
        )  # the runtime closes the recorder (flushes) at the end
        interventions += feedback.user.interventions
        counts = trace_counts(trace)
        for k in COUNT_KEYS:
            totals[k] += counts[k]
    uploader.run_once()
    left = uploader.spooled()
    if left or uploader.conflicted or uploader.skipped:
        raise RuntimeError(
            f"{spool}: not uploaded to {lake}: {len(left)} left, conflicts {uploader.conflicted}, "
            f"already there {uploader.skipped}"
        )
    water = derive(totals, float(wcfg["flow_l_min"]))
    return {
        "model_version": model.version,
        "sessions": len(scripts),
        "frames": int(totals["frames"]),
        "user_interventions": interventions,
        "episodes": len(uploader.uploaded),
        "litres": water["litres_autosink"],
        "withheld_pct": water["withheld_pct"],
        "false_offs_per_10min": water["false_offs_per_10min"],
    }


# --------------------------------------------------------------------------- the pipeline side


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _params(project: Path) -> dict:
    import yaml

    return yaml.safe_load((project / "params.yaml").read_text())


def model_report(project: Path) -> dict:
    """What the latest `dvc repro` in the copy says about its candidate."""
    ev, cases, water = (_json(project / REPORTS / f"{n}.json") for n in ("eval", "cases", "water"))
    train = _json(project / RUNS / "train.json")
    card = _json(project / "models/model.json")
    acc = {name.split("-")[0]: round(float(c["accuracy"]), 3) for name, c in (cases.get("cases") or {}).items()}
    total = water.get("total", {})
    return {
        "version": card.get("version"),
        "sha256": card.get("model_sha256"),
        "train_frames": train.get("train_frames"),
        "test_accuracy": ev.get("accuracy"),
        "test_f1": ev.get("f1"),
        "case_accuracy": acc,
        "case_mean": round(float(np.mean(list(acc.values()))), 4) if acc else None,
        "case_min": min(acc.values()) if acc else None,
        "gate_passed": bool(cases.get("passed")),
        "gate_failures": list(cases.get("failures") or []),
        "water": water_summary(total),
    }


def water_summary(total: dict) -> dict:
    """The held-out water numbers the loop compares (``reports/water.json``'s ``total``)."""
    return {
        k: total.get(k)
        for k in (
            "savings_pct",
            "withheld_pct",
            "missed_needs_pct",
            "false_offs_per_10min",
            "valve_switches_per_min",
            "litres_autosink",
            "litres_oracle",
            "missed_needs",
            "need_stretches",
        )
    }


def _repro(project: Path, env: dict, settings: LoopSettings, *extra: str) -> float:
    """Compose the copy's params, `dvc repro` up to the gate's verdict, then the rest (export,
    water); returns when the verdict was there (``time.perf_counter()``)."""
    run(["autosink", "params", "compose", *settings.compose_args(*extra)], cwd=project, env=env)
    run(["dvc", "repro", GATE_STAGE], cwd=project, env=env)
    verdict_at = time.perf_counter()
    run(["dvc", "repro"], cwd=project, env=env)
    return verdict_at


def _commit(project: Path, env: dict, message: str) -> None:
    run(["git", "add", "-A"], cwd=project, env=env)
    run(["git", "commit", "-q", "-m", message], cwd=project, env=env)


def _reuse_output(root: Path, project: Path, path: Path) -> None:
    """Put this workspace's ``path`` (a DVC output) into the copy and its DVC cache. `dvc repro`
    then keeps it when it is current (same code, parameters and hash as the copy's dvc.lock) and
    reruns its stage otherwise: reusing it never skips a change."""
    src = root / path
    if not src.is_file():
        return
    md5 = hashlib.md5(src.read_bytes()).hexdigest()  # DVC 3's hash of a file
    for dst in (project / path, project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def setup(root: Path, workdir: Path, settings: LoopSettings, progress: bool = True) -> tuple[Path, dict]:
    """The copy, its lake (the sample lake's episodes, `dvc add`-ed) and the first model in
    production. Returns (project dir, environment for its commands)."""
    project = workdir / "project"
    project.mkdir(parents=True)
    env = copy_project(root, project, remote=workdir / "dvc-remote")
    say = print if progress else (lambda *a, **k: None)
    say(f"loop: project copied to {project}; seeding its lake from the simulator")
    run(["autosink", "params", "compose", *settings.compose_args()], cwd=project, env=env)
    run(["dvc", "repro", "simulate"], cwd=project, env=env)
    data = _params(project)["data"]
    lake = project / data["lake"]
    lake.mkdir(parents=True, exist_ok=True)
    for zip_path in sorted((project / data["sim_lake"]).glob("*.zip")):
        shutil.copy2(zip_path, lake / zip_path.name)
    run(["dvc", "add", data["lake"]], cwd=project, env=env)
    _reuse_output(root, project, BASE)
    first = (
        "the default recipe (the base model fine-tuned on the sample lake)"
        if settings.start == "base"
        else f"a deliberately weak model ({settings.weak_epochs} epoch(s) from scratch)"
    )
    say(f"loop: round 0: training {first} with dvc repro")
    _repro(project, env, settings, *settings.start_args())
    run(["autosink", "promote"], cwd=project, env=env)
    _commit(project, env, f"loop round 0: starting model ({settings.start})")
    return project, env


def run_loop(root: Path, workdir: Path, settings: LoopSettings, progress: bool = True) -> dict:
    """Setup, then ``settings.rounds`` rounds; returns the report, also written to
    ``workdir/loop.json`` after every round (a failure later keeps the rounds done)."""
    if workdir.exists() and any(workdir.iterdir()):
        raise ValueError(f"{workdir}: exists and is not empty; remove it or choose another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    started = time.perf_counter()
    project, env = setup(root, workdir, settings, progress)
    serving = model_report(project)
    serving["round_trained"] = 0
    where = workdir.relative_to(root) if workdir.is_relative_to(root) else workdir
    report: dict[str, Any] = {"workdir": str(where), "settings": asdict(settings), "rounds": []}
    for r in range(1, settings.rounds + 1):
        t0 = time.perf_counter()
        params = _params(project)
        fleet = collect_round(project, params, r, workdir / "spool", settings.households, progress, settings.sessions)
        say(
            f"loop: round {r}: {fleet['sessions']} fleet sessions with model {fleet['model_version']}: "
            f"{fleet['user_interventions']} user corrections -> {fleet['episodes']} new episodes in the lake"
        )
        retrain = settings.retrain_args(r)
        how = "fine-tunes the production model" if retrain else "trains a candidate from the base model"
        say(f"loop: round {r}: dvc add + dvc repro ({how}: minutes)")
        landed = time.perf_counter()  # the new episodes are in the lake folder
        run(["dvc", "add", params["data"]["lake"]], cwd=project, env=env)
        to_verdict = _repro(project, env, settings, *retrain) - landed
        candidate = model_report(project)
        extract = {**_json(project / "metrics/extract.json"), **_json(project / RUNS / "extract.json")}
        promoted = candidate["gate_passed"]
        if promoted:
            run(["autosink", "promote"], cwd=project, env=env)
        _commit(
            project,
            env,
            f"loop round {r}: " + (f"promote {candidate['version']}" if promoted else "candidate refused by the gate"),
        )
        row = {
            "round": r,
            "serving": serving,
            "fleet": fleet,
            "lake": {
                "episodes": extract.get("episodes_ok"),
                "extracted_now": extract.get("episodes_extracted"),
                "reused": extract.get("episodes_reused"),
            },
            "candidate": candidate,
            "promoted": promoted,
            "retrain": "warm" if retrain else "scratch",
            # from the new episodes landing in the lake to the gate's verdict
            "round_minutes": round(to_verdict / 60.0, 2),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        report["rounds"].append(row)
        say(format_round(row))
        if promoted:
            serving = {**candidate, "round_trained": r}
        report["final"] = serving
        report["seconds"] = round(time.perf_counter() - started, 1)
        (workdir / "loop.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# --------------------------------------------------------------------------- output


def _f(x: Any, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def format_round(row: dict) -> str:
    s, f, c = row["serving"], row["fleet"], row["candidate"]
    sw, cw = s["water"], c["water"]
    lines = [
        f"round {row['round']} ({row['seconds']:.0f} s; {row.get('retrain', 'scratch')} retraining, "
        f"{_f(row.get('round_minutes'), '.2f')} min from the new episodes to the gate's verdict)",
        f"  serving   {s['version']} (trained in round {s['round_trained']}): cases mean {_f(s['case_mean'], '.3f')} "
        f"min {_f(s['case_min'], '.2f')}; held-out water: savings {_f(sw['savings_pct'])}%, withheld "
        f"{_f(sw['withheld_pct'])}% of needed, {_f(sw['missed_needs_pct'])}% of needs got none, false-offs "
        f"{_f(sw['false_offs_per_10min'], '.2f')}/10 min",
        f"  fleet     {f['sessions']} sessions, {f['frames']} frames: {f['user_interventions']} user corrections, "
        f"{f['episodes']} episodes uploaded (lake now {row['lake']['episodes']}, {row['lake']['extracted_now']} "
        f"extracted this round)",
        f"  candidate {c['version']}: {c['train_frames']} training frames, "
        f"test accuracy {_f(c['test_accuracy'], '.3f')}; "
        f"cases mean {_f(c['case_mean'], '.3f')} min {_f(c['case_min'], '.2f')} "
        f"({', '.join(f'{k} {v:.2f}' for k, v in c['case_accuracy'].items())}); held-out water: savings "
        f"{_f(cw['savings_pct'])}%, withheld {_f(cw['withheld_pct'])}%, {_f(cw['missed_needs_pct'])}% of needs got "
        f"none, false-offs {_f(cw['false_offs_per_10min'], '.2f')}/10 min",
        f"  gate      {'passed: promoted' if row['promoted'] else 'failed: production unchanged'}"
        + (
            ""
            if row["promoted"]
            else f" ({'; '.join(c['gate_failures'][:3])}{'; ...' if len(c['gate_failures']) > 3 else ''})"
        ),
    ]
    return "\n".join(lines)


def plot_rounds(report: dict, path: Path) -> Path:
    """Per round, the serving model's held-out numbers (withheld %, needs with no water,
    false-offs, case mean), the last point being the model the loop ends with."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = [row["serving"] for row in report["rounds"]] + [report["final"]]
    x = np.arange(1, len(models) + 1)
    labels = [f"round {i}" for i in x[:-1]] + [f"after round {len(x) - 1}"]
    fig = Figure(figsize=(12, 3.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    series = [
        ("needed water withheld (%)", [m["water"]["withheld_pct"] for m in models]),
        ("needs that got no water (%)", [m["water"]["missed_needs_pct"] for m in models]),
        ("false-offs per 10 min", [m["water"]["false_offs_per_10min"] for m in models]),
        ("case accuracy (mean)", [m["case_mean"] for m in models]),
    ]
    for ax, (title, ys) in zip(axes, series):
        ax.plot(x, [np.nan if y is None else y for y in ys], "o-", color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x, labels, fontsize=8)
        ax.grid(alpha=0.3, lw=0.5)
    fig.suptitle(
        "closed loop: the model serving the fleet in each round, on held-out sessions and the case sets", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def main_loop(settings: LoopSettings, workdir: Path, json_out: Path | None, plot_out: Path | None) -> int:
    """``autosink loop``: run, print the rounds and the comparison, write the JSON and the plot."""
    from autosink.ops.config import project_root

    root = project_root()
    workdir = workdir if workdir.is_absolute() else Path.cwd() / workdir
    report = run_loop(root, workdir, settings)
    rounds = report["rounds"]
    if len(rounds) >= 2:
        a, b = rounds[0]["serving"], rounds[1]["serving"]
        wa, wb = a["water"], b["water"]
        print(
            f"round 2 vs round 1 (serving models, held-out): withheld {_f(wa['withheld_pct'])}% -> "
            f"{_f(wb['withheld_pct'])}%, needs with no water {_f(wa['missed_needs_pct'])}% -> "
            f"{_f(wb['missed_needs_pct'])}%, false-offs {_f(wa['false_offs_per_10min'], '.2f')} -> "
            f"{_f(wb['false_offs_per_10min'], '.2f')}/10 min, case mean {_f(a['case_mean'], '.3f')} -> "
            f"{_f(b['case_mean'], '.3f')}"
        )
    json_out = json_out or root / "metrics/loop.json"
    plot_out = plot_out or root / "reports/loop_rounds.png"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2) + "\n")
    plot_rounds(report, plot_out)
    print(
        f"loop: {len(rounds)} rounds in {report['seconds']:.0f} s -> {json_out}, {plot_out} "
        f"(the copy, with its git history per round: {report['workdir']}/project)"
    )
    return 0
