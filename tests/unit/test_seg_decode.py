"""Language-token decoding with the tiny SAM2: shapes, candidate choice, gating, and gradients."""

import contextlib
import copy

import numpy as np
import pytest
import torch

from segmentation.features import FeatureCache, stack_decode_features
from segmentation.language_decode import (NO_OBJECT_LOGIT, decode_with_language_token, language_decode,
                                          logits_to_masks)
from segmentation.seg_head import SegProjector, build_projector, normalise_projector_keys


@pytest.fixture(scope="module")
def sam2(tiny_sam2_ckpt):
    from segmentation.sam2_models import build_sam2_model

    torch.set_num_threads(1)
    return build_sam2_model("tiny", tiny_sam2_ckpt, 256)


@pytest.fixture(scope="module")
def features(sam2):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (3, 40, 60, 3), dtype=np.uint8)
    cache = FeatureCache(sam2, 256, 8, 4, lambda ds, vid, idx: [frames[i] for i in idx],
                         contextlib.nullcontext)
    got = cache.get_many([("d", "v", i) for i in range(3)])
    return [got[f"d/v/{i}/256"] for i in range(3)]


def test_projector_shape_and_foreign_keys():
    proj = build_projector(48, 256, seed=1)
    assert proj(torch.randn(5, 48)).shape == (5, 256)
    assert torch.equal(build_projector(48, seed=1).layers[0].weight, proj.layers[0].weight)
    foreign = {"text_hidden_fcs.0.weight": 1, "text_hidden_fcs.2.bias": 2, "0.bias": 3}
    assert set(normalise_projector_keys(foreign)) == {"layers.0.weight", "layers.2.bias", "layers.0.bias"}
    with pytest.raises(ValueError, match="width"):
        SegProjector(48)(torch.randn(2, 47))


def test_fresh_projector_gives_prompt_tokens_at_sam2_scale():
    # Unit-RMS hidden states (what a final RMSNorm emits) -> prompt tokens of about unit RMS, the
    # scale of SAM2's own point tokens; nn.Linear's default init gave ~0.2.
    torch.manual_seed(0)
    rms = build_projector(128, 256, seed=0)(torch.randn(512, 128)).pow(2).mean().sqrt().item()
    assert 0.8 < rms < 1.25


def test_fresh_projector_tokens_steer_the_decoder(sam2, features):
    # Different [SEG] states must give visibly different masks from a fresh decoder, or mask training
    # starts from (and settles on) a prompt-independent mask.
    feats = stack_decode_features(sam2, features[:1])
    torch.manual_seed(0)
    with torch.no_grad():
        emb = build_projector(64, 256, seed=0)(torch.randn(8, 64))
        probs = torch.sigmoid(language_decode(sam2.sam_prompt_encoder, sam2.sam_mask_decoder, feats, emb)
                              .low_res_logits[:, 0])
        weak = torch.sigmoid(language_decode(sam2.sam_prompt_encoder, sam2.sam_mask_decoder, feats, 0.2 * emb)
                             .low_res_logits[:, 0])
    assert probs.std(0).mean() > 3 * weak.std(0).mean()


def test_decode_shapes_and_best_candidate(sam2, features):
    feats = stack_decode_features(sam2, features)
    embeds = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = language_decode(sam2.sam_prompt_encoder, sam2.sam_mask_decoder, feats, embeds)
    assert out.all_logits.shape == (3, 3, 64, 64) and out.all_ious.shape == (3, 3)
    assert out.low_res_logits.shape == (3, 1, 64, 64) and out.iou_pred.shape == (3,)
    assert torch.equal(out.best_index, out.all_ious.argmax(-1))
    present = out.object_score_logits[:, 0] > 0
    for b in range(3):
        blank = torch.full((64, 64), NO_OBJECT_LOGIT)
        expected = out.all_logits[b, out.best_index[b]] if present[b] else blank
        assert torch.equal(out.low_res_logits[b, 0], expected)
    masks = logits_to_masks(out.low_res_logits, 40, 60)
    assert masks.shape == (3, 40, 60) and masks.dtype == torch.bool


