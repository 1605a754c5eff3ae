"""Golden values for every reward term of METHOD.md section 3, under both switch settings.

Presence in these tests: a 10-frame video where the target is visible on frames 2..7.
"""

import pytest

from configs.schema import REWARD_TERMS, RewardConfig
from env.types import Action, ParseError, TurnRecord
from segmentation.rewards import (REWARD_REGISTRY, RewardInputs, compute_rewards, format_term,
                                  interval_term, keyframe_term, keyframe_vs_video_term, mask_term,
                                  progressive_term, step_format_term)

INTENDED = RewardConfig()
REFERENCE = RewardConfig(reference_behaviour=True)
PRESENT = tuple(2 <= f <= 7 for f in range(10))
ALL_MARKERS = (True, True, True, True)


def turn(kind="answer", s=2, e=7, k=4, markers=ALL_MARKERS):
    return TurnRecord("text", Action(kind, s, e, k, "think", markers), None)


def broken(markers=(False, False, False, False), think=None):
    return TurnRecord("text", None, ParseError("no_action", "no action tag", think, markers))


def inputs(turns, iou_vid=None, iou_kf=None, kf_empty=None, presence=PRESENT):
    n = len(turns)
    return RewardInputs(turns, len(presence), presence,
                        iou_vid if iou_vid is not None else [[0.5]] * n,
                        iou_kf if iou_kf is not None else [0.5] * n,
                        kf_empty if kf_empty is not None else [False] * n)


def both(fn, inp):
    return fn(inp, INTENDED), fn(inp, REFERENCE)


def test_registry_covers_exactly_the_configured_terms():
    assert tuple(REWARD_REGISTRY) == REWARD_TERMS
    assert not any((REFERENCE.dense_branches, REFERENCE.inclusive_interval, REFERENCE.empty_keyframe_iou_one,
                    REFERENCE.require_final_answer))
    assert all((INTENDED.dense_branches, INTENDED.inclusive_interval, INTENDED.empty_keyframe_iou_one,
                INTENDED.require_final_answer))


# ------------------------------------------------------------------------------------ format
@pytest.mark.parametrize("turns,intended,reference", [
    ([turn("select"), turn("answer")], 1.0, 1.0),
    ([turn("answer")], 1.0, 1.0),
    ([turn("select"), turn("select")], -1.0, 1.0),  # ran out of turns without answering
    ([turn("select"), broken()], -1.0, -1.0),
    ([broken(), turn("answer")], -1.0, -1.0),
    ([], -1.0, -1.0),
])
def test_format(turns, intended, reference):
    assert both(format_term, inputs(turns)) == (intended, reference)


def test_format_switch_alone():
    cfg = RewardConfig(require_final_answer=False)
    assert format_term(inputs([turn("select")]), cfg) == 1.0


# ------------------------------------------------------------------------------- step format
def test_step_format_averages_markers_over_turns():
    turns = [turn(markers=(True, True, False, False)), turn(markers=ALL_MARKERS),
             broken(markers=(True, False, False, False), think="Step 1 ...")]
    assert both(step_format_term, inputs(turns)) == (pytest.approx(1.75 / 3), pytest.approx(1.75 / 3))
    assert step_format_term(inputs([broken()]), INTENDED) == 0.0
    assert step_format_term(inputs([]), INTENDED) == 0.0


# ---------------------------------------------------------------------------------- interval
@pytest.mark.parametrize("s,e,intended,reference", [
    (2, 7, 0.5, 0.5),          # inclusive: 2..7 all present; exclusive: 2..6 all present
    (0, 3, 0.25, -0.5),        # inclusive p = 2/4; exclusive p = 1/3 < 0.5
    (4, 4, 0.5, -0.5),         # one frame inclusive; empty (s >= e) exclusive
    (1, 2, 0.25, -0.5),        # inclusive {1, 2}: p = 1/2; exclusive {1}: p = 0
    (6, 20, 0.25, 0.25),       # end clamped: inclusive 6..9, exclusive 6..9 (e -> 10)
    (8, 12, -0.5, -0.5),       # target gone: p = 0
    (5, 3, -0.5, -0.5),        # e < s
    (-4, 5, pytest.approx(0.5 * 4 / 6), 0.5 * 3 / 5),  # start clamped to 0
])
def test_interval(s, e, intended, reference):
    inp = inputs([turn("select", 0, 9, 4), turn("answer", s, e, 4)])
    assert both(interval_term, inp) == (intended, reference)


def test_interval_unparsable_last_turn_and_absent_target():
    assert both(interval_term, inputs([turn("select"), broken()])) == (-0.5, -0.5)
    absent = tuple([False] * 10)  # nothing to find: any interval is right
    assert both(interval_term, inputs([turn("answer", 0, 2, 1)], presence=absent)) == (0.5, 0.5)
    assert interval_term(inputs([turn("answer", 3, 3, 3)]), RewardConfig(inclusive_interval=False)) == -0.5


# ---------------------------------------------------------------------------------- keyframe
@pytest.mark.parametrize("k,expected", [(5, 1.0), (2, 1.0), (7, 1.0), (0, -1.0), (8, -1.0), (50, -1.0),
                                        (-3, -1.0)])
def test_keyframe(k, expected):
    assert both(keyframe_term, inputs([turn("answer", 0, 9, k)])) == (expected, expected)


def test_keyframe_uses_the_last_turn_and_fails_when_unparsable():
    assert keyframe_term(inputs([turn("select", 0, 9, 0), turn("answer", 0, 9, 3)]), INTENDED) == 1.0
    assert both(keyframe_term, inputs([turn("select", 0, 9, 3), broken()])) == (-1.0, -1.0)
    assert keyframe_term(inputs([]), INTENDED) == -1.0


