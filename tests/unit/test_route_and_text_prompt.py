"""Pure helpers of benchmarks.route_probe and segmentation.pretrain_text_prompt (and the held-out
video split both use, env.datasets.held_out_videos)."""

import pytest

from segmentation.pretrain_text_prompt import expression_words
from benchmarks.route_probe import last_seg_per_row
from env.datasets import held_out_videos as split_videos


def test_split_videos_is_seeded_and_never_empty_or_total():
    ids = [f"v{i}" for i in range(8)] * 3  # repeated ids count once
    held = split_videos(ids, 0.25, seed=0)
    assert len(held) == 2 and held <= set(ids)
    assert held == split_videos(list(reversed(ids)), 0.25, seed=0)  # order of the records does not matter
    assert len(split_videos(ids, 0.01, seed=0)) == 1  # at least one video held out
    assert len(split_videos(ids, 0.99, seed=0)) == 7  # at least one video left to train on
    with pytest.raises(ValueError, match="two videos"):
        split_videos(["only"] * 4, 0.5, seed=0)


def test_last_seg_per_row_keeps_the_final_position_of_each_row():
    assert last_seg_per_row([0, 0, 1, 2, 2, 2], [5, 40, 7, 3, 90, 12]) == {0: 40, 1: 7, 2: 90}
    assert last_seg_per_row([], []) == {}


def test_expression_words_lower_cases_and_drops_punctuation():
    assert expression_words("The RED circle, moving fast!") == ["the", "red", "circle", "moving", "fast"]
    assert expression_words("object #2's left-side") == ["object", "2", "s", "left", "side"]
    assert expression_words("  ") == []


def test_prompt_teacher_reads_the_word_table_and_averages_word_vectors(tmp_path):
    import torch

    from segmentation.pretrain_text_prompt import PromptTeacher, words_path

    vectors = torch.arange(12, dtype=torch.float32).view(4, 3)  # row 0: unknown words
    path = words_path(tmp_path / "sam2_text.pt")
    assert path.name == "sam2_text.words.pt"
    torch.save({"vocabulary": ["blue", "circle", "red"], "vectors": vectors}, path)
    teacher = PromptTeacher(path)
    assert teacher.width == 3
    assert torch.equal(teacher("Red circle!"), (vectors[3] + vectors[2]) / 2)
    assert torch.equal(teacher("a blue"), (vectors[0] + vectors[1]) / 2)  # "a" is unknown
    assert torch.equal(teacher(""), vectors[0])
    # spread: per-channel variance over distinct expressions (repeats count once), mean over channels
    prompts = torch.stack([teacher("red"), teacher("blue")])
    assert teacher.spread(["red", "blue", "red"]) == pytest.approx(float(prompts.var(0, unbiased=False).mean()))
    assert teacher.spread(["red", "blue"]) == pytest.approx(9.0)  # rows 3 and 1 differ by 6 per channel
    with pytest.raises(ValueError, match="same prompt"):
        teacher.spread(["red", "RED!"])
    with pytest.raises(ValueError, match="same prompt"):
        teacher.spread(["a dog", "the cat"])  # all unknown words


def test_prompt_teacher_rejects_missing_and_foreign_files(tmp_path):
    import torch

    from segmentation.pretrain_text_prompt import PromptTeacher

    with pytest.raises(FileNotFoundError, match="pretrain_text_prompt"):
        PromptTeacher(tmp_path / "absent.words.pt")
    (tmp_path / "junk.words.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a word-vector file"):
        PromptTeacher(tmp_path / "junk.words.pt")
    torch.save({"vocabulary": ["a", "b"], "vectors": torch.zeros(2, 4)}, tmp_path / "short.words.pt")
    with pytest.raises(ValueError, match="2 vectors for 2 words"):
        PromptTeacher(tmp_path / "short.words.pt")


@pytest.mark.parametrize("section", ["sft", "learner"])
def test_prompt_alignment_needs_a_teacher(section):
    from configs import ConfigError, load_config

    with pytest.raises(ConfigError, match="prompt_teacher"):
        load_config("debug_cpu", [f"{section}.prompt_align_weight=1.0"])
    cfg = load_config("debug_cpu", [f"{section}.prompt_align_weight=0.5", f"{section}.prompt_teacher=t.words.pt"])
    assert getattr(cfg, section).prompt_align_weight == 0.5
