"""Batched vision attention on the real tiny Qwen2.5-VL / Qwen3-VL towers: same features and
gradients as transformers' per-image (Qwen3-VL) / per-window (Qwen2.5-VL) attention."""

import copy

import pytest
import torch


def _images(vision_cfg, grids):
    width = vision_cfg.in_channels * vision_cfg.temporal_patch_size * vision_cfg.patch_size ** 2
    tokens = sum(t * h * w for t, h, w in grids)
    return torch.randn(tokens, width, generator=torch.Generator().manual_seed(0)), torch.tensor(grids)


@pytest.mark.parametrize("which", ["tiny_qwen25_dir", "tiny_qwen3_dir"])
def test_batched_vision_attention_matches_transformers(which, request):
    from transformers import AutoModelForImageTextToText

    from learner.vision_attention import batch_vision_attention

    policy_dir = request.getfixturevalue(which)
    reference = AutoModelForImageTextToText.from_pretrained(str(policy_dir), dtype=torch.float32)
    batched = copy.deepcopy(reference)
    assert batch_vision_attention(batched) == reference.config.vision_config.depth
    # Two sizes of frame, three frames: equal and unequal blocks, and partial Qwen2.5-VL windows.
    pixels, grid = _images(reference.config.vision_config, [(1, 12, 20), (1, 12, 20), (1, 8, 12)])

    def features(model):
        out = model.model.get_image_features(pixels, grid)
        pooled = torch.cat(out.pooler_output if hasattr(out, "pooler_output") else out)
        loss = (pooled * torch.linspace(-1, 1, pooled.shape[-1])).sum()
        loss.backward()
        return pooled.detach(), {n: p.grad.clone() for n, p in model.model.visual.named_parameters()
                                 if p.grad is not None}

    want, want_grads = features(reference)
    got, got_grads = features(batched)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert want_grads.keys() == got_grads.keys() and want_grads
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_build_policy_applies_the_setting(tiny_qwen3_dir, tiny_sam2_ckpt):
    from configs import load_config
    from learner.policy import build_policy
    from learner.vision_attention import _batched_forward

    for setting, expect_batched in (("batched", True), ("per_block", False)):
        cfg = load_config("debug_cpu", [f"model.policy={tiny_qwen3_dir}", f"model.sam2_checkpoint={tiny_sam2_ckpt}",
                                        f"model.vision_attention={setting}", "model.dtype=fp32"])
        policy = build_policy(cfg.model, tiny_qwen3_dir)
        attn = policy.lm.model.visual.blocks[0].attn
        assert (getattr(attn.forward, "__func__", None) is _batched_forward) is expect_batched
