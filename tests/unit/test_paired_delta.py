"""RL-minus-SFT paired comparison of evaluation reports (benchmarks.paired_delta), on hand-made reports."""

import json

import pytest

from benchmarks.paired_delta import (describe, join_reports, load_reports, main, paired_delta, paired_rows,
                                     seed_video_table, t_interval, video_of)


def _sample(sid, j, f, reward, keyframe):
    return {"sample_id": sid, "J": j, "F": f, "reward": reward, "final_keyframe": keyframe}


def _report(*samples):
    return {"samples": list(samples)}


def test_rows_pair_by_sample_and_skip_unscored_or_unshared_samples():
    sft = _report(_sample("a", 0.4, 0.6, 1.0, 3), _sample("b", 0.2, 0.2, 0.0, 5), _sample("c", None, None, 0.0, 1))
    rl = _report(_sample("b", 0.6, 0.4, 2.0, 5), _sample("a", 0.2, 0.4, 0.5, 4), _sample("c", 0.3, 0.3, 0.0, 1),
                 _sample("d", 1.0, 1.0, 3.0, 0))
    rows = paired_rows(sft, rl)
    assert [r["sample_id"] for r in rows] == ["a", "b"]
    a, b = rows
    assert (a["jf_sft"], a["jf_rl"], a["keyframe_moved"]) == (pytest.approx(0.5), pytest.approx(0.3), True)
    assert (b["jf_sft"], b["jf_rl"], b["keyframe_moved"]) == (pytest.approx(0.2), pytest.approx(0.5), False)


def test_pooled_and_per_seed_deltas_split_by_keyframe_move():
    reports = {
        "sft_s0": _report(_sample("a", 0.4, 0.4, 1.0, 3), _sample("b", 0.2, 0.2, 0.0, 5)),
        "rl_s0": _report(_sample("a", 0.5, 0.5, 2.0, 3), _sample("b", 0.1, 0.1, 1.0, 6)),
        "sft_s1": _report(_sample("a", 0.3, 0.3, 1.0, 3), _sample("b", 0.3, 0.3, 1.0, 5)),
        "rl_s1": _report(_sample("a", 0.6, 0.6, 1.0, 3), _sample("b", 0.3, 0.3, 0.0, 5)),
    }
    out = paired_delta(reports, [0, 1])
    s0, s1, pooled = out["per_seed"]["0"], out["per_seed"]["1"], out["pooled"]
    assert s0["jf_delta"] == pytest.approx(0.0) and s0["reward_delta"] == pytest.approx(1.0)
    assert s0["jf_delta_same_keyframe"] == pytest.approx(0.1) and s0["jf_delta_moved_keyframe"] == pytest.approx(-0.1)
    assert s1["jf_delta"] == pytest.approx(0.15) and s1["keyframe_moved_rate"] == 0.0
    assert s1["jf_delta_moved_keyframe"] is None
    assert pooled["samples"] == 4 and pooled["jf_delta"] == pytest.approx(0.075)
    assert (pooled["jf_improved"], pooled["jf_worsened"]) == (2, 1)
    assert (pooled["seeds_jf_up"], pooled["seeds_reward_up"]) == (1, 1)
    lo, hi = pooled["jf_delta_ci95"]
    assert -0.1 <= lo <= pooled["jf_delta"] <= hi <= 0.3
    assert "+0.0750" in describe(out) and "1/2 seeds" in describe(out)


def test_no_shared_sample_is_an_error():
    reports = {"sft_s0": _report(_sample("a", 0.4, 0.4, 1.0, 3)), "rl_s0": _report(_sample("z", 0.4, 0.4, 1.0, 3))}
    with pytest.raises(ValueError, match="seed 0"):
        paired_delta(reports, [0])


