"""Tiny synthetic episodes for unit tests (small frames: the format does not care about size)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from autosink.core.episode import EpisodeMeta, Interaction, episode_stem, write_episode

JST = timezone(timedelta(hours=9))


def make_episode(
    lake: Path,
    start: datetime,
    model: list[int],
    faucet: list[int],
    *,
    user: str = "user_0001",
    session: str = "0123456789",
    fps: int = 2,
    size: tuple[int, int] = (16, 12),
) -> Path:
    """Write one v2 episode whose frame i is a flat colour encoding i (so frames differ)."""
    n = len(model)
    interactions = [
        Interaction(
            timestamp=start + timedelta(seconds=i // fps),
            model_output=model[i],
            arduino_output=0,
            magnetic_status=faucet[i],
            image=f"{i + 1}.png",
        )
        for i in range(n)
    ]
    meta = EpisodeMeta(
        version=2,
        user_id=user,
        dishwashing_id=session,
        dishwashing_start=start.replace(tzinfo=JST),
        interactions=interactions,
        extra={},
    )
    w, h = size
    frames = [np.full((h, w, 3), (i * 7 % 256, 100, 200), dtype=np.uint8) for i in range(n)]
    return write_episode(lake / f"{episode_stem(start)}.zip", meta, frames, expected_size=None)