def test_the_language_token_steers_the_mask(sam2, features):
    feats = stack_decode_features(sam2, features[:1])
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(4, 256, generator=gen) * 3
    with torch.no_grad():
        lo, _ = decode_with_language_token(sam2.sam_prompt_encoder, sam2.sam_mask_decoder, feats, embeds,
                                           gate_by_object_score=False)
    # One image, four prompts (features broadcast over the batch): four different masks.
    assert lo.shape == (4, 1, 64, 64)
    assert all(not torch.allclose(lo[0], lo[i]) for i in range(1, 4))


def test_object_score_gating(sam2, features):
    decoder = copy.deepcopy(sam2.sam_mask_decoder)
    head = decoder.pred_obj_score_head
    last = head.layers[-1] if hasattr(head, "layers") else head
    with torch.no_grad():
        last.bias.fill_(-1e4)  # the object-score head now always says "absent"
    feats = stack_decode_features(sam2, features[:2])
    embeds = torch.randn(2, 256)
    with torch.no_grad():
        gated, _ = decode_with_language_token(sam2.sam_prompt_encoder, decoder, feats, embeds)
        raw, _ = decode_with_language_token(sam2.sam_prompt_encoder, decoder, feats, embeds,
                                            gate_by_object_score=False)
    assert (gated == NO_OBJECT_LOGIT).all()
    assert not (raw == NO_OBJECT_LOGIT).any()


def test_decode_rejects_unprojected_embeddings(sam2, features):
    feats = stack_decode_features(sam2, features[:1])
    with pytest.raises(ValueError, match="project them first"):
        decode_with_language_token(sam2.sam_prompt_encoder, sam2.sam_mask_decoder, feats, torch.randn(1, 64))


def test_gradients_reach_projector_prompt_encoder_and_decoder(sam2, features):
    """The learner's path: trainable copies of the three modules on cached (frozen) features."""
    projector = build_projector(32, 256, seed=0)
    prompt_encoder = copy.deepcopy(sam2.sam_prompt_encoder).train()
    mask_decoder = copy.deepcopy(sam2.sam_mask_decoder).train()
    feats = {k: v.detach() for k, v in stack_decode_features(sam2, features).items()}
    hidden = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    logits, iou = decode_with_language_token(prompt_encoder, mask_decoder, feats, projector(hidden),
                                             gate_by_object_score=False)
    target = torch.zeros_like(logits)
    target[..., 16:48, 16:48] = 1.0
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + iou.sum() * 0.0
    loss.backward()
    for name, module in (("projector", projector), ("mask decoder", mask_decoder)):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    assert projector.layers[0].weight.grad.abs().sum() > 0 and projector.layers[2].weight.grad.abs().sum() > 0
    assert mask_decoder.conv_s0.weight.grad.abs().sum() > 0  # the high-res convs are trained too
    assert prompt_encoder.not_a_point_embed.weight.grad.abs().sum() > 0
    assert prompt_encoder.no_mask_embed.weight.grad.abs().sum() > 0


def test_high_res_index_equals_repeated_features(sam2, features):
    """Decoding G embeddings on shared frames via an index gives what repeating the frames gives."""
    per_frame = stack_decode_features(sam2, features[:2])
    index = torch.tensor([0, 1, 1, 0, 1])
    embeds = torch.randn(5, 256, generator=torch.Generator().manual_seed(7))
    repeated = {k: v[index] for k, v in per_frame.items()}
    indexed = dict(per_frame, image_embed=per_frame["image_embed"][index])
    with torch.no_grad():
        a, ia = decode_with_language_token(sam2.sam_prompt_encoder, sam2.sam_mask_decoder, repeated, embeds)
        b, ib = decode_with_language_token(sam2.sam_prompt_encoder, sam2.sam_mask_decoder, indexed, embeds,
                                           high_res_index=index)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ia, ib, atol=1e-6)
    with pytest.raises(ValueError, match="high_res_index"):
        decode_with_language_token(sam2.sam_prompt_encoder, sam2.sam_mask_decoder, indexed, embeds,
                                   high_res_index=index[:3])
