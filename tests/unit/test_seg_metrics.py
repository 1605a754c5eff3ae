"""J and F against hand-computed values, and against the DAVIS toolkit's own numbers on real data."""

import json
from pathlib import Path

import numpy as np
import pytest

from segmentation.metrics import (boundary_f_measure, boundary_radius, davis_statistics, disk_kernel,
                                  sequence_accuracy, sequence_robustness,
                                  frame_jf, mask_iou, region_similarity, seg2bmap, sequence_jf)

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "davis_toolkit_reference.json"


def block(h, w, rows, cols):
    m = np.zeros((h, w), dtype=bool)
    m[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return m


# ------------------------------------------------------------------------------------ seg2bmap
def test_seg2bmap_of_a_square_is_the_ring_half_a_pixel_toward_the_origin():
    seg = block(4, 4, (1, 2), (1, 2))
    expected = np.array([[1, 1, 1, 0],
                         [1, 0, 1, 0],
                         [1, 1, 1, 0],
                         [0, 0, 0, 0]], dtype=bool)
    assert np.array_equal(seg2bmap(seg), expected)


def test_seg2bmap_full_frame_and_border_rules():
    assert not seg2bmap(np.ones((4, 5), bool)).any()  # the image border is not an edge
    assert not seg2bmap(np.zeros((4, 5), bool)).any()
    one = np.zeros((4, 4), bool)
    one[1, 1] = True
    assert seg2bmap(one).sum() == 4 and seg2bmap(one)[1, 1]
    corner = np.zeros((4, 4), bool)
    corner[3, 3] = True  # the bottom-right pixel itself is never a boundary pixel
    b = seg2bmap(corner)
    assert b.sum() == 3 and b[2, 2] and b[3, 2] and b[2, 3] and not b[3, 3]
    right_half = block(10, 10, (0, 9), (5, 9))  # touches top, bottom and right borders
    b = seg2bmap(right_half)
    assert b.sum() == 10 and b[:, 4].all()


def test_seg2bmap_treats_any_nonzero_as_foreground():
    labels = np.zeros((6, 6), np.uint8)
    labels[2:4, 2:4] = 7
    assert np.array_equal(seg2bmap(labels), seg2bmap(labels > 0))


# ------------------------------------------------------------------------------------ radius
@pytest.mark.parametrize("h,w,r", [(480, 854, 8), (720, 1280, 12), (1080, 1920, 18), (10, 10, 1)])
def test_boundary_radius(h, w, r):
    assert boundary_radius(h, w) == r


def test_disk_kernel_is_the_euclidean_disk():
    k = disk_kernel(8)
    assert k.shape == (17, 17) and k.dtype == np.uint8
    yy, xx = np.mgrid[-8:9, -8:9]
    assert np.array_equal(k, (xx ** 2 + yy ** 2 <= 64).astype(np.uint8))
    assert k.sum() == 197  # lattice points within radius 8
    assert k[8, 0] == 1 and k[0, 0] == 0
    assert np.array_equal(disk_kernel(1), np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8))


# ------------------------------------------------------------------------------ edge cases
def test_both_empty_is_one_for_j_and_f():
    z = np.zeros((8, 9), bool)
    assert frame_jf(z, z) == (1.0, 1.0)


def test_one_pixel_against_empty_is_zero_both_ways():
    z = np.zeros((8, 9), bool)
    px = z.copy()
    px[3, 4] = True
    assert frame_jf(z, px) == (0.0, 0.0)  # GT empty, prediction not: P=0, R=1
    assert frame_jf(px, z) == (0.0, 0.0)  # GT present, prediction empty: P=1, R=0
    assert frame_jf(px, px) == (1.0, 1.0)


def test_full_frame_cases():
    full = np.ones((10, 12), bool)
    small = block(10, 12, (2, 4), (3, 6))
    assert frame_jf(full, full) == (1.0, 1.0)  # boundary maps both empty -> F = 1
    j, f = frame_jf(small, full)  # full prediction has no boundary: P=1, R=0
    assert j == pytest.approx(12 / 120) and f == 0.0
    j, f = frame_jf(full, small)
    assert j == pytest.approx(12 / 120) and f == 0.0


def test_shifted_square_hand_computed():
    gt = block(10, 10, (2, 5), (2, 5))
    pred = block(10, 10, (2, 5), (5, 8))
    # J: 4 shared pixels of 28. F (radius 1, cross kernel): 9 of the 16 ring pixels of each
    # boundary lie within one step of the other ring, so P = R = 9/16.
    j, f = frame_jf(gt, pred)
    assert j == pytest.approx(4 / 28, abs=1e-12)
    assert f == pytest.approx(9 / 16, abs=1e-12)


