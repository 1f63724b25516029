"""Sparse-to-dense propagation rules (src/autosink/labels.py), one frame per second unless said."""

from __future__ import annotations

import numpy as np
import pytest

from autosink.labels import IGNORE, LabelRules, propagate, user_events

RULES = LabelRules(min_reaction_s=1, max_reaction_s=3, min_override_s=2, passive_window_s=1)


def seq(text: str) -> list[int]:
    return [int(c) for c in text]


def test_no_override_no_switch_follows_the_model():
    m = seq("0000000000")
    out = propagate(m, m, fps=1, rules=RULES)
    assert out.label.tolist() == m and not out.review.any()
    assert set(out.rule) == {"accepted"} and np.allclose(out.confidence, RULES.conf_accepted)


def test_model_switch_the_user_went_along_with_is_uncertain_nearby():
    m = seq("0000011111")
    out = propagate(m, m, fps=1, rules=RULES)
    assert out.label.tolist() == m  # nothing contradicts the model
    assert out.review.tolist() == [False] * 4 + [True, True] + [False] * 4
    assert out.rule[4] == "uncertain" and out.confidence[4] == RULES.conf_review


def test_forced_on_applies_from_before_the_override():
    # the need starts somewhere before frame 6; the user forces water on at 6 and lets go at 10
    m = seq("000000000000")
    s = seq("000000111100")
    out = propagate(m, s, fps=1, rules=RULES)
    assert out.rule[6:10] == ["override"] * 4 and (out.label[6:10] == 1).all()
    assert out.label[5] == 1 and out.rule[5] == "reaction" and not out.review[5]  # surely needed already
    assert out.review[3:5].all() and out.label[3:5].tolist() == [0, 1]  # uncertain: split at the mean delay
    assert not out.review[:3].any() and out.label[:3].tolist() == [0, 0, 0]
    # letting go at 10 is the user's own decision: no delay, nothing propagates back
    assert out.label[9] == 1 and out.label[10] == 0 and not out.review[9:].any()


def test_closing_the_faucet_after_the_model_wrongly_opened_it():
    # the model turns on at 4; the user closes at 6 (reaction 2 s); the model goes off at 9
    m = seq("0000111110")
    s = seq("0000110000")
    out = propagate(m, s, fps=1, rules=RULES)
    assert out.label.tolist() == seq("0000000000")  # best guess: wrong from the model's switch on
    assert out.rule[5] == "reaction" and not out.review[5]
    assert out.review[3:5].all()  # the switch is the likely start, but a human confirms it
    assert out.rule[6:9] == ["override"] * 3


def test_reopening_after_a_close_is_immediate():
    m = seq("1111111111")
    s = seq("1110000111")  # closed at 3, reopened at 7 (the user wants water again)
    out = propagate(m, s, fps=1, rules=RULES)
    assert user_events(np.array(m), np.array(s)) == [3, 7]
    assert out.label[6] == 0 and out.label[7] == 1 and not out.review[5:].any()


def test_late_reaction_scales_with_fps():
    m = [0] * 20
    s = [0] * 12 + [1] * 8
    out = propagate(m, s, fps=2, rules=RULES)  # 1 s = 2 frames, 3 s = 6 frames
    assert out.label[10:12].tolist() == [1, 1] and not out.review[10:12].any()
    assert out.review[6:10].all() and not out.review[5]


def test_overlapping_overrides_do_not_reach_past_each_other():
    # forced on 3..5, let go at 6, forced on again at 8
    m = seq("0000000000000")
    s = seq("0001110011100")
    out = propagate(m, s, fps=1, rules=RULES)
    assert user_events(np.array(m), np.array(s)) == [3, 6, 8, 11]
    assert out.label[7] == 1 and out.rule[7] == "reaction"
    # the re-force at 8 reaches back at most to the let-go at 6, not over the first override
    assert out.rule[6] == "uncertain"
    assert out.rule[3:6] == ["override"] * 3


def test_flicker_is_ignored_and_reviewed():
    m = seq("0000000000")
    s = seq("0000100000")  # a one-frame toggle
    out = propagate(m, s, fps=1, rules=RULES)
    assert out.label[4] == IGNORE and out.review[4] and out.rule[4] == "flicker"


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="equal-length"):
        propagate([0, 1], [0], fps=1)
    with pytest.raises(ValueError, match="fps"):
        propagate([0], [0], fps=0)
    with pytest.raises(ValueError, match="min_reaction_s"):
        LabelRules(min_reaction_s=3, max_reaction_s=1)


def test_flicker_gives_no_confident_reaction_window():
    m = seq("0000000000")
    s = seq("0000100000")
    out = propagate(m, s, fps=1, rules=RULES)
    assert not any(r == "reaction" for r in out.rule)
    assert out.review[1:4].all() and out.rule[3] == "uncertain"
