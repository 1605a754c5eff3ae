"""benchmarks.prompt_ceiling on a real (3-step) text-pretrained tiny SAM2 and synthetic videos."""

import json

import pytest

from benchmarks.prompt_ceiling import _load_reports, ceiling, main

SPEC = {"name": "heldout", "format": "synthetic", "videos": 2, "seed": 1000, "frames_per_video": 12}
SYN = "data.train=[{name: synthetic, format: synthetic, videos: 6, seed: 0, frames_per_video: 24}]"


def _report(tag, rows):
    return {"tag": tag, "settings": {"datasets": [SPEC]}, "samples": rows}


@pytest.mark.slow
def test_ceiling_scores_teacher_prompts_on_the_reports_samples(tmp_path, tiny_sam2_ckpt):
    from configs import load_config
    from env.service import EnvService
    from segmentation.pretrain_text_prompt import main as pretrain_main

    ckpt = tmp_path / "sam2_text.pt"
    assert pretrain_main(["--out", str(ckpt), "--steps", "3", "--batch", "4", SYN]) == 0
    cfg = load_config("debug_cpu", ["data.eval=" + json.dumps([SPEC])])
    env = EnvService(cfg.env, cfg.data.eval, cache_dir=str(cfg.model.cache_dir))
    ids = env.sample_ids()[:2]
    best = []
    for sid in ids:
        gt = env.gt_masks(env.sample(sid), list(range(env.sample(sid).num_frames)))
        best.append(int(gt.reshape(len(gt), -1).sum(1).argmax()))
    other = (best[1] + 5) % 12
    policy = _report("p", [{"sample_id": ids[0], "final_keyframe": best[0], "J": 0.2, "F": 0.4},
                           {"sample_id": ids[1], "final_keyframe": other, "J": 0.0, "F": 0.2}])
    result = ceiling(ckpt, {"p": policy})
    assert result["samples"] == 2 and result["propagations"] == 3  # the coinciding keyframe is played once
    v = result["variants"]
    assert v["policy:p"]["jf"] == pytest.approx((0.3 + 0.1) / 2) and v["policy:p"]["n"] == 2
    for key in ("teacher_at_best_keyframe", "teacher_at_keyframe_of:p"):
        assert v[key]["n"] == 2 and 0.0 <= v[key]["jf"] <= 1.0
    assert v["policy:p"]["teacher_minus_policy_same_keyframe"] == pytest.approx(
        v["teacher_at_keyframe_of:p"]["jf"] - v["policy:p"]["jf"])


def test_reports_of_different_held_out_sets_or_tags_are_refused(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report("x", [])))
    b.write_text(json.dumps({**_report("y", []), "settings": {"datasets": [{**SPEC, "videos": 3}]}}))
    with pytest.raises(ValueError, match="different held-out datasets"):
        _load_reports([a, b])
    b.write_text(json.dumps(_report("x", [])))
    with pytest.raises(ValueError, match="two reports are tagged"):
        _load_reports([a, b])


def test_missing_files_exit_2(tmp_path, capsys):
    assert main(["--sam2", str(tmp_path / "none.pt"), "--reports", str(tmp_path / "r.json")]) == 2
    assert "missing file" in capsys.readouterr().err
