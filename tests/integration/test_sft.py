"""Cold-start SFT on oracle VTS-CoT trajectories with the real learner engine and tiny models."""

import json
from pathlib import Path

import pytest

from configs import load_config
from env.vtscot_oracle import main as oracle_main

SYN = "data.train=[{name: synthetic, format: synthetic, videos: 1, seed: 0, frames_per_video: 24}]"
# held-out prompts for the probe: the same generator, other videos


@pytest.fixture(scope="module")
def oracle_file(tmp_path_factory, tiny_sam2_ckpt):
    # two records: enough to check batching and the losses, small enough to memorise quickly
    out = tmp_path_factory.mktemp("sft_data") / "oracle.jsonl"
    assert oracle_main(["--out", str(out), "--max-samples", "2", SYN]) == 0
    return out


def _cfg(tmp_path, oracle_file, *extra):
    return load_config("debug_cpu", [SYN, f"sft.trajectories={oracle_file}", f"sft.output_dir={tmp_path / 'sft'}",
                                     "sft.batch_size=4", "sft.log_every=5", *extra])


@pytest.mark.slow
def test_sft_fits_the_oracle_and_exports_a_policy_that_follows_the_format(tmp_path, oracle_file):
    from learner.sft import run_sft

    # the probe asks for the greedy first turn on the first training prompt: after 40 steps the
    # policy writes the record's opening, which the random tiny policy never does (a fully
    # valid format on held-out prompts takes ~200 steps: benchmarks/learning_curve.py shows it)
    train_as_eval = SYN.replace("data.train", "data.eval")
    cfg = _cfg(tmp_path, oracle_file, train_as_eval, "sft.steps=40", "sft.lr=3e-3", "sft.batch_size=2",
               "sft.validate_samples=1")
    summary = run_sft(cfg)
    first, last = summary["first_step"], summary["last_step"]
    assert summary["used"] == summary["records"] == 2
    assert last["lm_loss"] < 0.3 * first["lm_loss"], (first, last)
    assert last["mask_loss"] < first["mask_loss"]
    assert last["token_accuracy"] > 0.9 and last["masks"] > 0
    assert summary["probe_before"]["first_turn_format_valid"] == 0.0
    assert not summary["probe_before"]["example"].startswith("<think>")
    assert summary["probe_after"]["example"].startswith("<think> Step 1: temporal - "), summary["probe_after"]
    out = tmp_path / "sft"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(40))
    policy = out / "policy"
    assert (policy / "config.json").is_file() and (policy / "tokenizer_config.json").is_file()
    assert json.loads((out / "summary.json").read_text())["policy"] == str(policy)

    # the exported policy carries the trained weights: one more step starting from it begins at
    # the loss the first run ended with, not at the random model's
    again = run_sft(_cfg(tmp_path / "again", oracle_file, f"model.policy={policy}", "sft.steps=1", "sft.lr=1e-6"))
    assert again["first_step"]["lm_loss"] < 2 * last["lm_loss"] + 0.05
    assert again["first_step"]["lm_loss"] < 0.3 * first["lm_loss"]


def test_records_for_other_env_settings_are_skipped_or_refused(tmp_path, oracle_file):
    from learner.sft import run_sft

    other = "env.initial_low_res_frames=5"  # the file was written with 6 initial frames
    with pytest.raises(ValueError, match="none of the 2 records"):
        run_sft(_cfg(tmp_path, oracle_file, other, "sft.steps=1"))
    from learner.sft_data import RecordMismatch

    with pytest.raises(RecordMismatch, match="shows frames"):
        run_sft(_cfg(tmp_path, oracle_file, other, "sft.steps=1", "sft.strict_frames=true"))


def test_cli_reports_missing_inputs_clearly(tmp_path, capsys):
    from learner.sft import main

    assert main(["sft.steps=1", f"sft.output_dir={tmp_path}"]) == 2
    assert "sft.trajectories is not set" in capsys.readouterr().err
    assert main([f"sft.trajectories={tmp_path / 'nope.jsonl'}", f"sft.output_dir={tmp_path}"]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert main(["sft.lr=7"]) == 2
    assert "sft.lr" in capsys.readouterr().err


@pytest.mark.slow
def test_prompt_alignment_pulls_the_projected_seg_tokens_to_the_teacher(tmp_path, oracle_file):
    import torch

    from learner.sft import run_sft
    from segmentation.pretrain_text_prompt import expression_words, words_path
    from segmentation.sam2_models import sam2_from_model_config

    width = sam2_from_model_config(load_config("debug_cpu", [SYN]).model, "cpu").sam_prompt_encoder.embed_dim
    records = [json.loads(line) for line in oracle_file.read_text().splitlines() if line.strip()]
    assert records
    # A teacher whose prompts the random projector does not already write: one random vector per word.
    words = sorted({w for r in records for w in expression_words(json.dumps(r))})
    teacher = words_path(tmp_path / "sam2_text.pt")
    torch.save({"vocabulary": words, "vectors": torch.randn(len(words) + 1, width,
                                                            generator=torch.Generator().manual_seed(0))}, teacher)
    summary = run_sft(_cfg(tmp_path, oracle_file, "sft.steps=12", "sft.lr=3e-3", "sft.batch_size=2",
                           f"sft.prompt_teacher={teacher}", "sft.prompt_align_weight=1.0"))
    first, last = summary["first_step"], summary["last_step"]
    assert first["align_loss"] > 0.1
    assert last["align_loss"] < 0.5 * first["align_loss"], (first, last)

    # prompts of another width (a teacher of another SAM2 config) are refused before training
    torch.save({"vocabulary": words, "vectors": torch.zeros(len(words) + 1, width + 1)}, teacher)
    with pytest.raises(ValueError, match="projector writes"):
        run_sft(_cfg(tmp_path / "wide", oracle_file, "sft.steps=1", f"sft.prompt_teacher={teacher}",
                     "sft.prompt_align_weight=1.0"))


def _weights(policy_dir):
    from safetensors.torch import load_file

    return load_file(str(policy_dir / "model.safetensors"))


def test_export_every_writes_the_policy_as_it_was_at_that_step(tmp_path, oracle_file):
    import torch

    from learner.sft import run_sft

    # constant lr and one seed: step 1 of a 2-step run is the whole of a 1-step run
    two = run_sft(_cfg(tmp_path / "two", oracle_file, "sft.steps=2", "sft.lr=3e-3", "sft.batch_size=2",
                       "sft.export_every=1"))
    one = run_sft(_cfg(tmp_path / "one", oracle_file, "sft.steps=1", "sft.lr=3e-3", "sft.batch_size=2"))
    step1 = tmp_path / "two" / "sft" / "checkpoints" / "step_1"
    assert two["checkpoints"] == [{"step": 1, "policy": str(step1)},
                                  {"step": 2, "policy": str(tmp_path / "two" / "sft" / "policy")}]
    assert (step1 / "config.json").is_file() and (step1 / "videoseg_heads").is_dir()
    assert not (tmp_path / "two" / "sft" / "checkpoints" / "step_2").exists()  # the final one is policy/
    exported, reference, final = _weights(step1), _weights(Path(one["policy"])), _weights(Path(two["policy"]))
    assert exported.keys() == reference.keys()
    assert all(torch.equal(exported[k], reference[k]) for k in exported)
    assert any(not torch.equal(exported[k], final[k]) for k in exported)  # step 2 moved on
    rows = [json.loads(line) for line in (tmp_path / "two" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["checkpoint"] == str(step1) and "checkpoint" not in rows[1]
