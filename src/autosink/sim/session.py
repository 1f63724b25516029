"""Users, kitchens and dish-washing session scripts, with per-frame ground truth.

A session script is the *action* only: where hands, dish and scrubber are in every frame
(:class:`~autosink.sim.scene.SceneState` with ``water_on=False``); the water comes later from
the closed loop (:mod:`autosink.sim.user`), because it depends on the model and the user.

Per dish: enter -> [pre-rinse] -> detergent (hand with scrubber) -> put the scrubber away (or
down, visible) -> [set the dish down] -> rinse (close under the faucet / far / no dish, with
occasional excursions out of the ROI) -> exit -> idle gap.

Ground truth per frame (label convention v1, docs/simulator.md), from the state alone:

* detergent: 0
* pre-rinse and rinse: scrubber visible -> -1; else 1 iff a hand holds the dish and the dish
  centre is in the ROI (:func:`autosink.sim.scene.in_roi`); else 0
* idle (nobody washing): 0

``wants_water`` (what the person at the sink wants; drives the simulated user): the need a
camera can see. Water while a held dish is under the spout (its centre in the ROI), in pre-rinse
or rinse, even with the scrubber lying in view; not during detergent work, not while a dish is
held elsewhere, not for bare hands, not with an empty sink. So label 1 and wants_water agree on
every frame whose label is not -1.

A share of users may deviate (``sim.deviant_users``, label noise for experiments, off by
default): their wish is the earlier system's, water during the whole pre-rinse while a dish is
in hand, wherever it is (:data:`WISHES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import numpy as np

from autosink.sim.scene import (
    ROI,
    ClutterItem,
    Dish,
    H,
    Hand,
    Look,
    SceneState,
    Scrubber,
    W,
    hand_holding,
    hand_on_scrubber,
    in_roi,
)

TZ = timezone(timedelta(hours=9))
STEPS = ("idle", "prerinse", "detergent", "rinse")
#: Seed streams: the lake, held-out benchmark sessions, the case sets, the base model's training
#: kitchens and the decision-tuning sessions never share a seed.
STREAMS = {"lake": 1, "heldout": 2, "cases": 3, "base": 4, "tune": 5}


# --------------------------------------------------------------------------- truth


def label_of(state: SceneState) -> int:
    """Ground-truth label of a frame by the v1 convention (see module docstring)."""
    held_in_roi = state.dish_held and state.dish_in_roi
    if state.step == "detergent":
        return 0
    if state.step in ("prerinse", "rinse"):
        if state.scrubber_visible:
            return -1
        return 1 if held_in_roi else 0
    return 0


#: What a simulated user wants: ``spout`` (the product's definition, everyone by default) or
#: ``prerinse`` (the earlier system's users: all of pre-rinse with a dish in hand).
WISHES = ("spout", "prerinse")


def wants_water(state: SceneState, wish: str = "spout") -> bool:
    """Whether the person at the sink wants water in this frame (see the module docstring)."""
    if wish not in WISHES:
        raise ValueError(f"wish must be one of {', '.join(WISHES)}, got {wish!r}")
    if state.step == "prerinse" and wish == "prerinse":
        return state.dish is not None and state.dish_held
    if state.step in ("prerinse", "rinse"):
        return state.dish_held and state.dish_in_roi
    return False


@dataclass(frozen=True)
class Truth:
    label: int
    wants_water: bool
    step: str
    dish_in_roi: bool
    dish_held: bool
    hand_in_roi: bool
    scrubber_visible: bool

    @classmethod
    def of(cls, state: SceneState, wish: str = "spout") -> Truth:
        return cls(
            label_of(state),
            wants_water(state, wish),
            state.step,
            state.dish_in_roi,
            state.dish_held,
            state.hand_in_roi,
            state.scrubber_visible,
        )


# --------------------------------------------------------------------------- appearance sampling

_SKIN = [
    (246, 210, 184),
    (236, 192, 160),
    (222, 172, 138),
    (198, 140, 104),
    (170, 112, 80),
    (132, 86, 60),
    (98, 64, 46),
]
_COUNTER = [
    (150, 112, 78),
    (120, 90, 62),
    (196, 170, 130),
    (138, 138, 134),
    (90, 92, 96),
    (226, 224, 218),
    (44, 44, 48),
    (70, 96, 88),
]
_FAUCET = [(200, 204, 210), (188, 190, 192), (48, 48, 52), (190, 160, 100), (232, 232, 230)]
_DISH = {
    "plate": [
        (240, 240, 235),
        (240, 232, 210),
        (190, 210, 230),
        (200, 225, 200),
        (200, 110, 80),
        (46, 46, 50),
        (160, 162, 166),
    ],
    "bowl": [
        (240, 240, 235),
        (230, 80, 60),
        (70, 110, 190),
        (240, 200, 70),
        (90, 160, 110),
        (50, 50, 56),
        (230, 220, 200),
    ],
    "cup": [(242, 242, 238), (210, 50, 50), (50, 90, 170), (40, 40, 44), (240, 200, 60), (80, 150, 100)],
    "pan": [(42, 42, 46), (70, 70, 74), (170, 172, 176), (184, 115, 70)],
}
_DISH_R = {"plate": (80, 98), "bowl": (50, 66), "cup": (30, 38), "pan": (62, 78)}
_DISH_P = {"plate": 0.33, "bowl": 0.27, "cup": 0.25, "pan": 0.15}
# kitchen sponges: mostly the classic yellow with a green scouring layer
_SCRUB = [((236, 206, 50), (40, 140, 60))] * 5 + [((240, 120, 150), (90, 90, 200)), ((250, 160, 60), (50, 120, 50))]


def _pick(rng: np.random.Generator, seq: list):
    return seq[int(rng.integers(len(seq)))]


def _jit(rng: np.random.Generator, c: tuple[int, int, int], amount: float = 10) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.normal(0, amount), 0, 255)) for v in c)  # type: ignore[return-value]


def sample_clutter(rng: np.random.Generator, basin: tuple[int, int, int, int], n: int) -> tuple[ClutterItem, ...]:
    bx0, by0, bx1, by1 = basin
    items = []
    for _ in range(n):
        kind = _pick(rng, ["bottle", "soap", "cloth", "pot", "board", "bottle"])
        size = float(rng.uniform(16, 28))
        side = int(rng.integers(4))
        if side == 0:  # left strip
            x, y = rng.uniform(-size * 0.5, bx0 - 14 - size * 0.3), rng.uniform(20, H - 20)
        elif side == 1:  # right strip
            x, y = rng.uniform(bx1 + 14 + size * 0.3, W + size * 0.5), rng.uniform(20, H - 20)
        elif side == 2:  # top strip, away from the spout
            x = rng.choice([rng.uniform(10, 250), rng.uniform(390, W - 10)])
            y = rng.uniform(-size * 0.5, max(-size * 0.4, by0 - 14 - size * 0.3))
        else:  # bottom corners
            x, y = rng.choice([rng.uniform(-10, 60), rng.uniform(W - 60, W + 10)]), rng.uniform(H - 30, H + 10)
        color = _jit(
            rng,
            _pick(
                rng,
                [
                    (40, 120, 200),
                    (200, 60, 60),
                    (90, 180, 90),
                    (230, 230, 230),
                    (250, 200, 60),
                    (120, 80, 160),
                    (200, 160, 110),
                    (60, 60, 60),
                ],
            ),
            12,
        )
        items.append(ClutterItem(kind, float(x), float(y), size, float(rng.uniform(0, 180)), color))
    return tuple(items)


def sample_look(rng: np.random.Generator) -> Look:
    """A user's kitchen and camera: basin material/colour/geometry, counter, clutter, skin..."""
    material = _pick(rng, ["steel", "steel", "ceramic", "composite"])
    if material == "steel":
        v = rng.uniform(160, 196)
        basin_color = _jit(rng, (int(v - 3), int(v), int(v + 5)), 3)
    elif material == "ceramic":
        basin_color = _jit(rng, _pick(rng, [(236, 236, 232), (232, 226, 210), (222, 226, 230)]), 4)
    else:
        basin_color = _jit(rng, _pick(rng, [(56, 56, 60), (74, 70, 66), (188, 178, 160), (120, 124, 128)]), 5)
    basin = (
        int(rng.integers(55, 96)),
        int(rng.integers(40, 71)),
        int(rng.integers(545, 591)),
        int(rng.integers(432, 466)),
    )
    cx, cy = (basin[0] + basin[2]) // 2, (basin[1] + basin[3]) // 2
    drain = (int(cx + rng.integers(-25, 26)), int(cy + rng.integers(20, 66)))
    return Look(
        basin=basin,
        basin_radius=int(rng.integers(38, 72)),
        basin_color=basin_color,
        material=material,
        counter_color=_jit(rng, _pick(rng, _COUNTER), 8),
        counter_kind=_pick(rng, ["plain", "speckle", "wood"]),
        drain=drain,
        faucet_color=_pick(rng, _FAUCET),
        skin=_jit(rng, _pick(rng, _SKIN), 6),
        sleeve=_jit(
            rng,
            _pick(
                rng,
                [
                    (60, 80, 130),
                    (180, 40, 50),
                    (40, 40, 44),
                    (220, 220, 215),
                    (70, 120, 70),
                    (150, 120, 200),
                    (230, 170, 60),
                ],
            ),
            15,
        ),
        hand_scale=float(rng.uniform(0.9, 1.12)),
        clutter=sample_clutter(rng, basin, int(rng.integers(2, 6))),
        texture_seed=int(rng.integers(2**31)),
        gain=float(rng.uniform(0.7, 1.15)),
        cast=tuple(float(v) for v in rng.normal(1.0, 0.035, 3).clip(0.92, 1.08)),  # type: ignore[arg-type]
        vignette=float(rng.choice([0.0, 0.0, rng.uniform(0.05, 0.14)])),
        glare=None,
        noise=0.0,
        blur=0.0,
    )


