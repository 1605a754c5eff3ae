"""The pure part of evaluation: masks to a Sa2VA-style results.json, J/F per expression, summaries.

No Ray and no models here, so every number of a report can be checked in unit tests:

    results.json   {video: {exp_id: {"prediction_masks": [RLE per frame], ...}}}  (0/1 masks, full
                   resolution, every frame of the video; METRICS_AND_FORMATS.md section 1.6)
    expression     J and F: temporal means over every frame (absent-target frames included)
    ReVOS A, R     accuracy and robustness per expression where the dataset ships a foreground
                   (mask_dict_foreground.json, the ReVOS layout), averaged like J and F
    dataset        "mean" over expressions; ReVOS-style referring (type 0) / reasoning (type 1) /
                   overall = mean of the two when the dataset has both types; Ref-SAV long / short /
                   overall; "headline" is the overall when there is one, else the mean
    episodes       turns, format validity, answered, keyframe correctness, RL reward and its terms
    cross-target   mean IoU between the predictions of expressions of one video that name different
                   targets (near 1: the masks ignore the expression)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from segmentation.evaluation import ExpressionScore, accuracy_robustness, mean_over_expressions, revos_summary
from segmentation.masks import decode_rle, encode_rle
from segmentation.metrics import jf_mean, sequence_jf

# Formats whose type_id means long (0) / short (1) instead of referring / reasoning.
LONG_SHORT_FORMATS = ("refsav",)
# Formats scored as a plain mean over expressions only (no type split exists).
MEAN_ONLY_FORMATS = ("mevis",)


# ------------------------------------------------------------------------------ results.json
def results_entry(masks: np.ndarray, **extra) -> dict:
    """One expression's entry: an RLE of the 0/1 mask of every frame, plus free-form extras."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (frames, H, W), got shape {masks.shape}")
    return {"prediction_masks": [encode_rle(m) for m in masks], **extra}


def entry_masks(entry: dict) -> np.ndarray:
    """The (frames, H, W) bool masks of a results.json entry."""
    return np.stack([decode_rle(r) for r in entry["prediction_masks"]])


def write_results(path: str | Path, results: dict[str, dict[str, dict]]) -> Path:
    """Write {video: {exp_id: entry}} atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results))
    tmp.replace(path)
    return path


def add_result(results: dict, video: str, exp_id: str, entry: dict) -> None:
    per_video = results.setdefault(video, {})
    if exp_id in per_video:
        raise ValueError(f"two predictions for {video}/{exp_id}")
    per_video[exp_id] = entry


# ------------------------------------------------------------------------------ J and F
def expression_score(video: str, exp_id: str, gt: np.ndarray, pred: np.ndarray,
                     type_id: int | None = None, foreground: np.ndarray | None = None) -> ExpressionScore:
    """Temporal means of J and F over every frame (gt, pred: (frames, H, W)); with the video's
    per-frame foreground pixel counts (ReVOS layout) also ReVOS accuracy A and robustness R."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"{video}/{exp_id}: prediction {pred.shape} and ground truth {gt.shape} differ")
    j, f = sequence_jf(gt, pred)
    extra = {} if foreground is None else accuracy_robustness(gt, pred, foreground)
    return ExpressionScore(video, str(exp_id), float(j.mean()), float(f.mean()), type_id, **extra)


def _split_summary(scores: list[ExpressionScore], names: tuple[str, str]) -> dict:
    parts = {name: mean_over_expressions([s for s in scores if s.type_id == t]) for t, name in enumerate(names)}
    present = [m for m in parts.values() if m["count"]]
    overall = {"J": None, "F": None, "J&F": None}
    if present:
        for k in ("J", "F"):
            overall[k] = float(np.mean([m[k] for m in present]))
        overall["J&F"] = jf_mean(overall["J"], overall["F"])
    return {**parts, "overall": overall}


def dataset_summary(fmt: str, scores: list[ExpressionScore]) -> dict:
    """The aggregates a paper reports for this kind of dataset (see the module docstring)."""
    out: dict = {"mean": mean_over_expressions(scores)}
    types = {s.type_id for s in scores}
    if fmt in LONG_SHORT_FORMATS:
        out.update(_split_summary(scores, ("long", "short")))
    elif fmt not in MEAN_ONLY_FORMATS and 1 in types:
        out.update(revos_summary(scores))
    headline = out.get("overall", {}).get("J&F")
    out["headline_J&F"] = headline if headline is not None else out["mean"]["J&F"]
    return out


