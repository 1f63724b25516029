"""Case validation sets: ``CASEnn-<label>-<desc>/`` folders of PNG frames.

Every frame of a case is a fresh kitchen (look sampled from the ``cases`` seed stream, disjoint
from the lake's and the held-out stream's) and a fresh random scene satisfying the case.
Labels follow the v1 convention (:func:`autosink.sim.session.label_of`, checked for every frame):

* CASE01-0 detergent, hand with scrubber (no dish held)       * CASE06-1 rinse dish close, dim light
* CASE02-0 detergent, dish held + scrubbing                     * CASE07-1 rinse dish close, strong glare
* CASE03-1 rinse, dish held close under the faucet, water on    * CASE08-1 rinse, dish at the ROI edge with
* CASE04-0 rinse, dish held far from the faucet                   its centre just inside (label 1 by the
* CASE05-0 rinse, hands under the faucet, no dish                 convention: centre in the ROI)
                                                                * CASE09-1 rinse dish close, partly occluded by a hand
                                                                * CASE10-0 empty sink, water running

Frames are written with ``cv2.imwrite`` of the RGB->BGR frame, so the PNG holds true colours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from autosink.sim.scene import ROI, Hand, Look, SceneState, hand_holding, hand_on_scrubber, in_roi, render
from autosink.sim.session import (
    STREAMS,
    drift_look,
    far_point,
    label_of,
    roi_edge_point,
    roi_point,
    sample_dish,
    sample_look,
    sample_scrubber,
)

PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 4]

Builder = Callable[[np.random.Generator, Look], SceneState]


def _water(rng: np.random.Generator) -> bool:
    return bool(rng.random() < 0.5)


def _holders(rng: np.random.Generator, d, look: Look, two: bool | None = None):
    s = look.hand_scale
    hands = [hand_holding(d, "R", float(rng.uniform(60, 120)), s)]
    if (two if two is not None else rng.random() < 0.4) and d.kind != "cup":
        hands.insert(0, hand_holding(d, "L", float(rng.uniform(165, 205)), s))
    return tuple(hands)


def _detergent_hand(rng: np.random.Generator, look: Look) -> SceneState:
    sc = sample_scrubber(rng)
    if rng.random() < 0.5:  # scrubbing a dish lying in the basin
        d = sample_dish(rng)
        x, y = roi_point(rng, 15) if rng.random() < 0.5 else far_point(rng, look, d.r, 25)
        d = replace(d, x=x, y=y, foam=float(rng.uniform(0.3, 1.0)))
        sc = replace(
            sc,
            x=x + float(rng.normal(0, d.r * 0.3)),
            y=y + float(rng.normal(0, d.r * 0.3)),
            angle=float(rng.uniform(0, 180)),
            foam=float(rng.uniform(0.3, 1.0)),
        )
    else:
        d = None
        x, y = roi_point(rng, 10) if rng.random() < 0.5 else far_point(rng, look, 40, 20)
        sc = replace(sc, x=x, y=y, angle=float(rng.uniform(0, 180)), foam=float(rng.uniform(0, 1.0)))
    return SceneState(
        look,
        "detergent",
        hands=(hand_on_scrubber(sc, "R", look.hand_scale),),
        dish=d,
        dish_held=False,
        scrubber=sc,
        scrubber_held=True,
        water_on=_water(rng),
    )


def _detergent_dish(rng: np.random.Generator, look: Look) -> SceneState:
    d = sample_dish(rng)
    x, y = roi_point(rng, 15) if rng.random() < 0.5 else far_point(rng, look, d.r, 25)
    d = replace(d, x=x, y=y, foam=float(rng.uniform(0.3, 1.0)))
    rr = d.r * (0.25 if d.kind == "cup" else 0.45)
    a = float(rng.uniform(0, 2 * np.pi))
    sc = sample_scrubber(rng)
    sc = replace(
        sc,
        x=x + rr * np.cos(a),
        y=y + rr * np.sin(a) * 0.8,
        angle=float(rng.uniform(-125, -55)) + (180 if sc.kind == "brush" else 0),
        foam=float(rng.uniform(0.3, 1.0)),
    )
    hands = (
        hand_holding(d, "L", float(rng.uniform(150, 215)), look.hand_scale),
        hand_on_scrubber(sc, "R", look.hand_scale),
    )
    return SceneState(
        look, "detergent", hands=hands, dish=d, dish_held=True, scrubber=sc, scrubber_held=True, water_on=_water(rng)
    )


def _rinse_close(rng: np.random.Generator, look: Look, water: bool = True) -> SceneState:
    d = sample_dish(rng)
    x, y = roi_point(rng, 20)
    d = replace(d, x=x, y=y, foam=float(rng.choice([0.0, rng.uniform(0, 0.4)])))
    return SceneState(look, "rinse", hands=_holders(rng, d, look), dish=d, dish_held=True, water_on=water)


def _rinse_far(rng: np.random.Generator, look: Look) -> SceneState:
    d = sample_dish(rng)
    x, y = far_point(rng, look, d.r, 30)
    d = replace(d, x=x, y=y, foam=float(rng.choice([0.0, rng.uniform(0, 0.4)])))
    return SceneState(look, "rinse", hands=_holders(rng, d, look), dish=d, dish_held=True, water_on=_water(rng))


def _rinse_no_dish(rng: np.random.Generator, look: Look) -> SceneState:
    cx, cy = roi_point(rng, 30)
    hands = [
        Hand(
            "R",
            cx + 22 + float(rng.normal(0, 6)),
            cy + float(rng.normal(0, 6)),
            float(rng.uniform(-150, -110)),
            float(rng.uniform(0, 0.4)),
        )
    ]
    if rng.random() < 0.6:
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
    return SceneState(look, "rinse", hands=tuple(hands), water_on=_water(rng))


def _dim(rng: np.random.Generator, look: Look) -> SceneState:
    return _rinse_close(rng, replace(look, gain=float(rng.uniform(0.38, 0.52)), glare=None))


def _glare(rng: np.random.Generator, look: Look) -> SceneState:
    x0, y0, x1, y1 = ROI
    g = (
        float(rng.uniform(x0 - 40, x1 + 40)),
        float(rng.uniform(y0 - 20, y1 + 20)),
        float(rng.uniform(50, 90)),
        float(rng.uniform(120, 180)),
    )
    return _rinse_close(rng, replace(look, glare=g))


def _edge(rng: np.random.Generator, look: Look) -> SceneState:
    d = sample_dish(rng)
    x, y = roi_edge_point(rng, inside=True, lo=4, hi=14)
    d = replace(d, x=x, y=y)
    assert in_roi(x, y)
    return SceneState(look, "rinse", hands=_holders(rng, d, look), dish=d, dish_held=True, water_on=True)


def _occluded(rng: np.random.Generator, look: Look) -> SceneState:
    d = sample_dish(rng, str(rng.choice(["plate", "bowl", "pan"])))
    x, y = roi_point(rng, 25)
    d = replace(d, x=x, y=y)
    wipe = Hand(
        "L",
        x + float(rng.normal(0, d.r * 0.2)),
        y + float(rng.normal(0, d.r * 0.2)),
        float(rng.uniform(-110, -30)),
        float(rng.uniform(0, 0.3)),
    )
    hands = (hand_holding(d, "R", float(rng.uniform(60, 120)), look.hand_scale), wipe)
    return SceneState(look, "rinse", hands=hands, dish=d, dish_held=True, water_on=True)


def _empty_water(rng: np.random.Generator, look: Look) -> SceneState:
    resting = ()
    if rng.random() < 0.3:
        d = sample_dish(rng, "pan" if rng.random() < 0.5 else "bowl")
        x, y = far_point(rng, look, d.r, d.r * 0.6 + 20)
        resting = (replace(d, x=x, y=y),)
    return SceneState(look, "idle", resting=resting, water_on=True)


#: (folder name, expected label, builder)
CASES: list[tuple[str, int, Builder]] = [
    ("CASE01-0-detergent-hand-scrubber", 0, _detergent_hand),
    ("CASE02-0-detergent-with-dish", 0, _detergent_dish),
    ("CASE03-1-rinse-dish-close-water", 1, _rinse_close),
    ("CASE04-0-rinse-dish-far", 0, _rinse_far),
    ("CASE05-0-rinse-no-dish", 0, _rinse_no_dish),
    ("CASE06-1-rinse-dish-close-dim-light", 1, _dim),
    ("CASE07-1-rinse-dish-close-glare", 1, _glare),
    ("CASE08-1-rinse-dish-at-roi-edge-centre-inside", 1, _edge),
    ("CASE09-1-rinse-dish-partly-occluded-by-hand", 1, _occluded),
    ("CASE10-0-empty-sink-water-running", 0, _empty_water),
]


def case_states(case_index: int, n: int, seed: int) -> list[SceneState]:
    """The ``n`` scenes of case ``CASES[case_index]`` (seeded, disjoint from the lake's seeds)."""
    name, label, build = CASES[case_index]
    out = []
    for k in range(n):
        rng = np.random.default_rng([int(seed), STREAMS["cases"], case_index, k])
        look = drift_look(rng, sample_look(rng))
        st = replace(build(rng, look), noise_seed=int(rng.integers(2**31)))
        if label_of(st) != label:
            raise AssertionError(f"{name} frame {k}: label {label_of(st)} != {label}")
        out.append(st)
    return out


def write_cases(cases_dir: Path, n: int, seed: int, progress: bool = False) -> dict[str, int]:
    """Write ``n`` frames per case under ``cases_dir``; return frames per case folder."""
    from tqdm import tqdm

    cases_dir = Path(cases_dir)
    cases_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for ci, (name, _, _) in enumerate(tqdm(CASES, desc="cases", disable=not progress, unit="case")):
        d = cases_dir / name
        d.mkdir(exist_ok=True)
        for k, st in enumerate(case_states(ci, n, seed)):
            if not cv2.imwrite(str(d / f"{k:03d}.png"), cv2.cvtColor(render(st), cv2.COLOR_RGB2BGR), PNG_PARAMS):
                raise OSError(f"cv2.imwrite failed for {d / f'{k:03d}.png'}")
        out[name] = n
    return out