def test_border_touching_band_hand_computed():
    gt = block(10, 10, (0, 3), (0, 9))
    assert frame_jf(gt, gt) == (1.0, 1.0)
    one_lower = block(10, 10, (0, 4), (0, 9))
    j, f = frame_jf(gt, one_lower)
    assert j == pytest.approx(0.8) and f == 1.0  # edges one row apart: within the 1 px tolerance
    two_lower = block(10, 10, (0, 5), (0, 9))
    j, f = frame_jf(gt, two_lower)
    assert j == pytest.approx(40 / 60) and f == 0.0


def test_tolerance_is_eight_pixels_at_480p():
    gt = block(480, 854, (100, 199), (100, 299))
    assert boundary_f_measure(gt, np.roll(gt, 8, axis=0)) == 1.0
    assert boundary_f_measure(gt, np.roll(gt, 9, axis=0)) < 1.0


def test_void_pixels_are_ignored():
    gt = block(6, 6, (1, 2), (1, 2))
    pred = block(6, 6, (1, 3), (1, 3))
    void = np.zeros((6, 6), bool)
    void[3, :] = void[:, 3] = True
    assert region_similarity(gt, pred) == pytest.approx(4 / 9)
    assert region_similarity(gt, pred, void) == 1.0


def test_sequence_and_iou_helpers():
    gts = np.stack([np.zeros((5, 5), bool), block(5, 5, (1, 2), (1, 2))])
    preds = np.stack([np.zeros((5, 5), bool), block(5, 5, (1, 2), (1, 3))])
    j, f = sequence_jf(gts, preds)
    assert j.tolist() == [1.0, pytest.approx(4 / 6)] and f[0] == 1.0
    assert mask_iou(gts[0], preds[0]) == 1.0 and mask_iou(gts[0], preds[0], both_empty=0.0) == 0.0
    with pytest.raises(ValueError, match="shape"):
        frame_jf(np.zeros((3, 3)), np.zeros((3, 4)))


def test_davis_statistics_hand_computed():
    m, o, d = davis_statistics(np.array([1, 1, 1, 1, 0, 0, 0, 0], float))
    # bins from round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]: first = v[0:3], last = v[5:8]
    assert (m, o, d) == (0.5, 0.5, 1.0)
    m, o, d = davis_statistics(np.array([0.2, np.nan, 0.8, 0.6]))
    assert m == pytest.approx(1.6 / 3) and o == pytest.approx(0.5)


# ------------------------------------------------------------------- DAVIS toolkit, real data
@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("task", ["semi-supervised", "unsupervised"])
def test_matches_davis_toolkit_per_sequence(task, golden, davis16_dir):
    from segmentation.evaluation import score_davis

    ours = score_davis(davis16_dir, davis16_dir / "osvos_predictions", task)
    ref = golden[task]
    assert sorted(ours["per_object"]) == sorted(ref["per_object"])
    for name, r in ref["per_object"].items():
        o = ours["per_object"][name]
        assert o["frames"] == r["frames"]
        assert abs(o["J"] - r["J_M"]) < 1e-6 and abs(o["F"] - r["F_M"]) < 1e-6, name
        assert abs(o["J_recall"] - r["J_R"]) < 1e-6 and abs(o["F_decay"] - r["F_D"]) < 1e-6, name
        assert np.allclose(o["J_per_frame"], r["J"], atol=1e-6, rtol=0)
        assert np.allclose(o["F_per_frame"], r["F"], atol=1e-6, rtol=0)
    for key in ("J-Mean", "F-Mean", "J&F-Mean", "J-Recall", "J-Decay", "F-Recall", "F-Decay"):
        assert abs(ours["summary"][key] - ref[key]) < 1e-6, key


# ------------------------------------------------------------------- ReVOS accuracy / robustness
def test_revos_accuracy_counts_equal_pixels_on_zero_one_values():
    gt = np.zeros((2, 4, 5), np.uint8)
    gt[0, :2, :2] = 1
    pred = gt.copy() * 255  # any nonzero value is foreground, so 0/255 PNG values do not matter
    pred[1, 3, 4] = 255
    assert sequence_accuracy(gt, pred).tolist() == [1.0, 19 / 20]
    with pytest.raises(ValueError, match="TxHxW"):
        sequence_accuracy(gt[0], pred[0])


def test_revos_robustness_edge_cases():
    gt = np.zeros((3, 4, 4), bool)
    gt[0, :2, :2] = True
    pred = gt.copy()
    pred[0, 3, :2] = True  # 2 false positives against 8 foreground pixels
    pred[2, 0, 0] = True  # a false positive on a frame whose foreground is empty
    r = sequence_robustness(gt, pred, [8, 5, 0])
    assert r.tolist() == pytest.approx([0.75, 1.0, 0.0])  # frame 1: empty prediction -> 1
    assert sequence_robustness(gt, pred, [1, 1, 1])[0] == 0.0  # clipped at 0, never negative
    with pytest.raises(ValueError, match="2 foreground counts for 3 frames"):
        sequence_robustness(gt, pred, [1, 1])
