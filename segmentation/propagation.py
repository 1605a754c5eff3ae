"""Bidirectional SAM2 memory propagation of a language prompt from a keyframe over a whole video.

For the final prediction (METHOD.md section 1) the [SEG] token is decoded on the keyframe, then
SAM2's memory carries the object forward to the last frame and backward to frame 0, with the
language token injected again on every frame. The loop is written here in SAM2's track-step
shape from SAM2Base's own parts: memory-conditioned features (memory attention over the
keyframe's memory, the recent frames' memories and the object pointers), the mask decoder with the
language token, and the memory encoder on the chosen mask.

Batching: every (embedding, video, direction) is one "run" in its own relative time, step 0 being
the keyframe and step d the frame d away from it in the run's direction. Walking backward in real
time is walking forward in relative time (SAM2's memory selection is symmetric in the two
directions), so all runs of all videos and both directions advance together, one relative step at
a time, as one batch. Runs end at different steps; runs are sorted by length so the live ones are
always a prefix of the batch and stored memories are sliced, never gathered.

Unlike SAM2VideoPredictor, the backward pass does not see memories from the forward pass: the two
directions are independent runs that share only the keyframe.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segmentation.features import FrameFeatures, frame_key, memory_free_embedding, vision_pos_embedding
from segmentation.language_decode import HIGH_RES_S0, HIGH_RES_S1, IMAGE_EMBED, language_decode


@dataclass
class Track:
    """One [SEG] embedding to propagate over one video."""

    dataset: str
    video_id: str
    num_frames: int
    keyframe: int
    embedding: torch.Tensor  # (C,) already projected to SAM2's prompt width
    height: int  # original resolution of the output masks
    width: int

    def __post_init__(self):
        if not 0 <= self.keyframe < self.num_frames:
            raise ValueError(f"keyframe {self.keyframe} outside the {self.num_frames} frames of "
                             f"{self.dataset}/{self.video_id}")


@dataclass
class _Run:
    track: int  # index into the tracks list
    frames: list[int]  # real frame index at each relative step


def object_pointer(model, token: torch.Tensor, obj_scores: torch.Tensor) -> torch.Tensor:
    """SAM2's object pointer from the chosen decoder token, with its no-object handling."""
    ptr = model.obj_ptr_proj(token)
    if model.pred_obj_scores and model.use_obj_ptrs_in_encoder:
        present = obj_scores.sigmoid() if model.soft_no_obj_ptr else (obj_scores > 0).to(ptr.dtype)
        if model.fixed_no_obj_ptr:
            ptr = present * ptr
        ptr = ptr + (1 - present) * model.no_obj_ptr
    return ptr


def _slice_memory(step_out: dict, n: int) -> dict:
    return {"maskmem_features": step_out["maskmem_features"][:n],
            "maskmem_pos_enc": [p[:n] for p in step_out["maskmem_pos_enc"]],
            "obj_ptr": step_out["obj_ptr"][:n]}


def propagate_tracks(model, get_features: Callable[[list[tuple[str, str, int]]], dict[str, FrameFeatures]],
                     tracks: Sequence[Track],
                     autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                     lookahead_frames: int = 32, max_batch: int = 256) -> list[np.ndarray]:
    """Binary masks (num_frames, H, W) per track, keyframe decode + memory propagation both ways."""
    autocast = autocast or contextlib.nullcontext
    results = [np.zeros((t.num_frames, t.height, t.width), dtype=bool) for t in tracks]
    runs: list[_Run] = []
    for i, t in enumerate(tracks):
        runs.append(_Run(i, list(range(t.keyframe, t.num_frames))))
        runs.append(_Run(i, list(range(t.keyframe, -1, -1))))
    # SAM2 caps the object pointers it attends to at min(num_frames, max_obj_ptrs); runs in one
    # batch must agree on that cap, so they are grouped by it (and chunked to bound memory).
    groups: dict[int, list[_Run]] = {}
    for run in runs:
        cap = min(tracks[run.track].num_frames, model.max_obj_ptrs_in_encoder)
        groups.setdefault(cap, []).append(run)
    with torch.no_grad(), autocast():
        for cap, group in groups.items():
            group.sort(key=lambda r: -len(r.frames))
            for start in range(0, len(group), max_batch):
                _propagate_batch(model, get_features, tracks, group[start:start + max_batch], cap,
                                 lookahead_frames, results)
    return results