def drift_look(rng: np.random.Generator, base: Look) -> Look:
    """The same kitchen on another day: lighting, glare, camera noise/blur and clutter drift."""
    clutter = tuple(
        replace(
            it,
            x=it.x + float(rng.normal(0, 8)),
            y=it.y + float(rng.normal(0, 8)),
            angle=it.angle + float(rng.normal(0, 15)),
        )
        for it in base.clutter
        if rng.random() > 0.15
    )
    if rng.random() < 0.3:
        clutter = clutter + sample_clutter(rng, base.basin, 1)
    glare = None
    if rng.random() < 0.35:
        bx0, by0, bx1, by1 = base.basin
        glare = (
            float(rng.uniform(bx0 + 40, bx1 - 40)),
            float(rng.uniform(by0 + 30, by1 - 60)),
            float(rng.uniform(35, 90)),
            float(rng.uniform(40, 120)),
        )
    gain = base.gain * rng.uniform(0.82, 1.18)
    if rng.random() < 0.15:  # evening, only the room light on
        gain *= rng.uniform(0.5, 0.75)
    return replace(
        base,
        clutter=clutter,
        gain=float(np.clip(gain, 0.35, 1.3)),
        cast=tuple(float(np.clip(c * rng.normal(1.0, 0.02), 0.9, 1.1)) for c in base.cast),  # type: ignore[arg-type]
        glare=glare,
        # modest camera noise and blur in some sessions only: both inflate every PNG
        noise=0.0 if rng.random() < 0.7 else float(rng.uniform(0.5, 1.2)),
        blur=0.0 if rng.random() < 0.65 else float(rng.uniform(0.4, 0.9)),
    )


