"""What goes into and comes out of the SAM2 reward pool (stdlib + numpy only).

A request carries one finished episode (env.types.EpisodeState: the sample, i.e. the ground-truth
reference, the sampled frames `initial_high`, and per turn the parsed action and `keyframe_seen`)
plus the last-layer hidden state of each turn's [SEG] token as the learner computed it. The pool
projects the hidden states itself (it holds the projector), so requests stay model-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from env.types import EpisodeState


@dataclass
class ScoreRequest:
    trajectory_id: str
    episode: EpisodeState
    # One entry per assistant turn: the (H,) hidden state of the turn's last [SEG], or None when the
    # turn emitted no [SEG] (its masks are then empty).
    seg_hidden: list[np.ndarray | None]
    policy_version: int = -1  # the policy that wrote the episode, carried through for bookkeeping

    def __post_init__(self):
        if len(self.seg_hidden) != len(self.episode.turns):
            raise ValueError(f"{self.trajectory_id}: {len(self.seg_hidden)} [SEG] states for "
                             f"{len(self.episode.turns)} turns (one entry per turn, None if it had none)")


@dataclass
class TurnScore:
    keyframe: int  # the frame this turn's mask was judged on (TurnRecord.keyframe_seen)
    has_seg: bool
    iou_kf: float  # J of the keyframe mask (both empty = 1)
    kf_both_empty: bool  # prediction and ground truth both empty on the keyframe
    iou_vid: list[float]  # J per sampled frame, in the order of `sampled_frames`
    keyframe_mask: np.ndarray  # bool (S/4, S/4): the rollout-time mask on SAM2's low-res grid
    keyframe_feature: str  # key into ScoreResult.features


@dataclass
class ScoreResult:
    trajectory_id: str
    terms: dict[str, float]  # unweighted reward terms, keys = configs.schema.REWARD_TERMS
    total: float  # sum of weight * term
    turns: list[TurnScore]
    sampled_frames: list[int]
    sampled_features: list[str]  # keys into `features`, one per sampled frame
    # frame key -> image features for the learner's differentiable decode: a dict of arrays
    # ({"image_embed", "high_res_s0", "high_res_s1"}, batch dim 1) from the plain core, or a Ray
    # ObjectRef to that dict from the actor. Shared frames appear once.
    features: dict[str, Any] = field(default_factory=dict)
    weights_version: int = 0
    policy_version: int = -1
    # Set when this trajectory could not be scored (its data is unusable: bad annotation, unreadable
    # frames). The other trajectories of the batch are scored normally; the driver quarantines it.
    error: str | None = None


@dataclass
class PoolStatus:
    weights_version: int
    cached_frames: int
    cache: dict[str, int]
    device: str
    image_size: int
