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