#: Lighting regimes a fleet's kitchens can move to (``autosink loop --regime``, ``water.regime``):
#: applied to every session's look after its daily drift, with no random draw, so the same
#: seed gives the same sessions, only lit differently. ``none``: the kitchens as sampled (the
#: lake, the base model's kitchens, the case sets). The others lie outside the lighting the
#: base model was trained on (gain 0.35-1.3, colour cast 0.9-1.1 per channel).
REGIMES = {
    "none": {},
    # warm under-cabinet LEDs, the room light off: dim, orange, dark corners, a noisier camera
    "warm-dim": {"gain": 0.55, "cast": (1.22, 1.0, 0.7), "vignette": 0.3, "noise": 2.5},
    # a cold daylight panel over the sink: bright, blue, a broad glare on the basin
    "cold-glare": {"gain": 1.35, "cast": (0.8, 0.95, 1.2), "glare": (320.0, 200.0, 140.0, 110.0)},
}


def apply_regime(look: Look, regime: str = "none") -> Look:
    """``look`` under a lighting regime of :data:`REGIMES` (``gain`` multiplies; ``cast``
    multiplies per channel; ``vignette`` and ``noise`` are floors; ``glare`` replaces)."""
    if regime not in REGIMES:
        raise ValueError(f"unknown lighting regime {regime!r} (known: {', '.join(REGIMES)})")
    r = REGIMES[regime]
    if not r:
        return look
    return replace(
        look,
        gain=look.gain * r.get("gain", 1.0),
        cast=tuple(c * m for c, m in zip(look.cast, r.get("cast", (1.0, 1.0, 1.0)))),  # type: ignore[arg-type]
        vignette=max(look.vignette, r.get("vignette", 0.0)),
        noise=max(look.noise, r.get("noise", 0.0)),
        glare=r.get("glare", look.glare),
    )


