"""Scene renderer: a kitchen sink seen from a camera mounted above the faucet.

Pure numpy + OpenCV drawing, deterministic: the same :class:`SceneState` always renders to
the same bytes (per-frame camera noise comes from ``SceneState.noise_seed``), so a frame can
be rendered lazily, in any order, by any process.

Image layout (640x480, RGB uint8, y grows downwards): the user stands at the bottom edge
(arms come in from there), the faucet spout comes in from the top edge and ends at
:data:`NOZZLE`; the camera is fixed to the faucet, so the spout and the region under it,
:data:`ROI`, never move in the image while the basin, drain, counter and clutter differ
per kitchen. A dish "is in the ROI" when its centre lies inside :data:`ROI` (:func:`in_roi`).

Drawing order: counter + clutter + basin + drain (cached background per :class:`Look`) ->
resting dishes -> dish (+ foam) -> scrubber (+ foam) -> hands -> water stream -> spout ->
lighting (gain, colour cast, vignette) + glare -> blur -> camera noise.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

W, H = 640, 480
FRAME_SHAPE = (H, W, 3)
#: Region under the faucet (x0, y0, x1, y1), pixel coordinates, x1/y1 exclusive. Fixed: the
#: camera is mounted on the faucet. Later stages compute ROI features from ``frame[y0:y1, x0:x1]``.
ROI = (220, 150, 420, 350)
#: Where the spout's aerator is in the image; the stream falls from here.
NOZZLE = (320, 128)
#: Where the stream meets the basin floor when nothing is under it.
STREAM_FLOOR_Y = 262

DISH_KINDS = ("plate", "bowl", "cup", "pan")
SCRUBBER_KINDS = ("sponge", "brush")

_AA = cv2.LINE_AA


def roi_rect() -> tuple[int, int, int, int]:
    """The ROI as (x0, y0, x1, y1), x1/y1 exclusive."""
    return ROI


def roi_slice() -> tuple[slice, slice]:
    """``frame[roi_slice()]`` is the ROI crop."""
    x0, y0, x1, y1 = ROI
    return slice(y0, y1), slice(x0, x1)


def in_roi(x: float, y: float, margin: float = 0.0) -> bool:
    """True when (x, y) lies inside the ROI shrunk by ``margin`` pixels (negative grows it)."""
    x0, y0, x1, y1 = ROI
    return (x0 + margin) <= x < (x1 - margin) and (y0 + margin) <= y < (y1 - margin)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Hand:
    """A hand seen from above (back of the hand). ``angle``: direction wrist -> fingertips in
    degrees, image coordinates (0 = right, 90 = down, -90 = up). ``grip`` 0 open .. 1 curled."""

    side: str  # "L" or "R"
    x: float
    y: float
    angle: float = -90.0
    grip: float = 0.0


@dataclass(frozen=True)
class Dish:
    kind: str  # plate | bowl | cup | pan
    x: float
    y: float
    r: float
    angle: float = 0.0  # handle direction (cup, pan), degrees
    color: tuple[int, int, int] = (236, 236, 230)
    accent: tuple[int, int, int] = (236, 236, 230)  # rim band / pattern colour
    foam: float = 0.0  # 0..1 soap foam on the dish
    foam_seed: int = 0


@dataclass(frozen=True)
class Scrubber:
    kind: str  # sponge | brush
    x: float
    y: float
    angle: float = 0.0  # long axis (sponge) / handle direction (brush), degrees
    color: tuple[int, int, int] = (235, 200, 40)
    color2: tuple[int, int, int] = (40, 140, 60)
    foam: float = 0.0


@dataclass(frozen=True)
class ClutterItem:
    kind: str  # bottle | soap | cloth | pot | board
    x: float
    y: float
    size: float
    angle: float
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Look:
    """Everything about the kitchen and the camera that is not the action: per user, with a
    per-session drift (lighting, glare, noise, clutter). Hashable: it keys the background cache."""

    basin: tuple[int, int, int, int] = (70, 52, 570, 452)
    basin_radius: int = 56
    basin_color: tuple[int, int, int] = (176, 180, 184)
    material: str = "steel"  # steel | ceramic | composite
    counter_color: tuple[int, int, int] = (120, 96, 70)
    counter_kind: str = "plain"  # plain | speckle | wood
    drain: tuple[int, int] = (320, 318)
    faucet_color: tuple[int, int, int] = (196, 200, 206)
    skin: tuple[int, int, int] = (224, 180, 150)
    sleeve: tuple[int, int, int] = (60, 80, 130)
    hand_scale: float = 1.0
    clutter: tuple[ClutterItem, ...] = ()
    texture_seed: int = 0
    gain: float = 1.0  # global lighting level
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB multipliers
    vignette: float = 0.0
    glare: tuple[float, float, float, float] | None = None  # x, y, radius, strength
    noise: float = 1.5  # camera noise sigma (8-bit levels)
    blur: float = 0.6  # gaussian blur sigma (0: none)


@dataclass(frozen=True)
class SceneState:
    """One frame's scene. ``water_on`` is the physical water state shown in this frame."""

    look: Look
    step: str = "idle"  # idle | prerinse | detergent | rinse
    t: float = 0.0  # seconds since the session started
    hands: tuple[Hand, ...] = ()
    dish: Dish | None = None
    dish_held: bool = False
    scrubber: Scrubber | None = None
    scrubber_held: bool = False
    resting: tuple[Dish, ...] = ()  # dishes lying in the basin, not the one being washed
    water_on: bool = False
    gain: float = 1.0  # per-frame exposure drift, multiplies look.gain
    noise_seed: int = 0

    @property
    def dish_in_roi(self) -> bool:
        return self.dish is not None and in_roi(self.dish.x, self.dish.y)

    @property
    def scrubber_visible(self) -> bool:
        s = self.scrubber
        return s is not None and -40 < s.x < W + 40 and -40 < s.y < H + 40

    @property
    def hand_in_roi(self) -> bool:
        return any(in_roi(h.x, h.y) for h in self.hands)


