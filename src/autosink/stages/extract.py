"""`extract` stage: data lake -> data/extracted (a validated per-frame table referencing the lake), bad episodes quarantined."""

from __future__ import annotations

from pathlib import Path

from autosink.extract import extract_lake
from autosink.stages import write_metrics

OUT_DIR = Path("data/extracted")
METRICS = Path("metrics/extract.json")


def run(params: dict, progress: bool = True) -> dict:
    data = params["data"]
    result = extract_lake(
        Path(data["lake"]), OUT_DIR,
        expected_size=(int(data["frame_width"]), int(data["frame_height"])),
        progress=progress,
    )
    metrics = result.metrics()
    write_metrics(METRICS, metrics)
    print(
        f"extract: {result.episodes_ok} episodes ok ({result.episodes_extracted} new or changed, "
        f"{result.episodes_reused} reused), {result.episodes_quarantined} quarantined, {result.frames} frames"
    )
    for name, reasons in result.quarantined.items():
        print(f"  quarantined {name}: {'; '.join(reasons)}")
    return metrics
