"""The [SEG] route probe and the tiny SAM2's text-prompt pre-training, on the real tiny policy, tiny
SAM2 and oracle records of synthetic videos."""

import json

import pytest

from env.vtscot_oracle import main as oracle_main

SYN = "data.train=[{name: synthetic, format: synthetic, videos: 6, seed: 0, frames_per_video: 24}]"


@pytest.mark.slow
def test_route_probe_trains_a_colour_head_and_reports_held_out_accuracy(tmp_path, tiny_sam2_ckpt, tiny_qwen25_dir):
    from benchmarks.route_probe import main

    records = tmp_path / "oracle.jsonl"
    assert oracle_main(["--out", str(records), SYN]) == 0
    out = tmp_path / "route.json"
    assert main(["--policy", "tiny-qwen2.5-vl", "--trajectories", str(records), "--steps", "2",
                 "--held-out-fraction", "0.5", "--out", str(out), SYN]) == 0
    result = json.loads(out.read_text())
    assert result["train_records"] > 0 and result["held_out_records"] > 0 and result["held_out_videos"] == 3
    assert [c["step"] for c in result["curve"]] == [0, 2]
    for point in result["curve"]:
        for key in ("held_out_head_accuracy", "held_out_centroid_accuracy", "chance"):
            assert 0.0 <= point[key] <= 1.0
    assert all(loss["colour_loss"] > 0 for loss in result["losses"])


def test_route_probe_refuses_bad_arguments(capsys):
    from benchmarks.route_probe import main

    assert main(["--policy", "tiny-qwen2.5-vl", "--trajectories", "x.jsonl", "--held-out-fraction", "1.5"]) == 2
    assert "held-out-fraction" in capsys.readouterr().err


@pytest.mark.slow
def test_text_prompt_pretraining_writes_a_checkpoint_the_tiny_sam2_loads(tmp_path, tiny_sam2_ckpt):
    import torch

    from configs import load_config
    from segmentation.pretrain_text_prompt import main
    from segmentation.sam2_models import sam2_from_model_config

    ckpt = tmp_path / "sam2_text.pt"
    assert main(["--out", str(ckpt), "--steps", "3", "--batch", "4", SYN]) == 0
    report = json.loads(ckpt.with_suffix(".json").read_text())
    assert report["checkpoint"] == str(ckpt) and report["steps"] == 3
    assert report["train_videos"] == 5 and report["held_out_videos"] == 1 and report["train_frames"] > 0
    for side in ("held_out_before", "held_out_after"):
        assert 0.0 <= report[side]["own_iou"] <= 1.0
    # The written weights are what model.sam2_checkpoint loads, and the decoder did change.
    cfg = load_config("debug_cpu", [SYN, f"model.sam2_checkpoint={ckpt}"])
    loaded = sam2_from_model_config(cfg.model, "cpu")
    saved = torch.load(ckpt, map_location="cpu")["model"]
    name = next(k for k in saved if k.startswith("sam_mask_decoder.") and k.endswith("weight"))
    assert torch.equal(loaded.state_dict()[name], saved[name])
    random = sam2_from_model_config(load_config("debug_cpu", [SYN]).model, "cpu")
    assert not torch.equal(random.state_dict()[name], saved[name])
    # The word vectors it learned are the SFT prompt teacher; its prompts fit the decoder's width.
    from segmentation.pretrain_text_prompt import PromptTeacher, words_path

    assert report["prompt_teacher"] == str(words_path(ckpt))
    teacher = PromptTeacher(words_path(ckpt))
    assert teacher.width == loaded.sam_prompt_encoder.embed_dim
    # every synthetic expression says "the"; colours and shapes make the vocabulary larger than that
    assert "the" in teacher.index and len(teacher.index) > 3
    assert not torch.equal(teacher("red circle"), teacher("blue square"))


def test_text_prompt_pretraining_needs_two_videos(capsys):
    from segmentation.pretrain_text_prompt import main

    one = "data.train=[{name: synthetic, format: synthetic, videos: 1, seed: 0, frames_per_video: 24}]"
    assert main(["--steps", "1", one]) == 2
    assert "two videos" in capsys.readouterr().err


@pytest.mark.slow
def test_text_prompt_pretraining_with_a_one_frame_feature_memo_trains_the_same(tiny_sam2_ckpt):
    """Evicting decode-ready features (memo_frames=1) recomputes them; training must not change."""
    from configs import load_config
    from segmentation.pretrain_text_prompt import pretrain

    cfg = load_config("debug_cpu", [SYN])
    bounded = pretrain(cfg, None, 3, 4, 3e-4, 0, memo_frames=1)
    unbounded = pretrain(cfg, None, 3, 4, 3e-4, 0)
    for key in ("loss_first10", "loss_last10"):
        assert bounded[key] == pytest.approx(unbounded[key], rel=1e-5)
    assert bounded["held_out_after"]["own_iou"] == pytest.approx(unbounded["held_out_after"]["own_iou"], abs=1e-6)
    with pytest.raises(ValueError, match="memo_frames"):
        pretrain(cfg, None, 1, 4, 3e-4, 0, memo_frames=0)


def test_text_prompt_pretraining_refuses_an_empty_feature_memo(capsys):
    from segmentation.pretrain_text_prompt import main

    assert main(["--steps", "1", "--memo-frames", "0", SYN]) == 2
    assert "--memo-frames" in capsys.readouterr().err