# --------------------------------------------------------------------------- geometry helpers


def _unit(angle_deg: float) -> tuple[float, float]:
    a = math.radians(angle_deg)
    return math.cos(a), math.sin(a)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)  # type: ignore[return-value]


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def hand_holding(dish: Dish, side: str, theta: float, scale: float = 1.0, grip: float = 0.65) -> Hand:
    """A hand gripping ``dish`` at rim angle ``theta`` (degrees): palm just outside the rim,
    fingers over the rim pointing at the dish centre."""
    ux, uy = _unit(theta)
    off = dish.r + 22 * scale
    return Hand(side, dish.x + ux * off, dish.y + uy * off, angle=theta + 180.0, grip=grip)


def hand_on_scrubber(s: Scrubber, side: str = "R", scale: float = 1.0) -> Hand:
    """A hand holding a scrubber: palm over a sponge's back half, or fist around a brush handle."""
    if s.kind == "brush":
        ux, uy = _unit(s.angle)  # handle direction, away from the head
        return Hand(side, s.x + ux * 84 * scale, s.y + uy * 84 * scale, angle=s.angle + 180.0, grip=0.9)
    # grabbed lengthwise from behind: fingers along the long axis (pointing away from the
    # user), the front half of the sponge sticks out beyond the curled fingers
    a = s.angle if _unit(s.angle)[1] <= 0 else s.angle + 180.0
    ux, uy = _unit(a)
    return Hand(side, s.x - ux * 40 * scale, s.y - uy * 40 * scale, angle=a, grip=0.85)


# --------------------------------------------------------------------------- background (cached)


def _rounded_rect_mask(shape: tuple[int, int], rect: tuple[int, int, int, int], r: int) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    x0, y0, x1, y1 = rect
    cv2.rectangle(m, (x0 + r, y0), (x1 - r, y1), 255, -1)
    cv2.rectangle(m, (x0, y0 + r), (x1, y1 - r), 255, -1)
    for cx, cy in ((x0 + r, y0 + r), (x1 - r, y0 + r), (x0 + r, y1 - r), (x1 - r, y1 - r)):
        cv2.circle(m, (cx, cy), r, 255, -1, _AA)
    return m