def _propagate_batch(model, get_features, tracks, runs: list[_Run], num_frames_cap: int,
                     lookahead_frames: int, results: list[np.ndarray]) -> None:
    embeds = torch.stack([tracks[r.track].embedding for r in runs]).to(model.device)
    keep_steps = max(model.num_maskmem, model.max_obj_ptrs_in_encoder)
    memory: dict[int, dict] = {}
    window: dict[str, FrameFeatures] = {}
    longest = len(runs[0].frames)
    for step in range(longest):
        live = sum(1 for r in runs if len(r.frames) > step)
        keys = [_run_key(tracks, r, step, model.image_size) for r in runs[:live]]
        if any(k not in window for k in keys):
            window = _prefetch(get_features, tracks, runs, step, lookahead_frames, model.image_size)
        distinct = list(dict.fromkeys(keys))  # runs of one video and direction share the frame
        row = {k: i for i, k in enumerate(distinct)}
        index = torch.tensor([row[k] for k in keys], device=model.device)
        entries = [window[k] for k in distinct]
        top = torch.stack([e.top for e in entries])[index]
        batch, channels, h, w = top.shape
        flat = top.flatten(2).permute(2, 0, 1)  # (h*w, B, C), SAM2's layout for memory attention
        if step == 0:
            pix = memory_free_embedding(model, top)
        else:
            cond = {0: _slice_memory(memory[0], live)}
            recent = {t: _slice_memory(memory[t], live) for t in memory if t > 0}
            pos = vision_pos_embedding(model, h, w, top.device, top.dtype).expand(-1, batch, -1)
            pix = model._prepare_memory_conditioned_features(
                frame_idx=step, is_init_cond_frame=False, current_vision_feats=[flat],
                current_vision_pos_embeds=[pos], feat_sizes=[(h, w)],
                output_dict={"cond_frame_outputs": cond, "non_cond_frame_outputs": recent},
                num_frames=num_frames_cap, track_in_reverse=False)
        feats = {IMAGE_EMBED: pix}
        high_res_index = None
        if entries[0].s0 is not None:
            feats[HIGH_RES_S0] = torch.stack([e.s0 for e in entries])
            feats[HIGH_RES_S1] = torch.stack([e.s1 for e in entries])
            high_res_index = index
        out = language_decode(model.sam_prompt_encoder, model.sam_mask_decoder, feats, embeds[:live],
                              high_res_index=high_res_index)
        high_res = F.interpolate(out.low_res_logits, size=(model.image_size, model.image_size),
                                 mode="bilinear", align_corners=False)
        mem_feats, mem_pos = model._encode_new_memory(
            current_vision_feats=[flat], feat_sizes=[(h, w)], pred_masks_high_res=high_res,
            object_score_logits=out.object_score_logits, is_mask_from_pts=False)
        memory[step] = {"maskmem_features": mem_feats, "maskmem_pos_enc": mem_pos,
                        "obj_ptr": object_pointer(model, out.output_token, out.object_score_logits)}
        if step - keep_steps > 0:  # older memories are never attended to again; step 0 always is
            memory.pop(step - keep_steps, None)
        _write_masks(tracks, runs[:live], step, out.low_res_logits, results)


def _run_key(tracks, run: _Run, step: int, image_size: int) -> str:
    t = tracks[run.track]
    return frame_key(t.dataset, t.video_id, run.frames[step], image_size)


def _prefetch(get_features, tracks, runs: list[_Run], step: int, lookahead_frames: int,
              image_size: int) -> dict[str, FrameFeatures]:
    """Features for the next few steps at once, so the encoder sees batches, not single frames.

    `get_features` returns a dict keyed by `frame_key(dataset, video, index, image_size)`.
    """
    wanted: dict[str, tuple[str, str, int]] = {}
    s = step
    while s == step or (len(wanted) < lookahead_frames and s < len(runs[0].frames)):
        for r in runs:
            if len(r.frames) > s:
                t = tracks[r.track]
                wanted.setdefault(_run_key(tracks, r, s, image_size), (t.dataset, t.video_id, r.frames[s]))
        s += 1
    return get_features(list(wanted.values()))


def _write_masks(tracks, runs: list[_Run], step: int, low_res: torch.Tensor, results) -> None:
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(runs):
        t = tracks[r.track]
        by_size.setdefault((t.height, t.width), []).append(i)
    for (h, w), rows in by_size.items():
        up = F.interpolate(low_res[rows].float(), size=(h, w), mode="bilinear", align_corners=False)
        masks = (up[:, 0] > 0).cpu().numpy()
        for row, mask in zip(rows, masks):
            r = runs[row]
            results[r.track][r.frames[step]] = mask