def sample_dish(rng: np.random.Generator, kind: str | None = None) -> Dish:
    if kind is None:
        kinds = list(_DISH_P)
        kind = kinds[int(rng.choice(len(kinds), p=list(_DISH_P.values())))]
    color = _jit(rng, _pick(rng, _DISH[kind]), 6)
    accent = color
    if kind in ("plate", "bowl") and rng.random() < 0.4:
        accent = _pick(rng, [(60, 90, 160), (180, 50, 50), (60, 130, 80), (200, 170, 60), (40, 40, 40)])
    if kind == "pan":
        accent = _jit(rng, _pick(rng, [(30, 30, 32), (110, 70, 40), (60, 60, 64)]), 4)
    lo, hi = _DISH_R[kind]
    return Dish(
        kind,
        0.0,
        0.0,
        float(rng.uniform(lo, hi)),
        float(rng.uniform(0, 360)),
        color,
        accent,
        0.0,
        int(rng.integers(2**31)),
    )


def sample_scrubber(rng: np.random.Generator, kind: str | None = None) -> Scrubber:
    kind = kind or ("sponge" if rng.random() < 0.8 else "brush")
    c1, c2 = _pick(rng, _SCRUB)
    if kind == "brush":
        c1, c2 = _pick(
            rng, [((240, 210, 80), (200, 50, 50)), ((240, 210, 80), (60, 60, 64)), ((230, 90, 90), (240, 240, 240))]
        )
    return Scrubber(kind, 0.0, 0.0, 0.0, _jit(rng, c1, 6), _jit(rng, c2, 6))


# --------------------------------------------------------------------------- positions


def roi_point(rng: np.random.Generator, margin: float = 18.0) -> tuple[float, float]:
    """A point clearly inside the ROI (at least ``margin`` px from its edges)."""
    x0, y0, x1, y1 = ROI
    return float(rng.uniform(x0 + margin, x1 - margin)), float(rng.uniform(y0 + margin, y1 - margin))


def roi_edge_point(rng: np.random.Generator, inside: bool, lo: float = 3.0, hi: float = 16.0) -> tuple[float, float]:
    """A point near an ROI edge (left, right or bottom): ``lo..hi`` px inside or outside it."""
    x0, y0, x1, y1 = ROI
    d = float(rng.uniform(lo, hi)) * (1 if inside else -1)
    side = int(rng.integers(3))
    if side == 0:
        return x0 + d, float(rng.uniform(y0 + 25, y1 - 25))
    if side == 1:
        return x1 - 1 - d, float(rng.uniform(y0 + 25, y1 - 25))
    return float(rng.uniform(x0 + 25, x1 - 25)), y1 - 1 - d


def far_point(rng: np.random.Generator, look: Look, r: float, margin: float = 30.0) -> tuple[float, float]:
    """A point in the basin whose distance to the ROI is at least ``margin`` px (the dish is
    clearly not under the faucet), biased towards the user (bottom) and the sides."""
    bx0, by0, bx1, by1 = look.basin
    x0, y0, x1, y1 = ROI
    for _ in range(200):
        x = float(rng.uniform(bx0 + 0.4 * r, bx1 - 0.4 * r))
        y = float(rng.uniform(by0 + 0.6 * r, by1 - 0.2 * r))
        if not in_roi(x, y, -margin) and y > y0 - 10:
            return x, y
    return float(bx0 + r), float(by1 - r)


# --------------------------------------------------------------------------- users


@dataclass(frozen=True)
class Habits:
    p_prerinse: float = 0.55
    p_det_in_roi: float = 0.4
    p_det_resting: float = 0.2
    p_rinse_close: float = 0.7
    p_rinse_far: float = 0.15  # the rest: rinse with no dish (hands under the faucet)
    p_scrubber_left_visible: float = 0.25
    p_set_down: float = 0.2
    p_excursion: float = 0.3
    p_two_hands: float = 0.4
    p_wipe: float = 0.3  # rinse close: the other hand rubs the dish (open, over it) instead of holding the rim
    p_edge: float = 0.12  # rinse close but with the dish near the ROI edge
    p_resting_dish: float = 0.2  # a pot soaking in the basin all session
    scrubber_kind: str = "sponge"
    speed: float = 1.0  # duration multiplier


@dataclass(frozen=True)
class UserProfile:
    index: int
    user_id: str
    look: Look
    habits: Habits
    reaction_delay_s: tuple[float, float]
    wish: str = "spout"  # one of WISHES


