"""Rendered scenes as the network sees them: each scene drawn with the water off and running,
shrunk by the network's own resize, in worker processes, and kept on disk.

The simulator draws the same :class:`~autosink.sim.scene.SceneState` to the same bytes, so a
scene's renders are a pure function of the state, the drawing code and the preprocessing. The
threshold choice (32 tuning kitchens, ~11k renders), the replay of the base model's kitchens and
the water-invariance check draw the same scenes every run: :class:`RenderCache` keeps them, so a
retraining round draws nothing it drew before. Renders are kept as uint8 (a quarter of float32's
disk and memory), and rounded so whether or not they came from the cache: a result never depends
on the cache's state.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from autosink.learn.model import Preprocess

__all__ = ["RenderCache", "iter_renders", "render_chunk"]


def render_chunk(args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """``(states, preprocess)`` -> the water-off and water-on renders, uint8 ``[N, 3, h, w]``
    resized by ``preprocess`` (raw ``[N, H, W, 3]`` frames when it is None). Runs in a worker."""
    from autosink.sim.scene import render

    states, preprocess = args
    out = []
    for water in (False, True):
        frames = torch.from_numpy(np.stack([render(replace(st, water_on=water)) for st in states]))
        if preprocess is not None:
            with torch.no_grad():
                frames = (preprocess.resize(frames) * 255.0).round().clamp(0, 255).to(torch.uint8)
        out.append(frames)
    return out[0], out[1]


class RenderCache:
    """Renders on disk, one ``.npz`` per chunk of scenes, named by the sha256 of the chunk's
    states (their dataclass repr lists every field), in a folder per preprocessing and drawing
    code (``renders-<w>x<h>-<key>``): a changed crop, input size or renderer starts a folder of
    its own, and any run with the same scenes, whatever stage or project copy, finds them."""

    def __init__(self, root: str | Path, preprocess: Preprocess) -> None:
        from autosink.sim import scene

        spec = {
            "frame": [preprocess.source_height, preprocess.source_width],
            "input": [preprocess.height, preprocess.width],
            "crop": list(preprocess.crop),
            "pool": preprocess.pool,
            "resize": hashlib.sha256(inspect.getsource(Preprocess.resize).encode()).hexdigest()[:12],
            "scene": hashlib.sha256(inspect.getsource(scene).encode()).hexdigest()[:12],
        }
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / f"renders-{preprocess.width}x{preprocess.height}-{key}"
        self.hits = self.misses = 0

    def path_for(self, states: list) -> Path:
        sha = hashlib.sha256("\n".join(map(repr, states)).encode()).hexdigest()
        return self.dir / sha[:2] / f"{sha[2:]}.npz"

    def get(self, states: list) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            with np.load(self.path_for(states), allow_pickle=False) as z:
                off, on = torch.from_numpy(z["off"]), torch.from_numpy(z["on"])
        except (OSError, ValueError, KeyError):  # absent, or cut short by a crash: drawn again
            return None
        if len(off) != len(states):
            return None
        self.hits += len(states)
        return off, on

    def put(self, states: list, off: torch.Tensor, on: torch.Tensor) -> None:
        path = self.path_for(states)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, off=off.numpy(), on=on.numpy())
        os.replace(tmp, path)  # atomic: a concurrent stage never reads half a file
        self.misses += len(states)

    @classmethod
    def from_params(cls, params: dict, preprocess: Preprocess | None) -> RenderCache | None:
        """The cache under ``train.frame_cache`` (None when that is null or nothing is resized)."""
        root = params["train"].get("frame_cache")
        return cls(root, preprocess) if root and preprocess is not None else None

    def summary(self) -> dict:
        return {"dir": str(self.dir), "hits": self.hits, "misses": self.misses}


def iter_renders(
    states: list,
    preprocess: Preprocess | None,
    chunk: int = 32,
    workers: int | None = None,
    cache: RenderCache | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The water-off and water-on renders of ``states``, ``chunk`` scenes at a time and in order
    (:func:`render_chunk`): from ``cache`` where it has them, the rest drawn in ``workers``
    processes (default: every core; single-threaded there) while the caller consumes what is
    ready. The result does not depend on the number of workers or on the cache."""
    from concurrent.futures import ProcessPoolExecutor

    chunks = [states[i : i + chunk] for i in range(0, len(states), max(1, int(chunk)))]
    if preprocess is None:
        cache = None  # raw frames: too large to keep
    todo = [i for i, c in enumerate(chunks) if cache is None or not cache.path_for(c).exists()]
    workers = max(1, min(int(workers or os.cpu_count() or 1), len(todo)))
    with contextlib.ExitStack() as stack:
        jobs = ((chunks[i], preprocess) for i in todo)
        if workers == 1:
            drawn = map(render_chunk, jobs)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)))
            drawn = pool.map(render_chunk, jobs)
        todo_set = set(todo)
        for i, c in enumerate(chunks):
            got = None if i in todo_set else cache.get(c)
            if got is None:  # not cached (or a damaged file: drawn here)
                got = next(drawn) if i in todo_set else render_chunk((c, preprocess))
                if cache is not None:
                    cache.put(c, *got)
            yield got
