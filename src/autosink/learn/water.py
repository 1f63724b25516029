"""Water-savings benchmark: the exported model, run by the edge's own loop, on held-out sessions.

What runs
---------
Held-out dish-washing sessions come from :func:`autosink.sim.session.make_sessions` on the
``heldout`` seed stream: new users and kitchens whose seed sequences never occur in the sample
lake (stream ``lake``) or the case sets (stream ``cases``), one session per user. For each
session the **edge main loop itself** runs: :class:`autosink.edge.runtime.EdgeRuntime` (the
code the Pi runs, not a copy) on a simulated clock (:class:`~autosink.edge.clock.SimClock`)
at ``fps`` frames per second, with

* the camera: an :class:`~autosink.edge.camera.IteratorCamera` over frames rendered on the fly
  (RGB uint8 640x480, :func:`autosink.sim.scene.render`); every frame shows the water as the
  valve was left after the previous frame, so the model sees the consequences of its own
  decisions (the stream under the faucet) as it would on a real sink;
* the model: the ONNX file loaded by :func:`autosink.edge.inference.load_model` (card checked,
  sha256 verified); the runtime applies the card's threshold through
  :func:`~autosink.edge.inference.normalize_probability` before the controller sees it;
* the controller: :class:`autosink.edge.controller.Controller` (EMA smoothing, hysteresis,
  minimum dwell times, maximum open time) with the settings of ``edge/config.toml`` unless
  overridden (:func:`controller_config`);
* the valve: a recording :class:`~autosink.edge.devices.FakeValve`;
* the user: nobody (:class:`~autosink.edge.feedback.NoFeedback`). **No user overrides**: the
  benchmark measures model + controller alone. A real user would restore some withheld water
  (button / handle) and close some wasted water; that interplay is the closed loop's business
  (:mod:`autosink.sim.user`), not this benchmark's.

Accounting (per session)
------------------------
Frames are ``dt = 1 / fps`` seconds apart; frame ``i`` stands for the interval
``[i dt, (i + 1) dt)``. Per frame:

* ``need[i]`` = :func:`autosink.sim.session.wants_water` of the frame's scene (what the person
  at the sink wants: pre-rinse with the dish in hand, or rinse with the dish held under the
  faucet);
* ``p[i]`` = the model's raw probability (``p_water`` as the ONNX graph returns it; NaN when
  the model failed on that frame, which the runtime treats as a ``model-error``: closed);
* ``valve[i]`` = the state the controller set after frame ``i``; it holds for frame ``i``'s
  interval (the water shown in frame ``i + 1`` is ``valve[i]``);
* ``ir[i]`` = the infrared-proximity faucet: open while anything is under the faucet, i.e. a
  hand, the dish being washed (held or not), a dish resting in the basin or the scrubber has its
  centre inside the ROI (:func:`autosink.sim.scene.in_roi`, the same "in the ROI" as the
  labels), plus ``ir_off_delay_s`` seconds after the last such frame (0: shuts at once).

Every faucet is accounted for on the same frame grid, so all get the same time resolution.
The seconds and counts below are summed over the sessions for the total (the percentages and
rates are then recomputed from the sums, i.e. pooled, not averaged per session):

=========================  ===================================================================
``duration_s``             washing time: the whole session script, ``frames * dt``
``need_s``                 seconds with ``need = 1``
``open_s``                 seconds autosink's valve is open (``valve = 1``)
``ir_open_s``              seconds the IR faucet is open
``litres_autosink``        ``open_s / 60 * flow_l_min``
``litres_always_on``       ``duration_s / 60 * flow_l_min`` (the user leaves it running for the
                           whole session)
``litres_oracle``          ``need_s / 60 * flow_l_min`` (water exactly when wanted)
``litres_ir``              ``ir_open_s / 60 * flow_l_min``
``savings_pct``            ``100 * (1 - litres_autosink / litres_always_on)``
``oracle_savings_pct``     ``100 * (1 - litres_oracle / litres_always_on)``
``savings_of_oracle_pct``  ``100 * (litres_always_on - litres_autosink) / (litres_always_on -
                           litres_oracle)``: the share of the oracle's saving achieved
``ir_savings_pct``         ``100 * (1 - litres_ir / litres_always_on)``
``withheld_s``             seconds with ``need = 1`` and ``valve = 0`` (needed water withheld)
``withheld_pct``           ``100 * withheld_s / need_s`` (None when nothing was needed)
``ir_withheld_s``          the same for the IR faucet
``unneeded_open_s``        seconds with ``valve = 1`` and ``need = 0`` (water nobody wanted)
``need_stretches``         maximal runs of consecutive ``need = 1`` frames
``false_offs``             need stretches during which the valve closes: some frame ``i`` of
                           the stretch has ``valve[i] = 0`` while ``valve[i-1] = 1`` (the valve
                           open just before the stretch and closing on its first frame counts);
                           counted once per stretch
``false_offs_per_10min``   ``false_offs / (duration_s / 600)``
``missed_needs``           need stretches during which the valve never opens
``valve_switches``         frames whose valve state differs from the previous frame's (the
                           valve is closed before frame 0; the runtime's close at the end of
                           the session is not counted)
``valve_switches_per_min`` ``valve_switches / (duration_s / 60)``
``ir_switches_per_min``    the same for the IR faucet
``max_open_cuts``          closes by the controller's maximum-open-time rule
``model_errors``           frames on which the model failed (the valve closed)
=========================  ===================================================================
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from autosink.edge.camera import IteratorCamera
from autosink.edge.clock import SimClock
from autosink.edge.controller import ControllerConfig, UserInput
from autosink.edge.devices import FakeValve
from autosink.edge.feedback import FeedbackContext, NoFeedback
from autosink.edge.inference import OnnxModel, load_model
from autosink.edge.runtime import EdgeRuntime
from autosink.edge.settings import DEFAULT_CONFIG, load_config
from autosink.edge.stats import RunStats
from autosink.sim.lake import with_defaults
from autosink.sim.scene import in_roi, render
from autosink.sim.session import SessionScript, make_sessions, wants_water
from autosink.sim.user import CLOSED, FORCED_ON, SimUser

__all__ = [
    "DEFAULTS",
    "SessionTrace",
    "SimUserFeedback",
    "edge_config",
    "controller_config",
    "heldout_scripts",
    "ir_presence",
    "run_session",
    "frame_counts",
    "derive",
    "run_benchmark",
    "write_session_csv",
    "plot_session",
    "CSV_COLUMNS",
]

#: Defaults of the ``water:`` config group: exactly conf/water/default.yaml, key by key
#: (tests/test_defaults.py). ``controller``: every key null (the edge config's settings).
DEFAULTS: dict[str, Any] = {
    "model": "models/model.onnx",
    "flow_l_min": 6.0,
    "sessions": 24,
    "fps": 2.0,
    "seed": 20240706,
    "dishes_per_session": [3, 5],
    "regime": "none",
    "ir_off_delay_s": 0.0,
    "max_withheld_pct": 5.0,
    "threads": 1,
    "plot_session": 0,
    "controller_from": "edge/config.toml",
    "controller": {f.name: None for f in fields(ControllerConfig)},
}

CSV_COLUMNS = ("t_s", "need", "p", "valve")

COUNT_KEYS = (
    "frames",
    "duration_s",
    "need_s",
    "open_s",
    "ir_open_s",
    "withheld_s",
    "ir_withheld_s",
    "unneeded_open_s",
    "need_stretches",
    "false_offs",
    "missed_needs",
    "valve_switches",
    "ir_switches",
    "max_open_cuts",
    "model_errors",
)


# --------------------------------------------------------------------------- configuration


def edge_config(cfg: Mapping[str, Any], root: Path | None = None) -> dict[str, Any]:
    """The edge config file ``controller_from`` (relative to ``root``, default the current
    directory), merged over the edge's defaults; ``""``/None: the defaults alone."""
    src = cfg.get("controller_from") or ""
    if not src:
        return dict(DEFAULT_CONFIG)
    path = Path(src)
    return load_config(path if path.is_absolute() else (root or Path.cwd()) / path)