def test_cli_reads_an_eval_folder_and_updates_the_curve_json(tmp_path, capsys):
    for tag, jf in (("sft_s0", 0.2), ("rl_s0", 0.4)):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "report.json").write_text(json.dumps(_report(_sample("a", jf, jf, jf, 2))))
    curve = tmp_path / "learning_curve.json"
    curve.write_text(json.dumps({"held_out": {}}))
    assert main([str(tmp_path), "--seeds", "0", "--update", str(curve)]) == 0
    assert json.loads(curve.read_text())["rl_minus_sft"]["pooled"]["jf_delta"] == pytest.approx(0.2)
    assert set(load_reports(tmp_path, [0])) == {"sft_s0", "rl_s0"}
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--seeds", "0", "1"])
    assert "no evaluation report" in capsys.readouterr().err


def test_cli_pools_seeds_from_several_eval_folders(tmp_path, capsys):
    first, second = tmp_path / "run_a", tmp_path / "run_b"
    for folder, seed, jf_rl in ((first, 0, 0.4), (second, 1, 0.3)):
        for tag, jf in ((f"sft_s{seed}", 0.2), (f"rl_s{seed}", jf_rl)):
            (folder / tag).mkdir(parents=True)
            (folder / tag / "report.json").write_text(json.dumps(_report(_sample("a", jf, jf, jf, 2))))
    reports = load_reports([first, second], [0, 1])
    assert set(reports) == {"sft_s0", "rl_s0", "sft_s1", "rl_s1"}
    out = tmp_path / "pooled.json"
    out.write_text("{}")
    assert main([str(first), str(second), "--seeds", "0", "1", "--update", str(out)]) == 0
    pooled = json.loads(out.read_text())["rl_minus_sft"]["pooled"]
    assert pooled["samples"] == 2 and pooled["jf_delta"] == pytest.approx(0.15)
    # The same held-out samples of a seed in two folders are ambiguous, not silently taken from the first.
    (second / "sft_s0").mkdir()
    (second / "sft_s0" / "report.json").write_text((first / "sft_s0" / "report.json").read_text())
    with pytest.raises(ValueError, match="pass each seed's run once per held-out set"):
        load_reports([first, second], [0, 1])
    with pytest.raises(SystemExit):
        main([str(first), str(second), "--seeds", "0", "1"])
    assert "is in both" in capsys.readouterr().err


def test_reward_change_is_split_by_term_and_turns_are_reported():
    # Seed 0 drops to one turn: its keyframe-vs-video term goes from -0.5 to nothing (a term missing
    # from a report counts as 0, as the reward scores it at one turn), so its gain shows on that term.
    def with_overall(report, terms, turns):
        return {**report, "overall": {"reward_terms": terms, "avg_turns": turns}}

    same = (_sample("a", 0.4, 0.4, 1.0, 3),)
    reports = {
        "sft_s0": with_overall(_report(*same), {"mask": 0.2, "keyframe_vs_video": -0.5}, 2.0),
        "rl_s0": with_overall(_report(*same), {"mask": 0.2}, 1.0),
        "sft_s1": with_overall(_report(*same), {"mask": 0.1, "keyframe_vs_video": 0.0}, 2.0),
        "rl_s1": with_overall(_report(*same), {"mask": 0.3, "keyframe_vs_video": 0.0}, 1.5),
    }
    out = paired_delta(reports, [0, 1])
    terms = out["by_term"]["reward_terms"]
    assert terms["keyframe_vs_video"]["values"] == pytest.approx([0.5, 0.0])
    assert terms["mask"]["values"] == pytest.approx([0.0, 0.2]) and terms["mask"]["mean"] == pytest.approx(0.1)
    assert out["by_term"]["avg_turns"]["sft"]["mean"] == pytest.approx(2.0)
    assert out["by_term"]["avg_turns"]["rl"]["values"] == [1.0, 1.5]
    text = describe(out)
    assert "keyframe_vs_video +0.250" in text and "mask +0.100" in text
    assert "average turns 2.00 -> 1.25" in text


def test_reports_without_term_figures_describe_no_term_change():
    reports = {"sft_s0": _report(_sample("a", 0.4, 0.4, 1.0, 3)), "rl_s0": _report(_sample("a", 0.4, 0.4, 1.0, 3))}
    out = paired_delta(reports, [0])
    assert out["by_term"]["reward_terms"] == {}
    assert "none above 0.005" in describe(out) and "average turns" not in describe(out)