def make_users(cfg: dict, stream: str = "lake") -> list[UserProfile]:
    seed = int(cfg["seed"])
    n = int(cfg["users"])
    rd = tuple(float(v) for v in cfg["reaction_delay_s"])
    ids = np.random.default_rng([seed, STREAMS[stream], 0]).choice(9000, size=n, replace=False) + 1000
    # deviant users (label noise, off by default) come from their own stream: turning them on
    # changes nobody's kitchen or habits, only who wants what
    deviant = np.random.default_rng([seed, STREAMS[stream], 4]).random(n) < float(cfg.get("deviant_users") or 0.0)
    users = []
    for u in range(n):
        rng = np.random.default_rng([seed, STREAMS[stream], 1, u])
        look = sample_look(rng)
        habits = Habits(
            p_prerinse=float(rng.uniform(0.3, 0.8)),
            p_det_in_roi=float(rng.uniform(0.2, 0.5)),
            p_det_resting=float(rng.uniform(0.1, 0.3)),
            p_rinse_close=float(rng.uniform(0.55, 0.75)),
            p_rinse_far=float(rng.uniform(0.1, 0.22)),
            p_scrubber_left_visible=float(rng.uniform(0.05, 0.25)),
            p_set_down=float(rng.uniform(0.1, 0.3)),
            p_excursion=float(rng.uniform(0.15, 0.4)),
            p_two_hands=float(rng.uniform(0.2, 0.6)),
            p_wipe=float(rng.uniform(0.1, 0.3)),
            p_edge=float(rng.uniform(0.05, 0.2)),
            p_resting_dish=float(rng.uniform(0.05, 0.3)),
            scrubber_kind="sponge" if rng.random() < 0.8 else "brush",
            speed=float(rng.uniform(0.8, 1.25)),
        )
        # each user reacts within their own sub-range of the configured delays
        lo, hi = rd
        a = float(rng.uniform(lo, lo + 0.5 * (hi - lo)))
        b = float(rng.uniform(a + 0.25 * (hi - lo), hi)) if hi > lo else hi
        users.append(
            UserProfile(u, f"user_{int(ids[u])}", look, habits, (a, max(a, b)), "prerinse" if deviant[u] else "spout")
        )
    return users


# --------------------------------------------------------------------------- session scripts


@dataclass
class SessionScript:
    user: UserProfile
    index: int  # session index of this user
    dishwashing_id: str
    start: datetime  # tz-aware, second precision
    fps: float
    look: Look
    states: list[SceneState] = field(default_factory=list)
    seed: int = 0  # for the model / user / noise streams of the closed loop

    def __len__(self) -> int:
        return len(self.states)

    @property
    def truths(self) -> list[Truth]:
        return [Truth.of(s, self.user.wish) for s in self.states]

    def timestamp(self, i: int) -> datetime:
        """Naive local second-precision timestamp of frame ``i`` (what the Pi writes)."""
        return (self.start.replace(tzinfo=None) + timedelta(seconds=math.floor(i / self.fps + 1e-9))).replace(
            microsecond=0
        )