def controller_config(cfg: Mapping[str, Any], root: Path | None = None) -> ControllerConfig:
    """The controller settings: ``[controller]`` of the edge config file ``controller_from``
    (relative to ``root``, default the current directory; ``""``/None: the edge's built-in
    defaults), then every non-null key of ``controller`` on top (a key the controller does not
    know is an error)."""
    base = dict(edge_config(cfg, root)["controller"])
    overrides = {k: v for k, v in (cfg.get("controller") or {}).items() if v is not None}
    return ControllerConfig.from_dict({**base, **overrides})


def with_water_defaults(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(DEFAULTS)
    out.update({k: v for k, v in (cfg or {}).items() if v is not None})
    return out


def heldout_scripts(cfg: Mapping[str, Any]) -> list[SessionScript]:
    """The benchmark's session scripts: ``sessions`` held-out users, one session each. The
    first k sessions do not change when ``sessions`` grows (each user's and session's seed
    depends on its index only)."""
    cfg = with_water_defaults(cfg)
    sim = with_defaults(
        {
            "seed": int(cfg["seed"]),
            "users": int(cfg["sessions"]),
            "sessions_per_user": 1,
            "dishes_per_session": cfg["dishes_per_session"],
            "fps": float(cfg["fps"]),
            "regime": str(cfg["regime"]),
        }
    )
    return make_sessions(sim, "heldout")


# --------------------------------------------------------------------------- one session


def ir_presence(state) -> bool:
    """An infrared proximity sensor under the spout sees something: a hand, the dish (held or
    not), a resting dish or the scrubber has its centre in the ROI."""
    objs = [(h.x, h.y) for h in state.hands]
    objs += [(d.x, d.y) for d in ((state.dish,) if state.dish is not None else ()) + tuple(state.resting)]
    if state.scrubber is not None:
        objs.append((state.scrubber.x, state.scrubber.y))
    return any(in_roi(x, y) for x, y in objs)


@dataclass
class SessionTrace:
    """One session as the benchmark saw it, frame by frame (see the module docstring)."""

    name: str
    dishwashing_id: str
    fps: float
    need: list[bool] = field(default_factory=list)
    p: list[float] = field(default_factory=list)
    valve: list[bool] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    ir: list[bool] = field(default_factory=list)
    stats: RunStats | None = None  # the runtime's own stats (seconds open, valve changes...)

    @property
    def t(self) -> np.ndarray:
        return np.arange(len(self.valve)) / self.fps


class _TracedModel:
    """The loaded model as the runtime sees it, recording every raw probability (NaN on failure)."""

    def __init__(self, model: OnnxModel, trace: SessionTrace) -> None:
        self.model, self.trace = model, trace
        self.threshold = model.threshold
        self.height, self.width = model.height, model.width

    def predict(self, frame: np.ndarray) -> float:
        try:
            p = self.model.predict(frame)
        except Exception:
            self.trace.p.append(math.nan)
            raise
        self.trace.p.append(float(p))
        return p


class _TracedValve(FakeValve):
    """The runtime sets the valve once per frame after the controller's step: record it then
    (the set before the first frame and the close at shutdown are not frame decisions)."""

    def __init__(self, trace: SessionTrace) -> None:
        super().__init__()
        self.trace = trace
        self.runtime: EdgeRuntime | None = None

    def set(self, open: bool) -> None:
        super().set(open)
        if len(self.trace.p) > len(self.trace.valve):
            self.trace.valve.append(bool(self.is_open))
            self.trace.reason.append(self.runtime.controller.last.reason if self.runtime else "")


@contextmanager
def _quiet_edge_log() -> Iterator[None]:
    """The runtime logs every valve change at INFO: keep a benchmark run readable."""
    logger = logging.getLogger("autosink.edge")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class SimUserFeedback:
    """The simulated person at the sink as the edge runtime's feedback source (the button and
    the faucet handle). A :class:`~autosink.sim.user.SimUser` watches the water actually
    running (the valve before this step) against what they want in this frame of the script:
    water withheld for their reaction delay -> they press the button and hold it while they
    want water (``forced_on``); water running unwanted for their delay -> they close the handle
    (``closed``). Used by the closed loop (:mod:`autosink.ops.loop`); the benchmark has no user."""

    def __init__(self, script: SessionScript, user: SimUser | None = None) -> None:
        self.script = script
        self.user = user or SimUser(script.user.reaction_delay_s, seed=script.seed + 1)

    def __call__(self, ctx: FeedbackContext) -> UserInput:
        if ctx.frame is None or ctx.index >= len(self.script.states):
            return UserInput()
        wants = wants_water(self.script.states[ctx.index], self.script.user.wish)
        self.user.step(ctx.now, wants, int(ctx.valve_open))
        return UserInput(forced_on=self.user.mode == FORCED_ON, closed=self.user.mode == CLOSED)


def run_session(
    script: SessionScript,
    model: OnnxModel,
    controller: ControllerConfig,
    *,
    name: str = "",
    flow_l_min: float = 6.0,
    ir_off_delay_s: float = 0.0,
    feedback: Any = None,
    recorder: Any = None,
) -> SessionTrace:
    """Drive one held-out session through the edge runtime (see the module docstring).
    ``feedback`` (default: nobody) and ``recorder`` (default: none) are the runtime's own parts;
    the wall clock starts at the script's start time, so a recorder names episodes as a Pi would."""
    fps = float(script.fps)
    trace = SessionTrace(name or script.dishwashing_id, script.dishwashing_id, fps)
    clock = SimClock(start=script.start.timestamp(), t0=0.0)
    valve = _TracedValve(trace)

    def frames() -> Iterator[np.ndarray]:
        for state in script.states:  # rendered when the runtime reads the camera: after the last step
            yield render(replace(state, water_on=bool(valve.is_open)))

    camera = IteratorCamera(frames(), clock.monotonic, name=f"sim:{trace.name}")
    runtime = EdgeRuntime(
        camera=camera,
        model=_TracedModel(model, trace),
        valve=valve,
        controller=controller,
        feedback=NoFeedback() if feedback is None else feedback,
        recorder=recorder,
        clock=clock,
        fps=fps,
        flow_l_min=flow_l_min,
        stats_every_s=0.0,
        reload_check_s=math.inf,
        install_signals=False,
    )
    valve.runtime = runtime
    with _quiet_edge_log():
        trace.stats = runtime.run()
    n = len(script.states)
    if len(trace.valve) != n or len(trace.p) != n:
        raise RuntimeError(f"session {trace.name}: the runtime stepped {len(trace.valve)} of {n} frames")
    trace.need = [wants_water(s) for s in script.states]
    last_seen = -math.inf
    for i, s in enumerate(script.states):
        if ir_presence(s):
            last_seen = i / fps
        trace.ir.append(i / fps - last_seen <= ir_off_delay_s + 1e-9)
    return trace


# --------------------------------------------------------------------------- metrics


def _runs(x: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of True."""
    d = np.diff(np.concatenate([[0], x.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def frame_counts(need, valve, ir, fps: float, reason=None, p=None) -> dict[str, float]:
    """Seconds and counts of one session from its per-frame arrays (module docstring)."""
    need, valve, ir = (np.asarray(a, bool) for a in (need, valve, ir))
    if not len(need) == len(valve) == len(ir):
        raise ValueError("need, valve and ir must have one entry per frame")
    dt = 1.0 / float(fps)
    prev = np.concatenate([[False], valve[:-1]])
    closes = prev & ~valve
    stretches = _runs(need)
    ir_prev = np.concatenate([[False], ir[:-1]])
    reason = list(reason) if reason is not None else []
    return {
        "frames": int(len(need)),
        "duration_s": len(need) * dt,
        "need_s": int(need.sum()) * dt,
        "open_s": int(valve.sum()) * dt,
        "ir_open_s": int(ir.sum()) * dt,
        "withheld_s": int((need & ~valve).sum()) * dt,
        "ir_withheld_s": int((need & ~ir).sum()) * dt,
        "unneeded_open_s": int((valve & ~need).sum()) * dt,
        "need_stretches": len(stretches),
        "false_offs": sum(bool(closes[a:b].any()) for a, b in stretches),
        "missed_needs": sum(not valve[a:b].any() for a, b in stretches),
        "valve_switches": int((valve != prev).sum()),
        "ir_switches": int((ir != ir_prev).sum()),
        "max_open_cuts": int(sum(bool(c) and r == "max-open" for c, r in zip(closes, reason))),
        "model_errors": int(np.isnan(np.asarray(p, float)).sum()) if p is not None else 0,
    }


def _r(x: float | None) -> float | None:
    """Rounded for the metrics JSON; None (not NaN, which JSON lacks) when undefined."""
    return None if x is None or x != x else round(float(x), 4)


def _pct_saved(used: float, reference: float) -> float | None:
    return 100.0 * (1.0 - used / reference) if reference > 0 else None


def derive(counts: Mapping[str, float], flow_l_min: float) -> dict[str, Any]:
    """Counts -> the reported metrics (litres, savings, rates), rounded; see the module docstring."""
    c = counts
    litres = lambda s: s / 60.0 * float(flow_l_min)  # noqa: E731
    dur = c["duration_s"]
    out: dict[str, Any] = {k: (int(c[k]) if isinstance(c[k], (int, np.integer)) else _r(c[k])) for k in COUNT_KEYS}
    la, lo, lor, li = litres(c["open_s"]), litres(dur), litres(c["need_s"]), litres(c["ir_open_s"])
    out.update(
        {
            "litres_autosink": _r(la),
            "litres_always_on": _r(lo),
            "litres_oracle": _r(lor),
            "litres_ir": _r(li),
            "savings_pct": _r(_pct_saved(la, lo)),
            "oracle_savings_pct": _r(_pct_saved(lor, lo)),
            "ir_savings_pct": _r(_pct_saved(li, lo)),
            # the share of the oracle's saving autosink achieves (100: all of it); alone it rewards
            # withholding, so read it with withheld_pct
            "savings_of_oracle_pct": _r(100.0 * (lo - la) / (lo - lor)) if lo > lor else None,
            "withheld_pct": _r(100.0 * c["withheld_s"] / c["need_s"]) if c["need_s"] > 0 else None,
            # needs that got no water at all (a model that never opens has no false-offs)
            "missed_needs_pct": _r(100.0 * c["missed_needs"] / c["need_stretches"]) if c["need_stretches"] else None,
            "false_offs_per_10min": _r(c["false_offs"] / (dur / 600.0)) if dur > 0 else None,
            "valve_switches_per_min": _r(c["valve_switches"] / (dur / 60.0)) if dur > 0 else None,
            "ir_switches_per_min": _r(c["ir_switches"] / (dur / 60.0)) if dur > 0 else None,
        }
    )
    return out


def trace_counts(trace: SessionTrace) -> dict[str, float]:
    return frame_counts(trace.need, trace.valve, trace.ir, trace.fps, trace.reason, trace.p)


# --------------------------------------------------------------------------- the benchmark


def run_benchmark(
    cfg: Mapping[str, Any] | None, *, root: Path | None = None, model: OnnxModel | None = None, progress: bool = True
) -> tuple[dict[str, Any], list[SessionTrace]]:
    """Run every held-out session; return ``(metrics, traces)``. ``metrics``: the settings used,
    ``total`` (pooled over sessions) and ``sessions`` (per session, keyed ``sNN_<dishwashing_id>``)."""
    from tqdm import tqdm

    cfg = with_water_defaults(cfg)
    root = root or Path.cwd()
    ccfg = controller_config(cfg, root)
    if model is None:
        path = Path(cfg["model"])
        model = load_model(path if path.is_absolute() else root / path, threads=int(cfg["threads"]))
    flow = float(cfg["flow_l_min"])
    scripts = heldout_scripts(cfg)
    traces, per_session = [], {}
    total = {k: 0 for k in COUNT_KEYS}
    t0 = time.perf_counter()
    for k, script in enumerate(tqdm(scripts, desc="water sessions", disable=not progress, unit="session")):
        name = f"s{k:02d}_{script.dishwashing_id}"
        trace = run_session(
            script, model, ccfg, name=name, flow_l_min=flow, ir_off_delay_s=float(cfg["ir_off_delay_s"])
        )
        counts = trace_counts(trace)
        for key in COUNT_KEYS:
            total[key] += counts[key]
        per_session[name] = derive(counts, flow)
        traces.append(trace)
    elapsed = time.perf_counter() - t0
    metrics = {
        "model": {
            "path": str(cfg["model"]),
            "version": model.version,
            "sha256": model.sha256,
            "threshold": _r(model.threshold),
        },
        "flow_l_min": flow,
        "fps": float(cfg["fps"]),
        "n_sessions": len(scripts),
        "user_overrides": False,
        "controller": {k: getattr(ccfg, k) for k in ControllerConfig.__dataclass_fields__},
        "total": derive(total, flow),
        "sessions": per_session,
    }
    if progress:
        frames = int(total["frames"])
        print(
            f"water: {len(scripts)} sessions, {frames} frames in {elapsed:.1f} s "
            f"({frames / max(elapsed, 1e-9):.0f} frames/s)"
        )
    return metrics, traces


# --------------------------------------------------------------------------- outputs


def write_session_csv(trace: SessionTrace, path: str | Path) -> Path:
    """``t_s, need, p, valve`` per frame (``p`` empty where the model failed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for t, need, p, valve in zip(trace.t, trace.need, trace.p, trace.valve):
            w.writerow([f"{t:.3f}", int(need), "" if p != p else f"{p:.4f}", int(valve)])
    return path


def _raw_probability(q: float, threshold: float) -> float:
    """Inverse of :func:`autosink.edge.inference.normalize_probability`: the raw ``p`` that the
    controller sees as ``q`` (puts the controller's thresholds on the model's scale)."""
    return 2.0 * q * threshold if q < 0.5 else threshold + (2.0 * q - 1.0) * (1.0 - threshold)


def plot_session(
    trace: SessionTrace, path: str | Path, *, threshold: float, controller: ControllerConfig, flow_l_min: float = 6.0
) -> Path:
    """A PNG of one session over time: the model's probability with the card threshold and the
    controller's hysteresis band (top), need vs autosink's valve and the IR faucet (bottom).
    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = trace.t
    dt = 1.0 / trace.fps
    te = np.append(t, t[-1] + dt if len(t) else dt)  # step edges: frame i covers [t_i, t_i + dt)
    need = np.asarray(trace.need, float)
    valve = np.asarray(trace.valve, float)
    ir = np.asarray(trace.ir, float)
    m = derive(trace_counts(trace), flow_l_min)

    fig = Figure(figsize=(12, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    need_e = np.append(need, need[-1:])
    ax1.fill_between(
        te,
        -0.02,
        np.where(need_e > 0, 1.02, -0.02),
        step="post",
        color="tab:blue",
        alpha=0.12,
        lw=0,
        label="water needed",
    )
    lo = _raw_probability(controller.off_threshold, threshold)
    hi = _raw_probability(controller.on_threshold, threshold)
    ax1.axhspan(lo, hi, color="tab:orange", alpha=0.12, lw=0, label="controller hysteresis (off..on)")
    ax1.axhline(threshold, color="tab:orange", ls="--", lw=1, label=f"card threshold {threshold:.2f}")
    p_e = np.append(np.asarray(trace.p, float), trace.p[-1:])
    ax1.step(te, p_e, where="post", color="k", lw=1.2, label="model p(water), per frame")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_ylabel("probability")
    ax1.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    ax1.set_title(
        f"session {trace.name}: autosink {m['litres_autosink']:.2f} L, always-on "
        f"{m['litres_always_on']:.2f} L, oracle {m['litres_oracle']:.2f} L, IR {m['litres_ir']:.2f} L "
        f"(savings {m['savings_pct']:.0f}%, withheld {m['withheld_s']:.1f} s, "
        f"false-offs {m['false_offs']})",
        fontsize=9,
    )

    ax2.fill_between(te, 0, need_e, step="post", color="tab:blue", alpha=0.3, lw=0, label="need")
    ax2.step(te, np.append(valve, valve[-1:]) * 0.9, where="post", color="tab:green", lw=1.8, label="autosink valve")
    ax2.step(te, np.append(ir, ir[-1:]) * 0.8, where="post", color="tab:red", lw=1, ls=":", label="IR faucet")
    ax2.set_yticks([0, 1], ["off", "on"])
    ax2.set_ylim(-0.08, 1.08)
    ax2.set_xlabel("time (s)")
    ax2.set_xlim(0, te[-1])
    ax2.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout()
    fig.savefig(path)
    return path
