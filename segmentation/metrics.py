"""Region similarity J and boundary F-measure, computed as the DAVIS toolkit computes them.

The algorithms follow ../shared/METRICS_AND_FORMATS.md section 1.1 step by step (including the
edge cases that fall out of them): any nonzero pixel is foreground; J of two empty masks is 1;
F matches one-pixel boundary maps (seg2bmap) within ceil(0.008 * image diagonal) pixels, using a
Euclidean disk dilated with cv2; emptiness for F is decided on the boundary maps, so a mask that
fills the whole frame has no boundary. tests/data/davis_toolkit_reference.json holds the toolkit's
own numbers on real data, and the tests compare against them to 1e-6.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import cv2
import numpy as np

BOUNDARY_THRESHOLD = 0.008


def _as_bool(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype == bool else a != 0


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None):
    """J over the last two axes: a float for HxW input, an array for TxHxW input."""
    gt, pred = _as_bool(gt), _as_bool(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    keep = np.ones_like(gt) if void is None else ~_as_bool(void)
    inter = np.sum((gt & pred) & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    empty = np.isclose(union, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union
    if np.ndim(j) == 0:
        return 1.0 if empty else float(j)
    j = np.asarray(j, dtype=np.float64)
    j[empty] = 1.0
    return j


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map; each boundary sits half a pixel toward the origin (Martin 2003).

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour. The
    last row and column only compare along the border, and the corner is never a boundary, so the
    image border itself is not an edge.
    """
    seg = _as_bool(seg)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap takes one HxW mask, got shape {seg.shape}")
    right = np.zeros_like(seg)
    below = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    below[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ right) | (seg ^ below) | (seg ^ diag)
    bmap[-1, :] = seg[-1, :] ^ right[-1, :]
    bmap[:, -1] = seg[:, -1] ^ below[:, -1]
    bmap[-1, -1] = False
    return bmap


def boundary_radius(height: int, width: int, bound_th: float = BOUNDARY_THRESHOLD) -> int:
    """Match tolerance in pixels: bound_th itself if >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


@lru_cache(maxsize=32)
def disk_kernel(radius: int) -> np.ndarray:
    """(2r+1)^2 uint8 Euclidean disk, x^2 + y^2 <= r^2 (what skimage.morphology.disk gives)."""
    from skimage.morphology import disk

    return disk(radius).astype(np.uint8)


def boundary_f_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                       bound_th: float = BOUNDARY_THRESHOLD) -> float:
    """Contour accuracy F of one frame."""
    gt, pred = _as_bool(gt), _as_bool(pred)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"F needs two HxW masks of one shape, got {gt.shape} and {pred.shape}")
    if void is not None:
        keep = ~_as_bool(void)
        gt, pred = gt & keep, pred & keep
    kernel = disk_kernel(boundary_radius(*pred.shape, bound_th=bound_th))
    pred_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    n_pred = int(pred_b.sum())
    n_gt = int(gt_b.sum())
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = int((pred_b & gt_dil).sum()) / float(n_pred)
        recall = int((gt_b & pred_dil).sum()) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _stacks(what: str, gts: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if gts.shape != preds.shape or gts.ndim != 3:
        raise ValueError(f"{what} needs two TxHxW stacks of one shape, got {gts.shape} and {preds.shape}")
    return gts, preds


def frame_jf(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> tuple[float, float]:
    """(J, F) of one frame."""
    return float(region_similarity(gt, pred, void)), boundary_f_measure(gt, pred, void)


def sequence_jf(gts: np.ndarray, preds: np.ndarray, voids: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F arrays for TxHxW ground truth and prediction."""
    gts, preds = _stacks("sequence_jf", np.asarray(gts), np.asarray(preds))
    j = np.atleast_1d(region_similarity(gts, preds, voids)).astype(np.float64)
    f = np.array([boundary_f_measure(gts[t], preds[t], None if voids is None else voids[t])
                  for t in range(gts.shape[0])], dtype=np.float64)
    return j, f


def mask_iou(gt: np.ndarray, pred: np.ndarray, both_empty: float = 1.0) -> float:
    """IoU of two binary masks, with a chosen value for the both-empty case (J uses 1)."""
    gt, pred = _as_bool(gt), _as_bool(pred)
    union = int(np.count_nonzero(gt | pred))
    if union == 0:
        return float(both_empty)
    return int(np.count_nonzero(gt & pred)) / union


# ------------------------------------------------------------------- ReVOS accuracy / robustness
def sequence_accuracy(gts: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """ReVOS accuracy A per frame: the fraction of pixels where the 0/1 prediction equals the 0/1
    ground truth (the Sa2VA RLE route, where both are 0/1; METRICS_AND_FORMATS.md 1.3 and 1.6)."""
    gts, preds = _stacks("sequence_accuracy", _as_bool(gts), _as_bool(preds))
    return (gts == preds).reshape(gts.shape[0], -1).mean(axis=1, dtype=np.float64)


def sequence_robustness(gts: np.ndarray, preds: np.ndarray, foreground_pixels) -> np.ndarray:
    """ReVOS robustness R per frame: max(0, 1 - N_fp / (N_fg + 1e-6)), N_fp = predicted pixels
    outside the ground truth, N_fg = the pixel count of the video's foreground (all annotated
    objects) on that frame. An empty prediction gives 1; any false positive on a frame with an
    empty foreground gives 0."""
    gts, preds = _stacks("sequence_robustness", _as_bool(gts), _as_bool(preds))
    fg = np.asarray(foreground_pixels, dtype=np.float64).reshape(-1)
    if fg.shape[0] != gts.shape[0]:
        raise ValueError(f"{fg.shape[0]} foreground counts for {gts.shape[0]} frames")
    false_pos = (preds & ~gts).reshape(gts.shape[0], -1).sum(axis=1).astype(np.float64)
    return np.maximum(0.0, 1.0 - false_pos / (fg + 1e-6))


# --------------------------------------------------------------------------- DAVIS statistics
def davis_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(Mean M, Recall O, Decay D) of one object's per-frame values, as the DAVIS toolkit computes.

    Decay compares the first and the last of four temporal bins. The toolkit stores the bin edges
    as uint8, so for sequences longer than 255 frames the edges wrap around; that is reproduced
    here on purpose so long sequences give the toolkit's numbers.
    """
    values = np.asarray(per_frame, dtype=np.float64)
    with warnings.catch_warnings():  # an all-NaN bin is allowed and gives NaN, as in the toolkit
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
        edges = np.round(np.linspace(1, len(values), 5) + 1e-10) - 1
        edges = edges.astype(np.uint8)
        first = values[edges[0]:edges[1] + 1]
        last = values[edges[3]:edges[4] + 1]
        decay = float(np.nanmean(first) - np.nanmean(last))
    return mean, recall, decay


def jf_mean(j: float, f: float) -> float:
    return (j + f) / 2.0