def _draw_clutter(img: np.ndarray, it: ClutterItem) -> None:
    c = it.color
    x, y, s = it.x, it.y, it.size
    if it.kind == "bottle":  # seen from above: body circle, shoulder ring, cap
        cv2.circle(img, _pt(x, y), int(s), _shade(c, 0.75), -1, _AA)
        cv2.circle(img, _pt(x, y), int(s * 0.8), c, -1, _AA)
        cv2.circle(img, _pt(x - s * 0.25, y - s * 0.25), int(s * 0.25), _mix(c, (255, 255, 255), 0.5), -1, _AA)
        cv2.circle(img, _pt(x, y), int(s * 0.38), (235, 235, 235) if sum(c) < 380 else (40, 40, 40), -1, _AA)
    elif it.kind == "soap":  # pump dispenser
        box = cv2.boxPoints(((x, y), (s * 1.3, s * 1.9), it.angle)).astype(np.int32)
        cv2.fillPoly(img, [box], c, _AA)
        cv2.polylines(img, [box], True, _shade(c, 0.6), 2, _AA)
        cv2.circle(img, _pt(x, y), int(s * 0.35), (245, 245, 245), -1, _AA)
        ux, uy = _unit(it.angle)
        cv2.line(img, _pt(x, y), _pt(x + ux * s * 0.9, y + uy * s * 0.9), (245, 245, 245), max(2, int(s * 0.18)), _AA)
    elif it.kind == "cloth":  # folded towel with stripes
        box = cv2.boxPoints(((x, y), (s * 2.6, s * 1.6), it.angle)).astype(np.int32)
        cv2.fillPoly(img, [box], c, _AA)
        ux, uy = _unit(it.angle)
        vx, vy = -uy, ux
        for k in (-0.45, 0.45):
            p0 = (x + ux * s * 1.3 * k - vx * s * 0.8, y + uy * s * 1.3 * k - vy * s * 0.8)
            p1 = (x + ux * s * 1.3 * k + vx * s * 0.8, y + uy * s * 1.3 * k + vy * s * 0.8)
            cv2.line(img, _pt(*p0), _pt(*p1), _shade(c, 0.7), max(2, int(s * 0.12)), _AA)
    elif it.kind == "pot":  # plant pot
        cv2.circle(img, _pt(x, y), int(s), c, -1, _AA)
        cv2.circle(img, _pt(x, y), int(s * 0.8), (70, 50, 35), -1, _AA)
        for k in range(5):
            ux, uy = _unit(it.angle + k * 72)
            cv2.ellipse(
                img,
                _pt(x + ux * s * 0.4, y + uy * s * 0.4),
                (int(s * 0.45), int(s * 0.18)),
                it.angle + k * 72,
                0,
                360,
                (60, 140, 60),
                -1,
                _AA,
            )
    else:  # cutting board
        box = cv2.boxPoints(((x, y), (s * 3.2, s * 2.0), it.angle)).astype(np.int32)
        cv2.fillPoly(img, [box], c, _AA)
        cv2.polylines(img, [box], True, _shade(c, 0.8), 2, _AA)


def _faucet_sprite(look: Look) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """The spout (opaque, on top of everything), cropped to its bounding box."""
    x0, x1, y1 = NOZZLE[0] - 34, NOZZLE[0] + 34, NOZZLE[1] + 26
    img = np.zeros((y1, x1 - x0, 3), np.uint8)
    mask = np.zeros((y1, x1 - x0), np.uint8)
    c = look.faucet_color
    cx, ny = NOZZLE[0] - x0, NOZZLE[1]
    half = 17
    for k in range(-half, half + 1):  # cylinder shading: dark edges, a highlight left of centre
        f = 0.62 + 0.38 * math.cos(math.pi * k / (2.2 * half))
        f += 0.35 * math.exp(-(((k + 5) / 3.0) ** 2))
        cv2.line(img, (cx + k, 0), (cx + k, ny - 6), _shade(c, f), 1)
    cv2.rectangle(mask, (cx - half, 0), (cx + half, ny - 6), 255, -1)
    cv2.circle(img, (cx, ny), 21, _shade(c, 0.85), -1, _AA)
    cv2.circle(mask, (cx, ny), 22, 255, -1, _AA)
    cv2.circle(img, (cx, ny), 21, _shade(c, 0.55), 2, _AA)
    cv2.circle(img, (cx - 5, ny - 5), 7, _shade(c, 1.3), -1, _AA)
    cv2.circle(img, (cx, ny + 2), 10, _shade(c, 0.45), -1, _AA)  # aerator
    for dx in (-4, 0, 4):
        for dy in (-4, 0, 4):
            img[ny + 2 + dy, cx + dx] = _shade(c, 0.75)
    return img, mask > 127, (slice(0, y1), slice(x0, x1))


