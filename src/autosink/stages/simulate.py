"""`simulate` stage: the embedded sample data lake, its hidden ground truth, and the case sets."""

from __future__ import annotations

from pathlib import Path

from autosink.stages import write_results

TRUTH_DIR = Path("data/sim-truth")
CASES_DIR = Path("data/cases")
#: the headline (reports/simulate.json: everything simulate_lake reports)
KEYS = ("users", "sessions", "episodes", "frames", "overrides", "lake_mb", "majority_baseline_accuracy")


def run(params: dict, progress: bool = True) -> dict:
    from autosink.sim import simulate_lake

    metrics = simulate_lake(
        dict(params["sim"]), Path(params["data"]["sim_lake"]), TRUTH_DIR, CASES_DIR, progress=progress
    )
    write_results("simulate", metrics, KEYS)
    print(
        f"simulate: {metrics['episodes']} episodes, {metrics['frames']} frames, "
        f"trivial baseline accuracy {metrics['trivial_baseline_accuracy']:.3f}"
    )
    return metrics
