"""benchmarks.seed_summary on hand-made per-seed reports of two held-out sets."""

import json

import pytest

from benchmarks.seed_summary import above_zero, main, read_reports, summarise, training_curves


def _report(set_name, jf, reward, fmt=1.0):
    """A report as learner.evaluate writes it: four videos' samples (EpisodeOutcome.as_dict()) and the
    overall figures, whose J&F is the set's headline."""
    from learner.eval_report import EpisodeOutcome

    samples = [EpisodeOutcome(sample_id=f"{set_name}/v{i}/0", dataset=set_name, video_id=f"v{i}", exp_id="0",
                              type_id=0, turns=2, end_reason="answer", format_valid=True, answered=True,
                              final_keyframe=2, chose_keyframe=True, keyframe_correct=True, has_seg=True,
                              reward=reward + i, reward_terms={"mask": jf}, J=jf + 0.01 * i, F=jf + 0.01 * i).as_dict()
               for i in range(4)]
    overall = {"mean_reward": reward, "format_valid_rate": fmt, "keyframe_correct_rate": 0.5, "J&F": jf,
               "cross_target_pred_iou": None, "avg_turns": 2.0, "answered_rate": 1.0}
    return {"samples": samples, "overall": overall}


def _write(folder, tag, report):
    (folder / tag).mkdir(parents=True, exist_ok=True)
    (folder / tag / "report.json").write_text(json.dumps(report))


@pytest.fixture
def two_sets(tmp_path):
    """Seeds 3 and 4 on sets a and b; RL adds 0.1 J&F and 1 reward to every sample of seed 3 only."""
    dirs = [tmp_path / "set_a", tmp_path / "set_b"]
    for d, name, base_jf in zip(dirs, ("a", "b"), (0.2, 0.4)):
        _write(d, "base", _report(name, 0.0, -1.0, fmt=0.0))
        for seed, gain in ((3, 0.1), (4, 0.0)):
            _write(d, f"sft_s{seed}", _report(name, base_jf, 1.0))
            _write(d, f"rl_s{seed}", _report(name, base_jf + gain, 1.0 + 10 * gain))
    return dirs


def test_stage_figures_are_means_over_sets_and_pairs_cover_both_sets(two_sets):
    out = summarise(two_sets, [3, 4], [])
    assert out["per_policy"]["sft_s3"]["J&F"] == pytest.approx(0.3)
    assert out["per_policy"]["rl_s3"]["J&F"] == pytest.approx(0.4)
    assert out["per_policy"]["base"]["format_valid_rate"] == 0.0
    assert out["per_policy"]["base"]["cross_target_pred_iou"] is None
    assert out["held_out"]["rl"]["J&F"]["values"] == [pytest.approx(0.4), pytest.approx(0.3)]
    pooled = out["rl_minus_sft"]["pooled"]
    assert pooled["samples"] == 16 and pooled["videos"] == 8  # 4 videos per set, each set's own
    assert pooled["jf_delta"] == pytest.approx(0.05)
    assert out["rl_minus_sft"]["per_seed"]["4"]["jf_delta"] == pytest.approx(0.0)
    assert out["seeds_without_training_curve"] == [3, 4]


def test_a_set_missing_a_seed_is_an_error(two_sets):
    (two_sets[1] / "rl_s4" / "report.json").unlink()
    with pytest.raises(FileNotFoundError, match="rl_s4"):
        read_reports(two_sets, ["rl_s4"])


def test_curves_are_taken_per_seed_and_conflicts_refused(tmp_path):
    rows = [{"step": 0, "reward/mean": 1.0}, {"step": 1, "reward/mean": 1.5}]
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"rl_training_reward": {"3": rows, "9": rows}}))
    b.write_text(json.dumps({"rl_training_reward": {"3": rows}}))
    assert training_curves([a, b], [3, 4]) == {3: rows}  # seed 9 not asked for; same curve twice is fine
    c.write_text(json.dumps({"rl_training_reward": {"3": rows[:1]}}))
    with pytest.raises(ValueError, match="seed 3"):
        training_curves([a, c], [3])


def test_above_zero_reads_lower_bounds():
    pooled = {"jf_delta_ci95_by_video": [0.01, 0.2], "jf_delta_ci95_over_seeds": [-0.01, 0.2],
              "jf_delta_ci95_seeds_and_videos": [float("nan"), float("nan")], "reward_delta_ci95": [0.0, 1.0]}
    assert above_zero(pooled) == {"jf_by_video": True, "jf_over_seeds": False, "jf_seeds_and_videos": False,
                                  "reward": False}


def test_cli_writes_json_and_plot_with_dotted_names(two_sets, tmp_path, capsys):
    curve = tmp_path / "lc.json"
    curve.write_text(json.dumps({"rl_training_reward": {"3": [{"step": 0, "reward/mean": 1.0}]}}))
    out = tmp_path / "res" / "summary.sets_a+b"
    assert main([*map(str, two_sets), "--seeds", "3", "4", "--curves", str(curve), "--out", str(out)]) == 0
    doc = json.loads((tmp_path / "res" / "summary.sets_a+b.json").read_text())
    assert doc["command"].startswith("python -m benchmarks.seed_summary") and doc["seeds"] == [3, 4]
    assert doc["seeds_without_training_curve"] == [4] and "3" in doc["rl_training_reward"]
    assert (tmp_path / "res" / "summary.sets_a+b.png").stat().st_size > 0
    assert "intervals above 0" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragment", [(["--seeds", "3", "3"], "twice"), (["--seeds", "7"], "sft_s7")])
def test_cli_refuses_repeated_or_missing_seeds(two_sets, tmp_path, capsys, args, fragment):
    with pytest.raises(SystemExit):
        main([*map(str, two_sets), *args, "--out", str(tmp_path / "x")])
    assert fragment in capsys.readouterr().err


def test_a_corrupt_report_is_named(two_sets, tmp_path, capsys):
    (two_sets[0] / "base" / "report.json").write_text("{not json")
    with pytest.raises(SystemExit):
        main([*map(str, two_sets), "--seeds", "3", "--out", str(tmp_path / "x")])
    assert "base" in capsys.readouterr().err