# ------------------------------------------------------------------- prompt sensitivity
def _sequence_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two mask sequences taken as one volume (both empty = 1)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def coarse_masks(masks: np.ndarray, side: int = 64) -> np.ndarray:
    """(frames, H, W) bool masks subsampled to at most `side` pixels per axis, to keep per video."""
    masks = np.asarray(masks, dtype=bool)
    sh, sw = max(1, -(-masks.shape[1] // side)), max(1, -(-masks.shape[2] // side))
    return masks[:, ::sh, ::sw]


def cross_target_agreement(per_video: dict[str, list[tuple[np.ndarray, np.ndarray]]],
                           distinct_below: float = 0.5) -> dict:
    """Do predictions follow the expression? Over pairs of expressions of one video whose targets
    differ (ground-truth IoU of the two mask volumes below `distinct_below`): the mean IoU of
    their ground truths and of their predictions. A policy whose masks ignore the expression
    scores a prediction IoU near 1 however different the targets are.

    `per_video[video]` lists (ground truth, prediction) mask sequences, one per expression."""
    gt_ious, pred_ious = [], []
    for items in per_video.values():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                g = _sequence_iou(items[i][0], items[j][0])
                if g < distinct_below:
                    gt_ious.append(g)
                    pred_ious.append(_sequence_iou(items[i][1], items[j][1]))
    return {"pairs": len(gt_ious), "gt_iou": float(np.mean(gt_ious)) if gt_ious else None,
            "pred_iou": float(np.mean(pred_ious)) if pred_ious else None}


# ----------------------------------------------------------------------------- episodes
@dataclass
class EpisodeOutcome:
    """What one greedy episode did, for the report (one per evaluated sample)."""

    sample_id: str
    dataset: str
    video_id: str
    exp_id: str
    type_id: int
    turns: int
    end_reason: str
    format_valid: bool  # every turn parses (as the training metric episode/format_ok)
    answered: bool  # the episode ended with an <answer>
    final_keyframe: int  # where the last [SEG] was placed for propagation
    chose_keyframe: bool  # some turn parsed, so the model named a keyframe at all
    keyframe_correct: bool | None  # the target is visible on the final keyframe (None: presence unknown)
    has_seg: bool  # a [SEG] state reached the propagation
    reward: float | None = None
    reward_terms: dict = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    J: float | None = None
    F: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def episode_outcome(traj, final_keyframe: int, has_seg: bool, reward=None) -> EpisodeOutcome:
    """Summarise a finished trajectory (rollout.trajectory.Trajectory); `reward` is a ScoreResult."""
    sample = traj.sample
    records = [t.record for t in traj.turns]
    parsed = [r for r in records if r.action is not None and r.error is None]
    presence = tuple(sample.presence)
    correct = None
    if presence:
        correct = bool(parsed) and bool(presence[final_keyframe])
    return EpisodeOutcome(
        sample_id=sample.sample_id, dataset=sample.dataset, video_id=sample.video_id, exp_id=sample.exp_id,
        type_id=int(sample.type_id), turns=len(records), end_reason=str(traj.end_reason),
        format_valid=bool(records) and all(r.error is None for r in records),
        answered=str(traj.end_reason) == "answer", final_keyframe=int(final_keyframe),
        chose_keyframe=bool(parsed), keyframe_correct=correct, has_seg=bool(has_seg),
        reward=None if reward is None else float(reward.total),
        reward_terms={} if reward is None else {k: float(v) for k, v in reward.terms.items()},
        texts=[r.text for r in records])


def _rate(flags: Iterable) -> float | None:
    values = [float(bool(x)) for x in flags if x is not None]
    return float(np.mean(values)) if values else None


def episode_summary(outcomes: Sequence[EpisodeOutcome]) -> dict:
    """Means over episodes; rates are fractions in [0, 1]."""
    n = len(outcomes)
    out: dict = {
        "episodes": n,
        "avg_turns": float(np.mean([o.turns for o in outcomes])) if n else None,
        "format_valid_rate": _rate(o.format_valid for o in outcomes),
        "answered_rate": _rate(o.answered for o in outcomes),
        "keyframe_correct_rate": _rate(o.keyframe_correct for o in outcomes),
        "seg_rate": _rate(o.has_seg for o in outcomes),
        "end_reasons": {r: sum(o.end_reason == r for o in outcomes) for r in sorted({o.end_reason for o in outcomes})},
    }
    rewards = [o.reward for o in outcomes if o.reward is not None]
    out["mean_reward"] = float(np.mean(rewards)) if rewards else None
    terms = sorted({t for o in outcomes for t in o.reward_terms})
    out["reward_terms"] = {t: float(np.mean([o.reward_terms[t] for o in outcomes if t in o.reward_terms]))
                           for t in terms}
    return out


def overall_summary(per_dataset: dict[str, dict], outcomes: Sequence[EpisodeOutcome]) -> dict:
    """Across datasets: episode means over all samples, J&F as the mean of the datasets' headlines."""
    heads = [d["scores"]["headline_J&F"] for d in per_dataset.values() if d["scores"]["headline_J&F"] is not None]
    cross = [d["cross_target"]["pred_iou"] for d in per_dataset.values()
             if d.get("cross_target", {}).get("pred_iou") is not None]
    return {**episode_summary(outcomes), "J&F": float(np.mean(heads)) if heads else None,
            "cross_target_pred_iou": float(np.mean(cross)) if cross else None}


def spread_subset(ids: Sequence[str], count: int | None) -> list[str]:
    """`count` ids evenly spread over the sorted list (all when count is None or large enough).

    Evenly spread rather than the first N: the first N would come from a few videos only."""
    ids = sorted(ids)
    if count is None or count >= len(ids):
        return ids
    picks = np.linspace(0, len(ids) - 1, count).round().astype(int)
    return [ids[i] for i in dict.fromkeys(picks.tolist())]