class _Builder:
    def __init__(self, rng: np.random.Generator, user: UserProfile, look: Look, fps: float) -> None:
        self.rng, self.user, self.look, self.fps = rng, user, look, fps
        self.h = user.habits
        self.s = look.hand_scale
        self.states: list[SceneState] = []
        self.resting: tuple[Dish, ...] = ()
        self.scrubber = replace(sample_scrubber(rng, user.habits.scrubber_kind))
        self.scrub_home: tuple[float, float, float] | None = None  # visible resting place, or None (away)
        self.gain_phase = float(rng.uniform(0, 2 * math.pi))
        self.gain_period = float(rng.uniform(40, 120))

    def n(self, lo: float, hi: float) -> int:
        return max(1, int(round(self.rng.uniform(lo, hi) * self.h.speed * self.fps)))

    def emit(
        self,
        step: str,
        hands=(),
        dish: Dish | None = None,
        dish_held: bool = False,
        scrubber: Scrubber | None = None,
        scrubber_held: bool = False,
    ) -> None:
        t = len(self.states) / self.fps
        gain = 1.0 + 0.03 * math.sin(2 * math.pi * t / self.gain_period + self.gain_phase)
        self.states.append(
            SceneState(
                look=self.look,
                step=step,
                t=t,
                hands=tuple(hands),
                dish=dish,
                dish_held=dish_held,
                scrubber=scrubber,
                scrubber_held=scrubber_held,
                resting=self.resting,
                water_on=False,
                gain=round(gain, 4),
                noise_seed=int(self.rng.integers(2**31)),
            )
        )

    def visible_scrubber(self) -> Scrubber | None:
        if self.scrub_home is None:
            return None
        x, y, a = self.scrub_home
        return replace(self.scrubber, x=x, y=y, angle=a, foam=0.0)

    def wob(self, d: Dish, x: float, y: float, amp: float = 6.0, roi_clamp: bool = False, far: bool = False) -> Dish:
        nx = x + float(self.rng.normal(0, amp))
        ny = y + float(self.rng.normal(0, amp))
        if roi_clamp and not in_roi(nx, ny, 2):
            nx, ny = x, y
        if far and in_roi(nx, ny, -20):
            nx, ny = x, y
        return replace(d, x=nx, y=ny, angle=d.angle + float(self.rng.normal(0, 8)))

    def holders(self, d: Dish, two: bool, th_r: float, th_l: float) -> list[Hand]:
        hands = [hand_holding(d, "R", th_r + float(self.rng.normal(0, 6)), self.s)]
        if two and d.kind != "cup":  # a cup is held in one hand
            hands.insert(0, hand_holding(d, "L", th_l + float(self.rng.normal(0, 6)), self.s))
        return hands

    # ---- segments

    def hands_rinse(self, lo: float, hi: float, two: bool) -> None:
        """Hands (no dish) rubbing under the faucet: rinse step, label 0."""
        rng = self.rng
        cx, cy = roi_point(rng, 30)
        for _ in range(self.n(lo, hi)):
            hands = [
                Hand(
                    "R",
                    cx + 22 + float(rng.normal(0, 6)),
                    cy + float(rng.normal(0, 6)),
                    float(rng.uniform(-150, -110)),
                    float(rng.uniform(0, 0.4)),
                )
            ]
            if two or rng.random() < 0.5:
                hands.insert(
                    0,
                    Hand(
                        "L",
                        cx - 22 + float(rng.normal(0, 6)),
                        cy + float(rng.normal(0, 6)),
                        float(rng.uniform(-70, -30)),
                        float(rng.uniform(0, 0.4)),
                    ),
                )
            self.emit("rinse", hands, None, False, self.visible_scrubber())

    def idle(self, lo: float, hi: float) -> None:
        n = self.n(lo, hi)
        hand = None
        if self.rng.random() < 0.3:  # a hand resting on the front rim
            hand = Hand(
                "R" if self.rng.random() < 0.5 else "L",
                float(self.rng.uniform(140, 500)),
                float(self.rng.uniform(420, 465)),
                float(self.rng.uniform(-120, -60)),
                0.2,
            )
        for _ in range(n):
            self.emit("idle", [hand] if hand else [], scrubber=self.visible_scrubber())

    def dish_cycle(self) -> None:
        rng, h = self.rng, self.h
        dish = sample_dish(rng)
        pre = rng.random() < h.p_prerinse
        first_step = "prerinse" if pre else "detergent"
        # enter: the right hand brings the dish in from the bottom right
        if pre:
            tx, ty = roi_point(rng, 20) if rng.random() < 0.8 else far_point(rng, self.look, dish.r, 15)
        else:
            tx, ty = roi_point(rng, 15) if rng.random() < h.p_det_in_roi else far_point(rng, self.look, dish.r, 25)
        for k in range(int(rng.integers(1, 3))):
            f = (k + 1) / 3.0
            ex, ey = tx + 160 * (1 - f), ty + 220 * (1 - f)
            d = replace(dish, x=ex, y=ey)
            if pre:
                self.emit(first_step, self.holders(d, False, 80, 180), d, True, self.visible_scrubber())
            else:  # straight to detergent: the right hand already has the scrubber
                sc = replace(
                    self.scrubber,
                    x=min(ex + d.r + 50, W - 60.0),
                    y=min(ey + 30, H - 50.0),
                    angle=float(rng.uniform(-125, -55)),
                )
                self.scrub_home = None
                self.emit(
                    first_step,
                    [hand_holding(d, "L", 170, self.s), hand_on_scrubber(sc, "R", self.s)],
                    d,
                    True,
                    sc,
                    True,
                )
        dish = replace(dish, x=tx, y=ty)
        if pre:
            two = rng.random() < h.p_two_hands
            inside = in_roi(tx, ty)
            for _ in range(self.n(2.0, 6.0)):
                dish = self.wob(dish, tx, ty, 6, roi_clamp=inside, far=not inside)
                self.emit("prerinse", self.holders(dish, two, 75, 185), dish, True, self.visible_scrubber())
            if rng.random() < 0.5:  # move to the detergent position
                tx, ty = roi_point(rng, 15) if rng.random() < h.p_det_in_roi else far_point(rng, self.look, dish.r, 25)
                dish = replace(dish, x=tx, y=ty)
        self.detergent(dish, tx, ty, picked=not pre)

    def detergent(self, dish: Dish, tx: float, ty: float, picked: bool = False) -> None:
        rng, h = self.rng, self.h
        resting = rng.random() < h.p_det_resting
        th_l = float(rng.uniform(150, 215))
        if not picked:  # pick up the scrubber from where it lies (or from off frame, right)
            if self.scrub_home is not None:
                sx, sy, sa = self.scrub_home
            else:
                sx, sy, sa = W - 60.0, float(rng.uniform(200, 400)), float(rng.uniform(-125, -55))
            sc = replace(self.scrubber, x=sx, y=sy, angle=sa)
            hands = [hand_on_scrubber(sc, "R", self.s)]
            if not resting:
                hands.insert(0, hand_holding(dish, "L", th_l, self.s))
            self.emit("detergent", hands, dish, not resting, sc, True)
        self.scrub_home = None
        n = self.n(4.0, 12.0)
        phi = float(rng.uniform(0, 360))
        rr = dish.r * (0.25 if dish.kind == "cup" else 0.45)
        foam = dish.foam
        for _ in range(n):
            dish = self.wob(dish, tx, ty, 4, roi_clamp=in_roi(tx, ty), far=not in_roi(tx, ty))
            phi += float(rng.uniform(90, 170))
            foam = min(1.0, foam + float(rng.uniform(0.2, 0.4)))
            dish = replace(dish, foam=foam)
            ux, uy = math.cos(math.radians(phi)), math.sin(math.radians(phi))
            sc = replace(
                self.scrubber,
                x=dish.x + ux * rr,
                y=dish.y + uy * rr * 0.8,
                angle=float(rng.uniform(-125, -55)) + (180 if self.scrubber.kind == "brush" else 0),
                foam=min(1.0, 0.3 + foam),
            )
            hands = [hand_on_scrubber(sc, "R", self.s)]
            if not resting:
                hands.insert(0, hand_holding(dish, "L", th_l + float(rng.normal(0, 5)), self.s))
            self.emit("detergent", hands, dish, not resting, sc, True)
        # put the scrubber away (off frame) or down where it stays visible
        if rng.random() < h.p_scrubber_left_visible:
            bx0, by0, bx1, by1 = self.look.basin
            self.scrub_home = (
                float(rng.uniform(bx1 - 70, bx1 - 35)),
                float(rng.uniform(by0 + 35, by0 + 90)),
                float(rng.uniform(0, 180)),
            )
            px, py, pa = self.scrub_home
        else:  # carried off to the right: still in view in this frame, gone in the next
            px, py, pa = W - 60.0, float(rng.uniform(150, 350)), float(rng.uniform(-125, -55))
        sc = replace(self.scrubber, x=px, y=py, angle=pa, foam=0.5)
        hands = [hand_on_scrubber(sc, "R", self.s)]
        if not resting:
            hands.insert(0, hand_holding(dish, "L", th_l, self.s))
        self.emit("detergent", hands, dish, not resting, sc, True)
        self.rinse(dish)

    def rinse(self, dish: Dish) -> None:
        rng, h = self.rng, self.h
        vis = self.visible_scrubber
        if rng.random() < h.p_set_down:  # dish lies in the basin for a moment, not held
            sx, sy = roi_point(rng, 25) if rng.random() < 0.5 else far_point(rng, self.look, dish.r, 25)
            dish = replace(dish, x=sx, y=sy)
            hands = []
            if rng.random() < 0.6:  # the hand hovers beside it, open
                hands = [
                    Hand("R", sx + dish.r + 40, sy + float(rng.uniform(-20, 40)), float(rng.uniform(-130, -80)), 0.1)
                ]
            for _ in range(self.n(0.5, 1.5)):
                self.emit("rinse", hands, dish, False, vis())
        u = rng.random()
        two = rng.random() < h.p_two_hands
        decay = 0.3 ** (1.0 / self.fps)
        if u < h.p_rinse_close:
            if rng.random() < h.p_edge:
                tx, ty = roi_edge_point(rng, inside=rng.random() < 0.6, lo=3, hi=14)
                edge = True
            else:
                tx, ty = roi_point(rng, 20)
                edge = False
            n = self.n(3.0, 9.0)
            exc = rng.random() < h.p_excursion and n >= 4
            e0 = int(rng.integers(1, n - 2)) if exc else -1
            e1 = e0 + int(rng.integers(1, 4)) if exc else -1
            ex, ey = far_point(rng, self.look, dish.r, 25)
            th_r = float(rng.uniform(60, 120))
            wipe = rng.random() < h.p_wipe and dish.kind != "cup"
            for k in range(n):
                if e0 <= k < e1:
                    dish = self.wob(dish, ex, ey, 5, far=True)
                elif edge:
                    dish = replace(
                        dish,
                        x=tx + float(rng.normal(0, 1.5)),
                        y=ty + float(rng.normal(0, 1.5)),
                        angle=dish.angle + float(rng.normal(0, 8)),
                    )
                else:
                    dish = self.wob(dish, tx, ty, 7, roi_clamp=True)
                dish = replace(dish, foam=dish.foam * decay)
                hands = self.holders(dish, two and not wipe, th_r, 185)
                if wipe and not (e0 <= k < e1):
                    hands.insert(
                        0,
                        Hand(
                            "L",
                            dish.x + float(rng.normal(-0.1, 0.2)) * dish.r,
                            dish.y + float(rng.normal(-0.1, 0.2)) * dish.r,
                            float(rng.uniform(-120, -40)),
                            float(rng.uniform(0, 0.3)),
                        ),
                    )
                self.emit("rinse", hands, dish, True, vis())
        elif u < h.p_rinse_close + h.p_rinse_far:
            tx, ty = far_point(rng, self.look, dish.r, 30)
            for _ in range(self.n(2.0, 5.0)):
                dish = replace(self.wob(dish, tx, ty, 6, far=True), foam=dish.foam * decay)
                self.emit("rinse", self.holders(dish, two, 80, 185), dish, True, vis())
        else:  # no dish: it goes to the rack, hands rinse under the faucet
            d = replace(dish, x=W + 10.0, y=float(rng.uniform(200, 320)))
            self.emit("rinse", self.holders(d, False, 180, 185), d, True, vis())
            self.hands_rinse(2.0, 4.0, two)
            return
        # exit to the rack (right) or the bottom
        for k in range(int(rng.integers(1, 3))):
            f = (k + 1) / 3.0
            dx = dish.x + (W + 40 - dish.x) * f if rng.random() < 0.7 else dish.x
            dy = dish.y if dx != dish.x else dish.y + (H + 60 - dish.y) * f
            d = replace(dish, x=dx, y=dy)
            self.emit("rinse", self.holders(d, False, 110, 185), d, True, vis())


