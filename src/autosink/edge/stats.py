"""What a run of the edge loop counts: frames, stalls, model errors, valve changes, seconds
open and litres (:class:`RunStats`, logged as one ``stats:`` line), and the inference latency's
percentiles in constant memory (:class:`LatencyHistogram`: a Pi runs for months)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LatencyHistogram", "RunStats"]


class LatencyHistogram:
    """Percentiles of latencies in constant memory (1% wide log bins, 10 us .. 100 s)."""

    _LO, _RATIO = 1e-5, 1.01

    def __init__(self) -> None:
        self._n_bins = int(math.ceil(math.log(100.0 / self._LO) / math.log(self._RATIO))) + 2
        self.counts = np.zeros(self._n_bins, np.int64)
        self.n = 0

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= self._LO else int(math.log(seconds / self._LO) / math.log(self._RATIO)) + 1
        self.counts[min(i, self._n_bins - 1)] += 1
        self.n += 1

    def percentile(self, q: float) -> float | None:
        if not self.n:
            return None
        i = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q / 100 * self.n)))
        return self._LO * self._RATIO**i  # upper edge of the bin


@dataclass
class RunStats:
    frames: int = 0
    stalls: int = 0
    model_errors: int = 0
    valve_changes: int = 0
    seconds_open: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    stop_reason: str = ""
    flow_l_min: float = 6.0
    bad_frames: int = 0  # replay frames the camera could not decode (skipped as missed frames)

    @property
    def fps(self) -> float:
        dt = self.ended - self.started
        return self.frames / dt if dt > 0 else 0.0

    @property
    def litres(self) -> float:
        return self.seconds_open / 60.0 * self.flow_l_min

    def line(self) -> str:
        p50, p99 = self.latency.percentile(50), self.latency.percentile(99)
        ms = lambda x: "-" if x is None else f"{x * 1000:.1f}ms"  # noqa: E731
        return (
            f"stats: frames={self.frames} fps={self.fps:.2f} latency_p50={ms(p50)} latency_p99={ms(p99)} "
            f"open_s={self.seconds_open:.1f} litres={self.litres:.2f} (at {self.flow_l_min:g} L/min) "
            f"valve_changes={self.valve_changes} stalls={self.stalls} model_errors={self.model_errors}"
            + (f" bad_frames={self.bad_frames}" if self.bad_frames else "")
            + (f" stop={self.stop_reason}" if self.stop_reason else "")
        )
