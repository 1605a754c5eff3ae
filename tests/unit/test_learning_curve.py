"""The learning-curve script's pure parts: per-stage statistics and argument checks (no training)."""

import math

import pytest

from benchmarks.learning_curve import DIAGNOSTICS, METRICS, main, stage_stats


def _report(reward, fmt, kf, jf, cross):
    return {"overall": {"mean_reward": reward, "format_valid_rate": fmt, "keyframe_correct_rate": kf,
                        "J&F": jf, "cross_target_pred_iou": cross}}


def test_stage_stats_mean_and_spread_over_seeds():
    reports = {"base": _report(-3.0, 0.0, 0.0, 0.15, 1.0),
               "sft_s0": _report(3.0, 1.0, 0.9, 0.4, 0.9), "sft_s1": _report(2.0, 0.5, 0.7, 0.2, None),
               "rl_s0": _report(3.5, 1.0, 1.0, 0.5, 0.8), "rl_s1": _report(2.5, 1.0, 0.8, 0.3, 0.6)}
    stats = stage_stats(reports, [0, 1])
    assert set(stats) == {"base", "sft", "rl"}
    assert set(stats["sft"]) == set(METRICS) | set(DIAGNOSTICS)
    assert stats["sft"]["mean_reward"] == {"values": [3.0, 2.0], "mean": 2.5, "std": 0.5}
    assert stats["rl"]["J&F"]["mean"] == pytest.approx(0.4)
    assert stats["base"]["format_valid_rate"]["std"] == 0.0
    # A missing value (no cross-target pairs) is left out of the mean, not counted as zero.
    assert math.isnan(stats["sft"]["cross_target_pred_iou"]["values"][1])
    assert stats["sft"]["cross_target_pred_iou"]["mean"] == pytest.approx(0.9)


def test_eval_setting_keys_name_real_env_and_eval_fields():
    from configs import load_config
    from env.episode import EVAL_SETTING_KEYS, eval_env_config

    cfg = load_config("debug_cpu")
    for key in EVAL_SETTING_KEYS:
        assert hasattr(cfg.env, key) and hasattr(cfg.eval, key)
    assert eval_env_config(cfg.env, cfg.eval).initial_low_res_frames == cfg.eval.initial_low_res_frames


def test_rl_pool_must_contain_the_sft_videos(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--train-videos", "12", "--rl-train-videos", "6"])
    assert exc.value.code == 2
    assert "--rl-train-videos must be at least --train-videos" in capsys.readouterr().err


def test_negative_decoder_lr_scale_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--decoder-lr-scale", "-1"])
    assert exc.value.code == 2
    assert "--decoder-lr-scale must be >= 0" in capsys.readouterr().err


def test_negative_sam2_pretrain_steps_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--sam2-pretrain-steps", "-5"])
    assert exc.value.code == 2
    assert "--sam2-pretrain-steps must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["0", "40"])
def test_sam2_pretrain_pool_must_be_part_of_the_rl_pool(count, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--rl-train-videos", "36", "--sam2-pretrain-videos", count])
    assert exc.value.code == 2
    assert "--sam2-pretrain-videos must be between 1 and --rl-train-videos" in capsys.readouterr().err


@pytest.mark.parametrize("flag, override, fragment", [
    ("--rl-override", "reward.weights.progressive", "takes KEY=VALUE"),
    ("--rl-override", "=3", "takes KEY=VALUE"),
    ("--rl-override", "reward.weights.bogus=0", "unknown reward terms ['bogus']"),
    ("--rl-override", "learner.lr=-1", "learner.lr"),
    ("--sft-override", "sft.export_every", "takes KEY=VALUE"),
    ("--sft-override", "sft.export_every=-5", "sft.export_every"),
])
def test_bad_stage_overrides_are_refused_before_any_training(flag, override, fragment, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([flag, override, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and flag in err
    assert not (tmp_path / "w").exists()  # refused before the work dir (and any stage) was made


def _saved_report(folder, held_out, max_samples, tag):
    import json

    import yaml

    folder.mkdir(parents=True)
    report = {"tag": tag, "overall": {"J&F": 0.5},
              "settings": {"max_samples_per_dataset": max_samples,
                           "datasets": [{**yaml.safe_load(held_out), "root": None, "weight": 1.0}]}}
    (folder / "report.json").write_text(json.dumps(report))
    return report


def test_reuse_skips_only_policies_with_a_matching_report(tmp_path, monkeypatch):
    import learner.evaluate
    from benchmarks.learning_curve import HELD_OUT, HELD_OUT_SEED, evaluate_all, reusable_report

    held_out = HELD_OUT % (12, HELD_OUT_SEED)
    _saved_report(tmp_path / "base", held_out, 64, "base")
    _saved_report(tmp_path / "sft_s0", held_out, 32, "sft_s0")  # another sample budget: played again
    _saved_report(tmp_path / "sft_s1", HELD_OUT % (6, HELD_OUT_SEED), 64, "sft_s1")  # other videos: played again
    assert reusable_report(tmp_path / "base" / "report.json", held_out, 64)["tag"] == "base"
    assert reusable_report(tmp_path / "sft_s0" / "report.json", held_out, 64) is None
    assert reusable_report(tmp_path / "sft_s1" / "report.json", held_out, 64) is None
    assert reusable_report(tmp_path / "rl_s0" / "report.json", held_out, 64) is None

    calls = []

    def fake_evaluate(cfg, policies, out):
        calls.append(([t for t, _ in policies], out, cfg.eval.max_samples))
        return {t: {"tag": t, "fresh": True} for t, _ in policies}

    monkeypatch.setattr(learner.evaluate, "evaluate", fake_evaluate)
    policies = [("base", "tiny"), ("sft_s0", "a"), ("sft_s1", "b"), ("rl_s0", "c")]
    reports = evaluate_all(held_out, policies, tmp_path, 64, "train", reuse=True)
    assert list(reports) == ["base", "sft_s0", "sft_s1", "rl_s0"]
    assert "fresh" not in reports["base"] and all(reports[t]["fresh"] for t in ("sft_s0", "sft_s1", "rl_s0"))
    assert calls == [(["sft_s0", "sft_s1", "rl_s0"], tmp_path, 64)]

    # A lone policy left to play is written into its own <tag>/ folder, as the others are.
    calls.clear()
    evaluate_all(held_out, [("base", "tiny"), ("rl_s0", "c")], tmp_path, 64, "train", reuse=True)
    assert calls == [(["rl_s0"], tmp_path / "rl_s0", 64)]
    # Without reuse everything is played again.
    calls.clear()
    evaluate_all(held_out, [("base", "tiny"), ("rl_s0", "c")], tmp_path, 64, "train")
    assert calls == [(["base", "rl_s0"], tmp_path, 64)]


@pytest.mark.parametrize("seed", ["0", "-3"])
def test_held_out_seed_of_the_training_videos_or_negative_is_refused(seed, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--held-out-seed", seed, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "--held-out-seed must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_report_from_another_held_out_seed_is_not_reused(tmp_path):
    import json

    from benchmarks.learning_curve import HELD_OUT, reusable_report

    report = {"settings": {"max_samples_per_dataset": 128, "datasets": [
        {"name": "heldout", "format": "synthetic", "root": None, "videos": 24, "seed": 1000, "frames_per_video": 24}]}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert reusable_report(path, HELD_OUT % (24, 1000), 128) is not None
    assert reusable_report(path, HELD_OUT % (24, 2000), 128) is None
    assert reusable_report(path, HELD_OUT % (24, 1000), 64) is None
