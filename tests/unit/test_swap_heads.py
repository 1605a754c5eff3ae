"""benchmarks.swap_heads: crossed policy directories and the split of a J&F change."""

import pytest

from benchmarks.swap_heads import crossed_policy, decompose, main
from learner.policy import HEADS_FILE


def _policy(root, name, lm: bytes, heads: bytes):
    d = root / name
    (d / HEADS_FILE).parent.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(lm)
    (d / HEADS_FILE).write_bytes(heads)
    return d


def test_crossed_policy_takes_the_model_of_one_and_the_heads_of_the_other(tmp_path):
    sft = _policy(tmp_path, "sft", b"sft-lm", b"sft-heads")
    rl = _policy(tmp_path, "rl", b"rl-lm", b"rl-heads")
    out = crossed_policy(rl, sft, tmp_path / "x")
    assert (out / "model.safetensors").read_bytes() == b"rl-lm"
    assert (out / HEADS_FILE).read_bytes() == b"sft-heads"
    # rebuilt from scratch when asked again, the sources untouched
    out = crossed_policy(sft, rl, tmp_path / "x")
    assert (out / "model.safetensors").read_bytes() == b"sft-lm" and (out / HEADS_FILE).read_bytes() == b"rl-heads"
    assert (rl / HEADS_FILE).read_bytes() == b"rl-heads"


def test_a_directory_without_heads_is_refused(tmp_path):
    sft = _policy(tmp_path, "sft", b"a", b"b")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="bare"):
        crossed_policy(bare, sft, tmp_path / "x")


def test_decompose_splits_the_change_and_keeps_the_rest_as_interaction():
    parts = decompose({"sft": 0.45, "rl": 0.37, "rl_lm_sft_heads": 0.39, "sft_lm_rl_heads": 0.40})
    assert parts["full"] == pytest.approx(-0.08)
    assert parts["lm_alone"] == pytest.approx(-0.06) and parts["heads_alone"] == pytest.approx(-0.05)
    assert parts["interaction"] == pytest.approx(0.03)
    assert parts["lm_alone"] + parts["heads_alone"] + parts["interaction"] == pytest.approx(parts["full"])


def test_cli_rejects_a_missing_sam2_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--sft", "x", "--rl", "y", "--sam2", str(tmp_path / "none.pt"), "--work", str(tmp_path),
              "--out", str(tmp_path / "o.json")])
    assert "--sam2" in capsys.readouterr().err