# -------------------------------------------------------------------------------------- mask
def test_mask_piecewise_and_average():
    vid = [0.2, 0.3, 0.4, 0.5, 0.9]  # -1, 0, 0, 0.3, 1.5
    inp = inputs([turn("select"), turn("answer")], iou_vid=[[0.0] * 5, vid])
    assert both(mask_term, inp) == (pytest.approx(0.16), pytest.approx(0.16))
    assert mask_term(inputs([turn()], iou_vid=[[1.0]]), INTENDED) == 1.5
    assert mask_term(inputs([turn()], iou_vid=[[0.0, 0.21]]), INTENDED) == pytest.approx(-0.5)
    assert mask_term(inputs([turn()], iou_vid=[[]]), INTENDED) == -1.0  # no sampled frames
    assert mask_term(inputs([]), INTENDED) == -1.0


# ------------------------------------------------------------------------- keyframe vs video
@pytest.mark.parametrize("kf,vid,intended,reference", [
    (0.9, [0.5, 0.5], 1.5, 0.5),      # d = 0.4: dense min(5 * 0.3, 2)
    (1.0, [0.0, 0.2], 2.0, 0.5),      # d = 0.9: capped at 2
    (0.75, [0.5], 0.75, 0.5),         # d = 0.25: 5 * 0.15
    (0.65, [0.5], 0.5, 0.5),          # d = 0.15: step branch
    (0.5, [0.5], 0.0, 0.0),           # d = 0
    (0.3, [0.5], -1.0, -1.0),         # d = -0.2
    (0.5, [], 0.5, 0.5),              # no sampled frames: the mean counts 0, d = 0.5 > 0.1 (dense 2.0)
])
def test_keyframe_vs_video(kf, vid, intended, reference):
    if not vid:
        intended = 2.0
    inp = inputs([turn("select"), turn("answer")], iou_vid=[[0.1], vid], iou_kf=[0.1, kf])
    assert both(keyframe_vs_video_term, inp) == (pytest.approx(intended), pytest.approx(reference))


def test_keyframe_vs_video_needs_two_turns_and_uses_empty_keyframe_switch():
    assert both(keyframe_vs_video_term, inputs([turn()], iou_kf=[1.0], iou_vid=[[0.0]])) == (0.0, 0.0)
    # Both empty on the last keyframe: IoU 1 (d = 0.5 -> dense 2.0) or 0 in reference (d = -0.5).
    inp = inputs([turn("select"), turn("answer")], iou_vid=[[0.5], [0.5, 0.5]], iou_kf=[0.3, 1.0],
                 kf_empty=[False, True])
    assert both(keyframe_vs_video_term, inp) == (2.0, -1.0)
    assert keyframe_vs_video_term(inp, RewardConfig(empty_keyframe_iou_one=False)) == -1.0
    assert keyframe_vs_video_term(inp, RewardConfig(dense_branches=False)) == 0.5


# ------------------------------------------------------------------------------ progressive
@pytest.mark.parametrize("kfs,intended,reference", [
    ([0.3, 0.6], 2.0, 0.5),           # d = 0.3: dense min(10 * 0.25, 2)
    ([0.3, 0.42], 0.7, 0.5),          # d = 0.12: dense 10 * 0.07
    ([0.5, 0.58], 0.5, 0.5),          # d = 0.08
    ([0.4, 0.42], 0.0, 0.0),          # d = 0.02
    ([0.2, 0.7, 0.62], -1.0, -1.0),   # best earlier is 0.7: d = -0.08
    ([0.9, 0.1, 0.88], 0.0, 0.0),     # d = -0.02 against the best earlier, not the previous
])
def test_progressive(kfs, intended, reference):
    inp = inputs([turn("select")] * (len(kfs) - 1) + [turn("answer")], iou_kf=kfs)
    assert both(progressive_term, inp) == (pytest.approx(intended), pytest.approx(reference))


def test_progressive_single_turn_and_empty_keyframes():
    assert both(progressive_term, inputs([turn()], iou_kf=[1.0])) == (0.0, 0.0)
    # Turn 0's keyframe was empty in both: 1.0 makes d = -0.4; the reference's 0 makes d = 0.6.
    inp = inputs([turn("select"), turn("answer")], iou_kf=[1.0, 0.6], kf_empty=[True, False])
    assert both(progressive_term, inp) == (-1.0, 0.5)


# ------------------------------------------------------------------------------------ total
def test_weighted_total_of_a_full_episode():
    turns = [turn("select", 0, 9, 5), turn("answer", 2, 7, 4)]
    inp = inputs(turns, iou_vid=[[0.5, 0.5], [0.6, 0.8]], iou_kf=[0.5, 1.0])  # d = 0.3 and 0.5
    terms, total = compute_rewards(inp, INTENDED)
    expected = {"format": 1.0, "step_format": 1.0, "interval": 0.5, "keyframe": 1.0,
                "mask": (0.6 + 1.2) / 2, "keyframe_vs_video": 1.0, "progressive": 2.0}
    assert terms == pytest.approx(expected)
    assert total == pytest.approx(sum(expected.values()))
    cfg = RewardConfig(weights={"format": 0.5, "mask": 2.0})  # unnamed terms get weight 0
    _, total = compute_rewards(inp, cfg)
    assert total == pytest.approx(0.5 * 1.0 + 2.0 * 0.9)
    terms_ref, _ = compute_rewards(inp, REFERENCE)
    assert terms_ref["keyframe_vs_video"] == 0.5 and terms_ref["progressive"] == 0.5


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="per-turn"):
        RewardInputs([turn()], 10, PRESENT, [[0.5]], [0.5, 0.5], [False])
    with pytest.raises(ValueError, match="presence"):
        RewardInputs([turn()], 9, PRESENT, [[0.5]], [0.5], [False])
