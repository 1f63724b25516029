"""`validate_data` stage: feature-store snapshot -> features, drift report, checks, gate.

Writes ``data/validation/image_features.csv`` (the per-image feature cache, persisted),
``reports/data_validation.html`` (evidently), ``reports/data_validation/*.csv`` (DVC plots
data) and ``metrics/data_validation.json`` whatever the verdict; then, when a check failed and
``validate.enforce`` is true, raises ``DataValidationError`` listing every failed check (the
CLI turns it into exit code 1, so `dvc repro` stops before training).
"""

from __future__ import annotations

import json
from pathlib import Path

from autosink.core.fileio import atomic_write
from autosink.data.validation import DataValidationError, Paths, failure_message, validate
from autosink.data.validation.core import RUN_KEYS
from autosink.stages import write_run_record

PATHS = Paths()
#: The verdict alone, what `train` depends on: unlike the metrics (which count cache hits), it
#: changes only when the data or the checks do, so rerunning the validation does not retrain.
VERDICT = Path("reports/data_validation/verdict.json")


def run(params: dict, progress: bool = True) -> dict:
    summary = validate(params, PATHS, progress=progress)
    verdict = {
        "passed": summary["passed"],
        "enforced": summary["enforced"],
        "feature_store_version": summary["feature_store_version"],
        "checks": {c["name"]: c["passed"] for c in summary["checks"].values()},
    }
    atomic_write(VERDICT, json.dumps(verdict, indent=2, sort_keys=True) + "\n")
    write_run_record("validate_data", {k: summary.get(k) for k in RUN_KEYS})
    for check in summary["checks"].values():
        print(f"validate: {'ok  ' if check['passed'] else 'FAIL'} {check['name']}: {check['message']}")
    drift = summary["drift_share"]
    print(
        f"validate: {summary['n_frames']} frames ({summary['features_computed']} computed, "
        f"{summary['features_reused']} from cache), drift share "
        f"{'n/a' if drift is None else f'{drift:.2f}'} vs. {summary['drift']['reference']['kind']} reference, "
        f"{summary['seconds']:.1f} s -> {PATHS.html}, {PATHS.metrics}, {PATHS.report}"
    )
    if not summary["passed"]:
        if summary["enforced"]:
            raise DataValidationError(failure_message(summary))
        print("validate: gate NOT enforced (validate.enforce=false): continuing despite failed checks")
    return summary
