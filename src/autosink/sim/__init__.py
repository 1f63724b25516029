"""Deterministic kitchen-sink simulator: the embedded sample data lake, its hidden ground
truth, the case sets, and a closed loop any model (heuristic or ONNX) can drive.

Modules: :mod:`~autosink.sim.scene` (renderer, ROI), :mod:`~autosink.sim.session` (users,
kitchens, session scripts, truth), :mod:`~autosink.sim.user` (current models, valve, simulated
user, closed loop; the magnetic_status semantics), :mod:`~autosink.sim.lake` (episodes as a Pi
writes them, :func:`simulate_lake`), :mod:`~autosink.sim.cases`, :mod:`~autosink.sim.baseline`.
"""

from __future__ import annotations

from autosink.sim.baseline import FEATURE_NAMES, evaluate_trivial, trivial_features
from autosink.sim.cases import CASES, case_states, write_cases
from autosink.sim.lake import (
    DEFAULTS,
    TRUTH_COLUMNS,
    episode_windows,
    override_runs,
    render_session,
    run_session,
    simulate_lake,
    with_defaults,
)
from autosink.sim.scene import (
    FRAME_SHAPE,
    ROI,
    Dish,
    Hand,
    Look,
    SceneState,
    Scrubber,
    in_roi,
    render,
    roi_rect,
    roi_slice,
)
from autosink.sim.session import (
    SessionScript,
    Truth,
    UserProfile,
    label_of,
    make_session,
    make_sessions,
    make_users,
    wants_water,
)
from autosink.sim.user import (
    MODELS,
    ClosedLoop,
    FrameRecord,
    SimUser,
    Valve,
    make_model,
    roi_coverage,
)

__all__ = [
    "CASES",
    "DEFAULTS",
    "FEATURE_NAMES",
    "FRAME_SHAPE",
    "MODELS",
    "ROI",
    "TRUTH_COLUMNS",
    "ClosedLoop",
    "Dish",
    "FrameRecord",
    "Hand",
    "Look",
    "SceneState",
    "Scrubber",
    "SessionScript",
    "SimUser",
    "Truth",
    "UserProfile",
    "Valve",
    "case_states",
    "episode_windows",
    "evaluate_trivial",
    "in_roi",
    "label_of",
    "make_model",
    "make_session",
    "make_sessions",
    "make_users",
    "override_runs",
    "render",
    "render_session",
    "roi_coverage",
    "roi_rect",
    "roi_slice",
    "run_session",
    "simulate_lake",
    "trivial_features",
    "wants_water",
    "with_defaults",
    "write_cases",
]
