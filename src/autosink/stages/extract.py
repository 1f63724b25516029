"""`extract` stage: data lake -> data/extracted (a validated per-frame table referencing the
lake), bad episodes quarantined."""

from __future__ import annotations

from pathlib import Path

from autosink.data.extract import extract_lake
from autosink.stages import write_metrics, write_run_record

OUT_DIR = Path("data/extracted")
METRICS = Path("metrics/extract.json")


def run(params: dict, progress: bool = True) -> dict:
    data = params["data"]
    result = extract_lake(
        Path(data["lake"]),
        OUT_DIR,
        expected_size=(int(data["frame_width"]), int(data["frame_height"])),
        progress=progress,
    )
    metrics = result.metrics()
    # the work this run did depends on what an earlier run left, not on the data: not a metric
    work = {k: metrics.pop(k) for k in ("episodes_extracted", "episodes_reused", "episodes_removed")}
    write_metrics(METRICS, metrics)
    write_run_record("extract", {**work, "quarantined": result.quarantined})
    print(
        f"extract: {result.episodes_ok} episodes ok ({result.episodes_extracted} new or changed, "
        f"{result.episodes_reused} reused), {result.episodes_quarantined} quarantined, {result.frames} frames"
    )
    for name, reasons in result.quarantined.items():
        print(f"  quarantined {name}: {'; '.join(reasons)}")
    return metrics
