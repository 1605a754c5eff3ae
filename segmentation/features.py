"""SAM2 image features: preprocessing, batched encoding, and a cache keyed by frame.

The image encoder is frozen during RL, so a frame's features never change: the pool encodes each
(dataset, video, frame, size) once and every rollout of a group, every later turn and every later
step reuses them. What is cached is the raw backbone output (before the mask decoder's conv_s0 /
conv_s1, which are trainable), so weight updates from the learner never invalidate the cache.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segmentation.language_decode import HIGH_RES_S0, HIGH_RES_S1, IMAGE_EMBED

# SAM2 normalises RGB in [0, 1] with the ImageNet statistics.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def frame_key(dataset: str, video_id: str, index: int, image_size: int) -> str:
    return f"{dataset}/{video_id}/{int(index)}/{int(image_size)}"


@dataclass
class FrameFeatures:
    """One frame's backbone output, without a batch dimension."""

    top: torch.Tensor  # (C, h, w) lowest-resolution level (the one memory attention uses)
    s0: torch.Tensor | None  # (C, 4h, 4w) raw, or None when the model has no high-res path
    s1: torch.Tensor | None  # (C, 2h, 2w)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.top, self.s0, self.s1) if t is not None)

    def to(self, device) -> "FrameFeatures":
        return FrameFeatures(*(None if t is None else t.to(device) for t in (self.top, self.s0, self.s1)))


def preprocess_frames(frames: Sequence[np.ndarray], image_size: int, device) -> torch.Tensor:
    """RGB uint8 HxWx3 frames -> (N, 3, S, S) float, resized (aspect not kept, as SAM2 does)."""
    out = []
    mean = torch.tensor(PIXEL_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(3, 1, 1)
    for img in frames:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"frames must be HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1).float() / 255.0
        # Antialiased bilinear resize; frames of different sizes are resized one by one.
        t = F.interpolate(t[None], size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=True)[0]
        out.append((t - mean) / std)
    return torch.stack(out)


def encode_images(model, images: torch.Tensor) -> list[FrameFeatures]:
    """Run SAM2's image encoder on a preprocessed batch; no decoder convs applied."""
    backbone = model.image_encoder(images)
    levels = backbone["backbone_fpn"]
    top = levels[-1]
    uses_high_res = model.use_high_res_features_in_sam
    s0 = levels[0] if uses_high_res else None
    s1 = levels[1] if uses_high_res else None
    return [FrameFeatures(top[i], None if s0 is None else s0[i], None if s1 is None else s1[i])
            for i in range(images.shape[0])]


def memory_free_embedding(model, top: torch.Tensor) -> torch.Tensor:
    """Top-level features prepared for a decode without memory (a keyframe or a single image).

    SAM2 adds its learned no-memory embedding to the image features of a frame that has no memory
    (or attends to it when `directly_add_no_mem_embed` is off).
    """
    if model.directly_add_no_mem_embed:
        return top + model.no_mem_embed.view(1, -1, 1, 1).to(top.dtype)
    batch, channels, h, w = top.shape
    flat = top.flatten(2).permute(2, 0, 1)
    pos = vision_pos_embedding(model, h, w, top.device, top.dtype).expand(-1, batch, -1)
    return model._prepare_memory_conditioned_features(
        frame_idx=0, is_init_cond_frame=True, current_vision_feats=[flat], current_vision_pos_embeds=[pos],
        feat_sizes=[(h, w)], output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
        num_frames=1)


_POS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def vision_pos_embedding(model, h: int, w: int, device, dtype) -> torch.Tensor:
    """The top level's positional encoding, flattened to (h*w, 1, C); it depends on shape only."""
    per_model = _POS_CACHE.setdefault(model, {})
    key = (h, w, str(device), dtype)
    if key not in per_model:
        neck = model.image_encoder.neck
        probe = torch.zeros(1, neck.d_model, h, w, device=device, dtype=dtype)
        pos = neck.position_encoding(probe).to(dtype)
        per_model[key] = pos.flatten(2).permute(2, 0, 1)
    return per_model[key]


def stack_decode_features(model, entries: Sequence[FrameFeatures]) -> dict:
    """The feature dict `language_decode` takes, for a memory-free decode of each entry."""
    top = torch.stack([e.top for e in entries])
    feats = {IMAGE_EMBED: memory_free_embedding(model, top)}
    if entries[0].s0 is not None:
        feats[HIGH_RES_S0] = torch.stack([e.s0 for e in entries])
        feats[HIGH_RES_S1] = torch.stack([e.s1 for e in entries])
    return feats


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    encoded: int = 0  # frames run through the image encoder
    evicted: int = 0
    encoded_keys: list[str] = field(default_factory=list)  # recent encodes, for tests and debugging

    def as_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "encoded": self.encoded, "evicted": self.evicted}


