"""The [SEG] probe on the real tiny policy, SAM2 and oracle records of a synthetic video."""

import json

import pytest

from env.vtscot_oracle import main as oracle_main

SYN = "data.train=[{name: synthetic, format: synthetic, videos: 1, seed: 0, frames_per_video: 24}]"


@pytest.mark.slow
def test_probe_reports_prompt_dependence_for_a_policy(tmp_path, tiny_sam2_ckpt, tiny_qwen25_dir):
    from benchmarks.seg_probe import main

    records = tmp_path / "oracle.jsonl"
    assert oracle_main(["--out", str(records), "--max-samples", "3", SYN]) == 0
    out = tmp_path / "probe.json"
    assert main(["--policy", "tiny-qwen2.5-vl", "--trajectories", str(records), "--out", str(out), SYN]) == 0
    result = json.loads(out.read_text())
    assert result["records"] == 3 and result["videos"] == 1 and result["skipped"] == 0
    assert 0.0 <= result["own_iou"] <= 1.0 and result["prompt_spread"] > 0
    if result["cross_target_pairs"]:
        assert 0.0 <= result["cross_target_pred_iou"] <= 1.0


def test_probe_names_unreplayable_records(tmp_path, capsys):
    from benchmarks.seg_probe import main

    bad = tmp_path / "empty.jsonl"
    bad.write_text("")
    assert main(["--policy", "tiny-qwen2.5-vl", "--trajectories", str(bad), SYN]) == 2
    assert "error:" in capsys.readouterr().err
