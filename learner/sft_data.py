"""Cold-start training data: VTS-CoT records -> token sequences and [SEG] mask targets.

Each record's assistant turns are replayed against the environment with
`rollout.replay.replay_episode`, so the tokens (prompt, images, environment replies) are exactly
what a rollout of this config would produce; the record's `shown` frames must equal what the
env showed (else the record was written for other env settings and is skipped or refused).

Mask targets: every turn's [SEG] is supervised on the keyframe the turn writes (clamped into the
video: "[SEG] marks the target on keyframe k") and, with `mask_on_seen_keyframe`, also on the
keyframe it was looking at (docs/CONTRACTS.md: the frame the RL reward judges it on).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from env.errors import DataError
from env.vtscot import VTSCoTRecord
from rollout.replay import replay_episode
from rollout.trajectory import Trajectory

log = logging.getLogger(__name__)


@dataclass
class SftExample:
    traj: Trajectory
    # per turn: (dataset, video, frame index) the turn's [SEG] is supervised on
    mask_frames: list[list[tuple[str, str, int]]]
    # per turn: the ground-truth masks of those frames, (n, H, W) bool at original resolution
    mask_gts: list[np.ndarray]

    @property
    def sample_id(self) -> str:
        return self.traj.sample.sample_id


class RecordMismatch(ValueError):
    """A record cannot be replayed as written under this env config."""


def assistant_texts(record: VTSCoTRecord) -> list[str]:
    return [m["content"] for m in record.conversation if m.get("role") == "assistant"]


def turn_mask_frames(traj: Trajectory, on_seen_keyframe: bool) -> list[list[int]]:
    """Per turn, the frames its [SEG] is supervised on (see the module docstring)."""
    out = []
    for turn in traj.turns:
        frames = []
        rec = turn.record
        if rec.clamped is not None:
            frames.append(int(rec.clamped[2]))
        if on_seen_keyframe and turn.keyframe_seen >= 0:
            frames.append(int(turn.keyframe_seen))
        out.append(list(dict.fromkeys(frames)))
    return out


def build_example(record: VTSCoTRecord, env, codec, image_tokens, on_seen_keyframe: bool = True) -> SftExample:
    """Replay one record on `env` (an EnvService) and attach its mask targets.

    Raises RecordMismatch when the replay does not reproduce the record (other env settings, a
    different turn budget) and DataError when the sample's data cannot be read."""
    sample = env.sample(record.sample_id)
    texts = assistant_texts(record)
    traj = replay_episode(sample, texts, env, codec, image_tokens, traj_id=f"sft:{record.sample_id}")
    if traj.num_turns != len(texts) or traj.end_reason != "answer":
        raise RecordMismatch(f"{record.sample_id}: the replay ended with {traj.end_reason} after "
                             f"{traj.num_turns} of {len(texts)} turns")
    shown = [(f.index, f.pixels) for turn in record.shown for f in turn.frames]
    replayed = [(f.index, f.pixels) for f in traj.frames]
    if shown != replayed:
        raise RecordMismatch(f"{record.sample_id}: the record shows frames {shown[:6]}... but this env "
                             f"config shows {replayed[:6]}... (written for other env settings?)")
    frames = turn_mask_frames(traj, on_seen_keyframe)
    gts = [env.gt_masks(sample, f) if f else np.zeros((0, sample.height, sample.width), bool) for f in frames]
    keys = [[(sample.dataset, sample.video_id, i) for i in f] for f in frames]
    return SftExample(traj, keys, gts)


def build_examples(records: Sequence[VTSCoTRecord], env, codec, image_tokens, on_seen_keyframe: bool = True,
                   strict: bool = False) -> tuple[list[SftExample], list[tuple[str, str]]]:
    """Examples of the records that replay; (sample_id, reason) of those left out."""
    examples, skipped = [], []
    for record in records:
        try:
            examples.append(build_example(record, env, codec, image_tokens, on_seen_keyframe))
        except (RecordMismatch, DataError) as exc:
            if strict:
                raise
            log.warning("SFT: record %s left out: %s", record.sample_id, exc)
            skipped.append((record.sample_id, str(exc)))
    return examples, skipped


def batch_order(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of example indices: a fresh seeded permutation per epoch, every batch full
    (an epoch's tail is topped up from the next permutation)."""
    if n <= 0:
        raise ValueError("no examples to batch")
    epoch, pending = 0, []
    while True:
        while len(pending) < batch_size:
            pending += np.random.default_rng([seed, epoch]).permutation(n).tolist()
            epoch += 1
        yield pending[:batch_size]
        pending = pending[batch_size:]


class FrameFeatureSource:
    """Decode-ready SAM2 image features of frames, from an in-process reward-pool core (the same
    frozen image encoder and feature cache the RL reward path uses)."""

    def __init__(self, pool_core):
        self.pool = pool_core

    def key(self, frame: tuple[str, str, int]) -> str:
        from segmentation.features import frame_key

        return frame_key(frame[0], frame[1], frame[2], self.pool.image_size)

    def get(self, frames: Sequence[tuple[str, str, int]]) -> dict[str, dict]:
        feats = self.pool.cache.get_many(list(frames))
        return {key: self.pool.export_features(f) for key, f in feats.items()}


def step_targets(batch: Sequence[SftExample], source: FrameFeatureSource):
    """(trajectories, per-turn (key, gt) targets, features by key) for LearnerCore.sft_step."""
    frames = [f for ex in batch for per_turn in ex.mask_frames for f in per_turn]
    features = source.get(frames) if frames else {}
    targets = [[[(source.key(f), gt) for f, gt in zip(per_turn, gts)]
                for per_turn, gts in zip(ex.mask_frames, ex.mask_gts)] for ex in batch]
    return [ex.traj for ex in batch], targets, features
