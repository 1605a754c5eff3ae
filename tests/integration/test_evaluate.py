"""`learner.evaluate` end to end: Ray, the vLLM engine, env actors and the SAM2 pool, tiny models,
on synthetic videos and (when the shared test data is present) the real DAVIS sample."""

import json

import numpy as np
import pytest

from configs import load_config
from learner.eval_report import entry_masks, expression_score

SYN = "{name: syn, format: synthetic, videos: 3, seed: 11, frames_per_video: 20}"


def _gt(cfg, dataset_specs, sample_id):
    from env.service import EnvService

    env = EnvService(cfg.env, dataset_specs, cache_dir=str(cfg.model.cache_dir))
    sample = env.sample(sample_id)
    return sample, env.gt_masks(sample, list(range(sample.num_frames))), env.foreground_pixels(sample)


@pytest.mark.slow
def test_evaluation_writes_full_resolution_results_and_a_consistent_report(tmp_path, davis16_dir, caplog):
    import logging
    import shutil

    from learner.evaluate import eval_config, evaluate, resolve_policy

    davis = f"{{name: davis, format: davis, root: {davis16_dir}}}"
    # constrained decoding: a random tiny policy then always answers, so every stage is exercised;
    # the same weights from a second folder make the session swap them into the running engine
    # (through Ray's object store, as for engines on another node), and greedy runs must repeat
    cfg = load_config("debug_cpu", [f"data.eval=[{SYN}, {davis}]", "eval.max_samples=3",
                                    "rollout.constrain_format=true", "rollout.eval_sampling.max_new_tokens=96",
                                    "rollout.weight_transport=object_store"])
    copy = shutil.copytree(resolve_policy("tiny-qwen2.5-vl", cfg), tmp_path / "same_weights")
    with caplog.at_level(logging.INFO, logger="learner.evaluate"):
        reports = evaluate(cfg, [("a", "tiny-qwen2.5-vl"), ("b", str(copy))], tmp_path)
    assert "engines: swapped" in caplog.text
    a, b = reports["a"], reports["b"]
    assert set(a["datasets"]) == {"syn", "davis"}
    assert [s["texts"] for s in a["samples"]] == [s["texts"] for s in b["samples"]]
    assert a["overall"]["J&F"] == pytest.approx(b["overall"]["J&F"])

    ecfg = eval_config(cfg)
    assert a["settings"]["env"]["initial_low_res_frames"] == cfg.eval.initial_low_res_frames != cfg.env.initial_low_res_frames
    o = a["overall"]
    assert o["episodes"] == 6 == len(a["samples"])
    # the rates are those of the episodes listed (a turn can still run out of tokens under the grammar)
    assert o["format_valid_rate"] == pytest.approx(np.mean([s["format_valid"] for s in a["samples"]]))
    assert o["answered_rate"] == pytest.approx(np.mean([s["answered"] for s in a["samples"]]))
    assert o["answered_rate"] > 0
    assert 1 <= o["avg_turns"] <= cfg.eval.max_turns
    assert 0.0 <= o["J&F"] <= 1.0 and o["mean_reward"] is not None
    for name, d in a["datasets"].items():
        results = json.loads((tmp_path / "a" / name / "results.json").read_text())
        assert sum(len(v) for v in results.values()) == 3
        for sample in (s for s in a["samples"] if s["dataset"] == name):
            entry = results[sample["video_id"]][sample["exp_id"]]
            s, gt, fg = _gt(ecfg, ecfg.data.eval, sample["sample_id"])
            pred = entry_masks(entry)
            assert pred.shape == gt.shape == (s.num_frames, s.height, s.width)
            # the report's J/F are those of the masks written, recomputed here independently
            score = expression_score(s.video_id, s.exp_id, gt, pred, foreground=fg)
            assert score.j == pytest.approx(sample["J"]) and score.f == pytest.approx(sample["F"])
            written = d["per_expression"][score.key]
            if name == "syn":  # ReVOS layout: accuracy A and robustness R from the video's foreground
                assert fg is not None and len(fg) == s.num_frames
                assert written["A"] == pytest.approx(score.a) and written["R"] == pytest.approx(score.r)
            else:  # the DAVIS palette layout has no foreground file
                assert fg is None and "A" not in written and "R" not in written
            assert 0 <= entry["keyframe"] < s.num_frames
        assert d["episodes"]["episodes"] == 3
        assert ("R" in d["scores"]["mean"]) == (name == "syn")
    report_file = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report_file["tag"] == "b" and report_file["overall"]["episodes"] == 6
    assert np.isfinite(a["seconds"]["total"])
    # The paired RL-minus-SFT comparison reads these real reports: identical greedy runs differ by 0.
    from benchmarks.paired_delta import paired_delta

    both = paired_delta({"sft_s0": a, "rl_s0": b}, [0])
    paired = both["pooled"]
    assert both["by_term"]["reward_terms"] and all(v["values"] == [pytest.approx(0.0, abs=1e-9)]
                                                   for v in both["by_term"]["reward_terms"].values())
    assert both["by_term"]["avg_turns"]["sft"] == both["by_term"]["avg_turns"]["rl"]
    assert paired["samples"] == 6 and paired["keyframe_moved_rate"] == 0.0
    assert paired["jf_delta"] == pytest.approx(0.0, abs=1e-9) and paired["reward_delta"] == pytest.approx(0.0, abs=1e-9)
    assert paired["jf_delta_ci95"] == pytest.approx([0.0, 0.0], abs=1e-9)


def test_bad_policy_and_missing_dataset_are_clear_errors(tmp_path, capsys):
    from learner.evaluate import main

    assert main(["--policy", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "is not a policy directory" in capsys.readouterr().err
    missing = f"data.eval=[{{name: x, format: revos, root: {tmp_path / 'absent'}}}]"
    assert main(["--policy", "tiny-qwen2.5-vl", "--out", str(tmp_path), missing]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--policy", "tiny-qwen2.5-vl", "eval.max_turns=0"]) == 2
