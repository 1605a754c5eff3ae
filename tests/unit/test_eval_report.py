"""The pure part of evaluation: results.json entries, J/F per expression, dataset and episode summaries."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from learner.eval_report import (add_result, coarse_masks, cross_target_agreement, dataset_summary, entry_masks, episode_outcome, episode_summary,
                                 expression_score, overall_summary, results_entry, spread_subset, write_results)
from segmentation.evaluation import ExpressionScore


def _masks(frames=5, h=37, w=53, seed=0):
    return np.random.default_rng(seed).random((frames, h, w)) > 0.6


def test_results_entry_round_trips_at_full_resolution(tmp_path):
    m = _masks()
    entry = results_entry(m, turns=2)
    assert entry["turns"] == 2 and len(entry["prediction_masks"]) == 5
    assert np.array_equal(entry_masks(entry), m)
    results = {}
    add_result(results, "vid", "0", entry)
    with pytest.raises(ValueError, match="two predictions"):
        add_result(results, "vid", "0", entry)
    path = write_results(tmp_path / "d" / "results.json", results)
    back = json.loads(path.read_text())
    assert np.array_equal(entry_masks(back["vid"]["0"]), m)
    with pytest.raises(ValueError, match="frames, H, W"):
        results_entry(m[0])


def test_expression_score_uses_every_frame():
    gt = _masks(seed=1)
    perfect = expression_score("v", "0", gt, gt)
    assert perfect.j == pytest.approx(1.0) and perfect.f == pytest.approx(1.0)
    half = gt.copy()
    half[:2] = False  # two of five frames predicted empty where the target is present
    s = expression_score("v", "0", gt, half, type_id=1)
    assert s.j == pytest.approx(0.6) and s.type_id == 1
    with pytest.raises(ValueError, match="differ"):
        expression_score("v", "0", gt, gt[:, :10])


def _score(j, f, t):
    return ExpressionScore("v", str(j), j, f, t)


def test_dataset_summaries_follow_each_benchmark():
    scores = [_score(0.8, 0.6, 0), _score(0.4, 0.2, 1), _score(0.6, 0.4, 1)]
    revos = dataset_summary("revos", scores)
    assert revos["referring"]["J&F"] == pytest.approx(0.7)
    assert revos["reasoning"]["J&F"] == pytest.approx(0.4)
    assert revos["overall"]["J&F"] == pytest.approx(0.55)  # mean of the two splits, not of expressions
    assert revos["headline_J&F"] == pytest.approx(0.55)
    assert revos["mean"]["J&F"] == pytest.approx((0.7 + 0.3 + 0.5) / 3)
    mevis = dataset_summary("mevis", scores)
    assert "overall" not in mevis and mevis["headline_J&F"] == pytest.approx(0.5)
    refsav = dataset_summary("refsav", scores)
    assert refsav["long"]["count"] == 1 and refsav["short"]["count"] == 2
    davis = dataset_summary("davis", [_score(0.5, 0.5, 0)])  # one type only: the mean
    assert davis["headline_J&F"] == pytest.approx(0.5)


def _traj(errors, end_reason, presence=(False, True, True)):
    turns = [SimpleNamespace(record=SimpleNamespace(action=None if e else object(), error=e, text=f"t{i}"))
             for i, e in enumerate(errors)]
    sample = SimpleNamespace(sample_id="d/v/0", dataset="d", video_id="v", exp_id="0", type_id=0, presence=presence)
    return SimpleNamespace(sample=sample, turns=turns, end_reason=end_reason)


def test_episode_outcomes_and_summary():
    good = episode_outcome(_traj([None, None], "answer"), 2, True,
                           SimpleNamespace(total=2.5, terms={"format": 1.0, "iou": 0.5}))
    wrong_frame = episode_outcome(_traj([None], "answer"), 0, True, SimpleNamespace(total=1.0, terms={"format": 1.0}))
    broken = episode_outcome(_traj(["no_think"], "malformed"), 0, False)
    assert good.format_valid and good.answered and good.keyframe_correct and good.reward == 2.5
    assert wrong_frame.keyframe_correct is False
    assert not broken.format_valid and broken.keyframe_correct is False and not broken.chose_keyframe
    unknown = episode_outcome(_traj([None], "answer", presence=()), 0, True)
    assert unknown.keyframe_correct is None
    s = episode_summary([good, wrong_frame, broken, unknown])
    assert s["episodes"] == 4 and s["avg_turns"] == pytest.approx(5 / 4)
    assert s["format_valid_rate"] == pytest.approx(0.75)
    assert s["keyframe_correct_rate"] == pytest.approx(1 / 3)  # unknown presence is left out
    assert s["mean_reward"] == pytest.approx(1.75)
    assert s["reward_terms"] == {"format": 1.0, "iou": 0.5}
    assert s["end_reasons"] == {"answer": 3, "malformed": 1}
    overall = overall_summary({"a": {"scores": {"headline_J&F": 0.2}}, "b": {"scores": {"headline_J&F": 0.6}}},
                              [good])
    assert overall["J&F"] == pytest.approx(0.4) and overall["episodes"] == 1


def test_spread_subset_covers_the_list():
    ids = [f"s{i:02d}" for i in range(10)]
    assert spread_subset(ids, None) == ids and spread_subset(ids, 50) == ids
    picked = spread_subset(list(reversed(ids)), 3)
    assert picked == ["s00", "s04", "s09"]


def test_cross_target_agreement_exposes_expression_blind_masks():
    left = np.zeros((3, 8, 8), bool)
    left[:, :, :4] = True
    right = ~left
    # Two expressions of one video naming different targets (ground truths disjoint).
    follows = {"v": [(left, left), (right, right)]}
    blind = {"v": [(left, left), (right, left)]}  # the second prediction ignores its expression
    assert cross_target_agreement(follows) == {"pairs": 1, "gt_iou": 0.0, "pred_iou": 0.0}
    assert cross_target_agreement(blind)["pred_iou"] == 1.0
    # Expressions of the same target are not a pair; neither are expressions of different videos.
    same = {"v": [(left, left), (left, right)], "w": [(right, right)]}
    assert cross_target_agreement(same) == {"pairs": 0, "gt_iou": None, "pred_iou": None}
    # Two empty predictions agree perfectly.
    empty = np.zeros_like(left)
    assert cross_target_agreement({"v": [(left, empty), (right, empty)]})["pred_iou"] == 1.0


def test_coarse_masks_keep_at_most_side_pixels():
    m = np.zeros((2, 130, 200), bool)
    m[:, 0, 0] = True
    c = coarse_masks(m, side=64)
    assert c.shape[1] <= 64 and c.shape[2] <= 64 and c[:, 0, 0].all()
    assert coarse_masks(np.ones((1, 10, 10)), side=64).shape == (1, 10, 10)
