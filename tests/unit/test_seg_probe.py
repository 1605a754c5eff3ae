"""The [SEG] probe's statistics: nearest-centroid leave-one-out, mask IoU, colour words."""

import numpy as np
import pytest

from benchmarks.seg_probe import colour_of, mask_iou, nearest_centroid_loo


def test_nearest_centroid_separates_clusters_and_is_at_chance_on_noise():
    rng = np.random.default_rng(0)
    labels = ["red"] * 10 + ["blue"] * 10 + ["green"] * 10
    centres = {"red": 0.0, "blue": 5.0, "green": -5.0}
    x = np.stack([rng.normal(centres[c], 0.5, size=8) for c in labels])
    acc, chance = nearest_centroid_loo(x, labels)
    assert acc == 1.0 and chance == pytest.approx(1 / 3)
    noise = rng.normal(size=(300, 8))
    acc, _ = nearest_centroid_loo(noise, [["a", "b", "c"][i % 3] for i in range(300)])
    assert acc < 0.5  # no signal: near 1/3


def test_a_singleton_class_counts_as_a_miss_and_bad_input_is_refused():
    x = np.array([[0.0], [0.1], [5.0]])
    acc, chance = nearest_centroid_loo(x, ["a", "a", "b"])
    assert acc == pytest.approx(2 / 3) and chance == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        nearest_centroid_loo(x, ["a", "a", "a"])
    with pytest.raises(ValueError):
        nearest_centroid_loo(x, ["a", "b"])


def test_mask_iou_and_colour_words():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert mask_iou(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert colour_of("the red square moving left") == "red"
    assert colour_of("all the circles") is None
    assert colour_of("the red square next to the blue circle") is None  # ambiguous
