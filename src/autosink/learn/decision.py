"""The decision threshold, chosen where it acts: in the closed loop of the edge's own controller.

A threshold chosen for offline accuracy is chosen on validation frames where the water is
usually already running; in the closed loop the model must *open* the valve, from frames
without water, through the controller's smoothing, hysteresis and dwell times. So the
threshold is chosen by replaying sessions through :class:`autosink.edge.controller.Controller`:

* sessions: rendered kitchens of the ``tune`` seed stream (never in the lake, the held-out
  benchmark, the case sets or the base model's kitchens);
* every frame is rendered with the water off and on, and both go through the network once;
  the replay then shows, frame by frame, the render that matches the valve as the controller
  left it after the previous frame (exactly what the closed loop would render), so any number of
  thresholds costs no more network passes;
* for each candidate threshold: needed water withheld, litres, false-offs (the water benchmark's
  own accounting, :func:`autosink.learn.water.frame_counts`);
* the rule: the fewest litres among thresholds that withhold at most ``max_withheld_pct`` of
  the needed water with at most ``max_false_offs_per_10min``; if none does, the least withheld
  water (then the fewest litres).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["tune_scripts", "pair_probabilities", "replay", "sweep", "choose", "DEFAULT_THRESHOLDS"]

DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))


def tune_scripts(sim_cfg: Mapping[str, Any], sessions: int) -> list:
    """``sessions`` decision-tuning sessions: one per kitchen of the ``tune`` seed stream."""
    from autosink.sim.lake import with_defaults
    from autosink.sim.session import make_sessions

    cfg = with_defaults({**sim_cfg, "users": int(sessions), "sessions_per_user": 1, "deviant_users": 0.0})
    return make_sessions(cfg, "tune")


def pair_probabilities(
    net, scripts: list, batch_size: int = 32, progress: bool = False, cache=None
) -> list[np.ndarray]:
    """Per session ``[frames, 2]``: the network's probability on the water-off and water-on
    render of every frame (:func:`autosink.learn.evaluation.predict_water_on_off`, over all the
    sessions' frames at once so its rendering processes stay busy; ``cache``: a
    :class:`autosink.learn.renders.RenderCache`, so a retraining round draws no scene again)."""
    from autosink.learn.evaluation import predict_water_on_off

    states = [st for s in scripts for st in s.states]
    p = predict_water_on_off(net, states, batch_size, progress, desc="decision sessions", cache=cache)
    ends = np.cumsum([len(s.states) for s in scripts])
    return np.split(p, ends[:-1]) if len(scripts) else []


def replay(p: np.ndarray, threshold: float, controller, fps: float) -> np.ndarray:
    """The valve per frame when the controller drives the session: frame ``i`` shows the water
    the valve left after frame ``i - 1`` (closed before the first)."""
    from autosink.edge.controller import Controller
    from autosink.edge.inference import normalize_probability

    ctrl = Controller(controller)
    valve = np.zeros(len(p), bool)
    is_open = False
    for i in range(len(p)):
        now = i / float(fps)
        q = normalize_probability(float(p[i, int(is_open)]), threshold)
        is_open = ctrl.step(now, q, now).open
        valve[i] = is_open
    return valve


def sweep(
    probs: list[np.ndarray],
    needs: list[np.ndarray],
    controller,
    fps: float,
    flow_l_min: float,
    thresholds=DEFAULT_THRESHOLDS,
) -> list[dict]:
    """One row per threshold: the water benchmark's metrics pooled over the sessions."""
    from autosink.learn.water import derive, frame_counts

    rows = []
    for t in thresholds:
        total: dict[str, float] = {}
        for p, need in zip(probs, needs):
            valve = replay(p, float(t), controller, fps)
            for k, v in frame_counts(need, valve, np.zeros(len(need), bool), fps).items():
                total[k] = total.get(k, 0) + v
        m = derive(total, flow_l_min)
        rows.append(
            {
                "threshold": float(t),
                "withheld_pct": m["withheld_pct"],
                "litres": m["litres_autosink"],
                "false_offs_per_10min": m["false_offs_per_10min"],
                "savings_pct": m["savings_pct"],
                "oracle_savings_pct": m["oracle_savings_pct"],
                "unneeded_open_s": m["unneeded_open_s"],
            }
        )
    return rows


def choose(rows: list[dict], max_withheld_pct: float, max_false_offs_per_10min: float) -> tuple[dict, str]:
    """The chosen row and why (module docstring)."""
    if not rows:
        raise ValueError("no thresholds to choose from")
    ok = [
        r
        for r in rows
        if (r["withheld_pct"] or 0.0) <= max_withheld_pct
        and (r["false_offs_per_10min"] or 0.0) <= max_false_offs_per_10min
    ]
    if ok:
        best = min(ok, key=lambda r: (r["litres"], abs(r["threshold"] - 0.5)))
        return best, (
            f"fewest litres ({best['litres']:.1f} L) among thresholds withholding <= {max_withheld_pct}% of "
            f"the needed water with <= {max_false_offs_per_10min} false-offs per 10 min"
        )
    best = min(rows, key=lambda r: (r["withheld_pct"] or 0.0, r["litres"]))
    return best, (
        f"no threshold met withheld <= {max_withheld_pct}% and false-offs <= "
        f"{max_false_offs_per_10min}/10 min; the least withheld water ({best['withheld_pct']}%)"
    )
