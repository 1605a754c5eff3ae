"""Point-prompt pre-training on real synthetic frames with the real tiny SAM2: the decoder learns
to segment the clicked object, and the checkpoint loads where model.sam2_checkpoint points."""

import json

import pytest

from configs import load_config

SYN = "data.train=[{name: synthetic, format: synthetic, videos: 2, seed: 3, frames_per_video: 12}]"


@pytest.mark.slow
def test_clicks_teach_the_decoder_and_the_checkpoint_loads(tmp_path, tiny_sam2_ckpt):
    from segmentation.pretrain_promptable import pretrain
    from segmentation.sam2_models import TINY, build_sam2_model

    out = tmp_path / "points.pt"
    cfg = load_config("debug_cpu", [SYN, f"model.cache_dir={tiny_sam2_ckpt.parents[1]}"])
    report = pretrain(cfg, out, steps=60, batch=8, lr=2e-3, seed=0, held_out_fraction=0.25)
    assert json.loads(out.with_suffix(".json").read_text()) == report
    # a random decoder's mask has almost nothing to do with the click; a few dozen steps change that
    assert report["held_out_click_iou_before"] < 0.15
    assert report["held_out_click_iou_after"] > report["held_out_click_iou_before"] + 0.1, report
    assert report["loss_last10"] < report["loss_first10"]
    model = build_sam2_model(TINY, out, cfg.model.sam2_image_size)  # strict: every key matches
    assert model.sam_mask_decoder is not None
    # the RL/SFT/eval entry points take it as model.sam2_checkpoint
    from learner.system import prepare_sam2

    assert prepare_sam2(load_config("debug_cpu", [f"model.sam2_checkpoint={out}"])).model.sam2_checkpoint == out
