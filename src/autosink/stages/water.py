"""`water` stage: the exported model through the edge's own loop on held-out sessions ->
metrics/water.json (the headline, and the verdict), reports/water.json (per session, the
controller, the model), metrics/water/session.csv and reports/water_session.png.

Reads the ``water`` parameter group only (conf/water/default.yaml); the benchmark and every
metric's definition live in :mod:`autosink.learn.water`.
"""

from __future__ import annotations

from pathlib import Path

from autosink.learn.water import controller_config, plot_session, run_benchmark, with_water_defaults, write_session_csv
from autosink.stages import REPORTS, headline, write_metrics

METRICS = Path("metrics/water.json")
#: savings never alone: the water withheld from a need and the false-offs stand beside it
#: (needs that got no water, litres and the baselines: reports/water.json)
KEYS = ("passed", "withheld_pct", "false_offs_per_10min", "savings_pct", "savings_of_oracle_pct")
SESSION_CSV = Path("metrics/water/session.csv")
PLOT = Path("reports/water_session.png")


def run(params: dict, progress: bool = True) -> dict:
    cfg = with_water_defaults(params["water"])
    metrics, traces = run_benchmark(cfg, progress=progress)
    k = int(cfg["plot_session"])
    if not 0 <= k < len(traces):
        raise ValueError(f"water.plot_session = {k}: the benchmark ran {len(traces)} sessions (0..{len(traces) - 1})")
    trace = traces[k]
    metrics["plot_session"] = trace.name
    write_session_csv(trace, SESSION_CSV)
    plot_session(
        trace,
        PLOT,
        threshold=float(metrics["model"]["threshold"]),
        controller=controller_config(cfg),
        flow_l_min=float(cfg["flow_l_min"]),
    )
    t = metrics["total"]
    limit = float(cfg["max_withheld_pct"])
    # a model that never opens "saves" everything: it fails here, whatever its savings
    metrics["passed"] = t["withheld_pct"] is not None and t["withheld_pct"] <= limit
    metrics["max_withheld_pct"] = limit
    write_metrics(REPORTS / "water.json", metrics)
    write_metrics(METRICS, headline({**t, "passed": metrics["passed"]}, KEYS))
    fmt = lambda x, spec=".1f": "n/a" if x is None else format(x, spec)  # noqa: E731
    print(
        f"water: {metrics['n_sessions']} held-out sessions, {t['duration_s']:.0f} s of washing at "
        f"{metrics['flow_l_min']:g} L/min: autosink {t['litres_autosink']:.2f} L, always-on "
        f"{t['litres_always_on']:.2f} L, oracle {t['litres_oracle']:.2f} L, IR {t['litres_ir']:.2f} L; "
        f"savings {fmt(t['savings_pct'])}% (oracle {fmt(t['oracle_savings_pct'])}%, "
        f"IR {fmt(t['ir_savings_pct'])}%); "
        f"withheld {t['withheld_s']:.1f} s of {t['need_s']:.1f} s needed; false-offs "
        f"{fmt(t['false_offs_per_10min'], '.2f')}/10 min; valve switches {fmt(t['valve_switches_per_min'], '.2f')}/min "
        f"-> {METRICS}, {REPORTS / 'water.json'}, {SESSION_CSV}, {PLOT}"
    )
    print(
        f"water: {'PASS' if metrics['passed'] else 'FAIL'}: withheld {fmt(t['withheld_pct'])}% of the needed water "
        f"(max {limit:g}%, water.max_withheld_pct), {fmt(t['missed_needs_pct'])}% of needs got none, false-offs "
        f"{fmt(t['false_offs_per_10min'], '.2f')}/10 min; savings {fmt(t['savings_pct'])}% "
        f"({fmt(t.get('savings_of_oracle_pct'))}% of the oracle's)"
    )
    return metrics