def _vsample(video, exp, jf, reward=1.0, keyframe=2):
    return {"sample_id": f"heldout/{video}/{exp}", "dataset": "heldout", "video_id": video, "J": jf, "F": jf,
            "reward": reward, "final_keyframe": keyframe}


def test_video_is_read_from_the_sample_or_its_id():
    assert video_of(_vsample("syn_1000_00003", 2, 0.5)) == "heldout/syn_1000_00003"
    assert video_of({"sample_id": "davis/bear/1"}) == "davis/bear"


def test_video_interval_is_wider_when_a_videos_expressions_move_together():
    # Eight videos of eight expressions; RL helps every expression of half the videos and hurts every
    # expression of the other half. Resampling expressions treats 64 rows as independent; resampling
    # videos sees 8 units, so its interval must be clearly wider.
    sft, rl = [], []
    for v in range(8):
        for e in range(8):
            sft.append(_vsample(f"v{v}", e, 0.5))
            rl.append(_vsample(f"v{v}", e, 0.6 if v % 2 else 0.42 + 0.01 * e))
    out = paired_delta({"sft_s0": _report(*sft), "rl_s0": _report(*rl)}, [0])
    pooled = out["pooled"]
    assert pooled["videos"] == 8 and pooled["samples"] == 64
    by_sample = pooled["jf_delta_ci95"][1] - pooled["jf_delta_ci95"][0]
    by_video = pooled["jf_delta_ci95_by_video"][1] - pooled["jf_delta_ci95_by_video"][0]
    assert by_video > 1.5 * by_sample
    lo, hi = pooled["jf_delta_ci95_by_video"]
    assert lo <= pooled["jf_delta"] <= hi
    # One seed gives no interval over seeds, and the summary line says so.
    assert all(x != x for x in pooled["jf_delta_ci95_over_seeds"])
    assert "over seeds n/a" in describe(out) and "resampling 8 videos" in describe(out)


def _seeds_by_videos(delta_of):
    """Reports of four seeds on eight videos of four expressions each; RL's J&F is SFT's 0.5 plus
    delta_of(seed, video)."""
    reports = {}
    for s in range(4):
        sft = [_vsample(f"v{v}", e, 0.5) for v in range(8) for e in range(4)]
        rl = [_vsample(f"v{v}", e, 0.5 + delta_of(s, v)) for v in range(8) for e in range(4)]
        reports[f"sft_s{s}"], reports[f"rl_s{s}"] = _report(*sft), _report(*rl)
    return reports


def _width(interval):
    return interval[1] - interval[0]


def test_seed_and_video_interval_widens_with_either_factor():
    # Seeds that disagree (two help, two hurt) on top of videos that disagree: resampling videos alone
    # holds the seeds fixed and misses their spread; resampling both must be wider.
    both = paired_delta(_seeds_by_videos(lambda s, v: (0.04 if s < 2 else -0.02) + (0.03 if v % 2 else -0.01)),
                        [0, 1, 2, 3])["pooled"]
    crossed = both["jf_delta_ci95_seeds_and_videos"]
    assert crossed[0] <= both["jf_delta"] <= crossed[1]
    assert _width(crossed) > 1.5 * _width(both["jf_delta_ci95_by_video"])
    # Seeds that agree: the seed draw changes nothing, so the crossed interval is the video interval.
    videos_only = paired_delta(_seeds_by_videos(lambda s, v: 0.03 if v % 2 else -0.01), [0, 1, 2, 3])["pooled"]
    assert _width(videos_only["jf_delta_ci95_seeds_and_videos"]) == pytest.approx(
        _width(videos_only["jf_delta_ci95_by_video"]), rel=0.25)
    # The same gain everywhere leaves nothing to resample.
    flat = paired_delta(_seeds_by_videos(lambda s, v: 0.02), [0, 1, 2, 3])["pooled"]
    assert flat["jf_delta_ci95_seeds_and_videos"] == [pytest.approx(0.02), pytest.approx(0.02)]


def test_seed_and_video_interval_needs_two_seeds():
    one = paired_delta(_seeds_by_videos(lambda s, v: 0.01 * v), [0])
    assert all(x != x for x in one["pooled"]["jf_delta_ci95_seeds_and_videos"])
    assert "seeds and videos together n/a" in describe(one)


