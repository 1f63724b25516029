"""Feedback episodes: a ring buffer of recent frames, saved around every user override.

Every processed frame is offered to :meth:`Recorder.add` with what the system decided
(``model_output``: the model's decision, without the user), the water the user wanted
(``magnetic_status``; see :class:`autosink.core.episode.Interaction`) and the valve
(``arduino_output``). When the first two differ the user overrode the model, and the frames from
``pre_s`` seconds before the first overridden frame to ``post_s`` seconds after the last one are
written to the spool as one data-lake episode, version 2, with
:func:`autosink.core.episode.write_episode` (atomic: a hidden temp file renamed into place), so the
pipeline's ``autosink lake check`` and ``extract`` read them like any other Pi's.

**Frames kept.** The control loop may run faster than episodes need; a frame goes into the
buffer when ``1 / record_fps`` passed since the last kept frame, or when ``(model_output,
magnetic_status)`` changed (so every switch, and every override's first frame, is in the
episode). ``record_fps = 0`` keeps every frame.

**Unique stems.** The stem is the second of the episode's first frame. Override windows that
overlap, or that would start within a second of the previous episode's last frame, are merged
into one episode (the finished episode waits ``pre_s + 1`` s for that before it is written).
If a stem is still taken (the clock was set back, or a restart within one second), the episode
is delayed: its leading frames are dropped until its first frame has a free second (logged).
Timestamps never go backwards within an episode (a clock step back mid-episode repeats the
last second); across episodes they follow the clock (a DST change moves stems back an hour).
An episode is cut at ``max_episode_s``; the rest of an override that long is not recorded (a
handle left closed all night while the model wants water must not fill the spool).

**Sessions** (``dishwashing_id``, ``dishwashing_start``). A session starts at the first *active*
frame (the valve open, or the model or the user wanting water) after ``session_gap_s`` without
one (default 10 min), or after a gap that long between frames (a camera stall, a restart: every
start of the runtime opens a new session). ``dishwashing_id`` is 10 random hex characters;
``dishwashing_start`` the local time, tz-aware, of the session's first active frame (or of the
first frame of its first episode, if that is earlier: the pre-roll).

**Timestamps** are the Pi's local wall time, naive, second precision, as the format says.
``arduino_output`` is the valve command the Pi sent (1 open).

Writing (PNG encoding) runs in a background thread so the control loop never waits on it; a
queue of more than ``max_pending`` episodes drops the newest (logged).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from autosink.core.episode import FRAME_HEIGHT, FRAME_WIDTH, EpisodeMeta, Interaction, episode_stem, write_episode

__all__ = ["Recorder", "Sample", "Session", "cleanup_spool", "spool_stems"]

log = logging.getLogger("autosink.edge.recorder")


@dataclass
class Session:
    id: str
    start: datetime  # tz-aware local, second precision
    last_active_t: float


@dataclass
class Sample:
    t: float  # monotonic seconds (runtime clock)
    ts: datetime  # naive local wall time, second precision, never decreasing
    image: np.ndarray  # RGB uint8 HxWx3
    model_output: int
    magnetic_status: int
    valve: int
    session: Session | None

    @property
    def override(self) -> bool:
        return self.model_output != self.magnetic_status


@dataclass
class _Pending:
    samples: list[Sample]
    session: Session | None


@dataclass
class RecorderStats:
    episodes: int = 0
    frames: int = 0
    dropped: int = 0
    errors: int = 0
    written: list[Path] = field(default_factory=list)


def cleanup_spool(spool: Path) -> list[Path]:
    """Remove temp files a crash left in the spool (``.*.tmp``: half-written episodes)."""
    removed = []
    if spool.is_dir():
        for p in spool.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    for p in removed:
        log.warning("spool: removed leftover temp file %s", p.name)
    return removed


def spool_stems(spool: Path) -> set[str]:
    return {p.name[:-4] for p in spool.glob("*.zip")} if spool.is_dir() else set()


def local_naive(epoch: float) -> datetime:
    return datetime.fromtimestamp(math.floor(epoch))


def local_aware(epoch: float) -> datetime:
    return datetime.fromtimestamp(math.floor(epoch)).astimezone()


class Recorder:
    """See module docstring. ``add`` per frame; ``close`` at the end (flushes and waits)."""

    def __init__(
        self,
        spool: str | os.PathLike[str],
        *,
        user_id: str,
        pre_s: float = 3.0,
        post_s: float = 3.0,
        record_fps: float = 2.0,
        max_episode_s: float = 120.0,
        session_gap_s: float = 600.0,
        max_buffer_frames: int = 400,
        max_pending: int = 4,
        background: bool = True,
        used_stems: Callable[[], set[str]] | None = None,
        on_written: Callable[[Path], None] | None = None,
        new_id: Callable[[], str] = lambda: secrets.token_hex(5),
    ) -> None:
        if not user_id or not str(user_id).strip() or any(c in str(user_id) for c in "/\\\x00"):
            raise ValueError(f"user_id {user_id!r}: must be a non-empty name without / \\ or NUL")
        if pre_s < 0 or post_s < 0 or max_episode_s <= 0 or session_gap_s <= 0:
            raise ValueError("pre_s/post_s must be >= 0, max_episode_s and session_gap_s > 0")
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        cleanup_spool(self.spool)
        self.user_id = str(user_id)
        self.pre_s, self.post_s = float(pre_s), float(post_s)
        self.keep_every = 1.0 / record_fps if record_fps and record_fps > 0 else 0.0
        self.max_episode_s = float(max_episode_s)
        self.session_gap_s = float(session_gap_s)
        self.max_buffer_frames = int(max_buffer_frames)
        self._used_stems_fn = used_stems
        self._stems: set[str] = spool_stems(self.spool)
        self._on_written = on_written
        self._new_id = new_id
        self.stats = RecorderStats()

        self.session: Session | None = None
        self._ring: deque[Sample] = deque()
        self._current: list[Sample] | None = None
        self._current_session: Session | None = None
        self._last_override_t = -math.inf
        self._pending: _Pending | None = None
        self._last_t: float | None = None
        self._suppressed = False
        self._last_kept_t = -math.inf
        self._last_state: tuple[int, int] | None = None

        self._background = background
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_pending)))
        self._writer: threading.Thread | None = None
        if background:
            self._writer = threading.Thread(target=self._write_loop, name="episode-writer", daemon=True)
            self._writer.start()

    # ------------------------------------------------------------------ per frame

    def add(
        self, t: float, wall: float, image: np.ndarray, model_output: int, magnetic_status: int, valve: bool | int = 0
    ) -> None:
        """One processed frame: monotonic time ``t``, wall clock ``wall`` (epoch seconds)."""
        m, s, v = int(bool(model_output)), int(bool(magnetic_status)), int(bool(valve))
        if self._last_t is not None and t - self._last_t > self.session_gap_s:
            self._end_session("gap in frames")
        self._last_t = t

        ts = local_naive(wall)  # made non-decreasing per episode when it is written

        active = bool(m or s or v)
        if active:
            if self.session is None or t - self.session.last_active_t > self.session_gap_s:
                self.session = Session(self._new_id(), local_aware(wall), t)
                log.info("session %s started", self.session.id)
            self.session.last_active_t = t

        state = (m, s)
        kept = (
            not self.keep_every
            or t - self._last_kept_t >= self.keep_every - 1e-6
            or state != self._last_state
            or m != s
        )
        self._last_state = state
        sample = Sample(t, ts, image, m, s, v, self.session)
        if kept:
            self._last_kept_t = t
        self._step(sample, kept)

    def _step(self, x: Sample, kept: bool) -> None:
        if self._suppressed:
            if x.override:
                return
            self._suppressed = False
        if self._current is not None:
            cur = self._current
            if x.override:
                self._last_override_t = x.t
            if x.t - cur[0].t > self.max_episode_s or len(cur) >= self.max_buffer_frames:
                self._finish(cur, self._current_session)  # cut: written as it is, no merge
                self._current = None
                self._ring.clear()
                if x.override:  # e.g. a handle left closed all night: do not fill the spool with it
                    self._suppressed = True
                    log.warning("override longer than %.0f s: the rest of it is not recorded", self.max_episode_s)
                elif kept:
                    self._ring.append(x)
                return
            if x.t <= self._last_override_t + self.post_s:
                if kept:
                    cur.append(x)
                return
            # past the post window: the episode is complete, but may still merge with the next one
            self._pending = _Pending(cur, self._current_session)
            self._current = None
            self._ring.clear()
            # fall through: x is the first frame after it

        if x.override:
            self._begin_override(x)
            return
        if kept:
            self._ring.append(x)
        if self._pending is not None:
            last = self._pending.samples[-1]
            if x.t - self.pre_s > last.t + 1.0:
                self._finish(self._pending.samples, self._pending.session)
                self._pending = None
        self._trim_ring(x.t)

    def _trim_ring(self, now: float) -> None:
        if self._pending is not None:
            return  # the ring holds everything since the pending episode (a merge needs it all)
        while self._ring and (self._ring[0].t < now - self.pre_s or len(self._ring) > self.max_buffer_frames):
            self._ring.popleft()

    def _begin_override(self, x: Sample) -> None:
        pre = [r for r in self._ring if r.t >= x.t - self.pre_s]
        if self._pending is not None:
            last = self._pending.samples[-1]
            first = pre[0] if pre else x
            if x.t - self.pre_s <= last.t + 1.0 or first.ts <= last.ts:
                # the windows touch (or would share a second): one episode
                merged, session = self._pending.samples + list(self._ring), self._pending.session
                self._pending = None
                self._ring.clear()
                self._current, self._current_session = merged + [x], session
                self._last_override_t = x.t
                return
            self._finish(self._pending.samples, self._pending.session)
            self._pending = None
        self._ring.clear()
        self._start(pre + [x])

    def _start(self, samples: list[Sample]) -> None:
        self._current = samples
        self._current_session = samples[-1].session
        self._last_override_t = samples[-1].t

    def _end_session(self, why: str) -> None:
        self.flush()
        if self.session is not None:
            log.info("session %s ended (%s)", self.session.id, why)
        self.session = None
        self._ring.clear()

    def flush(self) -> None:
        """Finish whatever is open (pending and current episodes) now."""
        if self._pending is not None:
            self._finish(self._pending.samples, self._pending.session)
            self._pending = None
        if self._current is not None:
            cur = [x for x in self._current if x.t <= self._last_override_t + self.post_s]
            self._finish(cur, self._current_session)
            self._current = None

    # ------------------------------------------------------------------ writing

    def _used(self) -> set[str]:
        used = set(self._stems)
        if self._used_stems_fn is not None:
            with contextlib.suppress(Exception):
                used |= set(self._used_stems_fn())
        return used

    def _finish(self, samples: list[Sample], session: Session | None) -> None:
        if not samples:
            return
        used = self._used()
        dropped = 0
        while samples and episode_stem(samples[0].ts) in used:
            samples = samples[1:]
            dropped += 1
        if dropped:
            if samples:
                log.warning("episode stem taken (clock set back?): delayed by dropping %d leading frame(s)", dropped)
            else:
                log.error("episode discarded: every second of it is already the stem of another episode")
                self.stats.dropped += 1
                return
        if session is None:  # frames before any activity only: cannot happen with an override, but be safe
            session = Session(self._new_id(), samples[0].ts.astimezone(), samples[0].t)
        first_aware = samples[0].ts.astimezone()
        if first_aware < session.start:
            session.start = first_aware  # the pre-roll began before the session's first active frame
        stem = episode_stem(samples[0].ts)
        self._stems.add(stem)
        stamps, last = [], samples[0].ts
        for x in samples:  # the clock set back mid-episode: repeat the last second, never go back
            last = max(last, x.ts)
            stamps.append(last)
        meta = EpisodeMeta(
            version=2,
            user_id=self.user_id,
            dishwashing_id=session.id,
            dishwashing_start=session.start,
            interactions=[
                Interaction(
                    timestamp=ts,
                    model_output=x.model_output,
                    magnetic_status=x.magnetic_status,
                    image=f"{i + 1}.png",
                    arduino_output=x.valve,
                )
                for i, (x, ts) in enumerate(zip(samples, stamps))
            ],
        )
        job = (self.spool / f"{stem}.zip", meta, [x.image for x in samples])
        if not self._background:
            self._write(job)
            return
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.stats.dropped += 1
            self._stems.discard(stem)
            log.error(
                "episode %s dropped: %d episodes already waiting to be written (disk too slow?)",
                stem,
                self._queue.qsize(),
            )

    def _write(self, job: tuple[Path, EpisodeMeta, list[np.ndarray]]) -> None:
        path, meta, images = job
        try:
            write_episode(path, meta, (self._fit(img) for img in images))
        except Exception as e:  # disk full, bad frame: log, count, keep the control loop alive
            self.stats.errors += 1
            log.error("episode %s not written: %s: %s", path.name, type(e).__name__, e)
            return
        n = len(meta.interactions)
        overrides = sum(it.model_output != it.magnetic_status for it in meta.interactions)
        self.stats.episodes += 1
        self.stats.frames += n
        self.stats.written.append(path)
        log.info(
            "episode %s written: %d frames, %d overridden, session %s", path.name, n, overrides, meta.dishwashing_id
        )
        if self._on_written is not None:
            with contextlib.suppress(Exception):
                self._on_written(path)

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Lake frames are FRAME_WIDTH x FRAME_HEIGHT whatever the model's input size."""
        if image.shape[:2] == (FRAME_HEIGHT, FRAME_WIDTH):
            return image
        import cv2

        return cv2.resize(image, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA)

    def _write_loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._write(job)
            finally:
                self._queue.task_done()

    def close(self, timeout: float = 10.0) -> None:
        """Flush open episodes and wait (up to ``timeout``) for the writer."""
        self.flush()
        if self._writer is not None:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                log.error("episode writer: queue still full at shutdown")
                return
            self._writer.join(timeout)
            if self._writer.is_alive():
                log.error("episode writer still busy after %.0f s at shutdown", timeout)
            self._writer = None
