"""Language-prompted SAM2 mask decoding: the [SEG] embedding as one extra sparse prompt token.

The functions here take SAM2's prompt encoder and mask decoder as arguments and hold no state, and
nothing in them switches gradients off: the reward pool calls them under `torch.no_grad()`, the
learner calls them with its own trainable prompt encoder, mask decoder and projector on image
features the pool cached, and gradients flow to all three.

Prompt layout (METHOD.md section 1): no points and no box. SAM2 encodes "no points" as one padding
point with label -1, which its prompt encoder turns into two not-a-point tokens; the [SEG] token is
appended after them, and the dense prompt is the learned no-mask embedding. This is the layout
Sa2VA-style checkpoints were trained with, so real weights load and behave as released. Of the
three multimask candidates the one with the highest predicted IoU is kept.

Feature dicts (one entry per image, batch first):
    "image_embed": (B, C, h, w)  top-level features, ready for the decoder (for a memory-free
                                 decode that is the backbone output plus SAM2's no-memory
                                 embedding; during propagation it is the memory-conditioned map)
    "high_res_s0": (B, C, 4h, 4w), "high_res_s1": (B, C, 2h, 2w)
                                 raw backbone levels; the decoder's own conv_s0/conv_s1 are applied
                                 here, because they belong to the (trainable) mask decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_EMBED = "image_embed"
HIGH_RES_S0 = "high_res_s0"
HIGH_RES_S1 = "high_res_s1"
NO_OBJECT_LOGIT = -1024.0  # what SAM2 writes into masks of frames it judges object-free


@dataclass
class LanguageDecodeOutput:
    all_logits: torch.Tensor  # (B, M, 4h, 4w) candidate mask logits
    all_ious: torch.Tensor  # (B, M) predicted IoUs
    best_index: torch.Tensor  # (B,) chosen candidate
    low_res_logits: torch.Tensor  # (B, 1, 4h, 4w) chosen mask, float32, object-score gated
    iou_pred: torch.Tensor  # (B,) predicted IoU of the chosen mask
    output_token: torch.Tensor  # (B, C) decoder token of the chosen mask (object pointer source)
    object_score_logits: torch.Tensor  # (B, 1) > 0 means "object present"


def _expand_batch(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise ValueError(f"{name} has batch {t.shape[0]}, expected 1 or {batch} (one per [SEG] embedding)")


def _pick(t: torch.Tensor, index: torch.Tensor | None, batch: int, name: str) -> torch.Tensor:
    if index is not None:
        return t[index]
    return _expand_batch(t, batch, name)


def language_decode(prompt_encoder, mask_decoder, features: dict, seg_embeds: torch.Tensor,
                    multimask: bool = True, gate_by_object_score: bool = True,
                    high_res_index: torch.Tensor | None = None) -> LanguageDecodeOutput:
    """Decode one mask per [SEG] embedding. `seg_embeds` is (B, C) or (B, 1, C) in SAM2's width.

    Features hold one entry per embedding or one shared by all (batch 1). The high-res maps may
    instead hold one entry per distinct frame, with `high_res_index` (B,) naming each embedding's
    row: the decoder's high-res convs then run once per frame rather than once per embedding,
    which matters when the G rollouts of a group decode on the same frames.
    """
    if seg_embeds.dim() == 2:
        seg_embeds = seg_embeds[:, None, :]
    if seg_embeds.dim() != 3 or seg_embeds.shape[1] != 1:
        raise ValueError(f"seg_embeds must be (B, C) or (B, 1, C), got {tuple(seg_embeds.shape)}")
    batch = seg_embeds.shape[0]
    if high_res_index is not None and tuple(high_res_index.shape) != (batch,):
        raise ValueError(f"high_res_index must be ({batch},), got {tuple(high_res_index.shape)}")
    image_embed = _expand_batch(features[IMAGE_EMBED], batch, IMAGE_EMBED)
    if image_embed.shape[1] != seg_embeds.shape[-1]:
        raise ValueError(f"[SEG] embeddings are {seg_embeds.shape[-1]}-d but SAM2 prompts are "
                         f"{image_embed.shape[1]}-d; project them first")
    device = image_embed.device
    # "No points": one padding point labelled -1 (the encoder adds its own pad, giving two tokens).
    coords = torch.zeros(batch, 1, 2, device=device)
    labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
    sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    sparse = torch.cat([sparse, seg_embeds.to(sparse.dtype)], dim=1)

    high_res = None
    if getattr(mask_decoder, "use_high_res_features", False):
        if features.get(HIGH_RES_S0) is None or features.get(HIGH_RES_S1) is None:
            raise ValueError("this SAM2 decoder uses high-resolution features; the feature dict lacks "
                             f"'{HIGH_RES_S0}'/'{HIGH_RES_S1}'")
        s0 = mask_decoder.conv_s0(features[HIGH_RES_S0])
        s1 = mask_decoder.conv_s1(features[HIGH_RES_S1])
        high_res = [_pick(s0, high_res_index, batch, HIGH_RES_S0),
                    _pick(s1, high_res_index, batch, HIGH_RES_S1)]

    all_logits, all_ious, tokens, obj_scores = mask_decoder(
        image_embeddings=image_embed,
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=high_res,
    )
    all_logits = all_logits.float()
    rows = torch.arange(batch, device=device)
    best = torch.argmax(all_ious, dim=-1)
    low_res = all_logits[rows, best].unsqueeze(1)
    iou_pred = all_ious[rows, best]
    # With use_multimask_token_for_obj_ptr the decoder returns one token per candidate.
    token = tokens[rows, best] if tokens.shape[1] > 1 else tokens[:, 0]
    if gate_by_object_score and getattr(mask_decoder, "pred_obj_scores", False):
        # SAM2 blanks the mask when its object-score head says "absent"; keep that behaviour so
        # language prompts can answer "not on this frame".
        low_res = torch.where(obj_scores[:, :, None, None] > 0, low_res,
                              torch.full_like(low_res, NO_OBJECT_LOGIT))
    return LanguageDecodeOutput(all_logits, all_ious, best, low_res, iou_pred, token, obj_scores)


def decode_with_language_token(prompt_encoder, mask_decoder, features: dict, seg_embeds: torch.Tensor,
                               multimask: bool = True, gate_by_object_score: bool = True,
                               high_res_index: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(low_res_logits (B, 1, 4h, 4w), iou_pred (B,)) for each [SEG] embedding; differentiable."""
    out = language_decode(prompt_encoder, mask_decoder, features, seg_embeds, multimask, gate_by_object_score,
                          high_res_index)
    return out.low_res_logits, out.iou_pred


def logits_to_masks(low_res_logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Binary masks at the original resolution: upsample the logits, keep probability > 0.5."""
    up = F.interpolate(low_res_logits.float(), size=(height, width), mode="bilinear", align_corners=False)
    return up[:, 0] > 0.0