def test_seed_video_table_sums_and_counts_each_cell():
    rows_by_seed = [
        [{"video": "b", "jf_delta": 0.1}, {"video": "a", "jf_delta": 0.2}, {"video": "b", "jf_delta": 0.3}],
        [{"video": "c", "jf_delta": -0.1}],
    ]
    sums, counts = seed_video_table(rows_by_seed)
    # Videos in sorted order (a, b, c), one row per seed.
    assert sums.tolist() == [[pytest.approx(0.2), pytest.approx(0.4), 0.0], [0.0, 0.0, pytest.approx(-0.1)]]
    assert counts.tolist() == [[1, 2, 0], [0, 0, 1]]


def test_video_interval_does_not_depend_on_the_order_of_seeds():
    # Seed 0 lacks video v0: the by-video draws must still see the same videos in the same order
    # whichever seed is listed first, so the interval is the same.
    reports = _seeds_by_videos(lambda s, v: 0.01 * v - 0.02 * s)
    for stage in ("sft_s0", "rl_s0"):
        reports[stage] = _report(*[x for x in reports[stage]["samples"] if x["video_id"] != "v0"])
    forward = paired_delta(reports, [0, 1, 2, 3])["pooled"]["jf_delta_ci95_by_video"]
    backward = paired_delta(reports, [3, 2, 1, 0])["pooled"]["jf_delta_ci95_by_video"]
    assert forward == [pytest.approx(backward[0], abs=1e-12), pytest.approx(backward[1], abs=1e-12)]


def test_t_interval_of_per_seed_means():
    lo, hi = t_interval([0.01, 0.03, -0.01, 0.05])
    # mean 0.02, sample std 0.02582, t(3) = 3.182: half width 0.04108
    assert (lo, hi) == (pytest.approx(0.02 - 0.04108, abs=1e-4), pytest.approx(0.02 + 0.04108, abs=1e-4))
    assert t_interval([0.1, 0.1])[0] == pytest.approx(0.1)
    assert all(x != x for x in t_interval([0.1]))


def _outcome(video, exp, jf, turns):
    """A report sample as learner.evaluate writes it (EpisodeOutcome.as_dict())."""
    from learner.eval_report import EpisodeOutcome

    return EpisodeOutcome(sample_id=f"heldout/{video}/{exp}", dataset="heldout", video_id=video, exp_id=str(exp),
                          type_id=0, turns=int(turns), end_reason="answer", format_valid=True, answered=True,
                          final_keyframe=2, chose_keyframe=True, keyframe_correct=True, has_seg=True, reward=1.0,
                          reward_terms={"mask": jf}, J=jf, F=jf).as_dict()


def test_reports_of_one_policy_on_two_held_out_sets_are_joined(tmp_path):
    set_a, set_b = tmp_path / "eval_train", tmp_path / "eval_train_seed2000"
    for folder, video, sft_jf, rl_jf, turns in ((set_a, "syn_1000_00000", 0.2, 0.4, 2.0),
                                                (set_b, "syn_2000_00000", 0.3, 0.3, 1.0)):
        for tag, jf, t in (("sft_s0", sft_jf, 2.0), ("rl_s0", rl_jf, turns)):
            (folder / tag).mkdir(parents=True)
            report = _report(*(_outcome(video, e, jf, t) for e in (0, 1)))
            (folder / tag / "report.json").write_text(json.dumps(report))
    reports = load_reports([set_a, set_b], [0])
    assert len(reports["rl_s0"]["samples"]) == 4
    assert reports["rl_s0"]["overall"]["avg_turns"] == pytest.approx(1.5)
    assert reports["rl_s0"]["overall"]["reward_terms"]["mask"] == pytest.approx(0.35)
    out = paired_delta(reports, [0])
    assert out["pooled"]["samples"] == 4 and out["pooled"]["videos"] == 2
    assert out["pooled"]["jf_delta"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="is in both"):
        join_reports([reports["rl_s0"], reports["rl_s0"]], ["x", "y"])