class FeatureCache:
    """LRU of FrameFeatures by frame key, filled by batched encoding of the misses.

    `load_frames(dataset, video_id, indices) -> list of HxWx3 uint8` supplies pixels for misses.
    Capacity 0 disables caching across calls (features live only for the call that needs them).
    """

    def __init__(self, model, image_size: int, capacity: int, batch_frames: int,
                 load_frames: Callable[[str, str, list[int]], list[np.ndarray]],
                 autocast: Callable[[], object], keep_recent_keys: int = 4096):
        self.model = model
        self.image_size = int(image_size)
        self.capacity = int(capacity)
        self.batch_frames = max(1, int(batch_frames))
        self.load_frames = load_frames
        self.autocast = autocast
        self.stats = CacheStats()
        self._keep_recent = keep_recent_keys
        self._store: OrderedDict[str, FrameFeatures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def get_many(self, frames: Sequence[tuple[str, str, int]]) -> dict[str, FrameFeatures]:
        """Features for (dataset, video_id, index) triples; each missing frame is encoded once."""
        wanted: dict[str, tuple[str, str, int]] = {}
        for ds, vid, idx in frames:
            wanted.setdefault(frame_key(ds, vid, idx, self.image_size), (ds, vid, int(idx)))
        found: dict[str, FrameFeatures] = {}
        missing: list[str] = []
        for key in wanted:
            if key in self._store:
                self._store.move_to_end(key)
                found[key] = self._store[key]
                self.stats.hits += 1
            else:
                missing.append(key)
                self.stats.misses += 1
        found.update(self._encode(missing, wanted))
        return {key: found[key] for key in wanted}

    def _encode(self, keys: list[str], where: dict[str, tuple[str, str, int]]) -> dict[str, FrameFeatures]:
        if not keys:
            return {}
        pixels: dict[str, np.ndarray] = {}
        by_video: dict[tuple[str, str], list[str]] = {}
        for key in keys:
            ds, vid, _ = where[key]
            by_video.setdefault((ds, vid), []).append(key)
        for (ds, vid), vkeys in by_video.items():
            imgs = self.load_frames(ds, vid, [where[k][2] for k in vkeys])
            if len(imgs) != len(vkeys):
                raise RuntimeError(f"frame source returned {len(imgs)} frames for {len(vkeys)} indices of "
                                   f"{ds}/{vid}")
            pixels.update(zip(vkeys, imgs))
        device = self.model.device
        out: dict[str, FrameFeatures] = {}
        for start in range(0, len(keys), self.batch_frames):
            chunk = keys[start:start + self.batch_frames]
            batch = preprocess_frames([pixels[k] for k in chunk], self.image_size, device)
            with torch.no_grad(), self.autocast():
                feats = encode_images(self.model, batch)
            for key, feat in zip(chunk, feats):
                # Clone so a cached entry does not pin the whole batch tensor in memory.
                feat = FrameFeatures(*(None if t is None else t.clone()
                                       for t in (feat.top, feat.s0, feat.s1)))
                out[key] = feat
                self._insert(key, feat)
        self.stats.encoded += len(keys)
        self.stats.encoded_keys.extend(keys)
        del self.stats.encoded_keys[:-self._keep_recent]
        return out

    def _insert(self, key: str, feat: FrameFeatures) -> None:
        if self.capacity <= 0:
            return
        self._store[key] = feat
        self._store.move_to_end(key)
        while len(self._store) > self.capacity:
            self._store.popitem(last=False)
            self.stats.evicted += 1

    def clear(self) -> None:
        self._store.clear()