class _Background:
    def __init__(self, look: Look) -> None:
        rng = np.random.default_rng(look.texture_seed)
        img = np.empty(FRAME_SHAPE, np.uint8)
        img[:] = look.counter_color
        if look.counter_kind == "wood":  # posterised grain stripes (flat bands compress well)
            ph = rng.uniform(0, 6.28)
            for y in range(0, H, 3):
                v = math.sin(y / 9.0 + 2.5 * math.sin(y / 61.0 + ph))
                if abs(v) > 0.55:
                    cv2.line(img, (0, y), (W - 1, y), _shade(look.counter_color, 0.93 if v > 0 else 1.06), 2)
        elif look.counter_kind == "speckle":
            n = 700
            xs = rng.integers(0, W, n)
            ys = rng.integers(0, H, n)
            rs = rng.integers(1, 3, n)
            fs = rng.choice([0.7, 0.85, 1.2, 1.35], n)
            for x, y, r, f in zip(xs, ys, rs, fs):
                cv2.circle(img, (int(x), int(y)), int(r), _shade(look.counter_color, float(f)), -1)
        for it in look.clutter:
            _draw_clutter(img, it)
        # basin: rim, sloped walls darker towards the edge, flat floor
        bx0, by0, bx1, by1 = look.basin
        rim = _rounded_rect_mask((H, W), (bx0 - 10, by0 - 10, bx1 + 10, by1 + 10), look.basin_radius + 10)
        img[rim > 127] = _shade(look.basin_color, 1.08)
        mask = _rounded_rect_mask((H, W), look.basin, look.basin_radius)
        dist = cv2.distanceTransform((mask > 127).astype(np.uint8), cv2.DIST_L2, 5)
        wall = np.clip(dist / 34.0, 0.0, 1.0)
        shade = 0.74 + 0.26 * np.round(wall * 6.0) / 6.0  # sloped walls: a few flat bands
        dx, dy = look.drain
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        if look.material == "steel":  # soft brushed streaks (low frequency, PNG-friendly)
            streak = cv2.GaussianBlur(rng.normal(0, 1, (H // 8, 1)).astype(np.float32), (0, 0), 1.0)
            streak = cv2.resize(streak, (1, H), interpolation=cv2.INTER_LINEAR)
            shade *= 1.0 + 0.025 * streak
        basin = np.clip(np.array(look.basin_color, np.float32)[None, None, :] * shade[..., None], 0, 255)
        img = np.where((mask > 127)[..., None], basin.astype(np.uint8), img)
        img = np.ascontiguousarray(img)
        # drain: steel ring, dark hole, cross
        dcol = (150, 152, 156) if look.material != "steel" else _shade(look.basin_color, 0.85)
        cv2.circle(img, (dx, dy), 28, dcol, -1, _AA)
        cv2.circle(img, (dx, dy), 28, _shade(dcol, 0.6), 2, _AA)
        cv2.circle(img, (dx, dy), 19, (38, 38, 40), -1, _AA)
        cv2.line(img, (dx - 19, dy), (dx + 19, dy), _shade(dcol, 0.9), 4, _AA)
        cv2.line(img, (dx, dy - 19), (dx, dy + 19), _shade(dcol, 0.9), 4, _AA)
        cv2.circle(img, (dx, dy), 6, _shade(dcol, 0.9), -1, _AA)
        self.img = img
        # lighting: gain * colour cast * vignette, and an additive glare spot
        rr = (((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2) / 2.0
        vig = 1.0 - look.vignette * np.round(rr * 8.0) / 8.0  # a few flat rings (PNG-friendly)
        gains = np.array(look.cast, np.float32) * np.float32(look.gain)
        self.gain_map = (vig[..., None] * gains[None, None, :]).astype(np.float32)
        self.glare = None
        if look.glare is not None:
            gx, gy, gr, gs = look.glare
            g = gs * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * (gr / 1.6) ** 2))
            g += 0.5 * gs * np.exp(-((xx - gx - gr * 0.9) ** 2 + (yy - gy + gr * 0.4) ** 2) / (2 * (gr / 4) ** 2))
            self.glare = np.repeat(g[..., None].astype(np.float32), 3, axis=2) * np.array([1.0, 1.0, 0.97], np.float32)
        self.faucet = _faucet_sprite(look)


_BG_CACHE: OrderedDict[Look, _Background] = OrderedDict()
_BG_CACHE_SIZE = 16


def _background(look: Look) -> _Background:
    bg = _BG_CACHE.get(look)
    if bg is None:
        bg = _Background(look)
        _BG_CACHE[look] = bg
        if len(_BG_CACHE) > _BG_CACHE_SIZE:
            _BG_CACHE.popitem(last=False)
    else:
        _BG_CACHE.move_to_end(look)
    return bg


# --------------------------------------------------------------------------- objects


def _foam(img: np.ndarray, x: float, y: float, spread: float, amount: float, seed: int) -> None:
    if amount <= 0.02:
        return
    rng = np.random.default_rng(seed)
    n_cl = 4
    cl = rng.uniform(-1, 1, (n_cl, 2)) * spread * 0.6
    n = int(round(amount * 36))
    pick = rng.integers(0, n_cl, 36)[:n]
    off = rng.normal(0, spread * 0.22, (36, 2))[:n]
    rad = rng.uniform(2.5, 8.5, 36)[:n]
    for k in range(n):
        px, py = x + cl[pick[k], 0] + off[k, 0], y + cl[pick[k], 1] + off[k, 1]
        r = int(round(rad[k] * (0.6 + 0.4 * amount)))
        cv2.circle(img, _pt(px, py), r, (246, 247, 248), -1, _AA)
        cv2.circle(img, _pt(px, py), r, (196, 200, 206), 1, _AA)


def _draw_dish(img: np.ndarray, d: Dish) -> None:
    c, a = d.color, d.accent
    x, y, r = d.x, d.y, d.r
    p = _pt(x, y)
    ri = lambda f: max(1, int(round(r * f)))  # noqa: E731
    if d.kind == "pan":
        ux, uy = _unit(d.angle)
        cv2.line(
            img,
            _pt(x + ux * r * 0.9, y + uy * r * 0.9),
            _pt(x + ux * r * 2.1, y + uy * r * 2.1),
            _shade(a, 0.8),
            max(6, ri(0.2)),
            _AA,
        )
        cv2.line(
            img,
            _pt(x + ux * r * 0.9, y + uy * r * 0.9),
            _pt(x + ux * r * 2.1, y + uy * r * 2.1),
            a,
            max(4, ri(0.15)),
            _AA,
        )
        cv2.circle(img, p, ri(1.0), _shade(c, 0.75), -1, _AA)
        cv2.circle(img, p, ri(0.9), c, -1, _AA)
        cv2.circle(img, p, ri(0.9), _shade(c, 1.35), 2, _AA)
        cv2.ellipse(img, p, (ri(0.6), ri(0.6)), -130, 0, 70, _shade(c, 1.5), 3, _AA)
        return
    if d.kind == "cup":
        ux, uy = _unit(d.angle)
        cv2.circle(img, _pt(x + ux * r * 1.2, y + uy * r * 1.2), ri(0.38), _shade(c, 0.8), max(3, ri(0.2)), _AA)
        cv2.circle(img, p, ri(1.0), _shade(c, 0.8), -1, _AA)
        cv2.circle(img, p, ri(0.93), c, -1, _AA)
        cv2.circle(img, p, ri(0.76), _shade(c, 0.62), -1, _AA)
        cv2.circle(img, _pt(x + r * 0.1, y + r * 0.1), ri(0.5), _mix(_shade(c, 0.5), (90, 60, 40), 0.3), -1, _AA)
        cv2.ellipse(img, p, (ri(0.85), ri(0.85)), -140, 0, 60, _shade(c, 1.25), 2, _AA)
        return
    if d.kind == "bowl":
        cv2.circle(img, p, ri(1.0), _shade(c, 0.78), -1, _AA)
        cv2.circle(img, p, ri(0.95), c, -1, _AA)
        if a != c:
            cv2.circle(img, p, ri(0.9), a, max(2, ri(0.05)), _AA)
        cv2.circle(img, p, ri(0.82), _shade(c, 0.9), -1, _AA)
        cv2.circle(img, _pt(x + r * 0.06, y + r * 0.06), ri(0.6), _shade(c, 0.84), -1, _AA)
        cv2.circle(img, _pt(x + r * 0.1, y + r * 0.1), ri(0.36), _shade(c, 0.8), -1, _AA)
        cv2.ellipse(img, p, (ri(0.88), ri(0.88)), -150, 0, 80, _shade(c, 1.2), 3, _AA)
        return
    # plate: rim, well, optional band
    cv2.circle(img, p, ri(1.0), _shade(c, 0.8), -1, _AA)
    cv2.circle(img, p, ri(0.97), c, -1, _AA)
    if a != c:
        cv2.circle(img, p, ri(0.86), a, max(2, ri(0.06)), _AA)
    cv2.circle(img, p, ri(0.64), _shade(c, 0.93), -1, _AA)
    cv2.circle(img, p, ri(0.64), _shade(c, 0.85), 1, _AA)
    cv2.ellipse(img, p, (ri(0.9), ri(0.9)), -145, 0, 70, _shade(c, 1.15), 2, _AA)


def _draw_scrubber(img: np.ndarray, s: Scrubber) -> None:
    if s.kind == "brush":
        ux, uy = _unit(s.angle)
        cv2.line(img, _pt(s.x, s.y), _pt(s.x + ux * 120, s.y + uy * 120), _shade(s.color2, 0.7), 14, _AA)
        cv2.line(img, _pt(s.x, s.y), _pt(s.x + ux * 120, s.y + uy * 120), s.color2, 10, _AA)
        cv2.circle(img, _pt(s.x, s.y), 31, _shade(s.color2, 0.8), -1, _AA)
        cv2.circle(img, _pt(s.x, s.y), 27, s.color, -1, _AA)
        for k in range(8):
            vx, vy = _unit(k * 45 + s.angle)
            cv2.circle(img, _pt(s.x + vx * 16, s.y + vy * 16), 3, _shade(s.color, 0.7), -1, _AA)
    else:
        box = cv2.boxPoints(((s.x, s.y), (100, 60), s.angle)).astype(np.int32)
        cv2.fillPoly(img, [box], s.color, _AA)
        cv2.polylines(img, [box], True, _shade(s.color, 0.7), 2, _AA)
        # the scouring layer shows along one long edge
        ux, uy = _unit(s.angle + 90)
        top = cv2.boxPoints(((s.x + ux * 21, s.y + uy * 21), (100, 18), s.angle)).astype(np.int32)
        cv2.fillPoly(img, [top], s.color2, _AA)
        cv2.polylines(img, [top], True, _shade(s.color2, 0.7), 1, _AA)
    if s.foam > 0:  # a few bubbles; the scrubber itself stays recognisable
        _foam(img, s.x, s.y, 30, 0.3 * s.foam, int(s.x * 7 + s.y * 13) & 0xFFFF)


def _draw_hand(img: np.ndarray, h: Hand, look: Look) -> None:
    s = look.hand_scale
    skin = look.skin
    dark = _shade(skin, 0.7)
    ux, uy = _unit(h.angle)
    nx, ny = -uy, ux  # +n is the hand's right side when fingers point up
    wx, wy = h.x - ux * 30 * s, h.y - uy * 30 * s
    shoulder_x = (W * 0.5 - 170 if h.side == "L" else W * 0.5 + 170) + (h.x - W * 0.5) * 0.35
    sx, sy = shoulder_x, H + 170
    mx, my = wx + (sx - wx) * 0.55, wy + (sy - wy) * 0.55
    aw = int(round(40 * s))
    cv2.line(img, _pt(wx, wy), _pt(mx, my), dark, aw + 4, _AA)
    cv2.line(img, _pt(mx, my), _pt(sx, sy), _shade(look.sleeve, 0.7), aw + 14, _AA)
    cv2.line(img, _pt(wx, wy), _pt(mx, my), skin, aw, _AA)
    cv2.line(img, _pt(mx, my), _pt(sx, sy), look.sleeve, aw + 10, _AA)
    side = -1.0 if h.side == "R" else 1.0  # thumb on the left of a right hand seen from above
    flen = 47 * s * (1 - 0.45 * h.grip)
    ft = max(3, int(round(10 * s)))
    # fingers pinky -> index, each outlined so neighbours stay apart
    for off, lf in ((17.5, 0.72), (6.0, 0.92), (-6.0, 1.0), (-17.5, 0.9)):
        o = off * s * side
        bx, by = h.x + nx * o + ux * 16 * s, h.y + ny * o + uy * 16 * s
        ex, ey = bx + ux * flen * lf, by + uy * flen * lf
        cv2.line(img, _pt(bx, by), _pt(ex, ey), dark, ft + 3, _AA)
        cv2.line(img, _pt(bx, by), _pt(ex, ey), skin, ft, _AA)
        if h.grip < 0.6:
            cv2.ellipse(
                img,
                _pt(ex - ux * 3 * s, ey - uy * 3 * s),
                (max(2, int(3.5 * s)), max(2, int(3 * s))),
                h.angle,
                0,
                360,
                _mix(skin, (250, 230, 230), 0.55),
                -1,
                _AA,
            )
        else:  # curled: a darker knuckle band at the tip
            cv2.circle(img, _pt(ex, ey), max(2, ft // 2 - 1), _shade(skin, 0.85), -1, _AA)
    tang = h.angle + side * 48
    tux, tuy = _unit(tang)
    tbx, tby = h.x + nx * side * 19 * s - ux * 4 * s, h.y + ny * side * 19 * s - uy * 4 * s
    tl = 33 * s * (1 - 0.3 * h.grip)
    cv2.line(img, _pt(tbx, tby), _pt(tbx + tux * tl, tby + tuy * tl), dark, ft + 5, _AA)
    cv2.line(img, _pt(tbx, tby), _pt(tbx + tux * tl, tby + tuy * tl), skin, ft + 2, _AA)
    axes = (int(round(30 * s)), int(round(27 * s)))
    cv2.ellipse(img, _pt(h.x, h.y), (axes[0] + 2, axes[1] + 2), h.angle, 0, 360, dark, -1, _AA)
    cv2.ellipse(img, _pt(h.x, h.y), axes, h.angle, 0, 360, skin, -1, _AA)
    # knuckles: short creases where the fingers meet the palm
    for off in (11.0, 0.0, -11.0):
        o = off * s * side
        kx, ky = h.x + nx * o + ux * 19 * s, h.y + ny * o + uy * 19 * s
        cv2.circle(img, _pt(kx, ky), max(1, int(2.5 * s)), _shade(skin, 0.86), -1, _AA)


#: height of things in the stream, as where the stream meets them in the image
_HELD_Y, _RESTING_Y = 214.0, 246.0


def _impact_y(state: SceneState) -> float:
    """Where the falling stream first meets something (held dish, hand, scrubber, resting
    dish) or the basin floor: the stream is seen at an angle, so higher objects catch it
    closer to the nozzle."""
    x = NOZZLE[0]
    held: list[tuple[float, float, float]] = []
    if state.dish is not None and state.dish_held:
        held.append((state.dish.x, state.dish.y, state.dish.r))
    for hd in state.hands:
        held.append((hd.x, hd.y, 30 * state.look.hand_scale))
    if state.scrubber is not None and state.scrubber_held:
        held.append((state.scrubber.x, state.scrubber.y, 34))
    resting = [(d.x, d.y, d.r) for d in state.resting]
    if state.dish is not None and not state.dish_held:
        resting.append((state.dish.x, state.dish.y, state.dish.r))
    for y, discs in ((_HELD_Y, held), (_RESTING_Y, resting)):
        for cx, cy, r in discs:
            if (x - cx) ** 2 + (y - cy) ** 2 < (0.92 * r) ** 2:
                return y
    return float(STREAM_FLOOR_Y)


def _draw_water(img: np.ndarray, state: SceneState) -> None:
    rng = np.random.default_rng(state.noise_seed ^ 0x5EED)
    x0, y0 = NOZZLE[0] - 60, NOZZLE[1]
    yi = _impact_y(state)
    y1 = int(min(H, yi + 34))
    reg = img[y0:y1, x0 : NOZZLE[0] + 60]
    over = reg.copy()
    cx = 60
    ys = np.arange(0, int(yi - y0) + 1, 6, dtype=np.float32)
    ys[-1] = yi - y0
    wob = rng.normal(0, 0.9, len(ys))
    wob[0] = 0
    half = 7.0 + ys / max(1.0, yi - y0) * 3.5
    left = np.stack([cx - half + wob, ys], 1)
    right = np.stack([cx + half + wob, ys], 1)[::-1]
    poly = np.concatenate([left, right]).astype(np.int32)
    cv2.fillPoly(over, [poly], (218, 232, 242), _AA)
    for k in (-3.5, 2.5):
        pts = np.stack([cx + k + wob * 0.7, ys], 1).astype(np.int32)
        cv2.polylines(over, [pts], False, (252, 253, 255), 2, _AA)
    iy = int(yi - y0)
    # splash: a bright sheet spreading on whatever the stream hits, a ring and droplets
    cv2.ellipse(
        over, (cx, iy), (int(rng.uniform(20, 26)), int(rng.uniform(8, 11))), 0, 0, 360, (230, 238, 246), -1, _AA
    )
    cv2.ellipse(
        over, (cx, iy), (int(rng.uniform(30, 38)), int(rng.uniform(11, 15))), 0, 0, 360, (244, 248, 252), 2, _AA
    )
    for _ in range(8):
        a = rng.uniform(0, 2 * math.pi)
        rr = rng.uniform(18, 44)
        cv2.circle(
            over,
            (int(cx + math.cos(a) * rr), int(iy + math.sin(a) * rr * 0.45)),
            int(rng.integers(1, 4)),
            (248, 250, 253),
            -1,
            _AA,
        )
    cv2.addWeighted(over, 0.62, reg, 0.38, 0, dst=reg)


# --------------------------------------------------------------------------- render


def render(state: SceneState) -> np.ndarray:
    """Render ``state`` to an RGB uint8 (480, 640, 3) frame. Deterministic in ``state``."""
    look = state.look
    bg = _background(look)
    img = bg.img.copy()
    for d in state.resting:
        _draw_dish(img, d)
    if state.dish is not None:
        _draw_dish(img, state.dish)
        if state.dish.foam > 0:
            _foam(img, state.dish.x, state.dish.y, state.dish.r * 0.8, state.dish.foam, state.dish.foam_seed)
    if state.scrubber is not None:
        _draw_scrubber(img, state.scrubber)
    for h in state.hands:
        _draw_hand(img, h, look)
    if state.water_on:
        _draw_water(img, state)
    fimg, fmask, (sy, sx) = bg.faucet
    np.copyto(img[sy, sx], fimg, where=fmask[..., None])
    # lighting, glare, blur, noise
    f = img.astype(np.float32)
    g = bg.gain_map if state.gain == 1.0 else bg.gain_map * np.float32(state.gain)
    cv2.multiply(f, g, dst=f)
    if bg.glare is not None:
        cv2.add(f, bg.glare, dst=f)
    if look.blur > 0.25:
        f = cv2.GaussianBlur(f, (0, 0), look.blur)
    if look.noise > 0:
        rng = np.random.default_rng(state.noise_seed)
        # sensor grain at 1/8 resolution (a 4x-downscaled CNN input sees it; PNGs stay small)
        n = rng.standard_normal((H // 8, W // 8, 3), dtype=np.float32) * np.float32(look.noise)
        n = cv2.resize(n, (W, H), interpolation=cv2.INTER_LINEAR)
        cv2.add(f, n, dst=f)
    return np.clip(f, 0, 255).astype(np.uint8)