def make_session(user: UserProfile, index: int, cfg: dict, start: datetime, stream: str = "lake") -> SessionScript:
    """The script of one dish-washing session (states without water, truth derivable per frame)."""
    seed = int(cfg["seed"])
    ss = np.random.SeedSequence([seed, STREAMS[stream], 2, user.index, index])
    rng = np.random.default_rng(ss)
    look = apply_regime(drift_look(rng, user.look), str(cfg.get("regime") or "none"))
    fps = float(cfg["fps"])
    b = _Builder(rng, user, look, fps)
    if rng.random() < user.habits.p_resting_dish:
        d = sample_dish(rng, "pan" if rng.random() < 0.5 else "bowl")
        x, y = far_point(rng, look, d.r, d.r * 0.6 + 20)
        b.resting = (replace(d, x=x, y=y),)
    dps = cfg["dishes_per_session"]
    lo, hi = (int(dps[0]), int(dps[1])) if isinstance(dps, (list, tuple)) else (int(dps), int(dps))
    n_dishes = int(rng.integers(lo, hi + 1))
    b.idle(1.0, 3.0)
    for _ in range(n_dishes):
        b.dish_cycle()
        b.idle(0.0, 5.0)
    if rng.random() < 0.5:  # rinse the hands at the end
        b.hands_rinse(1.5, 4.0, True)
    b.idle(0.5, 1.5)
    did = f"{int(rng.integers(16**10)):010x}"
    return SessionScript(user, index, did, start, fps, look, b.states, seed=int(rng.integers(2**31)))


def session_starts(cfg: dict, stream: str = "lake") -> list[tuple[int, int, datetime]]:
    """(user, session, start) for every session, in time order; sessions never overlap."""
    y, m, d = (int(v) for v in str(cfg.get("start_date", "2024-07-01")).split("-"))
    base = datetime(y, m, d, tzinfo=TZ) + timedelta(days=400 * (STREAMS[stream] - 1))
    rng = np.random.default_rng([int(cfg["seed"]), STREAMS[stream], 3])
    out = []
    k = 0
    for s in range(int(cfg["sessions_per_user"])):
        for u in range(int(cfg["users"])):
            day, slot = divmod(k, 2)
            hour = 8 if slot == 0 else 19
            start = base + timedelta(days=day, hours=hour, seconds=int(rng.integers(0, 3 * 3600)))
            out.append((u, s, start))
            k += 1
    return out


def make_sessions(cfg: dict, stream: str = "lake") -> list[SessionScript]:
    """Every session script of a stream (``lake``: the sample data lake; ``heldout``: new
    users and kitchens for benchmarks, never in the lake)."""
    users = make_users(cfg, stream)
    return [make_session(users[u], s, cfg, start, stream) for u, s, start in session_starts(cfg, stream)]
